"""The black box: the store's last events in a ring of fixed-size records in a mapped file.

Why a mapped file
-----------------
A black box is read after the process is gone. A ring kept in Python objects and flushed to
a file now and then loses what happened since the last flush, and a process killed by
SIGKILL, SIGSEGV or abort runs no Python code that could flush it. Here the ring *is* a file,
``blackbox.ring`` in the store directory, mapped ``MAP_SHARED`` into the writer: recording an
event copies one record into the mapping, which is the kernel's page cache. From that moment
the event survives the death of the process, however it dies; only a power loss (or an OS
crash) can take it, because nothing ``msync``\\ s the ring (a power loss is what the log is
for, not the black box). ``docs/format.md`` §8.1 gives the layout byte by byte.

Recording (``BlackBox.record(event_type, **data)``)
---------------------------------------------------
1. ``seq = next(counter)``: one C call under the GIL, so concurrent recorders never share a
   sequence number, and each thread then owns slot ``seq mod capacity``.
2. The payload is ``marshal.dumps((event_type, keys, values), 2)``: one C call, and version 2
   is a small, stable, reference-free subset of marshal (docs/format.md §8.1.1 lists its
   bytes). ``json`` was
   rejected (5x slower); ``str(data)`` too (slower, and it loses the types). A value marshal
   refuses (a numpy scalar, an exception object) makes the event slower, not lost: every value
   is turned into ``str`` and the event is encoded again. A payload longer than the slot is
   shortened the same way, value strings cut to fit, and flagged ``truncated``.
3. ``crc32`` of the 20 head bytes and the payload, then one ``struct.pack_into`` writes the
   whole 256-byte slot (zero padding included, so a stale longer payload never lingers).
   ``pack_into`` is one C call holding the GIL: another thread of the writer never sees half a
   record. Another *process* can (a reader racing the writer): the CRC tells it so.

There is no lock on this path. Until the store attaches the file (``attach``) the same ring
lives in a ``bytearray``: read-only stores, and an ``Observability`` used alone, keep their
events in memory with exactly the same code.

Typed recorders (``BlackBox.recorder(event_type, *field_names)``) take the values positionally
and skip building the dict and the key tuple: the store uses one for ``commit``, its one event
per commit, where the generic keyword form would cost about twice as much.

Sessions and crashes
--------------------
Sequence numbers continue across the writers that attach one after another, so the ring
always reads oldest-first by ``seq``. The file header says whether its last writer closed it.
When a writer attaches a ring whose previous writer did not (kill -9, SIGSEGV, abort, OOM
killer, power loss), it first saves that ring, and the traceback that ``faulthandler`` wrote
after the records, as an ordinary dump (reason ``"previous writer ... ended without closing
the store"``): a crash loop that restarts the writer at once cannot overwrite the evidence.

Dump format (the original's ``black_box.rs`` shape, plus ngstore keys)
---------------------------------------------------------------------
::

    {"timestamp_us": <int, Unix µs>,
     "stats": {"capacity", "current_size", "total_recorded", "total_dropped"},
     "events": [{"event_type": "<str>", "timestamp_us": <int>,
                 "data": [["key", "value"], ...]}, ...],       # oldest first, values as str
     "format": "ngstore-blackbox/1", "reason": "<why>", "pid": <int>,
     "store_path": "<path>", "store_stats": {...} | null, "exception": {...} | null}

plus, for a dump made from a ring file, ``"ring"`` (its header: writer pid, state, capacity,
records that failed their CRC) and ``"fatal_error"`` (faulthandler's text, or null).

The original writes the event type externally tagged (``"QuotaExceeded"`` or
``{"Custom": "name"}``); ngstore's event types are its own lower-case vocabulary
(``"commit"``, ``"quota_refused"`` ...), so they are written as plain strings, which is the
unit-variant form of that schema.

Dump files are ``blackbox-<unix_ms>-<pid>-<n>.json`` (``.json.zst`` when compressed), ``n`` a
per-process counter: two dumps in the same millisecond from one process, or from two
processes, never share a name (the original's ``neurograph_crash_dump_<unix_seconds>.json``
overwrote itself on two panics in one second).
"""
from __future__ import annotations

import itertools
import json
import marshal
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..fileio import DEFAULT_IO, PRIVATE_MODE, FileIO

__all__ = [
    "DUMP_FORMAT",
    "RING_FILE",
    "BlackBox",
    "RingInfo",
    "decode_payload",
    "dump_file_name",
    "encode_payload",
    "list_dumps",
    "load_dump",
    "read_ring",
    "write_dump_file",
]

DUMP_FORMAT = "ngstore-blackbox/1"
#: The largest dump ``load_dump`` decompresses (a dump of the largest ring is far smaller).
MAX_DUMP_BYTES = 1 << 30
_DUMP_PREFIX = "blackbox-"
_dump_counter = itertools.count()

