"""The recording and fault-injecting FileIOs of the crash tests map each descriptor to its
path. They forgot a descriptor after closing it, so when another thread opened a file in
between and got the same number, its path was forgotten instead: the recorder's next
fsync of that file raised KeyError inside the store (seen as a writer stopped by
"KeyError(7)" in the durability-order test, whose applier checkpoints while commits open
and close files), and a fault aimed at that file by name no longer fired.

The interleaving is made deterministic here: the inner close opens another file before
it returns, as a thread scheduled at that moment would."""
from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from walfaults import FaultyIO, RecordingIO

from ngstore.fileio import DEFAULT_IO, FileIO


class _OpensDuringClose(FileIO):
    """Closes the descriptor, then runs ``during`` (another thread's open)."""

    def __init__(self) -> None:
        self.during: list[Callable[[], None]] = []

    def close(self, fd: int) -> None:
        DEFAULT_IO.close(fd)
        while self.during:
            self.during.pop()()


def _reuse(io: FileIO, inner: _OpensDuringClose, tmp_path) -> int:
    """Opens "a", closes it while "b" is opened; returns b's descriptor (a's number)."""
    first = io.open(str(tmp_path / "a"), os.O_RDWR | os.O_CREAT)
    reopened: list[int] = []
    inner.during.append(lambda: reopened.append(io.open(str(tmp_path / "b"), os.O_RDWR | os.O_CREAT)))
    io.close(first)
    (second,) = reopened
    assert second == first  # the lowest free number: the one just closed
    return second


def test_the_recorder_keeps_the_path_of_a_reused_descriptor(tmp_path):
    inner = _OpensDuringClose()
    io = RecordingIO(str(tmp_path), inner=inner)
    fd = _reuse(io, inner, tmp_path)
    try:
        io.pwrite(fd, b"x", 0)
        io.fsync(fd)  # raised KeyError: the path of "b" was forgotten by the close of "a"
    finally:
        io.close(fd)
    assert [(op.kind, os.path.basename(op.path)) for op in io.ops if op.kind in ("write", "fsync")] == \
        [("write", "b"), ("fsync", "b")]


def test_a_fault_aimed_at_a_file_by_name_fires_on_a_reused_descriptor(tmp_path):
    inner = _OpensDuringClose()
    io = FaultyIO({"fsync": 1}, path_glob="b", inner=inner)
    fd = _reuse(io, inner, tmp_path)
    try:
        with pytest.raises(OSError, match="injected"):
            io.fsync(fd)  # did not fire: the descriptor's path was forgotten
    finally:
        io.close(fd)
