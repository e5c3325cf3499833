"""Crashes while a store is being created.

A creation writes many files (the state file, LMDB's two files and its first transactions,
the log directory and its first segment, the checkpoint) and only then, last, the marker
that makes the directory a store. Whatever point it dies at, the directory must be either

* still not a store: ``create=False`` refuses it with ``NotAStoreError`` and ``create=True``
  creates the store over what the dead creation left, or
* a whole, empty store that opens and checks clean.

The kill test runs the creation in a child process that SIGKILLs itself just before its
Nth call into the file seam (``FileIO``: every open, write, sync, rename, unlink, mkdir,
LMDB commit and LMDB sync), for every N the creation reaches. The fault test fails the Nth
call of each kind with EIO in-process. The ordering test checks the one order the
power-loss argument rests on: every byte of the store durable before the marker's name is.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import make_tokens
from walfaults import FaultyIO, RecordingIO

import ngstore
from ngstore.errors import NotAStoreError
from ngstore.layout import MARKER_FILE, READERS_LOCK, WRITER_LOCK

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)

CHILD = textwrap.dedent("""
    import os, signal, sys
    import ngstore
    from ngstore.fileio import FileIO

    kill_at = int(sys.argv[2])

    class KillAt(FileIO):
        calls = 0

        def _tick(self):
            KillAt.calls += 1
            if KillAt.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name):
        base = getattr(FileIO, name)
        def method(self, *a, **k):
            self._tick()
            return base(self, *a, **k)
        return method

    for name in ("open", "pwrite", "pwritev", "write", "truncate", "fdatasync", "fsync", "fsync_dir",
                 "rename", "unlink", "mkdir", "lmdb_commit", "lmdb_sync"):
        setattr(KillAt, name, wrap(name))

    s = ngstore.open(sys.argv[1], io=KillAt(), observability=False, crash_handlers=False,
                     max_tokens=None, max_bytes=None, map_size=1 << 28)
    s.close()
    print(KillAt.calls)
