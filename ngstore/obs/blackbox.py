"""The black box: a bounded ring of the store's last events, dumped to a file on a crash.

Recording
---------
``BlackBox.record(event_type, **data)`` appends one tuple ``(seq, unix_ns, event_type, data)``
to a ``collections.deque(maxlen=capacity)``. Nothing is formatted on the hot path: the event
type stays the caller's string and ``data`` the caller's keyword dict; both become strings only
when a dump is written. A full ring drops its oldest event (the deque does it in C).

There is no lock on the hot path. ``deque.append`` and ``next(itertools.count)`` are each one
C call under the GIL, so concurrent recorders cannot corrupt the ring or reuse a sequence
number. The counters are derived rather than incremented: ``total_recorded`` is the sequence
number of the newest event plus one (or the value saved by the last ``clear()`` when the ring is
empty), and ``total_dropped`` is what was recorded but is neither in the ring nor cleared. A
``+= 1`` counter was rejected: it is three bytecodes and loses updates between threads.

Dump format (the original's ``black_box.rs`` shape, plus ngstore keys)
---------------------------------------------------------------------
::

    {"timestamp_us": <int, Unix µs>,
     "stats": {"capacity", "current_size", "total_recorded", "total_dropped"},
     "events": [{"event_type": "<str>", "timestamp_us": <int>,
                 "data": [["key", "value"], ...]}, ...],       # oldest first, values as str
     "format": "ngstore-blackbox/1", "reason": "<why>", "pid": <int>,
     "store_path": "<path>", "store_stats": {...} | null, "exception": {...} | null}

The original writes the event type externally tagged (``"QuotaExceeded"`` or
``{"Custom": "name"}``); ngstore's event types are its own lower-case vocabulary
(``"commit"``, ``"quota_refused"`` ...), so they are written as plain strings, which is the
unit-variant form of that schema.

File names are ``blackbox-<unix_ms>-<pid>-<n>.json`` (``.json.zst`` when compressed), ``n`` a
per-process counter: two dumps in the same millisecond from one process, or from two
processes, never share a name (the original's ``neurograph_crash_dump_<unix_seconds>.json``
overwrote itself on two panics in one second). The periodic ring flush used for fatal signals
writes ``blackbox-ring-<pid>.json`` (see ``ngstore.obs.Observability.install_crash_handlers``).
"""
from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import deque
from typing import Any, Iterable

__all__ = ["BlackBox", "DUMP_FORMAT", "dump_file_name", "write_dump_file", "list_dumps",
           "load_dump"]

DUMP_FORMAT = "ngstore-blackbox/1"
_DUMP_PREFIX = "blackbox-"
_dump_counter = itertools.count()


