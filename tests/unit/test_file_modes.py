"""A store is private by default, shared only as far as its ``mode`` says (issue 16).

Files 0600 and directories 0700 unless the application passes ``mode=``; LMDB's lock file,
which every reader writes, gets write wherever read is granted. The bits are exact whatever
the process umask. A second user reads the store where the mode lets it (checked in a child
that drops to ``nobody`` when the tests run as root) and is refused where it does not."""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable

import numpy as np
import pytest
from conftest import make_tokens

import ngstore


def _modes(path: str) -> dict[str, int]:
    """Permission bits of the store directory and everything in it, by relative name."""
    out = {".": stat.S_IMODE(os.stat(path).st_mode)}
    for dp, dns, fns in os.walk(path):
        for n in dns + fns:
            p = os.path.join(dp, n)
            out[os.path.relpath(p, path)] = stat.S_IMODE(os.stat(p).st_mode)
    return out


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _fill(path: str, **kw) -> None:
    with ngstore.open(path, **kw) as s:
        s.put_tokens(make_tokens(np.arange(100)))
        s.write_events({"event_type": 1})
        s.checkpoint()
        s.obs.dump("test")  # a black-box dump file too


def _expected(rel: str, mode: int) -> int:
    if rel in (".", "wal"):  # search where read is granted; new files take a shared group
        return mode | ((mode & 0o444) >> 2) | (stat.S_ISGID if mode & 0o060 else 0)
    if rel == "lock.mdb":
        return mode | ((mode & 0o444) >> 1)
    return mode


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
def test_a_new_store_is_private_whatever_the_umask(tmp_path, umask):
    path = str(tmp_path / "store")
    with _umask(umask):
        _fill(path)
    modes = _modes(path)
    assert {"data.mdb", "lock.mdb", "wal", "state", "checkpoint", "blackbox.ring", "stats.page",
            "readers.lock", "writer.lock", "NGSTORE"} <= set(modes)
    assert any(n.startswith("blackbox-") for n in modes) and any(n.startswith("wal/") for n in modes)
    assert {n: m for n, m in modes.items() if m != _expected(n, 0o600)} == {}
    assert modes["."] == 0o700 and modes["data.mdb"] == 0o600


def test_a_store_made_in_an_existing_empty_directory_makes_it_private(tmp_path):
    path = tmp_path / "store"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    _fill(str(path))
    assert _modes(str(path))["."] == 0o700


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_mode_0640_shares_read_with_the_group_and_lets_readers_write_the_lock_file(tmp_path, umask):
    path = str(tmp_path / "store")
    with _umask(umask):
        _fill(path, mode=0o640)
    modes = _modes(path)
    assert {n: m for n, m in modes.items() if m != _expected(n, 0o640)} == {}
    assert modes["."] == 0o2750 and modes["wal"] == 0o2750 and modes["lock.mdb"] == 0o660


def test_a_reopen_without_mode_keeps_the_stores_own(tmp_path):
    path = str(tmp_path / "store")
    _fill(path, mode=0o640)
    _fill(path)  # new segments, a new state file, new dumps: all 0o640
    modes = _modes(path)
    assert {n: m for n, m in modes.items() if m != _expected(n, 0o640)} == {}


def test_a_writer_that_asks_for_another_mode_changes_every_file(tmp_path):
    path = str(tmp_path / "store")
    _fill(path)
    _fill(path, mode=0o660)
    assert {n: m for n, m in _modes(path).items() if m != _expected(n, 0o660)} == {}
    _fill(path, mode=0o600)
    assert {n: m for n, m in _modes(path).items() if m != _expected(n, 0o600)} == {}


def test_a_reader_that_asks_for_a_mode_changes_nothing(tmp_path):
    path = str(tmp_path / "store")
    _fill(path)
    with ngstore.open(path, readonly=True, mode=0o640) as r:
        assert r.count() == 100
    assert {n: m for n, m in _modes(path).items() if m != _expected(n, 0o600)} == {}


