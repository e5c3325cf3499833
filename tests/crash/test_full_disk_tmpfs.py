"""A real full disk: a store on a small tmpfs (8 MiB), filled until the file system says
ENOSPC. Needs to mount a tmpfs (root, and a kernel and container that allow it); skipped
cleanly otherwise.

What must hold: the commit that finds the disk full (or the first one after the applier
found it) raises ``DiskFullError`` -- never ``NgStoreError(... Input/output error)`` nor a
raw ``OSError`` -- naming a file on the full file system; every later write too; an open and
a close on the full disk fail with ``DiskFullError`` and leave the store openable; once
space is freed every acknowledged batch is there, whole, and the store takes writes again.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.errors import DiskFullError, ReadOnlyFileSystemError, StoreState

#: Default options (observability included: its mapped files live on the full disk too),
#: without quotas, and a map that does not need growing.
OPEN = dict(max_tokens=None, max_bytes=None, map_size=1 << 30)


@pytest.fixture
def small_tmpfs(tmp_path):
    """An 8 MiB tmpfs mounted under ``tmp_path``; ``remount(size)`` frees space by growing it."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: str, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", mnt], check=True, capture_output=True)


def _fill(mnt: str) -> str:
    """Writes a filler file until the file system is full; returns its path."""
    path = os.path.join(mnt, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in (1 << 16, 4096, 512):
            block = bytes(chunk)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def _batch(i: int) -> np.ndarray:
    return make_tokens(np.arange(1000, dtype=np.uint32) + 1000 * i, weight=np.float32(i % 7 + 1))


def _assert_disk_full(exc: BaseException, mnt: str, state: StoreState) -> None:
    assert isinstance(exc, DiskFullError), f"not a DiskFullError: {exc!r}"
    assert exc.errno == errno.ENOSPC and exc.state is state, f"{exc.state}: {exc}"
    assert exc.filename is not None and exc.filename.startswith(mnt + os.sep), exc.filename
    assert "free space on the file system" in str(exc), str(exc)


def _assert_holds(path: str, acked: list[int], maybe: int | None = None) -> None:
    with ngstore.open(path, **OPEN) as r:
        report = r.check()
        assert report.ok, str(report)
        for i in acked:
            got = r.get_tokens(_batch(i)["id"], missing="skip")
            assert np.array_equal(got.data, _batch(i)), f"acknowledged batch {i} lost or changed"
        if maybe is not None:
            present = [int(t) in r for t in _batch(maybe)["id"]]
            assert all(present) or not any(present), f"batch {maybe} partly there"
        r.put_tokens(make_tokens([5_000_000]), durability="sync")  # takes writes again


def test_a_store_filled_until_the_disk_is_full_raises_disk_full_error_and_loses_nothing(small_tmpfs):
    mnt = small_tmpfs
    path = os.path.join(mnt, "s")
    s = ngstore.open(path, **OPEN)
    acked: list[int] = []
    failed: BaseException | None = None
    for i in range(1000):  # 64 KiB a batch: an 8 MiB disk is full long before
        try:
            s.put_tokens(_batch(i), durability="sync")
        except Exception as exc:
            failed = exc
            break
        acked.append(i)
    assert failed is not None and len(acked) >= 10, f"{len(acked)} batches, then {failed!r}"
    _assert_disk_full(failed, mnt, StoreState.STOPPED)
    with pytest.raises(DiskFullError) as refused:
        s.put_tokens(_batch(len(acked) + 1), durability="sync")
    _assert_disk_full(refused.value, mnt, StoreState.STOPPED)
    assert refused.value.outcome_known is True
    s.close()  # a stopped writer closes without a checkpoint: nothing to write

    with pytest.raises(DiskFullError) as on_open:  # the disk is still full
        ngstore.open(path, **OPEN)
    _assert_disk_full(on_open.value, mnt, StoreState.NOT_OPENED)
    with pytest.raises(DiskFullError) as on_create:
        ngstore.open(os.path.join(mnt, "new"), **OPEN)
    _assert_disk_full(on_create.value, mnt, StoreState.NOT_CREATED)

    _remount(mnt, "64m")  # space is freed
    _assert_holds(path, acked, maybe=len(acked))
    with ngstore.open(os.path.join(mnt, "new"), **OPEN) as new:  # the failed creation is created again
        new.put_tokens(_batch(0), durability="sync")
    _assert_holds(os.path.join(mnt, "new"), [0])


def test_a_close_and_an_open_on_a_full_disk_fail_cleanly_and_the_store_opens_once_space_is_freed(small_tmpfs):
    mnt = small_tmpfs
    path = os.path.join(mnt, "s")
    s = ngstore.open(path, **OPEN)
    acked = []
    for i in range(8):
        s.put_tokens(_batch(i), durability=("sync", "async", "none")[i % 3])
        acked.append(i)
    s.flush()
    filler = _fill(mnt)
    with pytest.raises(DiskFullError) as on_close:
        s.close()
    _assert_disk_full(on_close.value, mnt, StoreState.CLOSED)
    assert "nothing acknowledged is lost" in str(on_close.value)
    assert repr(s).endswith("closed>")

    with pytest.raises(DiskFullError) as on_open:
        ngstore.open(path, **OPEN)
    _assert_disk_full(on_open.value, mnt, StoreState.NOT_OPENED)

    os.unlink(filler)  # space is freed
    _assert_holds(path, acked)


def test_a_writer_on_a_read_only_file_system_is_refused_by_name_and_a_reader_still_opens(small_tmpfs):
    mnt = small_tmpfs
    path = os.path.join(mnt, "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(_batch(0), durability="sync")
    _remount(mnt, "8m,ro")
    with pytest.raises(ReadOnlyFileSystemError) as refused:
        ngstore.open(path, **OPEN)
    exc = refused.value
    assert exc.errno == errno.EROFS and exc.state is StoreState.NOT_OPENED
    assert exc.filename is not None and exc.filename.startswith(path + os.sep)
    assert "remount the file system" in str(exc) and "readonly=True" in str(exc)
    with ngstore.open(path, readonly=True) as r:
        assert np.array_equal(r.get_tokens(_batch(0)["id"]).data, _batch(0))
    _remount(mnt, "8m,rw")
    _assert_holds(path, [0])
