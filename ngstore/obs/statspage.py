"""The stats page: the writer's live metrics in a small mapped file any process can read.

Why
---
Most of what an operator watches lives only in the writer process: commits and their
latency histograms, the log's counters, reflex lookups, the Guardian's limits, the sampler's
counters. A read-only process (the ``ngstore serve`` sidecar) reads LMDB, not the writer's
memory, so without help it shows zeros for all of those and judges quotas against its own
default limits. The writer therefore publishes them in ``stats.page`` in the store directory
(``docs/format.md`` §8.2 gives every byte), and a reader merges the page with what it reads
from LMDB itself (:data:`READER_KEYS`).

Who pays
--------
A background thread of the writer (``ngstore-stats``) publishes every ``interval`` seconds
(default 1 s) and once more at close; the commit path never touches the page. One publish
calls ``store.stats()``, encodes one 64-byte entry per value and per histogram bucket, and
copies them into the mapping (measured in docs/observability.md §8).

Consistency without a lock between processes
--------------------------------------------
A publish first makes ``generation`` odd, then writes the entries and the header, then a
CRC-32 over the header and the entries, then makes ``generation`` even. A reader copies the
page, and accepts the copy only if its generation is even and its CRC matches; otherwise it
copies again (the writer publishes once a second, so the second copy is almost always
clean). The CRC, not the generation, is what makes this safe on any CPU: a copy torn
between two publishes fails it.

Is the writer alive?
--------------------
The writer holds ``flock(LOCK_EX)`` on the page for as long as it has the store open (the
kernel drops it when the process dies, however it dies). :func:`writer_alive` asks with
``flock(LOCK_SH | LOCK_NB)`` on its own descriptor: refused means a live writer; granted (and
released at once) means none. Probes never block each other; a writer that opens while a
probe holds the shared lock for those few microseconds retries for up to a second.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..fileio import DEFAULT_IO, PRIVATE_MODE, FileIO
from ..interrupts import Signal

__all__ = [
    "PAGE_FILE",
    "READER_KEYS",
    "PublishedStats",
    "Snapshot",
    "StatsPublisher",
    "read_stats_page",
    "writer_alive",
]

_log = logging.getLogger("ngstore.obs")

PAGE_FILE = "stats.page"
PAGE_MAGIC = b"NGSTATS\x00"
PAGE_VERSION = 1
PAGE_BYTES = 32768
#: magic, version, page_bytes, entry_count, writer_pid, generation, published_unix_ns,
#: opened_unix_ns, flags, interval_ms, reserved; then the CRC (64 bytes in all)
_HEAD = struct.Struct("<8sIIIIQqqIII")
_CRC = struct.Struct("<I")
_GEN = struct.Struct("<Q")
HEAD_BYTES = _HEAD.size + _CRC.size
GEN_OFFSET = 24
#: name (ASCII, NUL-padded), kind, 7 reserved bytes, le, value
_ENTRY = struct.Struct("<40sB7xdd")
ENTRY_BYTES = _ENTRY.size
MAX_ENTRIES = (PAGE_BYTES - HEAD_BYTES) // ENTRY_BYTES     # 511
KIND_VALUE, KIND_BUCKET, KIND_SUM, KIND_COUNT = 1, 2, 3, 4
FLAG_CLOSED = 1          # the writer closed the store (its values are final)
FLAG_WRITE_FAILED = 2    # the writer stopped accepting writes after an I/O error
NAME_MAX = 40

assert HEAD_BYTES == 64 and ENTRY_BYTES == 64

#: Keys a read-only process computes itself from LMDB (fresher than the page, and exact):
#: its own values win over the writer's published ones. Everything else comes from the page.
READER_KEYS = frozenset({
    "path", "readonly", "closed", "tokens_live", "tokens_created_total", "tokens_deleted_total",
    "connections_live", "connections_created_total", "events_live", "events_written_total",
    "events_trimmed_total", "event_capacity", "applied_position", "map_used_bytes",
    "readers_used", "readers_max", "chunk_slots", "format_version",
})

#: ``([(le, cumulative count), ..., (inf, count)], count, sum)``, as ``Histogram.snapshot``.
Snapshot = tuple[list[tuple[float, int]], int, float]


def _probe(fd: int, io: FileIO) -> bool:
    """True if another descriptor holds LOCK_EX on the file (a live writer)."""
    try:
        io.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    io.flock(fd, fcntl.LOCK_UN)
    return False


def writer_alive(store_dir: str, *, io: FileIO = DEFAULT_IO) -> bool | None:
    """Whether a live writer holds ``store_dir``'s stats page; None if there is no page."""
    try:
        fd = io.open(os.path.join(store_dir, PAGE_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _probe(fd, io)
    finally:
        io.close(fd)


def _encode_name(name: str) -> bytes | None:
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return None
    return raw if 0 < len(raw) <= NAME_MAX and b"\0" not in raw else None


class StatsPublisher:
    """The writer's side: owns ``stats.page`` (created or reused), its liveness lock, and the
    thread that republishes it every ``interval`` seconds.

    ``collect()`` returns ``(values, histograms)``: numbers by stats key, and histogram
    snapshots by name. It is called from the publishing thread and from :meth:`publish`.
    Raises ``OSError`` if the page cannot be set up (the caller goes on without it).
    """

    def __init__(self, store_dir: str, collect: Callable[[], tuple[Mapping[str, float], Mapping[str, Snapshot]]],
                 *, io: FileIO = DEFAULT_IO, interval: float = 1.0, mode: int = PRIVATE_MODE) -> None:
        if not interval > 0:
            raise ValueError(f"stats interval must be > 0 seconds, got {interval!r}")
        self.path = os.path.join(store_dir, PAGE_FILE)
        self.interval = float(interval)
        self._collect = collect
        self._io = io
        self._lock = threading.Lock()
        self._stop = Signal()  # set by a closing thread an interrupt may stop (interrupts.py)
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._opened_ns = time.time_ns()
        self._last: tuple[Mapping[str, float], Mapping[str, Snapshot]] = ({}, {})
        self._failed = False
        self._warned: set[str] = set()
        self.publish_count = 0
        fd = io.open(self.path, os.O_RDWR | os.O_CREAT, mode)
        try:
            self._lock_page(fd)
            io.truncate(fd, PAGE_BYTES)
            io.allocate(fd, PAGE_BYTES)  # disk blocks: a full disk fails here, not with SIGBUS
            self._mm = io.map_file(fd, PAGE_BYTES)
        except BaseException:
            io.close(fd)
            raise
        self._fd: int | None = fd
        old = bytes(self._mm[:HEAD_BYTES])
        if old[:8] == PAGE_MAGIC:   # continue the previous writer's generation count
            self._generation = (_GEN.unpack_from(old, GEN_OFFSET)[0] + 1) & ~1
        self._closed = False

    def _lock_page(self, fd: int) -> None:
        deadline = time.monotonic() + 1.0
        while True:
            try:
                self._io.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    # A forked child may hold the old descriptor: publish anyway; liveness
                    # then reads "alive" while that child lives (docs/observability.md §3).
                    _log.warning("stats page %s stays locked by another process; publishing "
                                 "without the liveness lock", self.path)
                    return
                time.sleep(0.001)

    # ------------------------------------------------------------------ publishing
    def _entries(self, values: Mapping[str, float], hists: Mapping[str, Snapshot]) -> list[bytes]:
        out: list[bytes] = []
        pack = _ENTRY.pack
        for name, v in values.items():
            raw = _encode_name(name)
            if raw is None:
                self._warn_once(name, "not a short ASCII name")
                continue
            out.append(pack(raw, KIND_VALUE, 0.0, float(v)))
        for name, (cum, count, total) in hists.items():
            raw = _encode_name(name)
            if raw is None:
                self._warn_once(name, "not a short ASCII name")
                continue
            for le, c in cum:
                out.append(pack(raw, KIND_BUCKET, float(le), float(c)))
            out.append(pack(raw, KIND_SUM, 0.0, float(total)))
            out.append(pack(raw, KIND_COUNT, 0.0, float(count)))
        if len(out) > MAX_ENTRIES:
            self._warn_once("*", f"{len(out)} entries, the page holds {MAX_ENTRIES}")
            out = out[:MAX_ENTRIES]
        return out

    def _warn_once(self, key: str, why: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning("stats page: %r not published: %s", key, why)

    def publish(self, *, collect: bool = True) -> None:
        """Publish now: fresh values from ``collect()`` (or, with ``collect=False``, the last
        ones again, e.g. to set the closed flag after the store stopped answering)."""
        if collect:
            values, hists = self._collect()
            self._last = (dict(values), dict(hists))
        with self._lock:
            if self._closed:
                return
            self._write(*self._last, closed=False)

    def _write(self, values: Mapping[str, float], hists: Mapping[str, Snapshot], *, closed: bool) -> None:
        entries = b"".join(self._entries(values, hists))
        count = len(entries) // ENTRY_BYTES
        flags = (FLAG_CLOSED if closed else 0) | (FLAG_WRITE_FAILED if values.get("write_failed") else 0)
        mm = self._mm
        gen = self._generation
        _GEN.pack_into(mm, GEN_OFFSET, gen + 1)            # odd: being rewritten
        mm[HEAD_BYTES:HEAD_BYTES + len(entries)] = entries
        head = _HEAD.pack(PAGE_MAGIC, PAGE_VERSION, PAGE_BYTES, count, os.getpid(), gen + 2,
                          time.time_ns(), self._opened_ns, flags,
                          min(int(self.interval * 1000), 0xFFFFFFFF), 0)
        crc = zlib.crc32(entries, zlib.crc32(head[GEN_OFFSET + 8:], zlib.crc32(head[:GEN_OFFSET])))
        mm[:HEAD_BYTES] = head + _CRC.pack(crc)               # generation gen + 2: even again
        self._generation = gen + 2
        self.publish_count += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish()
            except Exception as exc:   # a store in the middle of closing: try again later
                if not self._failed:
                    self._failed = True
                    _log.warning("stats page publish failed: %r", exc)

    def start(self) -> None:
        """Start the publishing thread (daemon). Publishes once first, here."""
        self.publish()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ngstore-stats", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread, publish the last values with the closed flag, release the lock and
        the mapping. The page stays on disk for readers. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            try:
                if not self._closed:
                    self._write(*self._last, closed=True)
            finally:
                # Each step may run again after an interrupt (interrupts.py). Unlock before
                # closing: the mapping keeps a duplicate of the descriptor while it lives (a
                # view of it may outlive the close), and a flock belongs to the open file
                # both share. Forgotten after the unlock, the descriptor can leak, never stay
                # locked nor be closed twice.
                self._closed = True
                try:
                    self._mm.close()
                except BufferError:
                    pass
                self._io.flock(fd, fcntl.LOCK_UN)
                self._fd = None
                self._io.close(fd)   # drops the liveness lock

    def inherited_in_child(self) -> None:
        """In a child made by fork(): the page is the parent's, and its publishing thread
        did not survive the fork. Lets go of this process's mapping and descriptor of it
        without writing: the liveness lock stays the parent's (a ``flock`` belongs to the
        open file, which closing one copy of its descriptor leaves locked), and ends with it."""
        self._closed = True
        self._thread = None
        try:
            self._mm.close()
        except BufferError:
            pass
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                self._io.close(fd)
        except OSError:
            pass


# ---------------------------------------------------------------------------- reading
@dataclass
class PublishedStats:
    """One consistent copy of a stats page (see :func:`read_stats_page`)."""

    pid: int
    generation: int
    published_unix_ns: int
    opened_unix_ns: int
    interval_s: float
    closed: bool
    write_failed: bool
    values: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Snapshot] = field(default_factory=dict)
    alive: bool | None = None

    @property
    def age_seconds(self) -> float:
        """Seconds since the last publish."""
        return max(0.0, (time.time_ns() - self.published_unix_ns) / 1e9)


def _decode(page: bytes, path: str) -> PublishedStats | None:
    """The page's content, or None if this copy is mid-publish or torn; ValueError if the
    file is not a stats page this code reads."""
    if len(page) < HEAD_BYTES:
        raise ValueError(f"{path}: {len(page)} bytes, shorter than a stats page header")
    (magic, version, _page_bytes, count, pid, gen, published, opened, flags, interval_ms,
     _res) = _HEAD.unpack_from(page, 0)
    if magic != PAGE_MAGIC:
        if page[:8] == b"\0" * 8:
            return None   # created, not yet published
        raise ValueError(f"{path} is not a stats page (magic {magic!r})")
    if version != PAGE_VERSION:
        raise ValueError(f"{path}: stats page version {version}; this ngstore reads version "
                         f"{PAGE_VERSION} -- upgrade ngstore")
    if gen & 1 or count > MAX_ENTRIES:
        return None
    end = HEAD_BYTES + count * ENTRY_BYTES
    if end > len(page):
        return None
    (crc,) = _CRC.unpack_from(page, _HEAD.size)
    if zlib.crc32(page[HEAD_BYTES:end], zlib.crc32(page[GEN_OFFSET + 8:_HEAD.size],
                                                   zlib.crc32(page[:GEN_OFFSET]))) != crc:
        return None
    out = PublishedStats(pid, gen, published, opened, interval_ms / 1000.0, bool(flags & FLAG_CLOSED),
                         bool(flags & FLAG_WRITE_FAILED))
    buckets: dict[str, list[tuple[float, int]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for off in range(HEAD_BYTES, end, ENTRY_BYTES):
        raw, kind, le, value = _ENTRY.unpack_from(page, off)
        name = raw.rstrip(b"\0").decode("ascii", "replace")
        if kind in (KIND_BUCKET, KIND_COUNT) and not 0 <= value < math.inf:
            # the CRC matched, so this is what a writer wrote: not a page this code reads
            raise ValueError(f"{path}: histogram {name!r} has a count of {value} (format §8.2: a "
                             "count is a finite number >= 0)")
        if kind == KIND_VALUE:
            out.values[name] = value
        elif kind == KIND_BUCKET:
            buckets.setdefault(name, []).append((le, int(value)))
        elif kind == KIND_SUM:
            sums[name] = value
        elif kind == KIND_COUNT:
            counts[name] = int(value)
    for name, cum in buckets.items():
        cum.sort(key=lambda x: x[0])
        if not cum or not math.isinf(cum[-1][0]):
            cum.append((math.inf, counts.get(name, cum[-1][1] if cum else 0)))
        out.histograms[name] = (cum, counts.get(name, cum[-1][1]), sums.get(name, 0.0))
    return out


def read_stats_page(store_dir: str, *, io: FileIO = DEFAULT_IO, attempts: int = 50) -> PublishedStats | None:
    """One consistent copy of ``store_dir/stats.page`` with the writer's liveness, or None if
    there is no page (no writer ever published here, or it is being created).

    Raises ``ValueError`` for a file that is not a stats page of a version this code reads,
    or one that stays inconsistent over ``attempts`` copies (a millisecond apart)."""
    path = os.path.join(store_dir, PAGE_FILE)
    try:
        fd = io.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        for i in range(attempts):
            page = io.pread(fd, PAGE_BYTES, 0)
            got = _decode(page, path)
            if got is not None:
                got.alive = _probe(fd, io)
                return got
            if page[:8] == b"\0" * 8 or not page:
                return None
            time.sleep(0.001 * min(i + 1, 10))
    finally:
        io.close(fd)
    raise ValueError(f"{path}: no consistent copy in {attempts} attempts (damaged?)")


# ---------------------------------------------------------------------------- merging
def merge_published(stats: Mapping[str, Any], page: PublishedStats | None) -> dict[str, Any]:
    """A reader's ``stats()`` merged with the writer's page: the reader's own values for
    :data:`READER_KEYS` (when it has them), the writer's for everything else, plus
    ``writer_pid``, ``writer_alive``, ``writer_closed``, ``write_failed`` and
    ``stats_age_seconds``. Without a page, a copy of ``stats``."""
    out = dict(stats)
    if page is None:
        return out
    for k, v in page.values.items():
        if k not in READER_KEYS or k not in out:
            out[k] = v
    out["writer_pid"] = page.pid
    out["writer_alive"] = bool(page.alive)
    out["writer_closed"] = page.closed
    out["write_failed"] = page.write_failed
    out["stats_age_seconds"] = page.age_seconds
    return out


def published_labels(page: PublishedStats | None) -> dict[str, str]:
    """The labels a reader puts on every series: ``writer_pid`` and ``writer_alive``."""
    if page is None:
        return {"writer_pid": "", "writer_alive": "0"}
    return {"writer_pid": str(page.pid), "writer_alive": "1" if page.alive else "0"}


class _Frozen:
    """A histogram snapshot with the ``snapshot()`` method the collector calls."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def snapshot(self) -> Snapshot:
        return self._snap


class PageHistograms:
    """The writer's histograms as the collector reads them (``getattr(obs, attr).snapshot()``)."""

    def __init__(self, page: PublishedStats) -> None:
        self._page = page

    def __getattr__(self, name: str) -> Any:
        page = self.__dict__.get("_page")
        if page is None or name not in page.histograms:
            raise AttributeError(name)
        return _Frozen(page.histograms[name])