""")


def _create(path: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", CHILD, path, str(kill_at)], capture_output=True, text=True,
                          timeout=120, env=env)


def _assert_recoverable(path: str, what: str) -> None:
    """The directory is not a store yet, or a whole empty one; either way create=True makes
    a working store of it."""
    if os.path.exists(os.path.join(path, MARKER_FILE)):
        with ngstore.open(path, create=False, **OPEN) as s:
            assert len(s) == 0, what
            assert s.check().ok, what
    else:
        with pytest.raises(NotAStoreError):
            ngstore.open(path, create=False, **OPEN)
    with ngstore.open(path, create=True, **OPEN) as s:
        assert len(s) == 0, what
        s.put_tokens(make_tokens([1, 2, 3], weight=0.5))
    with ngstore.open(path, create=False, **OPEN) as s:
        assert sorted(int(i) for i in s.snapshot().tokens.column("id")) == [1, 2, 3], what
        report = s.check()
        assert report.ok, f"{what}: {report}"


def test_kill9_at_every_step_of_a_creation(tmp_path):
    probe = _create(str(tmp_path / "probe"), kill_at=0)
    assert probe.returncode == 0, probe.stderr
    total = int(probe.stdout.split()[-1])
    assert total > 10  # the creation really goes through the seam
    # Every step when there are few; otherwise the first and last 24 and an even spread
    # between (bounded CI time: each point is one child process).
    points = list(range(1, total + 1))
    if total > 80:
        middle = np.linspace(25, total - 24, 32).astype(int).tolist()
        points = sorted(set(points[:24] + middle + points[-24:]))
    killed = 0
    for n in points:
        path = str(tmp_path / f"s{n}")
        r = _create(path, kill_at=n)
        assert r.returncode in (-signal.SIGKILL, 0), f"step {n}: rc {r.returncode}\n{r.stderr}"
        killed += r.returncode == -signal.SIGKILL
        _assert_recoverable(path, f"killed before seam call {n} of {total}")
    assert killed >= len(points) - 1  # the last points may fall in close(), after the marker


@pytest.mark.parametrize("kind", ["open", "write", "fsync", "fsync_dir", "rename", "mkdir",
                                  "lmdb_commit", "lmdb_sync"])
def test_a_failed_call_during_creation_leaves_a_directory_that_can_be_created_again(tmp_path, kind):
    probe = FaultyIO()
    with ngstore.open(str(tmp_path / "probe"), io=probe, **OPEN):
        pass
    # The calls of this kind the creation itself makes (close() makes more; failing those
    # is the close tests' business).
    n_calls = probe.counts[kind]
    assert n_calls >= 1, f"creation makes no {kind} call"
    for n in range(1, n_calls + 1):
        path = str(tmp_path / f"{kind}{n}")
        io = FaultyIO({kind: n})
        try:
            s = ngstore.open(path, io=io, **OPEN)
        except (OSError, ngstore.NgStoreError):
            assert io.fired, f"{kind} #{n}: an error without the injected fault"
        else:
            # The fault fell after the store became one (in close()).
            try:
                s.close()
            except (OSError, ngstore.NgStoreError):
                pass
        if not os.path.exists(path):
            continue  # mkdir of the store directory itself failed: nothing was made
        _assert_recoverable(path, f"{kind} #{n} failed")


def test_a_creation_makes_everything_durable_before_the_marker_and_the_marker_durable_last(tmp_path):
    root = tmp_path / "parent"
    root.mkdir()

    class Seen(RecordingIO):  # LMDB's durability points, as marks in the same sequence
        def lmdb_commit(self, txn, kv):  # type: ignore[no-untyped-def]
            super().lmdb_commit(txn, kv)
            self.mark("lmdb_commit")

        def lmdb_sync(self, env, kv):  # type: ignore[no-untyped-def]
            super().lmdb_sync(env, kv)
            self.mark("lmdb_sync")

    rec = Seen(str(tmp_path))
    path = str(root / "a" / "b" / "store")
    with ngstore.open(path, io=rec, **OPEN):
        idx = len(rec.ops)
    ops = rec.ops[:idx]
    marker = os.path.join(os.path.realpath(path), MARKER_FILE)
    renames = [i for i, o in enumerate(ops) if o.kind == "rename" and o.dst == marker]
    assert len(renames) == 1
    m = renames[0]
    # Each directory made is durable in its parent before anything is created in it.
    for i, o in enumerate(ops):
        if o.kind == "mkdir":
            parent = os.path.dirname(o.path)
            syncs = [j for j, p in enumerate(ops) if p.kind == "fsync_dir" and p.path == parent and j > i]
            assert syncs, f"mkdir {o.path} never made durable in {parent}"
            inside = [j for j, p in enumerate(ops) if j > i and p.path.startswith(o.path + os.sep)]
            assert not inside or syncs[0] < inside[0], f"{o.path} used before its name was durable"
    # Everything written before the marker is synced before the marker's rename.
    # (Lock files hold only the live holder's pid: they need not survive a power loss.)
    written = {o.path for o in ops[:m] if o.kind in ("write", "truncate")
               and os.path.basename(o.path) not in (WRITER_LOCK, READERS_LOCK)}
    for p in written:
        last_write = max(i for i, o in enumerate(ops[:m]) if o.path == p and o.kind in ("write", "truncate"))
        assert any(o.kind in ("fsync", "fdatasync") and o.path == p for o in ops[last_write:m]) or \
            any(o.kind == "rename" and o.path == p for o in ops[last_write:m]), f"{p} not synced before the marker"
    # LMDB's last commit before the marker is synced (data.mdb durable) before the marker.
    commits = [i for i, o in enumerate(ops[:m]) if o.kind == "mark" and o.label == "lmdb_commit"]
    assert commits, "the creation commits nothing to LMDB"
    assert any(o.kind == "mark" and o.label == "lmdb_sync" for o in ops[commits[-1]:m]), \
        "LMDB's last commit is not synced before the marker"
    # The store directory's entries (LMDB's files, the log directory, the checkpoint) and the
    # marker's name itself are made durable by an fsync of the store directory after it.
    store_dir = os.path.realpath(path)
    assert any(o.kind == "fsync_dir" and o.path == store_dir for o in ops[m + 1:]), "marker name not durable"
