"""The write-ahead log: segment files of CRC-framed records with consecutive positions.

The format, byte by byte, is ``docs/format.md §6``; this module holds its constants and is
the only code that reads or writes those bytes -- but for a small record's frame, which
:meth:`Log.append_one` has ``csrc/wal.c`` build and write in one call (the same bytes).

What the log is for
-------------------
The store writes each batch as ONE record (``append``), makes it durable (``sync``), applies
it to LMDB and stores the record's *position* in the same LMDB transaction. After a crash,
``Log.open`` repairs the log and ``iter_records(applied)`` replays what LMDB lacks. A
checkpoint makes LMDB durable and calls ``drop_through(applied)``.

Format in one paragraph
-----------------------
``wal/%016x.wal`` files, named by the position of their first record. Each starts with a
40-byte header (magic, version, a random 64-bit *salt* chosen when the file is created, the
first position, a CRC), followed by frames back to back: a 40-byte frame header (CRC32 of
everything after the CRC field through the end of the payload, stored length, the segment's
salt, the position, the *synced* watermark, type, flags, raw length) and the payload,
optionally one zstd frame. Positions are strictly consecutive across segments. Zeros from a
frame boundary to the end of a file are a clean end (the writer pre-zeroes a runway).

Recovery in one paragraph
-------------------------
Scan every frame in order. At the first thing that is neither a valid frame nor a clean end
(a *bad point* at position p), look for evidence that p had been durably written: a later
segment with a valid header (the writer syncs a segment before creating the next), or a
CRC-valid frame after it whose ``synced`` field is ≥ p (an fdatasync covering p returned
before that frame was written). No evidence: a **torn tail**; truncate there (ftruncate +
fdatasync, so a discarded frame can never come back) and delete later files. Evidence:
**corruption**; ``"strict"`` and ``"tolerate-tail"`` raise ``CorruptionError`` with file,
offset and reason, ``"salvage"`` resynchronises on the next valid frame (found by searching
for the segment's salt bytes, then checking the CRC) and reports the lost positions.
``"strict"`` also raises on a torn tail.

The alternatives measured and rejected (LevelDB's blocks, SQLite's end-of-log rule, recycled
or preallocated segments, compression by default, mmap for reading) are in
``docs/design.md §7``.

Threads
-------
``append`` (and the rotation it may do) is called by one thread at a time: the group-commit
leader. ``sync`` may run concurrently with ``append`` (the async flusher): it fdatasyncs the
active segment under ``_sync_lock``, which rotation also takes, so the descriptor it syncs
is never closed under it. ``drop_through`` may run from a checkpoint thread concurrently
with both. ``iter_records`` sees the records appended before it was called.

After an I/O error (fsyncgate)
------------------------------
A failed write, fdatasync, truncate or segment creation raises the ``OSError`` as the
named ``errors.StorageError`` of its errno (``DiskFullError`` for ``ENOSPC``, with the
segment's path, in state "stopped") and makes the log refuse every later ``append``/``sync``
(``errors.refusal``: an error of the same leaf saying the store stopped after it). After a failed
fdatasync the kernel may have dropped the dirty pages and marked them clean, so a retried
fsync "succeeding" proves nothing; after a failed write the file may hold a partial frame
at an offset later appends would skip over. The only sound continuation is to close and
reopen, which recovers from what is really on disk. ``drop_through`` failures do not poison
the log: an unlink either happened or not, and both states are valid.

An interrupt (``KeyboardInterrupt`` raised by a signal handler, which Python runs between
bytecodes of the main thread) is not a failure: a write or fdatasync call is atomic against
it, and the log's end moves in statements without a call between them. So an interrupt
leaves the log as it was before the append or after it. Before it, the frame may lie
whole past the end, where recovery would find it: the writer then calls ``adopt_next``,
which takes it as appended (a partial frame stays past the end: the next append writes
over it, and recovery would find a torn tail).
"""
from __future__ import annotations

import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._native import crc32
from .errors import (
    CorruptionError,
    FormatVersionError,
    InvalidArgumentError,
    NgStoreError,
    StoreClosedError,
    StoreState,
    refusal,
    storage_error,
)
from .fileio import DEFAULT_IO, PRIVATE_MODE, FileIO, dir_mode
from .walmap import MAX_ZEROS, SegmentMap, own_runway, put_frame, write_frame

_zstd: Any
try:  # zstandard is a declared dependency; the log still reads uncompressed logs without it
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None

Buffer = bytes | bytearray | memoryview

# --------------------------------------------------------------------------- constants --
SEGMENT_MAGIC = b"NGWAL\r\n\x1a"
FORMAT_VERSION = 1
#: magic, version u32, reserved u32, salt u64, first position u64, reserved u32, CRC u32
SEGMENT_HEADER = struct.Struct("<8sIIQQII")
SEGMENT_HEADER_SIZE = 40
#: crc u32, length u32, salt u64, position u64, synced u64, type u8, flags u8, reserved u16, raw length u32
FRAME_HEADER = struct.Struct("<IIQQQBBHI")
#: An unpacked frame header: crc, length, salt, position, synced, type, flags, reserved, raw length.
FrameHeader = tuple[int, int, int, int, int, int, int, int, int]
FRAME_HEADER_SIZE = 40
_FRAME_TAIL = struct.Struct("<IQQQBBHI")  # the frame header without its CRC (bytes 4..40)
_U32 = struct.Struct("<I")
assert SEGMENT_HEADER.size == SEGMENT_HEADER_SIZE and FRAME_HEADER.size == FRAME_HEADER_SIZE

MAX_RECORD_BYTES = 1 << 30
FLAG_ZSTD = 0x01
_KNOWN_FLAGS = FLAG_ZSTD

BATCH = 1
RECORD_BATCH = BATCH  # the name the store uses
KNOWN_TYPES = frozenset({BATCH})

SEGMENT_SUFFIX = ".wal"
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})\.wal$")
DEFAULT_SEGMENT_BYTES = 64 << 20
PREALLOCATE_BYTES = 1 << 20
#: Payloads at least this large are zstd-compressed when ``compress=True`` and it saves ≥ 1/8.
COMPRESS_MIN_BYTES = 4096
RECOVERY_MODES = ("strict", "tolerate-tail", "salvage")