@pytest.mark.parametrize("mode", [0o400, 0o200, 0o700, 0o644 | 0o1000, 0o7777, -1, True, "0640", 1.0])
def test_a_mode_that_is_not_file_permission_bits_with_owner_read_write_is_refused(tmp_path, mode):
    with pytest.raises(ngstore.InvalidArgumentError, match="mode"):
        ngstore.open(str(tmp_path / "store"), mode=mode)
    assert not os.path.exists(tmp_path / "store")


# -- a second user ---------------------------------------------------------------------------

NOBODY = 65534


def _as_user_later(uid: int, gid: int, fn) -> Callable[[], int]:
    """Forks now a child that, once the returned function is called, runs ``fn`` as
    ``uid``/``gid`` (no other groups); that function returns its exit code: 0 if ``fn``
    returned, 13 on PermissionError or a NotAStoreError caused by one, 1 else. Forking
    before the caller opens the store matters: a child cannot use, nor open again, a store
    that was open in its parent at the fork."""
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(go_w)
            if os.read(go_r, 1) == b"x":  # else the parent gave up on us
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                try:
                    fn()
                    code = 0
                except PermissionError:
                    code = 13
                except ngstore.NgStoreError as exc:
                    cause = exc.__cause__ or exc.__context__
                    code = 13 if isinstance(cause, PermissionError) or "ermission denied" in str(exc) else 1
        finally:
            os._exit(code)
    os.close(go_r)

    def start() -> int:
        os.write(go_w, b"x")
        os.close(go_w)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    return start


def _as_user(uid: int, gid: int, fn) -> int:
    """``fn`` run at once in a child as ``uid``/``gid`` (``_as_user_later``): its exit code."""
    return _as_user_later(uid, gid, fn)()


@pytest.fixture
def shared_dir():
    """A directory another user can reach (pytest's tmp_path is under a 0700 directory)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    d = tempfile.mkdtemp(prefix="ngstore-modes-")
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _read_100(path: str) -> None:
    with ngstore.open(path, readonly=True, observability=False) as r:
        assert r.count() == 100
        assert r.get_tokens(np.arange(100)).ids.tolist() == list(range(100))


@pytest.mark.parametrize("mode, same_group_reads, others_read", [
    (None, False, False), (0o640, True, False), (0o644, True, True)])
def test_another_user_reads_where_the_mode_allows_and_is_refused_elsewhere(shared_dir, mode, same_group_reads,
                                                                        others_read):
    path = os.path.join(shared_dir, "store")
    gid = 4242  # the store's group: a group nobody belongs to unless the child takes it
    # forked before the writer opens: readers of the group, and of no group
    group_reader = _as_user_later(NOBODY, gid, lambda: _read_100(path))
    other_reader = _as_user_later(NOBODY, NOBODY, lambda: _read_100(path))
    with ngstore.open(path, mode=mode) as s:
        s.put_tokens(make_tokens(np.arange(100)))
        s.checkpoint()
        for dp, dns, fns in os.walk(path):
            for n in [".", *dns, *fns]:
                os.chown(os.path.join(dp, n), -1, gid)
        # while the writer holds the store: a reader of the group, and one of no group
        assert group_reader() == (0 if same_group_reads else 13)
        assert other_reader() == (0 if others_read else 13)
    assert _as_user(NOBODY, gid, lambda: _read_100(path)) == (0 if same_group_reads else 13)


def test_another_user_can_never_write_even_where_it_may_read(shared_dir):
    path = os.path.join(shared_dir, "store")
    with ngstore.open(path, mode=0o640) as s:
        s.put_tokens(make_tokens(np.arange(100)))
    for dp, dns, fns in os.walk(path):
        for n in [".", *dns, *fns]:
            os.chown(os.path.join(dp, n), -1, 4242)

    def write() -> None:
        with ngstore.open(path, observability=False) as w:
            w.put_tokens(make_tokens([1000]))

    assert _as_user(NOBODY, 4242, write) == 13
    with ngstore.open(path, readonly=True) as r:
        assert r.count() == 100