# ----------------------------------------------------------------------------- the ring file
#: The ring's file name in the store directory (docs/format.md §8.1).
RING_FILE = "blackbox.ring"
RING_MAGIC = b"NGBLKBOX"
RING_VERSION = 1
#: The file header occupies one page; the records start at this offset.
HEADER_BYTES = 4096
RECORD_BYTES = 256
#: ``magic, version, header_bytes, record_bytes, capacity, pid, state, attached_unix_ns,
#: session_first_seq, cleared_before_seq, cleared_dropped, flags`` then a CRC of those 68 bytes.
_FILE_HEAD = struct.Struct("<8sIIIIIIqQQQI")
_FILE_CRC = struct.Struct("<I")
FILE_HEAD_BYTES = _FILE_HEAD.size + _FILE_CRC.size          # 72
STATE_OPEN = 1          # a writer has the ring attached
STATE_CLOSED = 2        # its writer closed it
FLAG_FAULT_TEXT = 1     # faulthandler writes its text after the last record
#: record head without its CRC: payload length, flags, seq, unix_ns
_REC_HEAD = struct.Struct("<HHQq")
REC_HEAD_BYTES = 4 + _REC_HEAD.size                          # 24
PAYLOAD_MAX = RECORD_BYTES - REC_HEAD_BYTES                  # 232
_REC = struct.Struct(f"<I{RECORD_BYTES - 4}s")               # CRC, then head + payload, padded
REC_TRUNCATED = 1       # record flag: values were shortened (or stringified) to fit
MARSHAL_VERSION = 2

assert _FILE_HEAD.size == 68 and REC_HEAD_BYTES == 24 and _REC.size == RECORD_BYTES

_PLAIN = (int, float, str, bool, type(None), bytes)


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not lose the event
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def encode_payload(event_type: str, keys: tuple[str, ...], values: tuple[Any, ...]) -> tuple[bytes, int]:
    """The slow path of an event's payload: ``(payload, record flags)``.

    Used when marshal refused a value or the payload is longer than a slot: every value that
    is not a plain scalar becomes its ``str``; if that is still too long, each value string
    is cut to an equal share of the room and the record is flagged ``REC_TRUNCATED``."""
    flags = 0
    if not all(type(v) in _PLAIN for v in values):
        values = tuple(v if type(v) in _PLAIN else _str(v) for v in values)
        flags = REC_TRUNCATED
    event_type = _str(event_type)
    p = marshal.dumps((event_type, keys, values), MARSHAL_VERSION)
    if len(p) <= PAYLOAD_MAX:
        return p, flags
    texts = [v if isinstance(v, str) else _str(v) for v in values]
    for share in (64, 32, 16, 8, 4, 1, 0):
        cut = tuple(t if len(t) <= share else t[:max(share - 1, 0)] + "…" for t in texts)
        keys_cut = tuple(k[:32] for k in keys)
        p = marshal.dumps((event_type[:64], keys_cut, cut), MARSHAL_VERSION)
        if len(p) <= PAYLOAD_MAX:
            return p, REC_TRUNCATED
    # too many fields even for empty strings: keep the type and as many fields as fit
    n = len(keys)
    while n > 0:
        n -= 1
        p = marshal.dumps((event_type[:64], tuple(k[:32] for k in keys[:n]), ("",) * n),
                          MARSHAL_VERSION)
        if len(p) <= PAYLOAD_MAX:
            return p, REC_TRUNCATED
    return marshal.dumps((event_type[:64], (), ()), MARSHAL_VERSION), REC_TRUNCATED


# --------------------------------------------------------------------------- payload reading
class _Bad(ValueError):
    pass


