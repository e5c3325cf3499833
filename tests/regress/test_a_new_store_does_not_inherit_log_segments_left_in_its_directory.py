"""Creating a store over a directory without a marker removed LMDB's files, the state and
the checkpoint, but kept any log segments under ``wal/``: the new store's log then started
after them, and the next open refused the store ("the log starts at position 2 but only
positions through 0 were applied"). A creation now empties ``wal/`` with the rest."""
from __future__ import annotations

import os
import shutil

from conftest import make_tokens

import ngstore
from ngstore.layout import WAL_DIR

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)


def test_segments_left_without_a_marker_are_not_part_of_the_new_store(tmp_path):
    old = str(tmp_path / "old")
    with ngstore.open(old, **OPEN) as s:
        s.put_tokens(make_tokens(range(10)), durability="sync")
    new = tmp_path / "new"
    shutil.copytree(os.path.join(old, WAL_DIR), new / WAL_DIR)  # a log, and no marker
    with ngstore.open(str(new), create=True, **OPEN) as s:
        assert len(s) == 0
        s.put_tokens(make_tokens([42]), durability="sync")
    with ngstore.open(str(new), create=False, **OPEN) as s:
        assert [int(i) for i in s.snapshot().tokens.column("id")] == [42]
        assert s.check().ok
