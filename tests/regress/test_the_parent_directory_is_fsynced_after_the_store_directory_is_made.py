"""``os.makedirs`` made the store directory (and any missing parents) without an fsync of
each parent: the new directory entry was not durable, and a power loss could lose the whole
store while every file inside it had been synced -- the next open then silently created an
empty store. Every directory ngstore makes is now made durable in its parent before
anything is written into it."""
from __future__ import annotations

import os

from walfaults import RecordingIO

import ngstore

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)


def test_each_directory_made_is_fsynced_in_its_parent_before_it_is_used(tmp_path):
    rec = RecordingIO(str(tmp_path))
    path = tmp_path / "x" / "y" / "store"
    with ngstore.open(str(path), io=rec, **OPEN):
        pass
    made = [o.path for o in rec.ops if o.kind == "mkdir"]
    assert made[:3] == [str(tmp_path / "x"), str(tmp_path / "x" / "y"), str(path)]
    for d in made:
        i = next(i for i, o in enumerate(rec.ops) if o.kind == "mkdir" and o.path == d)
        sync = next((j for j, o in enumerate(rec.ops) if j > i and o.kind == "fsync_dir"
                     and o.path == os.path.dirname(d)), None)
        assert sync is not None, f"{d}'s entry in its parent is never made durable"
        first_use = next((j for j, o in enumerate(rec.ops) if j > i and o.path.startswith(d + os.sep)), None)
        assert first_use is None or sync < first_use, f"{d} is written into before its entry is durable"