def _read_value(b: bytes, i: int, depth: int = 0) -> tuple[Any, int]:
    """One value of the marshal v2 subset of docs/format.md §8.1.1 (never ``marshal.loads``:
    marshal is not meant for untrusted bytes, and a ring is read after crashes)."""
    if depth > 8 or i >= len(b):
        raise _Bad("payload ends early or nests too deep")
    t = b[i]
    i += 1
    if t == 0x4E:   # 'N'
        return None, i
    if t == 0x54:   # 'T'
        return True, i
    if t == 0x46:   # 'F'
        return False, i
    if t == 0x69:   # 'i' int32
        return struct.unpack_from("<i", b, i)[0], i + 4
    if t == 0x6C:   # 'l' arbitrary int: i32 digit count (sign), u16 digits base 2**15
        (n,) = struct.unpack_from("<i", b, i)
        i += 4
        if abs(n) > PAYLOAD_MAX:
            raise _Bad("integer too long")
        digits = struct.unpack_from(f"<{abs(n)}H", b, i)
        i += 2 * abs(n)
        v = 0
        for digit in reversed(digits):
            v = (v << 15) | digit
        return (-v if n < 0 else v), i
    if t == 0x67:   # 'g' float64
        return struct.unpack_from("<d", b, i)[0], i + 8
    if t == 0x79:   # 'y' complex: two float64
        re_, im = struct.unpack_from("<dd", b, i)
        return complex(re_, im), i + 16
    if t in (0x75, 0x73):   # 'u' str (UTF-8), 's' bytes: u32 length
        (n,) = struct.unpack_from("<I", b, i)
        i += 4
        if i + n > len(b):
            raise _Bad("string runs past the payload")
        raw = b[i:i + n]
        return (raw.decode("utf-8", "surrogatepass") if t == 0x75 else bytes(raw)), i + n
    if t in (0x28, 0x5B, 0x3C, 0x3E):   # '(' tuple, '[' list, '<' set, '>' frozenset
        (n,) = struct.unpack_from("<I", b, i)
        i += 4
        if n > PAYLOAD_MAX:
            raise _Bad("container too long")
        items = []
        for _ in range(n):
            v, i = _read_value(b, i, depth + 1)
            items.append(v)
        if t == 0x28:
            return tuple(items), i
        if t == 0x5B:
            return items, i
        try:
            return (set(items) if t == 0x3C else frozenset(items)), i
        except TypeError as exc:
            raise _Bad("unhashable set item") from exc
    if t == 0x7B:   # '{' dict: key, value ... '0'
        d: dict[Any, Any] = {}
        while True:
            if i >= len(b):
                raise _Bad("dict runs past the payload")
            if b[i] == 0x30:
                return d, i + 1
            k, i = _read_value(b, i, depth + 1)
            v, i = _read_value(b, i, depth + 1)
            try:
                d[k] = v
            except TypeError as exc:
                raise _Bad("unhashable dict key") from exc
    raise _Bad(f"type byte 0x{t:02x} is not in the black box's marshal subset")


def decode_payload(payload: bytes) -> tuple[str, tuple[Any, ...], tuple[Any, ...]]:
    """``(event_type, keys, values)`` of a record payload; ``ValueError`` if malformed."""
    try:
        v, end = _read_value(payload, 0)
    except struct.error as exc:
        raise ValueError(f"malformed payload: {exc}") from None
    if end != len(payload) or not (isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], str)
                                   and isinstance(v[1], tuple) and isinstance(v[2], tuple)):
        raise ValueError("malformed payload: not (event_type, keys, values)")
    keys, values = v[1], v[2]
    if len(keys) < len(values):   # a typed recorder called with too many values
        keys = keys + tuple(f"_{i}" for i in range(len(keys), len(values)))
    elif len(values) < len(keys):  # ... or too few
        values = values + ("<missing>",) * (len(keys) - len(values))
    return v[0], keys, values


@dataclass
class _Event:
    seq: int
    unix_ns: int
    event_type: str
    keys: tuple[Any, ...]
    values: tuple[Any, ...]
    flags: int

    def as_json(self) -> dict[str, Any]:
        data = [[_str(k), _str(v)] for k, v in zip(self.keys, self.values, strict=True)]
        if self.flags & REC_TRUNCATED:
            data.append(["truncated", "True"])
        return {"event_type": self.event_type, "timestamp_us": self.unix_ns // 1000, "data": data}


def _scan_records(buf: Any, capacity: int, cleared_before: int = 0) -> tuple[list[_Event], int]:
    """Valid records of a ring image, oldest first, and the number that failed a check."""
    events: list[_Event] = []
    bad = 0
    view = memoryview(buf)
    unpack = _REC_HEAD.unpack_from
    for i in range(capacity):
        off = HEADER_BYTES + i * RECORD_BYTES
        if off + RECORD_BYTES > len(view):
            break
        (crc,) = _FILE_CRC.unpack_from(view, off)
        n, flags, seq, unix_ns = unpack(view, off + 4)
        if crc == 0 and n == 0 and seq == 0 and unix_ns == 0:
            continue   # never written
        if n > PAYLOAD_MAX or zlib.crc32(view[off + 4:off + REC_HEAD_BYTES + n]) != crc:
            bad += 1   # torn by a crash in the middle of the copy, or damaged
            continue
        if seq % capacity != i:
            bad += 1   # a valid record of sequence s lies at slot s mod capacity (format §8.1)
            continue
        if seq < cleared_before:
            continue
        try:
            et, keys, values = decode_payload(bytes(view[off + REC_HEAD_BYTES:off + REC_HEAD_BYTES + n]))
        except ValueError:
            bad += 1
            continue
        events.append(_Event(seq, unix_ns, et, keys, values, flags))
    view.release()
    events.sort(key=lambda e: e.seq)
    return events, bad


@dataclass
class RingInfo:
    """The header of a ring file, as read by :func:`read_ring`."""

    path: str
    capacity: int
    pid: int
    state: int
    attached_unix_ns: int
    session_first_seq: int
    cleared_before_seq: int
    cleared_dropped: int
    flags: int
    bad_records: int = 0

    @property
    def closed(self) -> bool:
        return self.state == STATE_CLOSED

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "capacity": self.capacity, "writer_pid": self.pid,
                "state": "closed" if self.closed else "open",
                "attached_unix_ns": self.attached_unix_ns, "session_first_seq": self.session_first_seq,
                "bad_records": self.bad_records}


