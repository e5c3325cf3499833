"""A closed writer's LMDB environment could stay in the process-wide registry while
objects of the old store still held it (the writer's reflex version is collected with the
writer). When the directory was removed and another store put at the same path, the next
open was handed that old environment -- a map of a deleted data.mdb: its first checkpoint
found "no meta page carries transaction N" (the corruption campaign's base stores hit it).
An environment is now reused only for the same data.mdb file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TESTS, "fuzz"))

import stores  # noqa: E402

import ngstore  # noqa: E402

OPTIONS = {**stores.OPTIONS, "crash_handlers": False}


def _crashed(path: str) -> None:
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.join(TESTS, "fuzz")!r})
        import ngstore, stores
        s = ngstore.open({path!r}, **{{**stores.OPTIONS, "crash_handlers": False, "segment_bytes": 4096}})
        stores.fill(s)
        s.put_tokens(stores.tokens(range(40, 60)))
        os._exit(0)
        """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_store_copied_to_a_removed_stores_path_opens_with_its_own_environment(tmp_path):
    crashed, path = str(tmp_path / "crashed"), str(tmp_path / "s")
    _crashed(crashed)
    with ngstore.open(path, **OPTIONS) as s:  # another store at `path` first, then removed
        stores.fill(s)
    with ngstore.open(path, **OPTIONS) as s, s.snapshot() as snap:
        held = snap.tokens.to_array()  # what a caller keeps of the old store
    shutil.rmtree(path)
    shutil.copytree(crashed, path)
    with ngstore.open(path, **OPTIONS) as s, s.snapshot() as snap:
        assert len(snap.tokens.to_array()) == 40
        assert s.check().ok
    assert len(held) == 20
