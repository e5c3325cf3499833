"""The log's native writes: a small record framed in C and stored through a shared mapping
of the active segment, or written with ``pwritev`` (``wal.Log.append_one``).

Why a mapping: a one-token commit's record is about 140 bytes, and its ``pwrite`` costs a
system call (about 1 µs on the machines we measure, a fifth of such a commit); storing it
into the mapped file is a memory copy into the same page cache. What is stored is where a
write would have put it: a process crash keeps it, and the file's fdatasync makes it durable
(on Linux, the one page cache writes back pages dirtied through a mapping when the file is
synced). The frame's bytes are those ``wal`` writes (``docs/format.md §6``); the CRC is
stored last, so a record interrupted by a crash is a torn tail, never a valid frame.

The mapping is only stored into where the log itself wrote the zero runway: a file's zeros
past its records may be a hole, and filling a hole through a mapping on a full disk is a
SIGBUS, not an error. The log drops the mapping, under its lock, before the segment is
truncated, sealed or closed.
"""
from __future__ import annotations

import os
from typing import Any

from ._native import ffi, lib, put_frame_fast
from .fileio import FileIO

#: ``put_frame(base, limit, offset, payload, salt, position, synced, type)``: the frame of
#: the bytes ``payload`` stored at ``offset`` of the mapping at ``base`` (``SegmentMap.base``):
#: 0, or NG_ERANGE with nothing stored when the frame would pass ``limit``. It is
#: ``ng_wal_put_frame`` called through the CPython API (``csrc/cpython/fastpath.c``): through
#: cffi, converting its nine integer arguments cost ~400 ns, most of the call.
put_frame = put_frame_fast
_write_frame = lib.ng_wal_write_frame
_ZERO_BLOCK = 64 << 10
#: The most zero runway :func:`write_frame` writes in one call (62 iovec entries of 64 KiB).
MAX_ZEROS = 62 * _ZERO_BLOCK


class SegmentMap:
    """``fd``'s file mapped shared, read-write, for ``length`` bytes from offset 0 (past
    the file's end is allowed: never touched). ``length`` is 0 when the file could not be
    mapped (a file system without shared writable mappings): the segment's records are
    then written, a mapping being only a faster write."""

    __slots__ = ("address", "base", "fd", "length")

    def __init__(self, fd: int, length: int) -> None:
        self.fd = fd
        self.address: Any = lib.ng_wal_map(fd, length)
        self.length = length if self.address != ffi.NULL else 0
        #: the mapping's address as an int (what :data:`put_frame` takes); 0 when unmapped
        self.base = int(ffi.cast("uintptr_t", self.address))

    def close(self) -> None:
        """Unmaps (idempotent)."""
        length, self.length = self.length, 0
        if length:
            lib.ng_wal_unmap(self.address, length)


def own_runway(io: FileIO, fd: int | None, start: int, zeroed_until: int, most: int) -> int:
    """At open, for an active segment an earlier process wrote: writes its zero runway
    ``start .. zeroed_until`` (at most ``most`` bytes of it) again, so that the mapping may
    be stored into from the first record on, and returns where that runway ends (0: not
    written, or nothing to write). Those bytes are zeros already, but not ones this log
    wrote: a copy of the directory may have made them holes. A failed write is not an
    error here: the runway stays unmapped, and appends write (and meet the error).
    Without it, ~8,000 one-token commits after each open took the written path."""
    end = min(zeroed_until, start + most)
    if fd is None or end <= start:  # no runway: the first append writes one, and maps it
        return 0
    try:
        io.pwritev(fd, [bytes(end - start)], start)
    except OSError:
        return 0
    return end


def write_frame(fd: int, offset: int, payload: bytes, salt: int, position: int, synced: int, typ: int,
                zeros: int) -> None:
    """Writes the frame of ``payload`` and ``zeros`` (≤ :data:`MAX_ZEROS`) zero bytes after
    it at ``offset`` of ``fd``: one ``pwritev``, continued after a short write. Raises the
    OSError of a failed write (any prefix of the bytes may be on the file then)."""
    rc = _write_frame(fd, offset, payload, len(payload), salt, position, synced, typ, zeros)
    if rc:
        raise OSError(-rc, os.strerror(-rc))