def _parse_file_head(data: bytes, path: str) -> RingInfo:
    if len(data) < FILE_HEAD_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than a black-box ring header")
    f = _FILE_HEAD.unpack_from(data, 0)
    (crc,) = _FILE_CRC.unpack_from(data, _FILE_HEAD.size)
    if f[0] != RING_MAGIC:
        raise ValueError(f"{path} is not a black-box ring (magic {f[0]!r})")
    if zlib.crc32(data[:_FILE_HEAD.size]) != crc:
        raise ValueError(f"{path}: the ring header fails its CRC")
    if f[1] != RING_VERSION:
        raise ValueError(f"{path}: black-box ring version {f[1]}; this ngstore reads version "
                         f"{RING_VERSION} -- upgrade ngstore")
    if f[2] != HEADER_BYTES or f[3] != RECORD_BYTES or not 1 <= f[4] <= 1 << 24:
        raise ValueError(f"{path}: unexpected ring geometry (header {f[2]}, record {f[3]}, "
                         f"capacity {f[4]})")
    return RingInfo(path, capacity=f[4], pid=f[5], state=f[6], attached_unix_ns=f[7],
                    session_first_seq=f[8], cleared_before_seq=f[9], cleared_dropped=f[10],
                    flags=f[11])


def _file_head(capacity: int, pid: int, state: int, attached_ns: int, first_seq: int,
               cleared_before: int, cleared_dropped: int, flags: int) -> bytes:
    head = _FILE_HEAD.pack(RING_MAGIC, RING_VERSION, HEADER_BYTES, RECORD_BYTES, capacity, pid,
                           state, attached_ns, first_seq, cleared_before, cleared_dropped, flags)
    return head + _FILE_CRC.pack(zlib.crc32(head))


def _ring_image_bytes(capacity: int) -> int:
    return HEADER_BYTES + capacity * RECORD_BYTES


def read_ring(store_dir: str, *, io: FileIO = DEFAULT_IO) -> tuple[RingInfo, list[dict[str, Any]], str | None]:
    """Read ``store_dir/blackbox.ring`` (any time: live writer, closed or crashed):
    ``(header, events oldest first in the dump's event shape, faulthandler text or None)``.

    ``FileNotFoundError`` if there is no ring; ``ValueError`` if the file is not a ring of a
    version this code reads. Records that fail their CRC (a copy torn by a crash, or one the
    writer is rewriting right now) are skipped and counted in ``bad_records``."""
    path = os.path.join(store_dir, RING_FILE)
    data = io.read_file(path)
    info = _parse_file_head(data, path)
    end = _ring_image_bytes(info.capacity)
    events, bad = _scan_records(data, info.capacity, info.cleared_before_seq)
    info.bad_records = bad
    text = data[end:].split(b"\0", 1)[0].decode("utf-8", "replace") if len(data) > end else ""
    return info, [e.as_json() for e in events], (text or None)


def _peek(counter: itertools.count[int]) -> int:
    """The next value of an ``itertools.count`` without taking it (its repr is ``count(N)``;
    copying the iterator is deprecated since 3.12)."""
    return int(repr(counter)[6:-1])