class BlackBox:
    """A bounded, thread-safe ring of events with recorded/dropped counters.

    ``record`` costs one tuple, one ``time.time_ns()`` and one deque append (a few hundred
    ns in CPython). ``clear()`` empties the ring but keeps the counters, as the original does.
    """

    __slots__ = ("capacity", "_ring", "_seq", "_base_recorded", "_cleared", "_lock")

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f"black box capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._ring: deque[tuple[int, int, str, dict[str, Any]]] = deque(maxlen=self.capacity)
        self._seq = itertools.count()
        self._base_recorded = 0   # total_recorded as of the last clear(), for an empty ring
        self._cleared = 0         # events removed by clear(), not counted as dropped
        self._lock = threading.Lock()  # clear() and stats() only, never record()

    def record(self, event_type: str, /, **data: Any) -> None:
        """Append one event; drop the oldest if the ring is full. Never raises on data."""
        self._ring.append((next(self._seq), time.time_ns(), event_type, data))

    def __len__(self) -> int:
        return len(self._ring)

    def is_empty(self) -> bool:
        return not self._ring

    def _snapshot(self) -> tuple[list[tuple[int, int, str, dict[str, Any]]], dict[str, int]]:
        with self._lock:
            events = list(self._ring)  # one C call under the GIL: a consistent copy
            recorded = events[-1][0] + 1 if events else self._base_recorded
            dropped = recorded - len(events) - self._cleared
        return events, {"capacity": self.capacity, "current_size": len(events),
                        "total_recorded": recorded, "total_dropped": max(dropped, 0)}

    def stats(self) -> dict[str, int]:
        """``{capacity, current_size, total_recorded, total_dropped}``."""
        return self._snapshot()[1]

    def get_events(self) -> list[dict[str, Any]]:
        """A copy of the ring, oldest first, in the dump's event shape."""
        return [_event_json(e) for e in self._snapshot()[0]]

    def clear(self) -> None:
        """Empty the ring; ``total_recorded`` and ``total_dropped`` keep their values."""
        with self._lock:
            events = list(self._ring)
            if events:
                self._base_recorded = events[-1][0] + 1
                self._cleared += len(events)
            self._ring.clear()

    def to_dump(self, *, reason: str, store_path: str | None = None,
                store_stats: dict[str, Any] | None = None,
                exception: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dump document (a JSON-ready dict) for the ring as it is now."""
        events, stats = self._snapshot()
        return {
            "timestamp_us": time.time_ns() // 1000,
            "stats": stats,
            "events": [_event_json(e) for e in events],
            "format": DUMP_FORMAT,
            "reason": reason,
            "pid": os.getpid(),
            "store_path": store_path,
            "store_stats": store_stats,
            "exception": exception,
        }


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not lose the dump
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


def _event_json(event: tuple[int, int, str, dict[str, Any]]) -> dict[str, Any]:
    _seq, t_ns, event_type, data = event
    return {"event_type": _str(event_type), "timestamp_us": t_ns // 1000,
            "data": [[_str(k), _str(v)] for k, v in data.items()]}


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


def _atomic_write(path: str, data: bytes) -> None:
    """Write through the file seam when it exists, else write + fsync + rename + fsync dir."""
    try:
        from ngstore.fileio import DEFAULT_IO  # type: ignore[import-not-found]
    except ImportError:
        DEFAULT_IO = None
    if DEFAULT_IO is not None and hasattr(DEFAULT_IO, "atomic_write"):
        DEFAULT_IO.atomic_write(path, data)
        return
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_dump_file(directory: str, doc: dict[str, Any], *, compressed: bool = False,
                    name: str | None = None) -> str:
    """Write ``doc`` into ``directory`` atomically; return the file's path."""
    path = os.path.join(directory, name or dump_file_name(compressed=compressed))
    _atomic_write(path, encode_dump(doc, compressed=compressed))
    return path


def list_dumps(store_dir: str) -> list[str]:
    """Paths of the black-box files in ``store_dir`` (dumps, ring flushes, faulthandler logs),
    oldest first by modification time. Empty faulthandler logs (no crash) are left out."""
    try:
        names = os.listdir(store_dir)
    except FileNotFoundError:
        return []
    out: list[tuple[float, str]] = []
    for name in names:
        if not name.startswith(_DUMP_PREFIX) or ".tmp-" in name:
            continue
        path = os.path.join(store_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if name.endswith(".log") and st.st_size == 0:
            continue
        out.append((st.st_mtime, path))
    return [p for _, p in sorted(out)]


def load_dump(path: str) -> dict[str, Any]:
    """Read a dump (``.json`` or ``.json.zst``). A faulthandler ``.log`` is returned as
    ``{"format": "faulthandler", "text": ...}``. Raises ``ValueError`` on malformed JSON."""
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".log"):
        return {"format": "faulthandler", "text": raw.decode("utf-8", "replace")}
    if path.endswith(".zst") or raw[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 30)
    doc = json.loads(raw)
    if not isinstance(doc, dict) or "events" not in doc or "stats" not in doc:
        raise ValueError(f"{path} is not a black-box dump (no 'events'/'stats')")
    return doc


def iter_event_types(doc: dict[str, Any]) -> Iterable[str]:
    """The event types of a loaded dump, oldest first (a convenience for tests and the CLI)."""
    return (e["event_type"] if isinstance(e["event_type"], str) else json.dumps(e["event_type"])
            for e in doc.get("events", []))
