"""A read-only open checks that data.mdb is not shorter than its newest meta page says. It
read the file's size, then the meta pages: a writer in another process that committed in
between -- growing the file, then writing a meta page naming the new end -- made the open
fail with "data.mdb is truncated" though nothing was wrong (seen in a read-only process
opening while a writer applied). The meta pages are read first now: the file only grows,
and a commit writes its pages before its meta page."""
from __future__ import annotations

import numpy as np
from conftest import make_tokens

import ngstore
from ngstore.fileio import FileIO
from ngstore.kv import check_data_file


class CommitAfterEachSize(FileIO):
    """Answers ``size_of`` with the size at the call, then lets the writer commit a batch
    that grows the file before anything else is read."""

    def __init__(self, commit) -> None:
        super().__init__()
        self.commit = commit

    def size_of(self, path: str) -> int | None:
        size = super().size_of(path)
        if path.endswith("data.mdb"):
            self.commit()
        return size


def test_a_commit_right_after_the_size_is_read_is_not_truncation(store_path):
    with ngstore.open(store_path) as s:
        s.put_tokens(make_tokens(np.arange(1024)))
        s.flush()
        start = [2048]

        def commit() -> None:  # a new chunk range each time: data.mdb grows and a meta page names it
            s.put_tokens(make_tokens(np.arange(start[0], start[0] + 8192)))
            s.flush()
            start[0] += 8192

        io = CommitAfterEachSize(commit)
        for _ in range(3):
            assert check_data_file(s.path, io) is None