class BlackBox:
    """A bounded ring of events with recorded/dropped counters; see the module docstring.

    ``record`` costs one marshal, one CRC and one ``pack_into`` (measured in
    docs/observability.md §8). ``clear()`` empties the ring but keeps the counters, as the
    original does. ``attach`` moves the ring into the store's file.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"black box capacity must be >= 1, got {capacity!r}")
        if capacity > 1 << 24:
            raise ValueError(f"black box capacity must be <= {1 << 24}, got {capacity}")
        self.capacity = capacity
        self._buf: Any = bytearray(_ring_image_bytes(capacity))
        self._seq = itertools.count()
        self._first = 0            # first seq of this session
        self._low = 0              # oldest seq that may be in the ring (earlier sessions)
        self._cleared_before = 0   # records below this seq are cleared
        self._cleared_dropped = 0  # dropped count frozen at the last clear
        self._lock = threading.Lock()  # clear/attach/detach only, never record
        self._mm: mmap.mmap | None = None
        self._fd: int | None = None
        self._io: FileIO | None = None
        self._path: str | None = None
        self._pid = 0
        self._attached_ns = 0
        self._flags = 0
        self.record: Callable[..., None] = self._make_record()

    @property
    def memory_bytes(self) -> int:
        """Bytes the ring occupies (in memory, or mapped from ``blackbox.ring``)."""
        return _ring_image_bytes(self.capacity)

    # ---------------------------------------------------------------- hot path
    def _make_record(self) -> Callable[..., None]:
        # Everything the hot path touches is a closure cell (LOAD_DEREF), never a global
        # or an attribute: each global lookup costs ~20 ns, a tenth of the budget.
        buf, cap, seq_iter = self._buf, self.capacity, self._seq
        next_, dumps, head, now, crc32, pack = _next, _dumps, _head, _time_ns, _crc32, _pack
        base, slot, room = HEADER_BYTES, RECORD_BYTES, PAYLOAD_MAX

        prefixes: dict[tuple[Any, ...], bytes] = {}   # (type, *keys) -> marshalled start

        def record(event_type: str, /, **data: Any) -> None:
            """Record one event; the oldest is overwritten when the ring is full. Never
            raises on data."""
            seq = next_(seq_iter)
            try:
                # marshal v2 of (type, keys, values) = '(' i32 3, type, keys, values: the
                # first three parts are the same for every event of a call site, and
                # marshalling strings is the slow part, so they are cached by their names.
                key = (event_type, *data)
                p = prefixes[key] + dumps(tuple(data.values()), 2)
                n = len(p)
                flags = 0
                if n > room:
                    p, flags = encode_payload(event_type, tuple(data), tuple(data.values()))
                    n = len(p)
            except KeyError:
                p, flags = _first_of_kind(prefixes, event_type, data)
                n = len(p)
            except (ValueError, TypeError):
                p, flags = encode_payload(event_type, tuple(data), tuple(data.values()))
                n = len(p)
            rec = head(n, flags, seq, now()) + p
            pack(buf, base + seq % cap * slot, crc32(rec), rec)

        return record

    def recorder(self, event_type: str, *field_names: str) -> Callable[..., None]:
        """A recorder of one event type with fixed fields, called with the values in order
        (positionally): ``commit = bb.recorder("commit", "batches", "records"); commit(1, 20)``
        writes the same record as ``record("commit", batches=1, records=20)`` at a lower cost
        (no dict, and the type and key names are marshalled once). Valid until
        ``attach``/``detach`` (``Observability`` rebuilds its recorders then)."""
        keys = tuple(str(k) for k in field_names)
        prefix = _prefix(event_type, keys)
        buf, cap, seq_iter = self._buf, self.capacity, self._seq
        next_, dumps, head, now, crc32, pack = _next, _dumps, _head, _time_ns, _crc32, _pack
        base, slot, room = HEADER_BYTES, RECORD_BYTES, PAYLOAD_MAX

        def record_typed(*values: Any) -> None:
            seq = next_(seq_iter)
            try:
                p = prefix + dumps(values, 2)
                n = len(p)
                flags = 0
                if n > room:
                    p, flags = encode_payload(event_type, keys, values)
                    n = len(p)
            except ValueError:
                p, flags = encode_payload(event_type, keys, values)
                n = len(p)
            rec = head(n, flags, seq, now()) + p
            pack(buf, base + seq % cap * slot, crc32(rec), rec)

        return record_typed

    # ---------------------------------------------------------------- reading
    def _counters(self) -> tuple[int, int, int, int]:
        """(next seq, recorded, dropped, current size)."""
        nxt = _peek(self._seq)
        recorded = nxt - self._first
        low_c = max(self._first, self._cleared_before)
        dropped = self._cleared_dropped + max(0, nxt - self.capacity - low_c)
        size = min(self.capacity, nxt - max(self._low, self._cleared_before))
        return nxt, recorded, dropped, max(size, 0)

    def __len__(self) -> int:
        return self._counters()[3]

    def is_empty(self) -> bool:
        return len(self) == 0

    def stats(self) -> dict[str, int]:
        """``{capacity, current_size, total_recorded, total_dropped}``: ``total_*`` count this
        session's events (since this ``BlackBox`` was made); ``current_size`` counts what the
        ring holds, events of earlier writers of the same file included."""
        _nxt, recorded, dropped, size = self._counters()
        return {"capacity": self.capacity, "current_size": size, "total_recorded": recorded,
                "total_dropped": dropped}

    def _events(self) -> list[_Event]:
        with self._lock:
            image = bytes(self._buf)   # one copy; recorders may go on writing meanwhile
            cleared = self._cleared_before
        return _scan_records(image, self.capacity, cleared)[0]

    def get_events(self) -> list[dict[str, Any]]:
        """A copy of the ring, oldest first, in the dump's event shape."""
        return [e.as_json() for e in self._events()]

    def clear(self) -> None:
        """Empty the ring; ``total_recorded`` and ``total_dropped`` keep their values."""
        with self._lock:
            _nxt, _rec, dropped, _size = self._counters()
            self._cleared_dropped = dropped
            self._cleared_before = _peek(self._seq)
            self._write_file_head(STATE_OPEN)

    def to_dump(self, *, reason: str, store_path: str | None = None,
                store_stats: dict[str, Any] | None = None,
                exception: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dump document (a JSON-ready dict) for the ring as it is now."""
        events = self.get_events()
        stats = self.stats()
        stats["current_size"] = len(events)
        return {
            "timestamp_us": time.time_ns() // 1000,
            "stats": stats,
            "events": events,
            "format": DUMP_FORMAT,
            "reason": reason,
            "pid": os.getpid(),
            "store_path": store_path,
            "store_stats": store_stats,
            "exception": exception,
        }

    # ---------------------------------------------------------------- the file
    @property
    def path(self) -> str | None:
        """The ring file while attached, else None (the ring is in memory)."""
        return self._path

    @property
    def fault_fd(self) -> int | None:
        """A descriptor positioned after the last record, for ``faulthandler`` (attached only)."""
        return self._fd

    def _write_file_head(self, state: int) -> None:
        if self._mm is None:
            return
        self._mm[:FILE_HEAD_BYTES] = _file_head(self.capacity, self._pid, state, self._attached_ns,
                                                max(self._first, 0), self._cleared_before,
                                                self._cleared_dropped, self._flags)

    def attach(self, store_dir: str, *, io: FileIO = DEFAULT_IO, mode: int = PRIVATE_MODE) -> dict[str, Any] | None:
        """Move the ring into ``store_dir/blackbox.ring`` (created or reused) and go on there.

        Events recorded so far are carried over. If the file's previous writer did not
        close it, returns that ring as a dump document (reason, events, ``fatal_error``) for
        the caller to save; else None. The sequence continues after the file's newest record.
        Raises ``OSError`` (the ring stays in memory) if the file cannot be set up."""
        if self._mm is not None:
            raise RuntimeError("the black box is already attached")
        path = os.path.join(store_dir, RING_FILE)
        size = _ring_image_bytes(self.capacity)
        # O_APPEND: faulthandler, given this descriptor, writes after the last record
        fd = io.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, mode)
        try:
            old = io.pread(fd, io.file_size(fd), 0)
            salvaged, old_events_raw, next_seq = _take_over(old, path, self.capacity)
            io.truncate(fd, 0)      # drops a previous faulthandler text (salvaged above)
            io.allocate(fd, size)   # a zero-filled ring backed by disk blocks: on a full disk
            #                         this fails (ENOSPC), where a store into a hole of the
            #                         mapping would kill the process with SIGBUS
            mm = io.map_file(fd, size)
        except BaseException:
            io.close(fd)
            raise
        with self._lock:
            # carry over the file's records (earlier writers) at their slots, then ours
            for raw in old_events_raw:
                seq = _REC_HEAD.unpack_from(raw, 4)[2]
                off = HEADER_BYTES + seq % self.capacity * RECORD_BYTES
                mm[off:off + RECORD_BYTES] = raw
            low = min((_REC_HEAD.unpack_from(r, 4)[2] for r in old_events_raw), default=next_seq)
            mine = _scan_records(bytes(self._buf), self.capacity, self._cleared_before)[0]
            seq_iter = itertools.count(next_seq + len(mine))
            for k, e in enumerate(mine):
                p, flags = _encode_event(e)
                rec = _REC_HEAD.pack(len(p), flags, next_seq + k, e.unix_ns) + p
                _REC.pack_into(mm, HEADER_BYTES + (next_seq + k) % self.capacity * RECORD_BYTES,
                               zlib.crc32(rec), rec)
            recorded_before = _peek(self._seq) - self._first
            self._first = next_seq + len(mine) - recorded_before
            self._low = low
            self._cleared_before = next_seq if self._cleared_before else 0
            self._seq = seq_iter
            self._buf, self._mm, self._fd, self._io, self._path = mm, mm, fd, io, path
            self._pid = os.getpid()
            self._attached_ns = time.time_ns()
            self._flags = 0
            self._write_file_head(STATE_OPEN)
            self.record = self._make_record()
        return salvaged

    def set_fault_text_flag(self, on: bool) -> None:
        """Note in the header whether faulthandler writes after the records (attached only)."""
        with self._lock:
            self._flags = (self._flags | FLAG_FAULT_TEXT) if on else (self._flags & ~FLAG_FAULT_TEXT)
            self._write_file_head(STATE_OPEN)

    def detach(self, *, mark_closed: bool = True) -> None:
        """Mark the file closed cleanly and go on in memory. Idempotent. Without
        ``mark_closed`` the file is left as it is (a child made by fork() leaves the
        parent's ring alone: the mapping is shared).

        The mapping is not closed here but dropped: a thread that took the old ``record``
        just before (an application thread racing the store's close) then still writes a
        valid record into the file instead of failing on a closed mapping. The kernel unmaps
        it when the last reference goes."""
        with self._lock:
            mm, fd, io = self._mm, self._fd, self._io
            if mm is None or fd is None or io is None:
                return
            if mark_closed:
                self._write_file_head(STATE_CLOSED)
            self._buf = bytearray(mm)
            self._mm = self._fd = self._io = self._path = None
            self.record = self._make_record()
        io.close(fd)   # the mapping keeps its own reference to the file

    def inherited_in_child(self) -> None:
        """In a child made by fork(): goes on in memory and leaves the ring file, the
        parent's (the mapping is shared), as it is."""
        self._lock = threading.Lock()  # a thread of the parent may have held it
        self.detach(mark_closed=False)

    def __repr__(self) -> str:
        where = self._path or "memory"
        return f"BlackBox(capacity={self.capacity}, events={len(self)}, in {where})"


def _prefix(event_type: Any, keys: tuple[str, ...]) -> bytes:
    """The marshal v2 bytes of ``(event_type, keys, values)`` that precede ``values``."""
    return b"(" + struct.pack("<i", 3) + marshal.dumps(event_type, 2) + marshal.dumps(keys, 2)


def _first_of_kind(prefixes: dict[tuple[Any, ...], bytes], event_type: Any,
                   data: dict[str, Any]) -> tuple[bytes, int]:
    """``record``'s path for an event type and key set not seen before (or not cacheable)."""
    keys, values = tuple(data), tuple(data.values())
    try:
        pre = _prefix(event_type, keys)
        if len(prefixes) < 1024:   # call sites are few; a caller inventing names is bounded
            key = (event_type, *keys)
            prefixes[key] = pre
        p = pre + marshal.dumps(values, MARSHAL_VERSION)
    except (ValueError, TypeError):
        return encode_payload(event_type, keys, values)
    if len(p) > PAYLOAD_MAX:
        return encode_payload(event_type, keys, values)
    return p, 0


def _encode_event(e: _Event) -> tuple[bytes, int]:
    try:
        p = marshal.dumps((e.event_type, e.keys, e.values), MARSHAL_VERSION)
        if len(p) <= PAYLOAD_MAX:
            return p, e.flags
    except ValueError:
        pass
    p, flags = encode_payload(e.event_type, tuple(_str(k) for k in e.keys), e.values)
    return p, flags | e.flags


def _take_over(old: bytes, path: str, capacity: int) -> tuple[dict[str, Any] | None, list[bytes], int]:
    """What a new writer keeps of an existing ring file: ``(dump of an unclosed previous
    session or None, raw records to carry over, next sequence number)``."""
    if not old:
        return None, [], 0
    try:
        info = _parse_file_head(old, path)
    except ValueError as exc:
        # not ours to read (another version, or damage): keep it as a dump-less fact
        return ({"reason": f"unreadable black-box ring replaced: {exc}", "events": [],
                 "ring": None, "fatal_error": None}, [], 0)
    events, bad = _scan_records(old, info.capacity, 0)
    info.bad_records = bad
    end = _ring_image_bytes(info.capacity)
    text = old[end:].split(b"\0", 1)[0].decode("utf-8", "replace") if len(old) > end else ""
    next_seq = max([e.seq + 1 for e in events] + [info.cleared_before_seq, info.session_first_seq])
    salvaged = None
    if info.state != STATE_CLOSED or text:
        shown = [e for e in events if e.seq >= info.cleared_before_seq]
        salvaged = {"reason": f"previous writer (pid {info.pid}) ended without closing the store",
                    "events": [e.as_json() for e in shown], "ring": info.as_json(),
                    "fatal_error": text or None, "pid": info.pid,
                    "stats": {"capacity": info.capacity, "current_size": len(shown),
                              "total_recorded": max(0, next_seq - info.session_first_seq),
                              "total_dropped": max(0, next_seq - info.session_first_seq - len(shown))}}
    # raw records to carry over: the newest `capacity` valid ones
    keep = events[-capacity:]
    raws = []
    for e in keep:
        off = HEADER_BYTES + e.seq % info.capacity * RECORD_BYTES
        raws.append(old[off:off + RECORD_BYTES])
    return salvaged, raws, next_seq


# module-level bindings used by the hot path (locals of the closures are faster still)
_next = next
_dumps = marshal.dumps
_crc32 = zlib.crc32
_time_ns = time.time_ns
_head = _REC_HEAD.pack
_pack = _REC.pack_into


# --------------------------------------------------------------------------- dump files
def dump_file_name(*, compressed: bool = False) -> str:
    """``blackbox-<unix_ms>-<pid>-<n>.json[.zst]``; unique within and across processes."""
    return (f"{_DUMP_PREFIX}{time.time_ns() // 1_000_000}-{os.getpid()}-{next(_dump_counter)}"
            + (".json.zst" if compressed else ".json"))


def _json_safe(obj: Any) -> Any:
    """Fallback for ``json.dumps``: numpy scalars, paths and the like become numbers/strings."""
    for conv in (int, float):
        try:
            if hasattr(obj, "item"):
                return obj.item()
            return conv(obj)
        except Exception:
            continue
    return _str(obj)


def encode_dump(doc: dict[str, Any], *, compressed: bool = False) -> bytes:
    """Serialise a dump document: pretty JSON (as the original), optionally zstd-framed."""
    data = json.dumps(doc, indent=2, default=_json_safe, ensure_ascii=False).encode() + b"\n"
    if compressed:
        import zstandard  # a core dependency; imported here to keep it off the import path

        data = zstandard.ZstdCompressor(level=3).compress(data)
    return data


def write_dump_file(directory: str, doc: dict[str, Any], *, compressed: bool = False,
                    name: str | None = None, io: FileIO = DEFAULT_IO, mode: int = PRIVATE_MODE) -> str:
    """Write ``doc`` into ``directory`` atomically through ``io``, with permission bits
    ``mode`` (the store's); return the file's path."""
    path = os.path.join(directory, name or dump_file_name(compressed=compressed))
    io.atomic_write(path, encode_dump(doc, compressed=compressed), mode)
    return path


def list_dumps(store_dir: str, io: FileIO = DEFAULT_IO) -> list[str]:
    """Paths of the black-box dumps in ``store_dir``, oldest first by modification time
    (the ring file itself is not a dump: see :func:`read_ring`)."""
    try:
        names = io.listdir(store_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[tuple[float, str]] = []
    for name in names:
        if not name.startswith(_DUMP_PREFIX) or ".tmp" in name:
            continue
        if not (name.endswith(".json") or name.endswith(".json.zst")):
            continue
        path = os.path.join(store_dir, name)
        try:
            mtime = io.mtime(path)
        except OSError:
            continue
        if mtime is not None:
            out.append((mtime, path))
    return [p for _, p in sorted(out)]


def load_dump(path: str, io: FileIO = DEFAULT_IO) -> dict[str, Any]:
    """Read a dump (``.json`` or ``.json.zst``). Raises ``ValueError`` on a file that is not
    a black-box dump, ``OSError`` if it cannot be read."""
    raw = io.read_file(path)
    if path.endswith(".zst") or raw[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        # Streamed, not decompress(): that allocates the content size the frame header
        # declares (up to its limit) before it has decompressed a byte.
        parts, total = [], 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                while part := reader.read(1 << 20):
                    total += len(part)
                    if total > MAX_DUMP_BYTES:
                        raise ValueError(f"{path}: decompresses to more than {MAX_DUMP_BYTES} bytes")
                    parts.append(part)
        except zstandard.ZstdError as exc:
            raise ValueError(f"{path}: not a zstd frame: {exc}") from None
        raw = b"".join(parts)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "events" not in doc or "stats" not in doc:
        raise ValueError(f"{path} is not a black-box dump (no 'events'/'stats')")
    # The shape its readers rely on (the CLI, iter_event_types): anything else is not a dump.
    events, stamp = doc["events"], doc.get("timestamp_us")
    if not isinstance(doc["stats"], dict) or not isinstance(events, list) or \
            not all(isinstance(e, dict) and "event_type" in e for e in events) or \
            not (stamp is None or (isinstance(stamp, int) and not isinstance(stamp, bool))):
        raise ValueError(f"{path} is not a black-box dump (its 'stats', 'events' or 'timestamp_us' "
                         "are not of a dump's shape)")
    return doc


def iter_event_types(doc: dict[str, Any]) -> Iterable[str]:
    """The event types of a loaded dump, oldest first (a convenience for tests and the CLI)."""
    return (e["event_type"] if isinstance(e["event_type"], str) else json.dumps(e["event_type"])
            for e in doc.get("events", []))