_READ_BLOCK = 16 << 20
#: At most this many bytes of segments the open's scan read are kept for the replay that
#: follows (``Log.open``'s ``start_after``): those records are replayed from the bytes the
#: scan checked, not read and checked a second time. Past it, replay reads from the file.
REPLAY_KEEP_BYTES = 128 << 20
_JOIN_BELOW = 64 << 10  # payloads smaller than this are copied into one buffer with their header


def _frame_head(stored: Buffer, salt: int, position: int, synced: int, typ: int, flags: int, raw: int) -> bytes:
    """The 40-byte frame header of a record whose stored payload is ``stored`` (``raw``
    bytes before compression): the CRC-32 of the header's tail and the payload, then the tail."""
    tail = _FRAME_TAIL.pack(len(stored), salt, position, synced, typ, flags, 0, raw)
    return _U32.pack(crc32(stored, zlib.crc32(tail))) + tail


def new_salt() -> int:
    """A fresh non-zero segment salt (module-level so a test can make runs reproducible)."""
    return secrets.randbits(64) or 1


def segment_name(first_position: int) -> str:
    return f"{first_position:016x}{SEGMENT_SUFFIX}"


# ------------------------------------------------------------------------------ reports --
@dataclass(frozen=True, slots=True)
class Record:
    """One log record. ``payload`` is a ``bytes`` copy (decompressed), owned by the caller;
    or, from ``iter_records(copy=False)``, a read-only memoryview where the payload was not
    compressed (it keeps the bytes it views alive)."""
    position: int
    type: int
    payload: bytes | memoryview
    path: str
    offset: int
    size: int  # bytes of the frame on disk (header + stored payload)


@dataclass(frozen=True, slots=True)
class RecordSummary:
    position: int
    type: int
    size: int        # frame bytes on disk
    raw_size: int    # payload bytes after decompression
    file: str
    offset: int
    compressed: bool


@dataclass(frozen=True, slots=True)
class Problem:
    """One irregularity. ``kind``: ``"corruption"``, ``"torn-tail"``, ``"missing-records"``
    or ``"foreign-file"``. ``end`` is the end of a skipped byte range (salvage);
    ``lost`` the inclusive range of positions that are gone, when known."""
    kind: str
    path: str
    offset: int | None
    reason: str
    end: int | None = None
    lost: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class TornTail:
    path: str                      # the file truncated (or deleted, when offset is 0)
    offset: int                    # where the log now ends in it
    bytes_dropped: int             # including deleted later files
    reason: str                    # what was wrong at ``offset``
    discarded_records: int         # CRC-valid frames after the tear with no proof of sync
    removed_files: tuple[str, ...]


@dataclass(slots=True)
class RecoveryReport:
    mode: str
    records: int = 0                   # valid records in the log after recovery
    first_position: int = 1            # position the log's oldest segment starts at
    last_position: int = 0
    segments: int = 0
    torn_tail: TornTail | None = None
    skipped: list[Problem] = field(default_factory=list)   # salvage: corruption skipped
    foreign_files: list[str] = field(default_factory=list)
    restarted_at: int | None = None    # log was behind start_after: new segment at this position

    @property
    def clean(self) -> bool:
        return self.torn_tail is None and not self.skipped

    def __str__(self) -> str:
        lines = [f"{self.records} record(s) kept, positions {self.first_position}..{self.last_position} "
                 f"in {self.segments} segment(s) (mode {self.mode})"]
        t = self.torn_tail
        if t is not None:
            lines.append(f"torn tail dropped: {t.bytes_dropped} bytes from {t.path} at offset {t.offset} "
                         f"({t.reason}; {t.discarded_records} unsynced record(s))")
        for p in self.skipped:
            lines.append(f"skipped {p.kind}: {p.path} at {p.offset}..{p.end}: {p.reason}"
                         + (f" (positions {p.lost[0]}..{p.lost[1]} lost)" if p.lost else ""))
        for f in self.foreign_files:
            lines.append(f"foreign file ignored: {f}")
        return "\n".join(lines)


@dataclass(slots=True)
class VerifyReport:
    sound: bool                        # no corruption (a torn tail is repairable, not unsound)
    problems: list[Problem]
    records: int
    first_position: int
    last_position: int
    segments: int
    bytes: int

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def ok(self) -> bool:
        """Alias of ``sound`` (the name the store's check report uses)."""
        return self.sound

    def __str__(self) -> str:
        lines = [f"log: {'SOUND' if self.sound else 'UNSOUND'}; {self.records} record(s), positions "
                 f"{self.first_position}..{self.last_position}, {self.segments} segment(s), {self.bytes} bytes"]
        lines += [f"  {p.kind}: {p.path} at offset {p.offset}: {p.reason}"
                  + (f" (positions {p.lost[0]}..{p.lost[1]} lost)" if p.lost else "") for p in self.problems]
        return "\n".join(lines)


# ----------------------------------------------------------------------- parsing helpers --
def _zero_tail(data: bytes) -> int:
    """Where the run of zero bytes that ends ``data`` begins (``len(data)``: none).

    ``data.rstrip(b"\0")`` says the same but copies everything before the run: tens of
    milliseconds for a full segment. This strips growing blocks from the end instead."""
    end = len(data)
    step = 4096
    while end:
        start = max(0, end - step)
        kept = len(data[start:end].rstrip(b"\0"))
        if kept:
            return start + kept
        end = start
        step = min(step * 2, 1 << 22)
    return 0


