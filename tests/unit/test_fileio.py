"""The file seam: thin wrappers that do what os does, plus the test doubles built on it."""
from __future__ import annotations

import errno
import os
import pathlib

import pytest
from walfaults import FaultyIO, NoSyncIO, RecordingIO, simulate_power_loss

from ngstore.fileio import DEFAULT_IO, FileIO


def test_pwrite_pread_round_trip_and_file_size(tmp_path):
    io = FileIO()
    fd = io.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    try:
        io.pwrite(fd, b"hello world", 0)
        io.pwritev(fd, [b"AB", memoryview(b"CD"), bytearray(b"EF")], 20)
        assert io.file_size(fd) == 26
        assert io.pread(fd, 5, 6) == b"world"
        assert io.pread(fd, 100, 20) == b"ABCDEF"
        assert io.pread(fd, 11, 0) == b"hello world"
        io.truncate(fd, 5)
        io.fdatasync(fd)
        io.fsync(fd)
        assert io.pread(fd, 100, 0) == b"hello"
    finally:
        io.close(fd)


def test_pwritev_with_more_buffers_than_iov_max_writes_them_all(tmp_path):
    io = FileIO()
    fd = io.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    try:
        bufs = [bytes([i % 256]) * 3 for i in range(5000)]
        io.pwritev(fd, bufs, 0)
        assert io.pread(fd, 15000, 0) == b"".join(bufs)
    finally:
        io.close(fd)


def test_write_appends_at_the_current_offset(tmp_path):
    io = FileIO()
    fd = io.open(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    io.write(fd, b"ab")
    io.write(fd, b"cd")
    io.close(fd)
    assert io.read_file(str(tmp_path / "f")) == b"abcd"


def test_atomic_write_replaces_the_file_and_leaves_no_tmp(tmp_path):
    p = str(tmp_path / "meta")
    DEFAULT_IO.atomic_write(p, b"one")
    DEFAULT_IO.atomic_write(p, b"two")
    assert pathlib.Path(p).read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["meta"]


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path):
    rec = RecordingIO(str(tmp_path))
    rec.atomic_write(str(tmp_path / "meta"), b"x")
    kinds = [op.kind for op in rec.ops]
    assert kinds == ["create", "write", "fsync", "rename", "fsync_dir"]


def test_atomic_write_leaves_the_old_or_the_new_content_after_any_power_loss(tmp_path):
    p = str(tmp_path / "meta")
    DEFAULT_IO.atomic_write(p, b"old content")
    rec = RecordingIO(str(tmp_path))
    rec.atomic_write(p, b"new content")
    states = list(simulate_power_loss(rec))
    assert len(states) >= 3
    for st in states:
        assert st.files.get(p) in (b"old content", b"new content"), st.description


def test_rename_unlink_mkdir_listdir(tmp_path):
    io = FileIO()
    d = str(tmp_path / "d")
    io.mkdir(d)
    io.fsync_dir(d)
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    io.close(io.open(a, os.O_CREAT | os.O_WRONLY))
    io.rename(a, b)
    assert io.listdir(d) == ["b"] and io.exists(b) and not io.exists(a)
    io.unlink(b)
    assert io.listdir(d) == []


def test_os_errors_pass_through_unwrapped(tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        FileIO().open(str(tmp_path / "missing"), os.O_RDONLY)
    assert ei.value.errno == errno.ENOENT


def test_faulty_io_fails_exactly_the_nth_call_of_a_kind(tmp_path):
    io = FaultyIO({"fdatasync": 3})
    fd = io.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    io.fdatasync(fd)
    io.fdatasync(fd)
    with pytest.raises(OSError) as ei:
        io.fdatasync(fd)
    assert ei.value.errno == errno.EIO
    io.fdatasync(fd)
    io.close(fd)
    assert io.counts["fdatasync"] == 4 and io.fired == [("fdatasync", str(tmp_path / "f"))]


def test_faulty_io_counts_only_paths_matching_the_glob(tmp_path):
    io = FaultyIO({"write": 1}, path_glob="*.wal")
    fd = io.open(str(tmp_path / "x.txt"), os.O_RDWR | os.O_CREAT)
    io.pwrite(fd, b"fine", 0)
    io.close(fd)
    fd = io.open(str(tmp_path / "x.wal"), os.O_RDWR | os.O_CREAT)
    with pytest.raises(OSError):
        io.pwritev(fd, [b"no"], 0)
    io.close(fd)


def test_faulty_io_partial_write_leaves_half_the_bytes(tmp_path):
    io = FaultyIO({"write": 1}, partial_write=True)
    p = str(tmp_path / "f")
    fd = io.open(p, os.O_RDWR | os.O_CREAT)
    with pytest.raises(OSError):
        io.pwrite(fd, b"12345678", 0)
    io.close(fd)
    assert pathlib.Path(p).read_bytes() == b"1234"


def test_faulty_io_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        FaultyIO({"fsnyc": 1})


def test_recording_io_records_paths_offsets_and_bytes(tmp_path):
    rec = RecordingIO(str(tmp_path), inner=NoSyncIO())
    p = str(tmp_path / "f")
    fd = rec.open(p, os.O_RDWR | os.O_CREAT)
    rec.pwrite(fd, b"abc", 10)
    rec.fdatasync(fd)
    rec.truncate(fd, 4)
    rec.close(fd)
    rec.mark("done")
    assert [(o.kind, o.path, o.offset, o.data, o.size) for o in rec.ops[:4]] == [
        ("create", p, 0, b"", 0), ("write", p, 10, b"abc", 0), ("fdatasync", p, 0, b"", 0),
        ("truncate", p, 0, b"", 4)]
    assert rec.ops[-1].label == "done"


def test_power_loss_model_keeps_synced_data_and_may_lose_unsynced_data(tmp_path):
    rec = RecordingIO(str(tmp_path))
    p = str(tmp_path / "f")
    fd = rec.open(p, os.O_RDWR | os.O_CREAT)
    rec.fsync_dir(str(tmp_path))
    rec.pwrite(fd, b"durable", 0)
    rec.fdatasync(fd)
    rec.pwrite(fd, b"volatile", 7)
    rec.close(fd)
    states = list(simulate_power_loss(rec))  # deduplicated across cuts
    assert b"durable" in {s.files.get(p) for s in states}
    contents = {s.files[p] for s in states if s.cut >= 4}  # the fdatasync had returned
    assert b"durablevolatile" in contents
    assert all(c.startswith(b"durable") for c in contents)
    assert any(c.startswith(b"durablevo") and c != b"durablevolatile" for c in contents)  # torn


def test_power_loss_model_can_lose_a_file_created_without_a_directory_fsync(tmp_path):
    rec = RecordingIO(str(tmp_path))
    p = str(tmp_path / "f")
    fd = rec.open(p, os.O_RDWR | os.O_CREAT)
    rec.pwrite(fd, b"x", 0)
    rec.fdatasync(fd)
    rec.close(fd)
    states = list(simulate_power_loss(rec, dedupe=False))
    assert any(p not in s.files for s in states if s.cut == len(rec.ops))
    assert any(s.files.get(p) == b"x" for s in states)
