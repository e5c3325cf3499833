"""Regression: the last piece of a backup can hold a segment header and no record (the
writer had just created the segment). The next incremental backup looked for that piece's
"last record" in it, found none, and took the log for rewritten: a full backup every time."""
from __future__ import annotations

import os

import pytest
from backupmodel import commit, state_after

import ngstore
from ngstore import backup as ngbackup
from ngstore import waltools

pytest.importorskip("fsspec")


def test_an_incremental_backup_continues_after_a_piece_holding_only_a_segment_header(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "b")
    with ngstore.open(src) as s:
        for i in range(1, 6):
            commit(s, i)
    with ngstore.open(src) as s:  # closing rotated: the log is one segment header, no record
        ((first, path),) = waltools.list_segments(os.path.join(src, "wal"))
        with open(path, "rb") as f:
            scanned = waltools.scan_segment(f.read(), first)
        assert not isinstance(scanned, str) and scanned.frames == [] and scanned.end == 40
        full = ngbackup.backup(s, dest)
        m = ngbackup.read_manifest(dest)
        assert m is not None and m["pieces"][-1]["last_offset"] == -1 and full.end_position == 5
        for i in range(6, 11):
            commit(s, i)
        inc = ngbackup.backup(s, dest, incremental=True)
    assert (inc.kind, inc.reason, inc.end_position) == ("incremental", "", 10)
    target = str(tmp_path / "r")
    assert ngbackup.restore(dest, target).check_ok
    with ngstore.open(target, readonly=True) as r, r.snapshot() as snap:
        assert snap.tokens.to_array().tobytes() == state_after(10).tobytes()