def _check_header(data: bytes, name_first: int) -> tuple[int, int] | str:
    """(salt, first position) of a valid segment header, or the reason it is invalid."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return f"segment header truncated ({len(data)} of {SEGMENT_HEADER_SIZE} bytes)"
    magic, version, res1, salt, first, res2, crc = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        return "bad segment magic"
    if zlib.crc32(memoryview(data)[:36]) != crc:
        return "segment header checksum mismatch"
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"log segment has format version {version}; this ngstore reads version "
            f"{FORMAT_VERSION} -- upgrade ngstore")
    if res1 or res2 or salt == 0:
        return "segment header reserved field not zero or salt is zero"
    if first != name_first:
        return f"segment header says first position {first} but the file name says {name_first}"
    return salt, first


def _frame_problem(hdr: FrameHeader, salt: int, expected: int | None) -> str | None:
    """Checks 4..6 of docs/format.md §6.3 on a CRC-valid header; None if the frame is valid."""
    _crc, length, fsalt, pos, synced, typ, flags, res, raw = hdr
    if fsalt != salt:
        return f"stale record (salt {fsalt:#018x}, segment salt {salt:#018x})"
    if typ not in KNOWN_TYPES:
        return f"unknown record type {typ}"
    if flags & ~_KNOWN_FLAGS or res:
        return f"reserved flag bits or field set (flags {flags:#04x})"
    if flags & FLAG_ZSTD:
        if raw > MAX_RECORD_BYTES:
            return f"raw length {raw} exceeds the record limit"
    elif raw != length:
        return f"raw length {raw} differs from length {length} in an uncompressed record"
    if expected is not None and pos != expected:
        return f"non-consecutive position {pos} (expected {expected})"
    if synced >= pos:
        return f"synced watermark {synced} not below position {pos}"
    return None


def _parse_frame(data: bytes, mv: memoryview, off: int, size: int, salt: int,
                 expected: int | None) -> FrameHeader | str:
    """The unpacked header of the valid frame at ``off``, or why it is invalid."""
    if off + FRAME_HEADER_SIZE > size:
        return f"truncated frame header ({size - off} bytes)"
    hdr: FrameHeader = FRAME_HEADER.unpack_from(data, off)
    length = hdr[1]
    if length > MAX_RECORD_BYTES:
        return f"record length {length} exceeds the limit {MAX_RECORD_BYTES}"
    end = off + FRAME_HEADER_SIZE + length
    if end > size:
        return f"record length {length} runs past the end of the file ({size - off} bytes left)"
    if crc32(mv[off + 4:end]) != hdr[0]:
        return "checksum mismatch"
    why = _frame_problem(hdr, salt, expected)
    return why if why is not None else hdr


def _valid_frames_after(data: bytes, start: int, salt: int, min_pos: int) -> Iterator[tuple[int, FrameHeader]]:
    """Every CRC-valid frame with ``salt`` starting at or after ``start`` and position ≥
    ``min_pos``, found by searching for the salt bytes (a frame's salt is at offset 8)."""
    key = struct.pack("<Q", salt)
    size = len(data)
    mv = memoryview(data)
    idx = data.find(key, start + 8)
    while idx >= 0:
        off = idx - 8
        if off + FRAME_HEADER_SIZE <= size:
            hdr = FRAME_HEADER.unpack_from(data, off)
            length = hdr[1]
            end = off + FRAME_HEADER_SIZE + length
            if (length <= MAX_RECORD_BYTES and end <= size and hdr[3] >= min_pos
                    and crc32(mv[off + 4:end]) == hdr[0]
                    and _frame_problem(hdr, salt, None) is None):
                yield off, hdr
        idx = data.find(key, idx + 1)


def _guess_salt(data: bytes, name_first: int) -> int | None:
    """The salt of a segment whose header is unreadable, taken from a CRC-valid frame that
    carries the position the file name promises (the first frame, normally at offset 40)."""
    key = struct.pack("<Q", name_first)
    mv = memoryview(data)
    idx = data.find(key, SEGMENT_HEADER_SIZE + 16)
    while idx >= 0:
        off = idx - 16
        if off + FRAME_HEADER_SIZE <= len(data):
            hdr = FRAME_HEADER.unpack_from(data, off)
            end = off + FRAME_HEADER_SIZE + hdr[1]
            if hdr[1] <= MAX_RECORD_BYTES and end <= len(data) and crc32(mv[off + 4:end]) == hdr[0]:
                return hdr[2] or None
        idx = data.find(key, idx + 1)
    return None


def _list_segments(dirpath: str, io: FileIO) -> tuple[list[tuple[int, str]], list[str]]:
    segs: list[tuple[int, str]] = []
    foreign: list[str] = []
    for name in sorted(io.listdir(dirpath)):
        m = _SEGMENT_NAME.match(name)
        path = os.path.join(dirpath, name)
        if m and io.is_file(path):
            segs.append((int(m.group(1), 16), path))
        else:
            foreign.append(path)
    segs.sort()
    return segs, foreign


# ------------------------------------------------------------------------------ the scan --
@dataclass(slots=True)
class _Seg:
    path: str
    salt: int
    first: int
    last: int                                  # last valid position, first - 1 when empty
    end: int                                   # offset after the last valid frame
    runs: list[tuple[int, int]]                # byte ranges of consecutive valid frames
    records: int = 0
    #: the segment's bytes as the open's scan read and checked them, kept for the replay
    #: (valid below ``end`` as the scan found it; taken, so dropped, by ``iter_records``)
    scanned: bytes | None = None
    end_scanned: int = 0


@dataclass(slots=True)
class _Scan:
    segs: list[_Seg]
    problems: list[Problem]                    # corruption (in order) and foreign files
    torn: TornTail | None
    truncate_at: tuple[str, int] | None        # (path, offset) to truncate; offset 0 = delete
    remove: list[str]                          # later files to delete with the torn tail


def _later_evidence(files: list[tuple[int, str]], start: int, io: FileIO) -> bool:
    """Does any segment from ``files[start]`` on prove earlier segments were durable?"""
    for name_first, path in files[start:]:
        data = io.read_file(path)
        try:
            if not isinstance(_check_header(data, name_first), str):
                return True
        except FormatVersionError:
            return True
        salt = _guess_salt(data, name_first)
        if salt is not None and next(_valid_frames_after(data, SEGMENT_HEADER_SIZE, salt, 0), None):
            return True
    return False


def _scan(dirpath: str, io: FileIO, keep_after: int | None = None) -> _Scan:
    """Reads every segment and classifies every irregularity (salvage-style: it continues
    past corruption so ``verify`` can list all of it). Changes nothing on disk.
    ``keep_after``: keep (``_Seg.scanned``, up to :data:`REPLAY_KEEP_BYTES`) the bytes of
    the segments that hold valid records after this position, for their replay."""
    files, foreign = _list_segments(dirpath, io)
    keep_budget = REPLAY_KEEP_BYTES if keep_after is not None else 0
    problems = [Problem("foreign-file", p, None, "not a log segment name; ignored") for p in foreign]
    segs: list[_Seg] = []
    expected: int | None = None     # next position; None before the first segment / after a lost end
    lost_from: int | None = None    # set when a segment's end was skipped: positions from here are lost
    torn: TornTail | None = None
    truncate_at: tuple[str, int] | None = None
    remove: list[str] = []

    def tear(i: int, path: str, off: int, size: int, reason: str, discarded: int) -> None:
        nonlocal torn, truncate_at, remove
        later = [p for _f, p in files[i + 1:]]
        dropped = size - off + sum(io.size_of(p) or 0 for p in later)
        removed = tuple(([path] if off == 0 else []) + later)
        torn = TornTail(path, off, dropped, reason, discarded, removed)
        truncate_at = (path, off)
        remove = later

    for i, (name_first, path) in enumerate(files):
        data = io.read_file(path)
        size = len(data)
        mv = memoryview(data)
        zero_from = _zero_tail(data)
        hdr = _check_header(data, name_first)
        p = expected if expected is not None else name_first
        if isinstance(hdr, str):
            # An unreadable header. Headers are made durable before any record is written
            # into a segment, so a valid frame in this file (or any later segment) proves
            # this is damage, not a crash during segment creation.
            salt_guess = _guess_salt(data, name_first)
            here = list(_valid_frames_after(data, SEGMENT_HEADER_SIZE, salt_guess, 0)) if salt_guess else []
            if not here and not _later_evidence(files, i + 1, io):
                tear(i, path, 0, size, hdr, 0)
                break
            nxt = next(((o, h) for o, h in here if h[3] >= p), None)
            if nxt is None:
                problems.append(Problem("corruption", path, 0, hdr, end=size))
                segs.append(_Seg(path, 0, name_first, name_first - 1, 0, []))  # droppable later
                lost_from = p if lost_from is None else lost_from
                expected = None
                continue
            o, h = nxt
            assert salt_guess is not None  # frames were found with it
            problems.append(Problem("corruption", path, 0, hdr, end=o,
                                    lost=(p, h[3] - 1) if h[3] > p else None))
            salt, first, start, expected = salt_guess, name_first, o, h[3]
            lost_from = None
        else:
            salt, first = hdr
            start = SEGMENT_HEADER_SIZE
            if lost_from is not None:
                if first > lost_from:
                    problems.append(Problem("corruption", path, 0, "positions lost with the end of "
                                            "the previous segment", lost=(lost_from, first - 1)))
                lost_from = None
            elif expected is not None and first != expected:
                # every segment but the newest was sealed (synced) before the next was made:
                # a discontinuity between two valid headers is never a crash artefact
                reason = f"segment starts at position {first} but the previous one ends at {expected - 1}"
                if first > expected:
                    problems.append(Problem("corruption", path, 0, reason, lost=(expected, first - 1)))
                else:
                    problems.append(Problem("corruption", path, 0, reason + " (overlap); segment skipped",
                                            end=size))
                    segs.append(_Seg(path, 0, first, first - 1, 0, []))
                    continue
            expected = first
        assert expected is not None
        seg = _Seg(path, salt, first, expected - 1, start, [])
        segs.append(seg)
        off = run_start = start
        while True:
            if off >= zero_from:            # EOF, or zeros from a frame boundary to EOF
                break
            r = _parse_frame(data, mv, off, size, salt, expected)
            if not isinstance(r, str):
                off += FRAME_HEADER_SIZE + r[1]
                expected = r[3] + 1
                seg.last = r[3]
                seg.records += 1
                continue
            # a bad point: is there proof that position `expected` had been durably written?
            assert expected is not None
            later = list(_valid_frames_after(data, off + 1, salt, expected))
            proof = any(h[4] >= expected for _o, h in later) or _later_evidence(files, i + 1, io)
            if not proof:
                seg.runs.append((run_start, off))
                seg.end = off
                tear(i, path, off, size, r, len(later))
                break
            seg.runs.append((run_start, off))
            if later:
                o, h = later[0]
                problems.append(Problem("corruption", path, off, r, end=o,
                                        lost=(expected, h[3] - 1) if h[3] > expected else None))
                off = run_start = o
                expected = h[3]
                continue
            problems.append(Problem("corruption", path, off, r, end=size))
            lost_from, expected = expected, None
            run_start = off = size
            break
        if torn is not None:
            break
        if run_start < off:
            seg.runs.append((run_start, off))
        seg.end = off
        if keep_after is not None and seg.last > keep_after and size <= keep_budget:
            seg.scanned, seg.end_scanned = data, seg.end
            keep_budget -= size
    return _Scan(segs, problems, torn, truncate_at, remove)


def _iter_run(io: FileIO, fd: int, path: str, a: int, b: int, salt: int, after: int,
              payloads: bool) -> Iterator[tuple[FrameHeader, int, memoryview | None]]:
    """Re-reads and re-checks the frames in bytes [a, b) of a segment (validated by the
    scan); yields (header, offset, stored payload view or None). Reads ≥ 16 MiB blocks."""
    off = a
    buf = b""
    buf_off = a
    while off < b:
        if off + FRAME_HEADER_SIZE > buf_off + len(buf):
            buf = io.pread(fd, min(max(_READ_BLOCK, FRAME_HEADER_SIZE), b - off), off)
            buf_off = off
        rel = off - buf_off
        if rel + FRAME_HEADER_SIZE > len(buf):
            raise CorruptionError("log segment shrank while being read", path=path, offset=off)
        hdr: FrameHeader = FRAME_HEADER.unpack_from(buf, rel)
        length = hdr[1]
        flen = FRAME_HEADER_SIZE + length
        if length > MAX_RECORD_BYTES or off + flen > b:
            raise CorruptionError(f"record length {length} changed since recovery", path=path, offset=off)
        if hdr[3] <= after:
            off += flen
            continue
        if rel + flen > len(buf):
            buf = io.pread(fd, max(min(_READ_BLOCK, b - off), flen), off)
            buf_off, rel = off, 0
            if len(buf) < flen:
                raise CorruptionError("log segment shrank while being read", path=path, offset=off)
        mv = memoryview(buf)
        if crc32(mv[rel + 4:rel + flen]) != hdr[0] or hdr[2] != salt:
            raise CorruptionError("checksum mismatch (the file changed since recovery)",
                                  path=path, offset=off)
        yield hdr, off, (mv[rel + FRAME_HEADER_SIZE:rel + flen] if payloads else None)
        off += flen


def _decode_payload(hdr: FrameHeader, stored: memoryview, path: str, off: int, dctx: Any,
                    copy: bool = True) -> bytes | memoryview:
    if not hdr[6] & FLAG_ZSTD:
        return bytes(stored) if copy else stored.toreadonly()
    if _zstd is None:  # pragma: no cover
        raise NgStoreError("the log holds zstd-compressed records; install 'zstandard' to read them")
    try:
        out: bytes = dctx.decompress(stored, max_output_size=hdr[8])
    except _zstd.ZstdError as e:
        raise CorruptionError(f"zstd payload does not decompress: {e}", path=path, offset=off) from None
    if len(out) != hdr[8]:
        raise CorruptionError(f"decompressed payload is {len(out)} bytes, header says {hdr[8]}",
                              path=path, offset=off)
    return out


def _iter_segments(io: FileIO, segs: list[tuple[str, list[tuple[int, int]], int, int]], after: int,
                   payloads: bool, scanned: dict[str, tuple[bytes, int]] | None = None
                   ) -> Iterator[tuple[FrameHeader, str, int, memoryview | None]]:
    """The frames after position ``after`` of ``segs`` (path, runs, salt, last), in order.
    ``scanned``: by path, ``(bytes, end)`` the open's scan read and checked: frames below
    ``end`` come from them; the rest is read from the file and checked again."""
    for path, runs, salt, last in segs:
        if last <= after:
            continue
        kept = scanned.pop(path, None) if scanned is not None else None
        fd = io.open(path, os.O_RDONLY)
        try:
            for a, b in runs:
                if kept is not None and a < kept[1]:
                    yield from ((hdr, path, off, stored)
                                for hdr, off, stored in _iter_kept(kept[0], a, min(b, kept[1]), after, payloads))
                    a = min(b, kept[1])
                for hdr, off, stored in _iter_run(io, fd, path, a, b, salt, after, payloads):
                    yield hdr, path, off, stored
        finally:
            io.close(fd)


def _iter_kept(data: bytes, a: int, b: int, after: int,
               payloads: bool) -> Iterator[tuple[FrameHeader, int, memoryview | None]]:
    """The frames in bytes [a, b) of a segment's bytes as the scan read them: every frame
    there passed the scan's checks (CRC, salt, consecutive positions), on these very bytes."""
    mv = memoryview(data)
    off = a
    unpack = FRAME_HEADER.unpack_from
    while off < b:
        hdr: FrameHeader = unpack(data, off)
        flen = FRAME_HEADER_SIZE + hdr[1]
        if hdr[3] > after:
            yield hdr, off, (mv[off + FRAME_HEADER_SIZE:off + flen] if payloads else None)
        off += flen


# ------------------------------------------------------------------------------- the log --
class Log:
    """An open, recovered log: the writer and the replay source. Make one with ``Log.open``."""

    def __init__(self, dirpath: str, io: FileIO, segment_bytes: int, preallocate_bytes: int,
                 compress: bool, segs: list[_Seg], mode: int = PRIVATE_MODE) -> None:
        self._dir = dirpath
        self._io = io
        self._mode = mode
        self._segment_bytes = segment_bytes
        self._prealloc = preallocate_bytes
        self._cctx = _zstd.ZstdCompressor(level=1) if (compress and _zstd is not None) else None
        self._segs = segs
        self._fd: int | None = None
        self._write_off = 0
        self._zeroed_until = 0
        self._last = max((s.last for s in segs), default=0)
        self._appended = 0
        self._durable = self._last
        self._failed: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()        # state read by sync/iter/properties
        self._sync_lock = threading.Lock()   # fdatasync of the active fd vs rotation/close
        self._drop_lock = threading.Lock()
        # append_one's native writes (``walmap``) unless ``io`` sees or breaks writes: the active
        # segment's mapping (made by the first append_one) and the end of the runway it may store into
        self._native_write = io.maps_writes()
        self._map: SegmentMap | None = None
        self._mappable_until = 0

    # -- opening and recovery ---------------------------------------------------------
    @classmethod
    def open(cls, dirpath: str, *, io: FileIO = DEFAULT_IO, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             recovery: str = "tolerate-tail", start_after: int = 0,
             preallocate_bytes: int = PREALLOCATE_BYTES, compress: bool = False,
             create: bool = True, mode: int = PRIVATE_MODE) -> tuple[Log, RecoveryReport]:
        """Opens (creating if needed) the log in ``dirpath`` (the ``wal/`` directory itself),
        recovers it and returns it ready to append, with what recovery found and did.

        ``start_after``: the last position the caller has durably applied. If the log ends
        before it, the log restarts at ``start_after + 1`` (old segments are all applied and
        are deleted); if the log starts after ``start_after + 1`` records are missing:
        ``CorruptionError`` (salvage: reported). ``recovery``: see ``docs/format.md §6`` §7.
        On ``CorruptionError`` nothing on disk was changed.
        """
        if recovery not in RECOVERY_MODES:
            raise InvalidArgumentError(f"recovery must be one of {RECOVERY_MODES}, got {recovery!r}")
        if segment_bytes < 128 or preallocate_bytes < 0 or start_after < 0:
            raise InvalidArgumentError("segment_bytes must be ≥ 128, preallocate_bytes and "
                                       "start_after ≥ 0")
        if not io.exists(dirpath):
            if not create:
                raise FileNotFoundError(f"log directory {dirpath} does not exist")
            io.mkdir(dirpath, dir_mode(mode))
            io.fsync_dir(os.path.dirname(os.path.abspath(dirpath)))
        scan = _scan(dirpath, io, keep_after=start_after)
        report = RecoveryReport(mode=recovery)
        report.foreign_files = [p.path for p in scan.problems if p.kind == "foreign-file"]
        corrupt = [p for p in scan.problems if p.kind == "corruption"]
        if corrupt and recovery != "salvage":
            c = corrupt[0]
            raise CorruptionError(c.reason + " (valid records follow it, so this is not a torn tail)",
                                  path=c.path, offset=c.offset)
        if scan.torn is not None and recovery == "strict":
            t = scan.torn
            raise CorruptionError(f"torn tail: {t.reason} ({t.bytes_dropped} bytes would be dropped; "
                                  "open with recovery='tolerate-tail' to truncate it)",
                                  path=t.path, offset=t.offset)
        segs = scan.segs
        if segs and segs[0].first > start_after + 1 and segs[-1].last > start_after:
            miss = Problem("missing-records", segs[0].path, 0,
                           f"the log starts at position {segs[0].first} but only positions through "
                           f"{start_after} were applied", lost=(start_after + 1, segs[0].first - 1))
            if recovery != "salvage":
                raise CorruptionError(miss.reason, path=miss.path, offset=0)
            corrupt.append(miss)
        # -- from here on, repairs
        if scan.torn is not None:
            path, off = scan.truncate_at  # type: ignore[misc]
            if off == 0:
                io.unlink(path)
                segs = [s for s in segs if s.path != path]
            else:
                fd = io.open(path, os.O_RDWR)
                try:
                    io.truncate(fd, off)
                    io.fdatasync(fd)
                finally:
                    io.close(fd)
            for p in reversed(scan.remove):
                io.unlink(p)
            if off == 0 or scan.remove:
                io.fsync_dir(dirpath)
            report.torn_tail = scan.torn
        report.skipped = corrupt
        log = cls(dirpath, io, segment_bytes, preallocate_bytes, compress, segs, mode)
        try:
            log._start(report, start_after, bool(corrupt))
        except BaseException:
            log.close()
            raise
        return log, report

    def _start(self, report: RecoveryReport, start_after: int, salvaged: bool) -> None:
        """After the repairs of ``open``: choose and open the active segment."""
        log, io, dirpath, segs = self, self._io, self._dir, self._segs
        corrupt = salvaged
        if segs and segs[-1].last < start_after:
            for s in list(segs):                    # all applied: oldest first, one at a time
                io.unlink(s.path)
                io.fsync_dir(dirpath)
                segs.pop(0)
            log._last = log._durable = start_after
            report.restarted_at = start_after + 1
        if not segs:
            log._last = log._durable = max(start_after, log._last)
            log._create_segment(log._last + 1)
        elif corrupt:
            # Salvage skipped something: seal what is there and write into a new segment,
            # leaving the damaged ones for a checkpoint's drop_through to delete.
            for s in segs:
                if s.records:
                    fd = io.open(s.path, os.O_RDONLY)
                    try:
                        io.fdatasync(fd)
                    finally:
                        io.close(fd)
            path = os.path.join(dirpath, segment_name(log._last + 1))
            same = [s for s in segs if s.path == path]
            if same and same[0].salt and same[0] is segs[-1]:
                log._open_active(segs[-1])  # an intact empty segment already starts there
            else:
                for s in same:  # a wholly unreadable segment holds the name we need
                    io.rename(path, path + ".corrupt")
                    io.fsync_dir(dirpath)
                    s.path = path + ".corrupt"
                log._create_segment(log._last + 1)
        else:
            log._open_active(segs[-1])
            io.fdatasync(log._fd)  # type: ignore[arg-type]  # what we will replay is durable
        if log._native_write and not log._mappable_until:  # reopened (after a salvage too): walmap.own_runway
            log._mappable_until = own_runway(io, log._fd, log._write_off, log._zeroed_until, log._prealloc)
        report.records = sum(s.records for s in log._segs)
        report.first_position = log._segs[0].first
        report.last_position = log._last
        report.segments = len(log._segs)

    def _open_active(self, seg: _Seg) -> None:
        fd = self._io.open(seg.path, os.O_RDWR)
        if not seg.runs or seg.runs[-1][1] != seg.end:
            seg.runs.append((seg.end, seg.end))  # appends extend this run
        self._fd = fd
        self._write_off = seg.end
        self._zeroed_until = max(seg.end, self._io.file_size(fd))
        self._mappable_until = 0

    def _create_segment(self, first: int) -> None:
        """New active segment: header (+ zero runway), fdatasync, fsync dir. Poisons on error."""
        path = os.path.join(self._dir, segment_name(first))
        salt = new_salt()
        head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, salt, first, 0, 0)
        head = head[:36] + _U32.pack(zlib.crc32(head[:36]))
        fd = None
        try:
            fd = self._io.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, self._mode)
            runway = max(0, min(self._prealloc, self._segment_bytes - SEGMENT_HEADER_SIZE))
            self._io.pwritev(fd, [head, bytes(runway)], 0)
            self._io.fdatasync(fd)
            self._io.fsync_dir(self._dir)
        except BaseException as e:
            if fd is not None:
                self._io.close(fd)
            raise self._poison(e, "creating log segment", path) from e
        seg = _Seg(path, salt, first, first - 1, SEGMENT_HEADER_SIZE, [(SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE)])
        with self._lock:
            self._segs.append(seg)
            self._fd = fd
            self._write_off = SEGMENT_HEADER_SIZE
            self._zeroed_until = self._mappable_until = SEGMENT_HEADER_SIZE + runway

    def _rotate(self) -> None:
        """Seals the active segment (drop the runway, fdatasync) and starts the next one.
        Caller holds ``_sync_lock``, or is ``open``."""
        fd = self._fd
        assert fd is not None
        with self._lock:
            self._unmap()
        try:
            self._io.truncate(fd, self._write_off)
            self._io.fdatasync(fd)
        except BaseException as e:
            raise self._poison(e, "sealing log segment", self._segs[-1].path) from e
        with self._lock:
            self._durable = self._last
            self._fd = None
        self._io.close(fd)
        self._create_segment(self._last + 1)

    # -- writing ------------------------------------------------------------------------
    def _poison(self, exc: BaseException, doing: str, path: str) -> BaseException:
        """Records the first failure of a write, fdatasync, truncate or segment creation
        (the log refuses writes from here on) and returns it as it is raised: an
        ``OSError`` of the file as the named :class:`errors.StorageError` (the store is
        stopped), anything else as it is."""
        if isinstance(exc, OSError):
            exc = storage_error(exc, doing, StoreState.STOPPED, path=path)
        if self._failed is None:
            self._failed = exc
        return exc

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosedError("the log is closed")
        if self._failed is not None:
            # a failed write or fsync may have lost data the kernel reported as written:
            # only reopening (recovery from what is on disk) is sound
            raise refusal(os.path.dirname(self._dir), self._failed)

    def append(self, records: Sequence[tuple[int, Buffer]]) -> list[int]:
        """Frames ``records`` ((type, payload) pairs) and writes them with one write call at
        the end of the active segment (rotating first if the segment is full). Not durable
        until ``sync()`` returns; survives a process crash once this returns. Returns their
        positions (consecutive). Bad input raises ``InvalidArgumentError`` before anything is
        written. One appending thread at a time."""
        self._check_writable()
        if not records:
            return []
        items: list[tuple[int, int, int, Buffer]] = []  # type, flags, raw length, stored
        total = 0
        for typ, payload in records:
            if typ not in KNOWN_TYPES:
                raise InvalidArgumentError(f"unknown log record type {typ!r}; known: {sorted(KNOWN_TYPES)}")
            view = payload if type(payload) is bytes else memoryview(payload).cast("B")  # a commit's: bytes
            raw = len(view)
            if raw > MAX_RECORD_BYTES:
                raise InvalidArgumentError(f"a log record holds at most {MAX_RECORD_BYTES} bytes, "
                                           f"got {raw}; split the batch")
            stored: Buffer = view
            flags = 0
            if self._cctx is not None and raw >= COMPRESS_MIN_BYTES:
                c = self._cctx.compress(view)
                if len(c) <= raw - raw // 8:
                    stored, flags = c, FLAG_ZSTD
            items.append((typ, flags, raw, stored))
            total += FRAME_HEADER_SIZE + len(stored)
        if self._write_off > SEGMENT_HEADER_SIZE and self._write_off + total > self._segment_bytes:
            with self._sync_lock:
                self._check_writable()
                self._rotate()
        seg = self._segs[-1]
        salt = seg.salt
        synced = self._durable
        pos = self._last + 1
        first_pos = pos
        bufs: list[Buffer] = []
        small = bytearray()
        for typ, flags, raw, stored in items:
            head = _frame_head(stored, salt, pos, synced, typ, flags, raw)
            small += head
            if len(stored) < _JOIN_BELOW:
                small += stored
            else:
                bufs.append(small)
                bufs.append(stored)
                small = bytearray()
            pos += 1
        start = self._write_off
        end = start + total
        if self._prealloc and total < self._prealloc and end > self._zeroed_until:
            # extend the zero runway in the same write (a later fdatasync then need not
            # commit a file-size change); never past the segment size
            zend = min(end + self._prealloc, max(self._segment_bytes, end))
            small += bytes(zend - end)
        else:
            zend = end
        if small:
            bufs.append(small)
        try:
            self._io.pwritev(self._fd, bufs, start)  # type: ignore[arg-type]
        except Exception as e:  # an interrupt is no failure: the log's end stays where it was
            raise self._poison(e, "appending to the log segment", seg.path) from e
        self._advance(seg, pos - 1, len(items), total, zend)
        return list(range(first_pos, pos))

    def append_one(self, typ: int, payload: bytes, *, mapped: bool = True) -> int:
        """``append([(typ, payload)])[0]`` for a commit's record: a small ``bytes`` payload (too small
        to compress) that fits the active segment is framed in C and stored through its mapping
        (``walmap``); past the runway the log wrote, or without ``mapped``, it is written as ``append``
        does. A record synced at once is written (``mapped=False``): an fdatasync after stores through
        a mapping write-protects the stored pages, which measured up to 70 µs more a commit."""
        raw = len(payload)
        start = self._write_off
        end = start + FRAME_HEADER_SIZE + raw
        if (type(payload) is not bytes or raw >= COMPRESS_MIN_BYTES or typ not in KNOWN_TYPES or self._closed
                or self._failed is not None or (start > SEGMENT_HEADER_SIZE and end > self._segment_bytes)):
            return self.append([(typ, payload)])[0]  # checks, compresses, rotates, refuses
        seg = self._segs[-1]
        pos = self._last + 1
        if mapped and self._native_write and end <= self._mappable_until:
            with self._lock:
                if self._closed:  # by another thread since the check above
                    raise StoreClosedError("the log is closed")
                m, fd = self._map, self._fd
                assert fd is not None  # open: not closed
                if m is None or m.fd != fd:
                    if m is not None:
                        m.close()
                    m = self._map = SegmentMap(fd, max(self._segment_bytes, self._zeroed_until))
                if end <= m.length:
                    if put_frame(m.base, self._mappable_until, start, payload, seg.salt, pos, self._durable,
                                 typ):
                        raise AssertionError("a frame inside the checked runway did not fit")  # never
                    self._last = seg.last = pos
                    self._write_off = seg.end = end
                    self._appended += end - start
                    seg.records += 1
                    seg.runs[-1] = (seg.runs[-1][0], end)
                    return pos
        zend = end
        if self._prealloc and end - start < self._prealloc and end > self._zeroed_until:  # as append
            zend = min(end + self._prealloc, max(self._segment_bytes, end))
        fd = self._fd
        assert fd is not None  # open: not closed
        try:
            if self._native_write and zend - end <= MAX_ZEROS:
                write_frame(fd, start, payload, seg.salt, pos, self._durable, typ, zend - end)
            else:
                head = _frame_head(payload, seg.salt, pos, self._durable, typ, 0, raw)
                self._io.pwritev(fd, [head + payload + bytes(zend - end)], start)
        except Exception as e:  # an interrupt is no failure: the log's end stays where it was
            raise self._poison(e, "appending to the log segment", seg.path) from e
        self._advance(seg, pos, 1, end - start, zend)
        return pos

    def _unmap(self) -> None:
        """With ``_lock`` held, or before the log is shared: drops the active segment's
        mapping, if any (before its file is truncated, sealed or closed)."""
        m, self._map = self._map, None
        if m is not None:
            m.close()

    def _advance(self, seg: _Seg, last: int, records: int, total: int, zend: int) -> None:
        """After a write of ``records`` frames (``total`` bytes) ending at position ``last``
        and the zero runway through ``zend``: the log's and the segment's new end."""
        end = self._write_off + total
        zeroed = max(self._zeroed_until, zend)  # no call below: an interrupt (Ctrl-C) lands before or after
        with self._lock:
            self._last = last
            self._write_off = end
            self._appended += total
            self._zeroed_until = zeroed
            if zend > end:  # a runway this object wrote
                self._mappable_until = zend
            seg.last = last
            seg.end = end
            seg.records += records
            a, _b = seg.runs[-1]
            seg.runs[-1] = (a, end)

    def adopt_next(self) -> int:
        """After an interrupted append (module docstring): adopts the frame of the next
        position if one lies whole at the log's end, as if its append had returned, so that
        the log this process goes on with is the one recovery would find. Returns the last
        position."""
        with self._sync_lock:
            self._check_writable()
            fd, seg, start, pos = self._fd, self._segs[-1], self._write_off, self._last + 1
            assert fd is not None  # writable: open
            data = self._io.pread(fd, FRAME_HEADER_SIZE, start)
            length = FRAME_HEADER.unpack_from(data)[1] if len(data) == FRAME_HEADER_SIZE else -1
            if 0 <= length <= MAX_RECORD_BYTES:
                data += self._io.pread(fd, length, start + FRAME_HEADER_SIZE)
                if not isinstance(_parse_frame(data, memoryview(data), 0, len(data), seg.salt, pos), str):
                    self._advance(seg, pos, 1, len(data), start + len(data))
            return self._last

    def sync(self) -> int:
        """fdatasync of the active segment (earlier segments were synced when sealed; the
        directory entry when created). Returns the position durable through. Safe to call
        from another thread while ``append`` runs; a no-op when nothing new was written."""
        with self._sync_lock:
            self._check_writable()
            with self._lock:
                fd, target = self._fd, self._last
            if target <= self._durable:
                return self._durable
            try:
                self._io.fdatasync(fd)  # type: ignore[arg-type]
            except Exception as e:  # an interrupt is no failure: the next sync covers the same bytes
                raise self._poison(e, "syncing (fdatasync) the log segment", self._segs[-1].path) from e
            with self._lock:
                self._durable = max(self._durable, target)
            return self._durable

    def rotate(self) -> None:
        """Seals the active segment and starts a new one (no-op when the active segment
        holds no record). Lets ``drop_through`` delete every record up to ``last_position``,
        e.g. after the closing checkpoint."""
        self._check_writable()
        with self._sync_lock:
            with self._lock:
                empty = self._segs[-1].records == 0
            if not empty:
                self._rotate()

    def drop_through(self, position: int) -> int:
        """Deletes every segment (never the active one) all of whose records are ≤
        ``position``, oldest first, each unlink followed by an fsync of the directory.
        Returns how many were deleted. The caller guarantees those records are durably
        applied elsewhere (invariant 6)."""
        if self._closed:
            raise StoreClosedError("the log is closed")
        n = 0
        with self._drop_lock:
            while True:
                with self._lock:
                    if len(self._segs) < 2 or self._segs[1].first - 1 > position:
                        break
                    victim = self._segs[0]
                self._io.unlink(victim.path)
                with self._lock:
                    self._segs.remove(victim)
                n += 1
                self._io.fsync_dir(self._dir)
        return n

    # -- reading ------------------------------------------------------------------------
    def iter_records(self, after_position: int = 0, *, copy: bool = True) -> Iterator[Record]:
        """Yields every record with position > ``after_position``, in order, payloads
        decompressed. Records the open's scan kept (its ``start_after``: the replay at open)
        come from the bytes the scan read and checked; every other record is read again and
        its CRC checked again as it is read. Sees the records appended before the call.
        Raises ``CorruptionError`` if the file changed under it. ``copy=False``: uncompressed
        payloads are views (see :class:`Record`), for a reader that copies what it keeps."""
        with self._lock:
            segs = [(s.path, list(s.runs), s.salt, s.last) for s in self._segs]
            scanned = {s.path: (s.scanned, s.end_scanned) for s in self._segs if s.scanned is not None}
            for s in self._segs:
                s.scanned = None  # used once: by this replay, or by nobody
        dctx = _zstd.ZstdDecompressor() if _zstd is not None else None
        for hdr, path, off, stored in _iter_segments(self._io, segs, after_position, True, scanned):
            assert stored is not None
            yield Record(hdr[3], hdr[5], _decode_payload(hdr, stored, path, off, dctx, copy), path, off,
                         FRAME_HEADER_SIZE + hdr[1])

    # -- facts ----------------------------------------------------------------------------
    @property
    def last_position(self) -> int:
        """Position of the newest record appended (0 if none ever)."""
        return self._last

    @property
    def durable_position(self) -> int:
        """Position through which an fdatasync has returned."""
        return self._durable

    @property
    def first_position(self) -> int:
        """First position the oldest segment holds (or will hold)."""
        with self._lock:
            return self._segs[0].first if self._segs else self._last + 1

    @property
    def size_bytes(self) -> int:
        """Bytes of frames and headers in all segments (not the zero runway)."""
        with self._lock:
            return sum(s.end for s in self._segs)

    @property
    def appended_bytes(self) -> int:
        """Bytes of frames appended since the log was opened (a running total)."""
        return self._appended

    @property
    def segment_count(self) -> int:
        with self._lock:
            return len(self._segs)

    @property
    def failed(self) -> BaseException | None:
        """The I/O error that poisoned the log, if any."""
        return self._failed

    def close(self) -> None:
        """Closes the active segment. Does not sync: call ``sync()`` first for durability.
        Idempotent; safe after an I/O error."""
        with self._sync_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            self._unmap()
            fd, self._fd = self._fd, None
            for seg in self._segs:
                seg.scanned = None  # kept for a replay that did not come
        if fd is not None:
            self._io.close(fd)

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
