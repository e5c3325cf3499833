"""Offline tools over a log directory (the ``wal`` module's format, docs/format.md §6):
``verify`` and ``dump`` for operators (``ngstore wal-verify``, ``wal-dump``), and the scan a
backup makes of the segments of a log another process is appending to. Read-only: nothing
here opens a :class:`wal.Log` or writes a byte."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import CorruptionError
from .fileio import DEFAULT_IO, FileIO
from .wal import (
    FLAG_ZSTD,
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Problem,
    RecordSummary,
    VerifyReport,
    _check_header,
    _decode_payload,
    _iter_segments,
    _list_segments,
    _parse_frame,
    _scan,
    _zero_tail,
    _zstd,
)


def verify(dirpath: str, *, io: FileIO = DEFAULT_IO) -> VerifyReport:
    """Read-only check of a log directory: every frame, every payload's decompression,
    every segment's continuity. ``sound`` is False only for corruption (a torn tail is the
    normal result of a crash and ``Log.open`` repairs it; it is listed as a problem)."""
    scan = _scan(dirpath, io)
    problems = list(scan.problems)
    if scan.torn is not None:
        t = scan.torn
        problems.append(Problem("torn-tail", t.path, t.offset,
                                f"{t.reason}; {t.bytes_dropped} bytes after it would be dropped"
                                + (f" ({t.discarded_records} unsynced records)" if t.discarded_records else "")))
    dctx = _zstd.ZstdDecompressor() if _zstd is not None else None
    segs = [(s.path, list(s.runs), s.salt, s.last) for s in scan.segs]
    records = 0
    for s in segs:
        try:
            for hdr, path, off, stored in _iter_segments(io, [s], 0, True):
                records += 1
                if hdr[6] & FLAG_ZSTD:
                    _decode_payload(hdr, stored, path, off, dctx)  # type: ignore[arg-type]
        except CorruptionError as e:
            problems.append(Problem("corruption", e.path or s[0], e.offset, e.reason))
    sound = not any(p.kind == "corruption" for p in problems)
    first = scan.segs[0].first if scan.segs else 1
    last = scan.segs[-1].last if scan.segs else 0
    return VerifyReport(sound, problems, records, first, last, len(scan.segs),
                        sum(s.end for s in scan.segs))


def dump(dirpath: str, *, io: FileIO = DEFAULT_IO) -> Iterator[RecordSummary]:
    """One summary per valid record, in order (read-only; payloads are not decoded)."""
    scan = _scan(dirpath, io)
    segs = [(s.path, list(s.runs), s.salt, s.last) for s in scan.segs]
    for hdr, path, off, _ in _iter_segments(io, segs, 0, False):
        yield RecordSummary(hdr[3], hdr[5], FRAME_HEADER_SIZE + hdr[1], hdr[8], path, off,
                            bool(hdr[6] & FLAG_ZSTD))


# --------------------------------------------------------------- for copies of a live log --
# Added for ngstore.backup: a backup reads the segments of a log another process is
# appending to, and must keep exactly a prefix of valid frames of what it read.

def list_segments(dirpath: str, *, io: FileIO = DEFAULT_IO) -> list[tuple[int, str]]:
    """``(first position, path)`` of every segment file in ``dirpath``, oldest first
    (foreign names left out)."""
    return _list_segments(dirpath, io)[0]


@dataclass(frozen=True, slots=True)
class SegmentFrames:
    """The valid frames at the start of a segment's bytes (see :func:`scan_segment`)."""
    salt: int
    first: int                                  # the header's first position
    frames: list[tuple[int, int, int]]          # (offset, position, frame CRC), in order
    end: int                                    # offset just after the last valid frame
    stop: str | None                            # what ended the scan before the data's end


def scan_segment(data: bytes, name_first: int) -> SegmentFrames | str:
    """The header and the run of valid frames (§6.3, positions consecutive from the
    header's first) at the start of ``data``, a copy of a segment's first ``len(data)``
    bytes; or why its header is invalid. The scan stops at the first frame that is not
    valid -- a frame still being written, or damage: telling which needs the rest of the
    log (``Log.open``) -- or at the zero runway."""
    hdr = _check_header(data, name_first)
    if isinstance(hdr, str):
        return hdr
    salt, first = hdr
    size = len(data)
    mv = memoryview(data)
    zero_from = _zero_tail(data)
    frames: list[tuple[int, int, int]] = []
    off, expected, stop = SEGMENT_HEADER_SIZE, first, None
    while off < zero_from:
        r = _parse_frame(data, mv, off, size, salt, expected)
        if isinstance(r, str):
            stop = r
            break
        frames.append((off, r[3], r[0]))
        off += FRAME_HEADER_SIZE + r[1]
        expected += 1
    return SegmentFrames(salt, first, frames, off, stop)
