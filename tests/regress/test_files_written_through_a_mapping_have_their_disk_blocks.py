"""LMDB's lock file, the black-box ring and the stats page are written through shared
memory maps. They were made by ftruncate, i.e. sparse: on a full disk the first store
into an unbacked page kills the process with SIGBUS instead of failing with ENOSPC. They
now get their disk blocks (posix_fallocate) before they are mapped, so every byte of each
is allocated once a writer has opened the store."""
from __future__ import annotations

import os

import ngstore


def test_the_mapped_files_of_a_writer_are_fully_allocated(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, max_tokens=None, max_bytes=None, map_size=1 << 30, crash_handlers=False):
        for name in ("lock.mdb", "blackbox.ring", "stats.page"):
            st = os.stat(os.path.join(path, name))
            assert st.st_size > 0, name
            assert st.st_blocks * 512 >= st.st_size, f"{name}: {st.st_blocks * 512} of {st.st_size} bytes allocated"
