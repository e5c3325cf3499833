"""A writer that died without closing was taken for a mere process crash whenever a boot id
could not be read (``/proc`` not mounted, a container hiding it): ``None != id`` was never
asked, so LMDB's newest state was trusted although the machine may have gone down and lost
its page cache. An unknown boot id, then or now, is now the worst case: LMDB is rolled back
to the checkpoint and the log replayed (correct after a process crash too, only slower), and
a read-only handle refuses such a store until a writer has recovered it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from walfaults import AnotherBoot

import ngstore
from ngstore.directory import Directory
from ngstore.fileio import DEFAULT_IO
from ngstore.layout import WriterState

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)

WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import ngstore
    from ngstore.records import TOKEN_DTYPE
    from walfaults import AnotherBoot
    boot = None if sys.argv[2] == "unknown" else sys.argv[2]
    s = ngstore.open(sys.argv[1], io=AnotherBoot(boot), observability=False, crash_handlers=False,
                     max_tokens=None, max_bytes=None, map_size=1 << 28)
    for i in range(5):
        a = np.zeros(3, dtype=TOKEN_DTYPE)
        a["id"] = np.arange(3) + 10 * i
        a["weight"] = i
        s.put_tokens(a, durability="sync")
    os._exit(0)  # dies holding the store: no close
""")


def _die_writing(path: str, boot: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", WRITER, path, boot], check=True, env=env, timeout=120)


@pytest.mark.parametrize("then, now", [("unknown", "this-boot"), ("this-boot", None), ("unknown", None)])
def test_a_writer_that_died_with_an_unknown_boot_is_recovered_by_rollback(tmp_path, then, now):
    path = str(tmp_path / "s")
    _die_writing(path, then)
    state = Directory(path, DEFAULT_IO).read_state()
    assert state == WriterState(clean=False, boot_id=None if then == "unknown" else then, pid=state.pid)
    with ngstore.open(path, io=AnotherBoot(now), **OPEN) as s:
        assert s.recovery.power_loss_rollback
        assert len(s) == 15
        assert s.check().ok


def test_a_known_unchanged_boot_is_still_a_process_crash(tmp_path):
    path = str(tmp_path / "s")
    _die_writing(path, "this-boot")
    with ngstore.open(path, io=AnotherBoot("this-boot"), **OPEN) as s:
        assert not s.recovery.power_loss_rollback
        assert len(s) == 15


def test_a_reader_refuses_a_store_a_writer_left_with_an_unknown_boot(tmp_path):
    path = str(tmp_path / "s")
    _die_writing(path, "unknown")
    with pytest.raises(ngstore.NgStoreError, match="needs recovery"):
        ngstore.open(path, readonly=True, io=AnotherBoot("this-boot"), **OPEN)
    with ngstore.open(path, io=AnotherBoot("this-boot"), **OPEN) as w:
        assert len(w) == 15
    with ngstore.open(path, readonly=True, io=AnotherBoot("this-boot"), **OPEN) as r:
        assert len(r) == 15
