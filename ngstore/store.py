"""The Store: one directory on disk, one writer process, any number of readers.

Write path
----------
A :class:`Batch` collects operations. Committing it:

1. checks Guardian quotas against the store's counters (nothing written on refusal);
2. appends the batch to the write-ahead log as ONE record -- concurrent committers
   share one ``write`` and one ``fdatasync`` (group commit: the first committer to
   find no leader becomes the leader and commits everything queued so far, in queue
   order = log order);
3. applies the group to LMDB in ONE transaction that also stores the last applied log
   position (so replay is exact and idempotent), committed without an fsync;
4. returns. ``durability="sync"``: the log record was fdatasync'ed before return;
   ``"async"``: it was written (page cache) and a flusher fdatasyncs within
   ``flush_interval``; ``"none"``: it was written and becomes durable only at the next
   sync commit, ``flush()``, checkpoint or close.

Very large ``sync`` batches (``direct_threshold`` bytes and up) skip the log: they are
applied to LMDB directly and a checkpoint follows before the call returns. The
checkpoint makes them durable, and they never need replay.

What a crash can do, in syscall terms:

* process crash (kill -9), any mode: nothing visible is lost -- every batch was
  ``write()``-n to the log and committed to LMDB in the page cache before it became
  visible. Recovery replays the log after LMDB's applied position.
* power loss / OS crash: ``sync`` batches that returned are kept (their log record
  was fdatasync'ed). ``async`` batches of at most the last ``flush_interval`` and
  ``none`` batches since the last durable point may be lost -- always a suffix of the
  commit order, never part of a batch, never a corruption: LMDB is rolled back to
  the last checkpoint (see ``kv``) and the surviving log is replayed.

Read path
---------
:meth:`Store.snapshot` opens an LMDB read transaction. Its token views are numpy
arrays pointing into the memory map (no copy). **Lifetime rule:** a view keeps its
read transaction alive for as long as the view (or any array derived from it) is
referenced -- even after ``snapshot.close()`` or ``store.close()`` -- so a view can
never show freed or reused memory. Closing the snapshot only forbids new reads
through it. The cost of a long-lived view is LMDB's: pages it can see are not reused,
so the file grows while it lives. Drop views (or copy what you keep) promptly.
"""
from __future__ import annotations

import builtins
import errno
import fcntl
import json
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _native, batchops
from .batchops import ApplyStats, ChunkLayout, Op
from .errors import (
    FormatVersionError,
    InvalidArgumentError,
    NgStoreError,
    NotAStoreError,
    NotFoundError,
    StoreClosedError,
    StoreLockedError,
    ValidationError,
)
from .fileio import DEFAULT_IO, FileIO
from .guardian import Guardian, Usage
from .kv import (
    CHECKPOINT_FILE,
    DB_CONN_REVERSE,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_META,
    DB_REFLEXES,
    DB_TOKENS,
    DEFAULT_MAP_SIZE,
    KV,
    decode_checkpoint,
    encode_checkpoint,
    restore_checkpoint_meta,
)
from .records import CONNECTION_DTYPE, EVENT_DTYPE, MAX_TOKEN_ID, RAW64, TOKEN_DTYPE
from .tokens import Token as _Token
from . import wal as wal_mod

FORMAT_VERSION = 1
MARKER_FILE = "NGSTORE"
MARKER_TEXT = "ngstore store directory\nformat {version}\n"
STATE_FILE = "state"
WRITER_LOCK = "writer.lock"
READERS_LOCK = "readers.lock"
WAL_DIR = "wal"
#: Files ngstore itself creates in a store directory (anything else makes it foreign).
OWN_FILES = {MARKER_FILE, STATE_FILE, WRITER_LOCK, READERS_LOCK, WAL_DIR, CHECKPOINT_FILE,
             "data.mdb", "lock.mdb", CHECKPOINT_FILE + ".tmp", STATE_FILE + ".tmp",
             "blackbox.ring", "stats.page"}  # the last two: ngstore.obs (docs/format.md §8)

_builtin_open = builtins.open  # this module defines its own open()

DURABILITY_MODES = ("sync", "async", "none")
RECOVERY_MODES = ("strict", "tolerate-tail", "salvage")
DEFAULT_CHUNK_SLOTS = 1024

_U64 = struct.Struct("<Q")

# meta keys (docs/format.md §3.1); every value is a little-endian u64 unless noted
M_FORMAT = b"format_version"
M_CHUNK_SLOTS = b"chunk_slots"
M_APPLIED = b"applied_position"
M_CREATED = b"created_unix"
M_STORE_ID = b"store_id"  # 16 bytes
M_TOKENS_LIVE = b"tokens_live"
M_TOKENS_CREATED = b"tokens_created_total"
M_TOKENS_DELETED = b"tokens_deleted_total"
M_CONN_LIVE = b"connections_live"
M_CONN_CREATED = b"connections_created_total"
M_EVENTS_NEXT = b"events_next_seq"
M_EVENTS_LIVE = b"events_live"
M_EVENTS_TRIMMED = b"events_trimmed_total"
M_EVENT_CAPACITY = b"event_capacity"
COUNTER_KEYS = (M_TOKENS_LIVE, M_TOKENS_CREATED, M_TOKENS_DELETED, M_CONN_LIVE, M_CONN_CREATED,
                M_EVENTS_NEXT, M_EVENTS_LIVE, M_EVENTS_TRIMMED)
M_COUNTERS = b"counters"  # u64[len(COUNTER_KEYS)] in COUNTER_KEYS order (docs/format.md §3.1)
_COUNTERS = struct.Struct("<" + "Q" * len(COUNTER_KEYS))
DEFAULT_EVENT_CAPACITY = 1_000_000


def read_counter(txn: Any, kv: KV, key: bytes) -> int:
    """One of the counters packed in meta/counters (docs/format.md §3.1); -1 if malformed."""
    v = txn.get(M_COUNTERS, db=kv.dbs[DB_META])
    if v is None or len(v) != _COUNTERS.size:
        return -1
    return _COUNTERS.unpack(bytes(v))[COUNTER_KEYS.index(key)]
DEFAULT_REFLEX_CAPACITY = 65_536
M_REFLEX_CAPACITY = b"reflex_capacity"


def _boot_id() -> str:
    """Changes at every boot: tells a process crash (same boot) from a power loss / OS crash."""
    try:
        with _builtin_open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def open(path: str | os.PathLike, *, readonly: bool = False, create: bool = True,
         durability: str = "sync", recovery: str = "tolerate-tail",
         max_tokens: int | None = 10_000_000, max_bytes: int | None = 1_024_000_000,
         memory_threshold: float = 0.8, chunk_slots: int = DEFAULT_CHUNK_SLOTS,
         event_capacity: int = DEFAULT_EVENT_CAPACITY,
         reflex_capacity: int = DEFAULT_REFLEX_CAPACITY, map_size: int = DEFAULT_MAP_SIZE, max_readers: int = 126,
         flush_interval: float = 0.010, checkpoint_bytes: int = 64 << 20,
         checkpoint_interval: float = 300.0, direct_threshold: int = 16 << 20,
         segment_bytes: int = 64 << 20, io: FileIO = DEFAULT_IO,
         progress: bool = False, observability: bool = True, tracing: Any = None,
         sample_rate: float = 0.01, blackbox_capacity: int = 1000,
         crash_handlers: bool = True) -> "Store":
    """Opens (or creates) the store in directory ``path``.

    ``readonly=True`` opens never write, may run in any number of processes next to
    the writer, and see every batch the writer has applied. ``create`` makes a new
    store when ``path`` does not exist or is an empty directory. ``durability`` is the
    default of every commit (see the module docstring for what each mode loses);
    ``recovery`` says what to do with a damaged log: ``"tolerate-tail"`` (default:
    truncate a torn last record, refuse mid-log corruption), ``"strict"`` (refuse any
    damage) or ``"salvage"`` (skip damaged records and report them).
    ``chunk_slots`` (tokens per LMDB value, a power of two), ``event_capacity`` (how
    many experience events are retained; older ones are trimmed) and
    ``reflex_capacity`` (the reflex table's size; the weakest reflexes are evicted
    beyond it) apply at creation only.
    ``progress=True`` shows a progress bar while the log is replayed (the CLI uses it).

    Observability (``docs/observability.md``): ``observability=False`` turns off the
    black box, histograms and spans; ``tracing`` (None: on if OpenTelemetry is
    installed and ``NGSTORE_TRACING`` is not ``off``) with ``sample_rate`` (1 %);
    ``crash_handlers`` makes a writer dump its black box on an unhandled exception
    that involves the store, and send a fatal signal's traceback into its ring file
    (a writer's black box is ``blackbox.ring``, which survives any process crash).
    """
    return Store(os.fspath(path), readonly=readonly, create=create, durability=durability,
                 recovery=recovery, max_tokens=max_tokens, max_bytes=max_bytes,
                 memory_threshold=memory_threshold, chunk_slots=chunk_slots,
                 event_capacity=event_capacity, reflex_capacity=reflex_capacity, map_size=map_size,
                 max_readers=max_readers, flush_interval=flush_interval,
                 checkpoint_bytes=checkpoint_bytes, checkpoint_interval=checkpoint_interval,
                 direct_threshold=direct_threshold, segment_bytes=segment_bytes, io=io,
                 progress=progress, observability=observability, tracing=tracing,
                 sample_rate=sample_rate, blackbox_capacity=blackbox_capacity,
                 crash_handlers=crash_handlers)


@dataclass
class _Pending:
    """A batch waiting in the group-commit queue."""

    ops: list[Op]
    durability: str
    payload: bytes | None = None
    add_tokens: int = 0
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    position: int = 0
    error: BaseException | None = None


@dataclass
class RecoveryInfo:
    """What opening the store had to do; ``store.recovery`` after open."""

    power_loss_rollback: bool = False
    rolled_back_to_txn: int | None = None
    replayed_records: int = 0
    replayed_from: int = 0
    replayed_to: int = 0
    log_report: Any = None


class Store:
    """An open store. Use :func:`ngstore.open` to make one; close it (or use ``with``)."""

    def __init__(self, path: str, *, readonly: bool, create: bool, durability: str,
                 recovery: str, max_tokens: int | None, max_bytes: int | None,
                 memory_threshold: float, chunk_slots: int, event_capacity: int,
                 reflex_capacity: int, map_size: int,
                 max_readers: int,
                 flush_interval: float, checkpoint_bytes: int, checkpoint_interval: float,
                 direct_threshold: int, segment_bytes: int, io: FileIO,
                 progress: bool = False, observability: bool = True, tracing: Any = None,
                 sample_rate: float = 0.01, blackbox_capacity: int = 1000,
                 crash_handlers: bool = True) -> None:
        if durability not in DURABILITY_MODES:
            raise InvalidArgumentError(f"durability must be one of {DURABILITY_MODES}, got {durability!r}")
        if recovery not in RECOVERY_MODES:
            raise InvalidArgumentError(f"recovery must be one of {RECOVERY_MODES}, got {recovery!r}")
        if flush_interval <= 0:
            raise InvalidArgumentError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        ChunkLayout(chunk_slots)  # validates
        if not isinstance(event_capacity, int) or event_capacity < 1:
            raise InvalidArgumentError(f"event_capacity must be a positive int, got {event_capacity!r}")
        self._event_capacity = event_capacity
        if not isinstance(reflex_capacity, int) or reflex_capacity < 1:
            raise InvalidArgumentError(f"reflex_capacity must be a positive int, got {reflex_capacity!r}")
        self._reflex_capacity = reflex_capacity
        self._reflex_version = None  # reflex_store.ReflexVersion, swapped after each reflex commit
        self._reflex_carry = {}      # C counters of versions already swapped out
        self._reflexes_written_total = 0
        self._experience = None
        self._intuition = None
        self.path = os.path.realpath(path)
        self.readonly = readonly
        self.durability = durability
        self._io = io
        self._closed = False
        self._failed: BaseException | None = None
        self._guardian = Guardian(max_tokens, max_bytes, memory_threshold)
        self._flush_interval = flush_interval
        self._checkpoint_bytes = checkpoint_bytes
        self._checkpoint_interval = checkpoint_interval
        self._direct_threshold = direct_threshold
        self._segment_bytes = segment_bytes
        self._progress = progress
        self._lock_fd: int | None = None
        self._readers_fd: int | None = None
        self._kv: KV | None = None
        self._log: Any = None
        self.recovery = RecoveryInfo()
        # group commit
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._leader = False
        self._unsynced = False
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._applier_thread: _Applier | None = None
        self._last_checkpoint = time.time()
        self._pgno_at_checkpoint = 0
        self._page_size = 4096
        self._counters: dict[bytes, int] = {k: 0 for k in COUNTER_KEYS}
        self._stats = {"commits_total": 0, "commit_errors_total": 0, "checkpoints_total": 0,
                       "panics_recovered_total": 0, "tokens_validated_total": 0,
                       "tokens_rejected_total": 0, "connections_validated_total": 0,
                       "connections_rejected_total": 0,
                       "wal_records_written_total": 0, "wal_records_replayed_total": 0,
                       "direct_commits_total": 0}
        self._obs = None
        if observability:
            from .obs import Observability

            self._obs = Observability(self.path, blackbox_capacity=blackbox_capacity,
                                      tracing=tracing, sample_rate=sample_rate, io=io)
        try:
            if readonly:
                self._open_readonly()
            else:
                span = self._obs.span("recovery") if self._obs else None
                if span is not None:
                    with span:
                        self._open_writer(create, recovery, chunk_slots, map_size, max_readers)
                        span.set("replayed_records", self.recovery.replayed_records)
                else:
                    self._open_writer(create, recovery, chunk_slots, map_size, max_readers)
        except BaseException as exc:
            if self._obs is not None:
                self._obs.event("error", op="open", error=repr(exc))
                self._obs.close()
            self._release_files()
            raise
        if self._obs is not None:
            r = self.recovery
            self._obs.event("open", readonly=readonly, applied_position=self._applied,
                            tokens=self._counters[M_TOKENS_LIVE])
            if r.power_loss_rollback or r.replayed_records or (
                    r.log_report is not None and not r.log_report.clean):
                torn = getattr(r.log_report, "torn_tail", None)
                self._obs.event("recovery", rollback_to_txn=r.rolled_back_to_txn,
                                replayed=r.replayed_records, replayed_to=r.replayed_to,
                                torn_tail_bytes=torn.bytes_dropped if torn else 0,
                                skipped=len(getattr(r.log_report, "skipped", []) or []))
                self._obs.logger.warning("recovered %s: %d record(s) replayed%s", self.path,
                                         r.replayed_records,
                                         "; LMDB rolled back to the checkpoint" if r.power_loss_rollback else "")
            if not readonly:
                # the black box moves into blackbox.ring; stats.page starts being published
                self._obs.start_writer(self._safe_stats, io=self._io)
            if crash_handlers and not readonly:
                self._obs.install_crash_handlers(self._safe_stats)

    # ------------------------------------------------------------------ opening

    def _check_directory(self, create: bool) -> bool:
        """Returns True when a new store must be created here."""
        p = self.path
        if os.path.exists(p) and not os.path.isdir(p):
            raise NotAStoreError(f"{p} is a file, not a store directory")
        if not os.path.exists(p):
            if not create or self.readonly:
                raise NotAStoreError(f"{p} does not exist (pass create=True to make a new store)")
            os.makedirs(p, exist_ok=True)
            return True
        names = set(os.listdir(p))
        if MARKER_FILE in names:
            self._check_marker()
            return False
        if names - OWN_FILES:
            raise NotAStoreError(f"{p} is a directory that is not an ngstore store "
                                 f"(it holds {sorted(names - OWN_FILES)[:5]})")
        if not create or self.readonly:
            raise NotAStoreError(f"{p} is not an ngstore store (no {MARKER_FILE} file)")
        return True  # empty, or an interrupted creation of ours: (re)create

    def _check_marker(self) -> None:
        try:
            with _builtin_open(os.path.join(self.path, MARKER_FILE)) as f:
                text = f.read()
        except OSError as exc:
            raise NotAStoreError(f"{self.path}: cannot read {MARKER_FILE}: {exc}") from exc
        lines = text.splitlines()
        if len(lines) < 2 or not lines[0].startswith("ngstore") or not lines[1].startswith("format "):
            raise NotAStoreError(f"{self.path}: {MARKER_FILE} is not an ngstore marker")
        try:
            version = int(lines[1].split()[1])
        except (IndexError, ValueError) as exc:
            raise NotAStoreError(f"{self.path}: unreadable format line in {MARKER_FILE}") from exc
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{self.path} has store format {version}; this ngstore reads format "
                f"{FORMAT_VERSION} and older -- upgrade ngstore to open it")

    def _lock(self, name: str, mode: int, what: str) -> int:
        fd = os.open(os.path.join(self.path, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(f"{self.path}: {what}") from None
            raise
        return fd

    def _read_state(self) -> dict[str, Any]:
        try:
            with _builtin_open(os.path.join(self.path, STATE_FILE)) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"clean": True}
        except (OSError, ValueError):
            return {"clean": False, "boot_id": "unreadable"}

    def _write_state(self, clean: bool) -> None:
        data = json.dumps({"clean": clean, "boot_id": _boot_id(), "pid": os.getpid()}).encode()
        self._io.atomic_write(os.path.join(self.path, STATE_FILE), data)

    def _open_readonly(self) -> None:
        self._check_directory(create=False)
        try:
            self._readers_fd = self._lock(READERS_LOCK, fcntl.LOCK_SH,
                                          "a writer is recovering this store; retry in a moment")
        except PermissionError:
            self._readers_fd = None  # a read-only file system or directory: no coordination possible
        state = self._read_state()
        if not state.get("clean", True) and state.get("boot_id") != _boot_id():
            raise NgStoreError(
                f"{self.path} was being written when the system went down; it needs recovery "
                "before it can be read: open it once for writing, or run `ngstore recover PATH`")
        self._kv = KV(self.path, readonly=True)
        with self._read_txn() as txn:
            self._load_meta(txn)
        from . import reflex_store

        self._reflex_version = reflex_store.attach(self._kv)

    def _open_writer(self, create: bool, recovery: str, chunk_slots: int, map_size: int,
                     max_readers: int) -> None:
        new = self._check_directory(create)
        self._lock_fd = self._lock(WRITER_LOCK, fcntl.LOCK_EX,
                                   "another writer (this process or another) has the store open; "
                                   "open it with readonly=True, or close the other handle")
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        if new:
            self._create(chunk_slots, map_size, max_readers)
            return
        state = self._read_state()
        system_crash = not state.get("clean", True) and state.get("boot_id") != _boot_id()
        if system_crash:
            self._rollback_to_checkpoint()
            # The state keeps the old boot id until replay and a checkpoint have caught
            # LMDB up: readers must not see the rolled-back state as current, and a crash
            # during recovery simply rolls back to the same checkpoint again.
        else:
            self._write_state(clean=False)
        self._kv = KV(self.path, readonly=False, map_size=map_size, max_readers=max_readers, io=self._io)
        self._kv.before_grow = lambda: self._write_checkpoint(pin=False)
        with self._read_txn() as txn:
            self._load_meta(txn)
        from . import reflex_store

        self._reflex_version = reflex_store.attach(self._kv)
        self._open_log(recovery)
        # Nothing may be written while the checkpoint is unprotected. After a process
        # crash LMDB is ahead of checkpoint C, whose pin died with the writer: a replay
        # commit could reuse C's freed pages, and a power loss before the next checkpoint
        # would then roll back onto a damaged tree. So make the current transaction the
        # checkpoint first (the log is fdatasync'ed first, as always). After a rollback
        # LMDB is at C: pin it.
        if self._checkpoint_txnid() != self._kv.last_txnid():
            self._write_checkpoint(pin=True)
        else:
            self._kv.pin()
        self._replay()
        if self.recovery.replayed_records:
            self._write_checkpoint(pin=True)
        if system_crash:
            self._write_state(clean=False)

    def _rollback_to_checkpoint(self) -> None:
        """After a power loss / OS crash: LMDB back to the checkpoint (see kv)."""
        readers = self._lock(READERS_LOCK, fcntl.LOCK_EX,
                             "recovery after a system crash needs every read-only handle closed")
        try:
            path = os.path.join(self.path, CHECKPOINT_FILE)
            with _builtin_open(path, "rb") as f:
                page_size, txnid, _applied, meta = decode_checkpoint(f.read(), path)
            restore_checkpoint_meta(self.path, page_size, meta, self._io)
            self.recovery.power_loss_rollback = True
            self.recovery.rolled_back_to_txn = txnid
        finally:
            fcntl.flock(readers, fcntl.LOCK_UN)
            os.close(readers)

    def _create(self, chunk_slots: int, map_size: int, max_readers: int) -> None:
        # An interrupted earlier creation may have left our files: start clean.
        for name in ("data.mdb", "lock.mdb", CHECKPOINT_FILE, STATE_FILE):
            p = os.path.join(self.path, name)
            if os.path.exists(p):
                self._io.unlink(p)
        self._write_state(clean=False)
        self._kv = KV(self.path, readonly=False, map_size=map_size, max_readers=max_readers, io=self._io)
        self._kv.before_grow = lambda: self._write_checkpoint(pin=False)
        meta = self._kv.dbs[DB_META]

        def init(txn) -> None:
            txn.put(M_FORMAT, _U64.pack(FORMAT_VERSION), db=meta)
            txn.put(M_CHUNK_SLOTS, _U64.pack(chunk_slots), db=meta)
            txn.put(M_APPLIED, _U64.pack(0), db=meta)
            txn.put(M_CREATED, _U64.pack(int(time.time())), db=meta)
            txn.put(M_STORE_ID, uuid.uuid4().bytes, db=meta)
            txn.put(M_EVENT_CAPACITY, _U64.pack(self._event_capacity), db=meta)
            txn.put(M_REFLEX_CAPACITY, _U64.pack(self._reflex_capacity), db=meta)
            txn.put(M_COUNTERS, _COUNTERS.pack(*([0] * len(COUNTER_KEYS))), db=meta)

        self._kv.write(init)
        with self._read_txn() as txn:
            self._load_meta(txn)
        self._open_log("tolerate-tail")
        self._write_checkpoint(pin=True)
        self._io.atomic_write(os.path.join(self.path, MARKER_FILE),
                              MARKER_TEXT.format(version=FORMAT_VERSION).encode())

    def _load_meta(self, txn) -> None:
        meta = self._kv.dbs[DB_META]
        if meta is None:
            raise NotAStoreError(f"{self.path}: the LMDB file has no ngstore meta database")

        def u64(key: bytes) -> int | None:
            v = txn.get(key, db=meta)
            return None if v is None else _U64.unpack(bytes(v))[0]

        version = u64(M_FORMAT)
        if version is None:
            raise NotAStoreError(f"{self.path}: missing format version in the meta database")
        if version > FORMAT_VERSION:
            raise FormatVersionError(f"{self.path} has store format {version}; this ngstore reads "
                                     f"up to {FORMAT_VERSION} -- upgrade ngstore")
        self._layout = ChunkLayout(int(u64(M_CHUNK_SLOTS) or DEFAULT_CHUNK_SLOTS))
        self._applied = int(u64(M_APPLIED) or 0)
        self._event_capacity = int(u64(M_EVENT_CAPACITY) or DEFAULT_EVENT_CAPACITY)
        self._reflex_capacity = int(u64(M_REFLEX_CAPACITY) or DEFAULT_REFLEX_CAPACITY)
        raw = txn.get(M_COUNTERS, db=meta)
        if raw is None or len(raw) != _COUNTERS.size:
            from .errors import CorruptionError

            raise CorruptionError(f"{self.path}: the meta counters are missing or malformed")
        self._counters.update(zip(COUNTER_KEYS, _COUNTERS.unpack(bytes(raw))))

    def _open_log(self, recovery: str) -> None:
        wal_dir = os.path.join(self.path, WAL_DIR)
        self._log, report = wal_mod.Log.open(wal_dir, io=self._io, segment_bytes=self._segment_bytes,
                                             recovery=recovery, start_after=self._applied)
        self.recovery.log_report = report

    def _checkpoint_txnid(self) -> int | None:
        path = os.path.join(self.path, CHECKPOINT_FILE)
        try:
            with _builtin_open(path, "rb") as f:
                return decode_checkpoint(f.read(), path)[1]
        except FileNotFoundError:
            return None

    def _replay(self) -> None:
        """Applies every log record after the applied position, in order."""
        start = self._applied
        group: list[tuple[int, list[Op]]] = []
        size = 0
        n = 0
        records = self._log.iter_records(self._applied)
        bar = None
        if self._progress:
            from tqdm import tqdm

            bar = tqdm(desc="replaying log", unit="rec", total=max(0, self._log.last_position - start))
        for rec in records:
            if bar is not None:
                bar.update(1)
            if rec.position <= self._applied:
                continue
            group.append((rec.position, batchops.decode_ops(rec.payload, f"log record {rec.position}")))
            size += len(rec.payload)
            n += 1
            if size >= 64 << 20 or len(group) >= 4096:
                self._apply([g for g in group])
                group, size = [], 0
        if group:
            self._apply(group)
        if bar is not None:
            bar.close()
        self._stats["wal_records_replayed_total"] += n
        self.recovery.replayed_records = n
        self.recovery.replayed_from = start
        self.recovery.replayed_to = self._applied

    # ------------------------------------------------------------------ guards

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the store {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise NgStoreError(f"the store {self.path} was opened read-only")
        if self._failed is not None:
            raise NgStoreError(
                f"the store {self.path} stopped accepting writes after an I/O error "
                f"({self._failed!r}); close it and open it again to recover")

    # ------------------------------------------------------------------ writing

    def batch(self, durability: str | None = None) -> "Batch":
        """A new batch; ``with store.batch() as b: ...`` commits on success, discards on error."""
        self._check_writable()
        d = self.durability if durability is None else durability
        if d not in DURABILITY_MODES:
            raise InvalidArgumentError(f"durability must be one of {DURABILITY_MODES}, got {d!r}")
        return Batch(self, d)

    def put_tokens(self, tokens: Any, *, durability: str | None = None) -> int:
        """Stores tokens (a TokenArray, a Token-dtype array, a Token, or a list of Tokens).

        Atomic; a later record with the same id wins. Returns the commit's log position.
        """
        b = self.batch(durability)
        b._put_tokens(tokens, copy=False)
        return b.commit()

    def delete_tokens(self, ids: Any, *, durability: str | None = None) -> int:
        """Deletes tokens by id (absent ids are ignored). Atomic."""
        b = self.batch(durability)
        b.delete_tokens(ids)
        return b.commit()

    def put_connections(self, connections: Any, *, durability: str | None = None) -> int:
        """Stores connections keyed by (token_a, token_b, connection_type); atomic."""
        b = self.batch(durability)
        b._put_connections(connections, copy=False)
        return b.commit()

    def delete_connections(self, keys: Any, *, durability: str | None = None) -> int:
        """Deletes connections by key: connections, or (a, b, type) triples."""
        b = self.batch(durability)
        b.delete_connections(keys)
        return b.commit()

    def write_events(self, events: Any, *, durability: str | None = None) -> int:
        """Appends experience events (an EVENT_DTYPE array, an Event, or a dict of fields).

        Returns the sequence number of the first. Retention keeps the newest
        ``event_capacity`` events.
        """
        b = self.batch(durability)
        b.append_events(events)
        b.commit()
        return self._counters[M_EVENTS_NEXT] - b._event_count

    def get_connection(self, a: int, b: int, connection_type: int | None = None):
        """The connection (a, b[, type]) as a Connection copy; NotFoundError if absent.

        Without ``connection_type`` the pair must hold exactly one connection."""
        from .connections import Connection

        found = self.connections_between(a, b)
        if connection_type is not None:
            found = found.data[found.data["connection_type"] == connection_type]
        else:
            found = found.data
        if found.shape[0] == 0:
            raise NotFoundError(f"no connection {a}-{b}" + (f" of type {connection_type:#x}"
                                                           if connection_type is not None else ""))
        if found.shape[0] > 1:
            raise InvalidArgumentError(f"{found.shape[0]} connections join {a} and {b}; "
                                       "pass connection_type=")
        return Connection.from_record(found[0:1].copy())

    def get_connections(self, keys: Any, *, missing: str = "raise"):
        """Connections for ``keys`` — (a, b, type) triples, or connections whose key to
        use — in order, as a ConnectionArray (copies). One read transaction.

        ``missing="raise"`` raises NotFoundError naming absent keys; ``"skip"`` leaves
        them out."""
        from .connections import ConnectionArray

        if missing not in ("raise", "skip"):
            raise InvalidArgumentError(f"missing must be 'raise' or 'skip', got {missing!r}")
        k = _connection_keys(keys)
        self._check_open()
        out, absent = [], []
        with self._read_txn() as txn:
            db = self._kv.dbs[DB_CONNECTIONS]
            for a_, b_, t_ in zip(k["token_a"].tolist(), k["token_b"].tolist(), k["connection_type"].tolist()):
                v = txn.get(batchops.conn_key(a_, b_, t_), db=db) if db is not None else None
                if v is None:
                    absent.append((a_, b_, t_))
                else:
                    out.append(bytes(v))
        if absent and missing == "raise":
            shown = ", ".join(map(str, absent[:5])) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise NotFoundError(f"no connection {shown} in {self.path}")
        arr = np.frombuffer(b"".join(out), dtype=CONNECTION_DTYPE).copy() if out else np.zeros(0, CONNECTION_DTYPE)
        return ConnectionArray(arr)

    def connections_between(self, a: int, b: int):
        """Every connection joining tokens a and b (any order), as a ConnectionArray."""
        lo, hi = (a, b) if a <= b else (b, a)
        _ids_array([lo, hi])
        prefix = struct.pack(">II", lo, hi)
        return self._scan_connections(DB_CONNECTIONS, prefix, reverse=False)

    def neighbors(self, token_id: int, direction: str = "both"):
        """Connections of ``token_id`` as a ConnectionArray (copies).

        ``"out"``: where it is ``token_a``; ``"in"``: where it is ``token_b``;
        ``"both"``: the union (a self-connection appears once)."""
        if direction not in ("out", "in", "both"):
            raise InvalidArgumentError(f"direction must be 'out', 'in' or 'both', got {direction!r}")
        from .connections import ConnectionArray

        _ids_array([token_id])
        prefix = struct.pack(">I", token_id)
        parts = []
        if direction in ("out", "both"):
            parts.append(self._scan_connections(DB_CONNECTIONS, prefix, reverse=False).data)
        if direction in ("in", "both"):
            inn = self._scan_connections(DB_CONN_REVERSE, prefix, reverse=True).data
            if direction == "both":
                inn = inn[inn["token_a"] != inn["token_b"]]
            parts.append(inn)
        return ConnectionArray(np.concatenate(parts) if parts else np.zeros(0, CONNECTION_DTYPE))

    def _scan_connections(self, dbname: bytes, prefix: bytes, reverse: bool):
        from .connections import ConnectionArray

        self._check_open()
        out = []
        with self._read_txn() as txn:
            db = self._kv.dbs[dbname]
            cdb = self._kv.dbs[DB_CONNECTIONS]
            if db is not None:
                cur = txn.cursor(db=db)
                if cur.set_range(prefix):
                    for key, value in cur:
                        key = bytes(key)
                        if not key.startswith(prefix):
                            break
                        if reverse:  # key = b, a, type -> fetch the record by its forward key
                            value = txn.get(key[4:8] + key[0:4] + key[8:9], db=cdb)
                        out.append(bytes(value))
        arr = np.frombuffer(b"".join(out), dtype=CONNECTION_DTYPE).copy() if out \
            else np.zeros(0, CONNECTION_DTYPE)
        return ConnectionArray(arr)

    def count_connections(self) -> int:
        self._check_open()
        if self.readonly:
            with self._read_txn() as txn:
                self._load_meta(txn)
        return self._counters[M_CONN_LIVE]

    def experience(self, channel_size: int = 1000):
        """The store's ExperienceStream: the newest events, loaded from the store, and
        kept current with every commit. Writing to it commits through the store."""
        self._check_open()
        if self._experience is None:
            from .experience_store import StoreExperienceStream

            self._experience = StoreExperienceStream(self, channel_size=channel_size)
        return self._experience

    def intuition(self, config: Any = None):
        """The store's IntuitionEngine: persistent reflexes, the store's experience.

        One engine per store handle; a later call with a different ``config`` replaces
        the engine's configuration (the reflexes are the store's either way)."""
        from .config import IntuitionConfig
        from .intuition import IntuitionEngine

        self._check_open()
        if config is not None and not isinstance(config, IntuitionConfig):
            raise InvalidArgumentError(f"config must be an IntuitionConfig, got {type(config).__name__}")
        if self._intuition is None or (config is not None and config != self._intuition.config):
            if self._intuition is not None:
                self._intuition.stop()
            self._intuition = IntuitionEngine._for_store(self, config)
        return self._intuition

    def refresh(self) -> None:
        """Read-only handles: look up reflexes in the newest committed table (the writer
        process sees its own commits at once)."""
        self._check_open()
        if self.readonly:
            from . import reflex_store

            self._reflex_version = reflex_store.attach(self._kv)

    def _commit(self, ops: list[Op], durability: str) -> int:
        self._check_writable()
        if not ops:
            return self._applied
        p = _Pending(ops, durability)
        nbytes = sum(op.data.nbytes for op in ops)
        if durability == "sync" and nbytes >= self._direct_threshold:
            return self._run_exclusive(lambda: self._commit_direct(p))
        p.payload = batchops.encode_ops(ops)
        with self._cv:
            self._queue.append(p)
            lead = not self._leader
            if lead:
                self._leader = True
        while True:
            if lead:
                self._lead(p)
            p.wake.wait()
            if p.done:
                break
            p.wake.clear()  # asked to lead: the previous leader handed over
            lead = True
        if p.error is not None:
            raise p.error
        return p.position

    #: Groups a leader commits before handing leadership to a waiting committer: more
    #: rounds save thread handoffs, fewer bound the leader's own latency.
    LEADER_ROUNDS = 8

    def _lead(self, mine: _Pending) -> None:
        """Commits queued groups until the queue is empty (or LEADER_ROUNDS), waking each
        committer whose batch is done; then hands over or gives up leadership."""
        rounds = 0
        while True:
            with self._cv:
                group, self._queue = self._queue, []
                if not group:
                    self._leader = False
                    self._cv.notify_all()  # _run_exclusive waits for the leadership
                    return
            try:
                self._commit_group(group)
                self._maybe_cleanup()
                self._maybe_checkpoint()
            finally:
                for q in group:
                    if not q.done:  # only on an unexpected internal error
                        q.error = q.error or NgStoreError("the commit was abandoned by an internal error")
                        q.done = True
                    q.wake.set()
            rounds += 1
            if rounds >= self.LEADER_ROUNDS:
                with self._cv:
                    if self._queue:  # hand over to the oldest waiting committer
                        self._queue[0].wake.set()
                    else:
                        self._leader = False
                        self._cv.notify_all()
                return

    def _run_exclusive(self, fn):
        """Runs ``fn`` as the commit leader (no group commit runs meanwhile)."""
        with self._cv:
            while self._leader:
                self._cv.wait()
            self._leader = True
        try:
            return fn()
        finally:
            with self._cv:
                if self._queue:  # committers queued meanwhile: the oldest leads next
                    self._queue[0].wake.set()
                else:
                    self._leader = False
                    self._cv.notify_all()

    def _quota_check(self, p: _Pending, pending_tokens: int) -> None:
        add_tokens = 0
        add_bytes = 0
        for op in p.ops:
            if op.kind == batchops.OP_TOKEN_PUT:
                n = op.count
                usage = self._usage()
                if self._guardian.max_tokens is not None and \
                        usage.tokens + pending_tokens + n > self._guardian.max_tokens or \
                        self._guardian.byte_limit is not None and \
                        usage.bytes + (pending_tokens + n) * 64 > self._guardian.byte_limit:
                    n = self._count_absent(op.data["id"])  # exact, only near the limits
                add_tokens += n
                add_bytes += n * 64
            elif op.kind == batchops.OP_CONNECTION_PUT:
                add_bytes += op.count * 64  # an upper bound: overwrites add nothing
            elif op.kind == batchops.OP_EVENT_APPEND:
                live = self._counters[M_EVENTS_LIVE]
                add_bytes += (min(self._event_capacity, live + op.count) - live) * 128
            elif op.kind == batchops.OP_REFLEX_PUT:
                add_bytes += op.count * 128  # an upper bound: updates add nothing
        usage = self._usage()
        usage.tokens += pending_tokens
        self._guardian.check(usage, add_tokens, add_bytes)
        p.add_tokens = add_tokens

    def _count_absent(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.uint32))
        present = self._presence(ids)
        return int(ids.size - np.count_nonzero(present))

    def _usage(self) -> Usage:
        v = self._reflex_version
        return Usage(tokens=self._counters[M_TOKENS_LIVE], connections=self._counters[M_CONN_LIVE],
                     events=self._counters[M_EVENTS_LIVE],
                     reflex_bytes=len(v.table) * 128 if v is not None else 0)

    def _commit_group(self, group: list[_Pending]) -> None:
        accepted: list[_Pending] = []
        pending_tokens = 0
        obs = self._obs
        t0 = time.perf_counter()
        for p in group:
            try:
                self._quota_check(p, pending_tokens)
            except BaseException as exc:  # refused: nothing of it is written
                p.error, p.done = exc, True
                if obs is not None:
                    obs.event("quota_refused", error=str(exc))
                continue
            pending_tokens += p.add_tokens
            accepted.append(p)
        if not accepted:
            return
        if obs is None:
            self._commit_accepted(accepted, None, t0)
            return
        with obs.span("group_commit", batches=len(accepted)) as span:
            self._commit_accepted(accepted, span, t0)

    def _commit_accepted(self, accepted: list[_Pending], span: Any, t0: float) -> None:
        obs = self._obs
        try:
            positions = self._log.append([(wal_mod.RECORD_BATCH, p.payload) for p in accepted])
            self._stats["wal_records_written_total"] += len(accepted)
            need_sync = any(p.durability == "sync" for p in accepted)
            if not need_sync:
                self._unsynced = True
                if any(p.durability == "async" for p in accepted):
                    self._ensure_flusher()
        except BaseException as exc:
            # fsyncgate: after a failed write or fsync the log's state is unknown; stop
            # writing. Reopening recovers whatever reached the log, each batch whole.
            self._fail(accepted, exc, "log append/sync", span)
            return
        t_logged = time.perf_counter()
        entries = [(pos, p.ops) for pos, p in zip(positions, accepted)]
        try:
            if need_sync:
                # The LMDB apply (no fsync) runs in the applier thread while this thread
                # waits in the log's fdatasync, so a durable commit costs about one
                # fdatasync. Safe for invariant 1: LMDB becomes durable only at a
                # checkpoint, and a checkpoint fdatasyncs the log first.
                job = self._applier().submit(lambda: self._apply(entries))
                sync_error: BaseException | None = None
                try:
                    self._log.sync()
                    self._unsynced = False
                except BaseException as exc:
                    sync_error = exc
                job.wait()  # raises what the apply raised
                if sync_error is not None:
                    raise sync_error
            else:
                self._apply(entries)
        except BaseException as exc:
            self._fail(accepted, exc, "log sync / LMDB apply", span)
            return
        self._stats["commits_total"] += len(accepted)
        for pos, p in zip(positions, accepted):
            p.position, p.done = pos, True
        if obs is not None:
            t1 = time.perf_counter()
            obs.wal_write_seconds.observe(t_logged - t0)
            records = 0
            for p in accepted:
                n = sum(op.count for op in p.ops)
                records += n
                obs.batch_records.observe(n)
                obs.commit_seconds.observe(t1 - t0)
                kinds = {op.kind for op in p.ops}
                if batchops.OP_TOKEN_PUT in kinds:
                    obs.token_creation_seconds.observe(t1 - t0)
                if batchops.OP_CONNECTION_PUT in kinds:
                    obs.connection_creation_seconds.observe(t1 - t0)
            # obs.event("commit", batches=, first=, last=, records=, durability=), typed: cheaper
            obs.commit_event(len(accepted), positions[0], positions[-1], records,
                             accepted[0].durability)
            if span is not None:
                span.set("last_position", positions[-1])
                span.set("records", records)

    def _fail(self, accepted: list[_Pending], exc: BaseException, where: str, span: Any) -> None:
        self._failed = exc
        self._stats["commit_errors_total"] += len(accepted)
        self._stats["panics_recovered_total"] += 1  # the original's name for a caught failure
        for p in accepted:
            p.error, p.done = exc, True
        if self._obs is not None:
            self._obs.event("error", op=where, error=repr(exc))
            self._obs.logger.error("commit failed in %s: %r; the store refuses writes until "
                                   "reopened", where, exc)
            if span is not None:
                span.error(exc)

    def _commit_direct(self, p: _Pending) -> int:
        """A large sync batch: straight into LMDB, then a checkpoint makes it durable."""
        self._check_writable()
        t0 = time.perf_counter()
        try:
            self._quota_check(p, 0)
        except BaseException as exc:
            if self._obs is not None:
                self._obs.event("quota_refused", error=str(exc))
            raise
        try:
            self._apply([(self._applied, p.ops)])
            self._write_checkpoint(pin=True)
        except BaseException as exc:
            self._fail([p], exc, "direct commit", None)
            raise
        self._stats["commits_total"] += 1
        self._stats["direct_commits_total"] += 1
        if self._obs is not None:
            n = sum(op.count for op in p.ops)
            self._obs.commit_seconds.observe(time.perf_counter() - t0)
            self._obs.batch_records.observe(n)
            self._obs.event("commit", batches=1, direct=True, records=n, last=self._applied)
        return self._applied

    def _apply(self, entries: list[tuple[int, list[Op]]]) -> ApplyStats:
        """Applies ops in one LMDB transaction with the last position; updates counters."""
        kv = self._kv
        tokens_db, meta = kv.dbs[DB_TOKENS], kv.dbs[DB_META]
        layout = self._layout
        result: dict[str, Any] = {}

        conn_db, rconn_db, events_db = kv.dbs[DB_CONNECTIONS], kv.dbs[DB_CONN_REVERSE], kv.dbs[DB_EVENTS]
        reflex_db = kv.dbs[DB_REFLEXES]
        capacity = self._event_capacity
        from . import reflex_store

        def fn(txn) -> ApplyStats:
            # The writer's in-memory counters equal the stored ones (only it writes), and
            # they change only after a commit: so fn can re-run from the same start.
            counters = dict(self._counters)
            total = ApplyStats()
            appended: list[tuple[int, np.ndarray]] = []
            reflexes = None  # a writable copy, made at the first reflex op (fn may re-run)
            trims: list[int] = []
            for op in _coalesce_puts(entries):
                    if op.kind == batchops.OP_TOKEN_PUT:
                        total.add(batchops.apply_token_put(txn, tokens_db, layout, op.data))
                    elif op.kind == batchops.OP_TOKEN_DELETE:
                        total.add(batchops.apply_token_delete(txn, tokens_db, layout, op.data))
                    elif op.kind == batchops.OP_CONNECTION_PUT:
                        total.add(batchops.apply_connection_put(txn, conn_db, rconn_db, op.data))
                    elif op.kind == batchops.OP_CONNECTION_DELETE:
                        total.add(batchops.apply_connection_delete(txn, conn_db, rconn_db, op.data))
                    elif op.kind == batchops.OP_EVENT_APPEND:
                        first = counters[M_EVENTS_NEXT]
                        st, counters[M_EVENTS_NEXT], counters[M_EVENTS_LIVE] = batchops.apply_event_append(
                            txn, events_db, op.data, first, capacity, counters[M_EVENTS_LIVE])
                        total.add(st)
                        appended.append((first, op.data))
                    elif op.kind == batchops.OP_EVENT_TRIM:
                        n, counters[M_EVENTS_LIVE] = batchops.apply_event_trim(
                            txn, events_db, int(op.data.sum()), counters[M_EVENTS_LIVE])
                        total.extra["events_trimmed"] = total.extra.get("events_trimmed", 0) + n
                        trims.append(n)
                    elif op.kind in (batchops.OP_REFLEX_PUT, batchops.OP_REFLEX_DELETE,
                                     batchops.OP_REFLEX_DELETE_KEY):
                        if reflexes is None:
                            reflexes = reflex_store.writable_copy(self._reflex_version, self._reflex_capacity)
                        if op.kind == batchops.OP_REFLEX_PUT:
                            reflex_store.apply_put(reflexes, op.data)
                            total.extra["reflexes_written"] = total.extra.get("reflexes_written", 0) + op.count
                        elif op.kind == batchops.OP_REFLEX_DELETE:
                            reflex_store.apply_delete(reflexes, op.data)
                        else:
                            total.extra["reflexes_evicted"] = (total.extra.get("reflexes_evicted", 0)
                                                               + reflex_store.apply_delete_key(reflexes, op.data))
                    else:
                        raise NgStoreError(f"unknown op kind {op.kind}")
            ex = total.extra
            counters[M_TOKENS_LIVE] += total.tokens_added - total.tokens_removed
            counters[M_TOKENS_CREATED] += total.tokens_added
            counters[M_TOKENS_DELETED] += total.tokens_removed
            counters[M_CONN_LIVE] += ex.get("connections_added", 0) - ex.get("connections_removed", 0)
            counters[M_CONN_CREATED] += ex.get("connections_added", 0)
            counters[M_EVENTS_TRIMMED] += ex.get("events_trimmed", 0)
            txn.put(M_COUNTERS, _COUNTERS.pack(*(counters[k] for k in COUNTER_KEYS)), db=meta)
            if reflexes is not None:
                reflex_store.persist(txn, reflex_db, reflexes)
            last = max(pos for pos, _ in entries)
            txn.put(M_APPLIED, _U64.pack(last), db=meta)
            result["counters"], result["applied"], result["appended"] = counters, last, appended
            result["reflexes"] = reflexes
            result["trims"] = trims
            return total

        stats = kv.write(fn)
        self._counters.update(result["counters"])
        self._applied = result["applied"]
        if result["reflexes"] is not None:  # swap in the new version; lookups never wait
            old = self._reflex_version
            for k, v in reflex_store.counters(old).items():
                self._reflex_carry[k] = self._reflex_carry.get(k, 0) + v
            self._reflex_version = reflex_store.ReflexVersion(result["reflexes"])
            self._reflexes_written_total += stats.extra.get("reflexes_written", 0)
        if self._experience is not None:  # the in-memory ring follows the commit order
            for first, events in result["appended"]:
                self._experience._append_committed(first, events)
            if result["trims"]:
                oldest = self._counters[M_EVENTS_NEXT] - self._counters[M_EVENTS_LIVE]
                self._experience.trim_before(min(oldest, self._experience.total_written))
        return stats

    # ------------------------------------------------------------------ durability

    def _applier(self) -> "_Applier":
        if self._applier_thread is None:
            self._applier_thread = _Applier()
        return self._applier_thread

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher_stop.clear()
            self._flusher = threading.Thread(target=self._flush_loop, name="ngstore-flusher", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._flusher_stop.wait(self._flush_interval):
            if self._unsynced and self._failed is None:
                try:
                    self._unsynced = False
                    self._log.sync()
                except BaseException as exc:  # the next commit reports it
                    self._failed = exc

    def flush(self) -> None:
        """Makes every batch committed so far durable (one fdatasync of the log)."""
        self._check_writable()

        def do() -> None:
            self._log.sync()
            self._unsynced = False

        self._run_exclusive(do)

    def checkpoint(self) -> None:
        """Makes LMDB durable, then drops the log segments it covers.

        Readers are never blocked; writers wait for the duration (one fdatasync of the
        LMDB file plus a small atomic file write).
        """
        self._check_writable()

        def do() -> None:
            try:
                self._write_checkpoint(pin=True)
            except BaseException as exc:  # fsyncgate: after a failed sync nothing is known
                self._failed = exc
                raise

        self._run_exclusive(do)

    #: Fraction of the refusal point from which aggressive cleanup runs, and what it trims.
    CLEANUP_MARGIN = 0.9
    CLEANUP_EVENT_FRACTION = 0.25

    def _maybe_cleanup(self) -> None:
        """Guardian's aggressive cleanup, near the byte quota: evict decayed Hypothesis
        reflexes and trim the oldest quarter of the experience events, through one logged
        batch (so replay does the same)."""
        g = self._guardian
        if self._failed is not None or not g.should_cleanup(self._usage(), self.CLEANUP_MARGIN):
            return
        from . import reflex_store

        ops = []
        stale = reflex_store.decayed_hypotheses(self._reflex_version, int(time.time()))
        if stale.size:
            ops.append(Op(batchops.OP_REFLEX_DELETE_KEY, stale))
        n = int(self._counters[M_EVENTS_LIVE] * self.CLEANUP_EVENT_FRACTION)
        if n:
            ops.append(Op(batchops.OP_EVENT_TRIM, np.array([n], dtype="<u8")))
        if not ops:
            return
        p = _Pending(ops, "sync")
        p.payload = batchops.encode_ops(p.ops)
        before = self._usage().bytes
        self._commit_group([p])
        if p.error is None:
            g.aggressive_cleanups_total += 1
            if self._obs is not None:
                self._obs.event("cleanup", events_trimmed=n, hypotheses_evicted=int(stale.size),
                                bytes_before=before, bytes_after=self._usage().bytes)
                self._obs.logger.warning(
                    "aggressive cleanup: trimmed the %d oldest events, evicted %d decayed hypothesis "
                    "reflexes (%d -> %d accounted bytes)", n, int(stale.size), before, self._usage().bytes)

    def _maybe_checkpoint(self) -> None:
        """Checkpoints when the log, or LMDB's file since the last checkpoint, has grown
        by ``checkpoint_bytes``, or ``checkpoint_interval`` has passed. The LMDB trigger
        matters: the pinned checkpoint keeps LMDB from reusing the pages later commits
        free, so many small updates grow the file until the next checkpoint."""
        if self._failed is not None:
            return
        grown = (self._kv.env.info()["last_pgno"] - self._pgno_at_checkpoint) * self._page_size
        if (self._log.size_bytes >= self._checkpoint_bytes or grown >= self._checkpoint_bytes
                or time.time() - self._last_checkpoint >= self._checkpoint_interval):
            try:
                self._write_checkpoint(pin=True)
            except BaseException as exc:
                self._failed = exc

    def _write_checkpoint(self, pin: bool, final: bool = False) -> None:
        if self._obs is None:
            self._write_checkpoint_inner(pin, final)
            return
        with self._obs.span("checkpoint"):
            self._write_checkpoint_inner(pin, final)
        self._obs.event("checkpoint", applied_position=self._applied,
                        wal_segments=self._log.segment_count if self._log is not None else 0)

    def _write_checkpoint_inner(self, pin: bool, final: bool = False) -> None:
        kv = self._kv
        if self._log is not None:
            self._log.sync()  # invariant 1: the log is durable before LMDB is
            self._unsynced = False
        kv.sync()
        txnid = kv.last_txnid()
        page = kv.read_meta_page(txnid)
        self._io.atomic_write(os.path.join(self.path, CHECKPOINT_FILE),
                              encode_checkpoint(kv.page_size(), txnid, self._applied, page))
        if pin:
            kv.pin()
        self._pgno_at_checkpoint = kv.env.info()["last_pgno"]
        self._page_size = kv.page_size()
        if self._log is not None:
            if final:  # closing: every record is applied and durable, keep none of them
                self._log.rotate()
            self._log.drop_through(self._applied)
        self._stats["checkpoints_total"] += 1
        self._last_checkpoint = time.time()

    # ------------------------------------------------------------------ reading

    def _read_txn(self):
        return _ReadTxn(self._kv)

    def snapshot(self) -> "Snapshot":
        """A consistent read view of the store (one LMDB read transaction)."""
        self._check_open()
        return Snapshot(self)

    def count(self) -> int:
        """Number of tokens present."""
        self._check_open()
        if self.readonly:
            with self._read_txn() as txn:
                self._load_meta(txn)
        return self._counters[M_TOKENS_LIVE]

    def __len__(self) -> int:
        return self.count()

    def contains(self, token_id: int) -> bool:
        return self._get_record(token_id) is not None

    def __contains__(self, token_id: object) -> bool:
        try:
            return self.contains(token_id)  # type: ignore[arg-type]
        except InvalidArgumentError:
            return False

    def _presence(self, ids: np.ndarray) -> np.ndarray:
        self._check_open()
        with self.snapshot() as snap:
            return snap.tokens._presence(ids)

    def get_token(self, token_id: int):
        """The stored token ``token_id`` (a copy), or NotFoundError (a KeyError).

        One read transaction, one LMDB get, 64 bytes copied: the batch API is for many."""
        raw = self._get_record(token_id)
        if raw is None:
            raise NotFoundError(f"no token with id {token_id} in {self.path}")
        return _Token._view(np.frombuffer(bytearray(raw), dtype=TOKEN_DTYPE))  # owns its bytes

    def _get_record(self, token_id: int) -> bytes | None:
        if self._closed:
            raise StoreClosedError(f"the store {self.path} is closed")
        if type(token_id) is not int or not 0 <= token_id <= MAX_TOKEN_ID:
            token_id = int(_ids_array([token_id])[0])
        layout = self._layout
        env = self._kv.env
        try:
            txn = env.begin(buffers=True)
        except Exception:  # map resized by another process, reader slots: the slow path says why
            with self._read_txn() as txn2:
                v = txn2.get(layout.key(token_id >> layout.shift), db=self._kv.dbs[DB_TOKENS])
                return self._record_of(v, token_id)
        try:
            v = txn.get(layout.key(token_id >> layout.shift), db=self._kv.dbs[DB_TOKENS])
            return self._record_of(v, token_id)
        finally:
            txn.abort()
            del txn  # the reader slot is freed with the object (see _Lease.release)

    def _record_of(self, v: Any, token_id: int) -> bytes | None:
        if v is None:
            return None
        layout = self._layout
        if len(v) != layout.value_bytes:
            layout.check(v, token_id >> layout.shift)
        slot = token_id & layout.mask
        if not v[layout.records_bytes + (slot >> 3)] >> (slot & 7) & 1:
            return None
        return v[slot * 64:slot * 64 + 64].tobytes()

    def get_tokens(self, ids: Any, *, missing: str = "raise"):
        """Tokens for ``ids`` in the given order, as a TokenArray (a copy).

        ``missing="raise"`` raises NotFoundError naming the absent ids; ``"skip"``
        leaves them out.
        """
        self._check_open()
        with self.snapshot() as snap:
            return snap.tokens.get(ids, missing=missing)

    # ------------------------------------------------------------------ information

    def stats(self) -> dict[str, Any]:
        """Live counters and sizes (what metrics and ``ngstore info`` show)."""
        out: dict[str, Any] = {"path": self.path, "readonly": self.readonly, "closed": self._closed}
        if self._closed:
            return out
        if self.readonly:
            with self._read_txn() as txn:
                self._load_meta(txn)
        out.update(self._stats)
        out["tokens_live"] = self._counters[M_TOKENS_LIVE]
        out["tokens_created_total"] = self._counters[M_TOKENS_CREATED]
        out["tokens_deleted_total"] = self._counters[M_TOKENS_DELETED]
        out["connections_live"] = self._counters[M_CONN_LIVE]
        out["connections_created_total"] = self._counters[M_CONN_CREATED]
        out["events_live"] = self._counters[M_EVENTS_LIVE]
        out["events_written_total"] = self._counters[M_EVENTS_NEXT]
        out["events_trimmed_total"] = self._counters[M_EVENTS_TRIMMED]
        out["event_capacity"] = self._event_capacity
        out.update(self._reflex_stats())
        eng = self._intuition
        out["intuition_queue_size"] = max(0, self._counters[M_EVENTS_NEXT] - eng._analyzed_through) \
            if eng is not None else 0
        out["guardian_event_queue_size"] = 0  # no queue: Guardian events go to the black box at once
        out["applied_position"] = self._applied
        out["quota_exceeded_total"] = self._guardian.quota_exceeded_total
        out["aggressive_cleanups_total"] = self._guardian.aggressive_cleanups_total
        usage = self._usage()
        out["memory_used_bytes"] = usage.bytes
        out["memory_limit_bytes"] = self._guardian.max_bytes or 0
        out["token_limit"] = self._guardian.max_tokens or 0
        out["memory_threshold"] = self._guardian.memory_threshold
        out["write_failed"] = self._failed is not None
        out["last_checkpoint_unix"] = self._last_checkpoint
        out.update(self._kv.info())
        if self._log is not None:
            out["wal_bytes"] = self._log.size_bytes
            out["wal_segments"] = self._log.segment_count
            out["wal_position"] = self._log.last_position
        out["chunk_slots"] = self._layout.slots
        out["format_version"] = FORMAT_VERSION
        return out

    def _reflex_stats(self) -> dict[str, Any]:
        from . import reflex_store

        v = self._reflex_version
        c = reflex_store.counters(v)
        tot = {k: c[k] + self._reflex_carry.get(k, 0) for k in c}
        return {"reflexes_live": len(v.table) if v is not None else 0,
                "reflex_capacity": v.table.capacity if v is not None else self._reflex_capacity,
                "reflex_table_bytes": (v.table.slot_count * 96 + 128) if v is not None else 0,
                "reflex_lookups_total": tot["lookups"], "reflex_hits_total": tot["hits"],
                "reflex_misses_total": tot["misses"], "reflex_collisions_total": tot["collisions"],
                "reflex_answers_total": tot["answers"], "reflex_evictions_total": tot["evictions"],
                "reflexes_created_total": self._reflexes_written_total}

    def _safe_stats(self) -> dict[str, Any]:
        try:
            return self.stats()
        except Exception as exc:  # a crash dump must not fail on a half-closed store
            return {"path": self.path, "error": repr(exc)}

    @property
    def obs(self):
        """The store's Observability (black box, histograms, spans); None when opened
        with ``observability=False``."""
        return self._obs

    def metrics_collector(self, name: str | None = None):
        """A prometheus_client collector of this store's metrics, to register on the
        registry you choose: ``registry.register(store.metrics_collector())``."""
        from .obs.metrics import StoreCollector

        return StoreCollector(self, name=name)

    def serve_metrics(self, host: str = "127.0.0.1", port: int = 0):
        """Starts the HTTP sidecar (``/metrics``, ``/health``, ``/ready``) in a daemon
        thread; returns the server (``.url``, ``.port``, ``.close()``)."""
        from .obs.http import serve

        return serve(self, host=host, port=port)

    def ready_checks(self) -> dict[str, tuple[bool, str]]:
        """The real readiness checks of ``/ready``."""
        checks: dict[str, tuple[bool, str]] = {}
        checks["store_open"] = (not self._closed, "open" if not self._closed else "closed")
        if self._closed:
            return checks
        if not self.readonly:
            ok = self._failed is None and self._log is not None and self._log.failed is None
            checks["log_writable"] = (ok, "ok" if ok else f"I/O error: {self._failed!r}")
        info = self._kv.info()
        frac = info["map_used_bytes"] / max(1, info["map_size_bytes"])
        checks["map_not_full"] = (frac < 0.9, f"{frac:.1%} of the map used")
        q = self._guardian.fraction_used(self._usage())
        checks["quotas_below_threshold"] = (q < 0.8, f"{q:.1%} of the nearest quota")
        return checks

    def check(self) -> "CheckReport":
        """Verifies internal consistency; returns a report (``report.ok``)."""
        self._check_open()
        from .check import check_store

        return check_store(self)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Checkpoints (writer), releases locks. Views already handed out stay valid."""
        if self._closed:
            return
        try:
            if self._intuition is not None:
                self._intuition.stop()
            if not self.readonly and self._kv is not None and self._failed is None:
                self._flusher_stop.set()
                if self._flusher is not None:
                    self._flusher.join()
                self._run_exclusive(lambda: self._write_checkpoint(pin=False, final=True))
                self._write_state(clean=True)
        finally:
            if self._obs is not None:
                self._obs.publish_stats()  # the stats page's last values, while stats() answers
            self._closed = True
            self._flusher_stop.set()
            if self._obs is not None:
                self._obs.event("close")
                self._obs.close()
            self._release_files()

    def _release_files(self) -> None:
        if self._applier_thread is not None:
            self._applier_thread.close()
            self._applier_thread = None
        if self._log is not None:
            try:
                self._log.close()
            finally:
                self._log = None
        if self._kv is not None:
            self._kv.close()
            self._kv = None
        for fd in (self._lock_fd, self._readers_fd):
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
        self._lock_fd = self._readers_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "writable")
        return f"<ngstore.Store {self.path!r} {state}>"


def _ids_array(ids: Any) -> np.ndarray:
    """Validated uint32 id array from ints / arrays (InvalidArgumentError otherwise)."""
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    try:
        a = np.asarray(ids)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"ids must be integers, got {type(ids).__name__}") from exc
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 0 else a
        if a.ndim != 1:
            raise InvalidArgumentError(f"ids must be a 1-D sequence, got shape {a.shape}")
    if a.size == 0:
        return a.astype(np.uint32)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "O" and all(isinstance(x, (int, np.integer)) for x in a.tolist()):
            a = np.array(a.tolist(), dtype=np.int64)
        else:
            raise InvalidArgumentError(f"ids must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.min() < 0 or a.max() > MAX_TOKEN_ID:
        raise InvalidArgumentError(
            f"ids must be in 0..{MAX_TOKEN_ID}; got values in {int(a.min())}..{int(a.max())}")
    return a.astype(np.uint32, copy=False)


class _Job:
    def __init__(self, owner: "_Applier") -> None:
        self._owner = owner

    def wait(self) -> Any:
        return self._owner._wait()


class _Applier:
    """A thread that runs one LMDB apply at a time for the commit leader, so that the
    apply overlaps the leader's log fdatasync. Each apply's write transaction begins and
    commits in this thread (LMDB's rule for write transactions)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._fn: Any = None
        self._result: tuple[bool, Any] | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ngstore-applier", daemon=True)
        self._thread.start()

    def submit(self, fn: Any) -> _Job:
        with self._cv:
            self._fn, self._result = fn, None
            self._cv.notify_all()
        return _Job(self)

    def _wait(self) -> Any:
        with self._cv:
            while self._result is None:
                self._cv.wait()
            ok, value = self._result
            self._result = None
        if not ok:
            raise value
        return value

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._fn is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                fn, self._fn = self._fn, None
            try:
                result: tuple[bool, Any] = (True, fn())
            except BaseException as exc:  # handed to the waiting leader
                result = (False, exc)
            with self._cv:
                self._result = result
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()


class Batch:
    """Operations committed together: all visible after commit, or none, after any crash."""

    def __init__(self, store: Store, durability: str) -> None:
        self._store = store
        self.durability = durability
        self._ops: list[Op] = []
        self._done = False
        self.position: int | None = None

    def _check(self) -> None:
        if self._done:
            raise NgStoreError("this batch was already committed or discarded")

    def put_tokens(self, tokens: Any) -> None:
        """Adds token records (copied now: later changes to ``tokens`` do not leak in)."""
        self._put_tokens(tokens, copy=True)

    def _put_tokens(self, tokens: Any, copy: bool) -> None:
        from .tokens import as_token_array

        self._check()
        arr = as_token_array(tokens)
        if arr.size == 0:
            return
        st = self._store._stats
        obs = self._store._obs
        t0 = time.perf_counter()
        try:
            _validate_tokens(arr)
        except InvalidArgumentError:
            st["tokens_rejected_total"] += int(arr.size)
            if obs is not None:
                obs.event("validation_failed", what="tokens", count=int(arr.size))
            raise
        st["tokens_validated_total"] += int(arr.size)
        if obs is not None:
            obs.validation_seconds.observe(time.perf_counter() - t0)
        data = np.array(arr, dtype=TOKEN_DTYPE, copy=True) if copy else np.ascontiguousarray(arr)
        self._ops.append(Op(batchops.OP_TOKEN_PUT, data))

    def delete_tokens(self, ids: Any) -> None:
        self._check()
        a = _ids_array(ids)
        if a.size:
            self._ops.append(Op(batchops.OP_TOKEN_DELETE, np.ascontiguousarray(a, dtype="<u4")))

    def put_connections(self, connections: Any) -> None:
        """Adds connection records (copied now)."""
        self._put_connections(connections, copy=True)

    def _put_connections(self, connections: Any, copy: bool) -> None:
        from .connections import as_connection_array

        self._check()
        arr = as_connection_array(connections)
        if arr.size == 0:
            return
        st = self._store._stats
        obs = self._store._obs
        t0 = time.perf_counter()
        try:
            self._validate_connections(arr, "connection(s)")
        except ValidationError as exc:
            st["connections_rejected_total"] += exc.n_failed
            st["connections_validated_total"] += int(arr.size) - exc.n_failed
            raise
        finally:
            if obs is not None:
                obs.validation_seconds.observe(time.perf_counter() - t0)
        st["connections_validated_total"] += int(arr.size)
        data = np.array(arr, dtype=CONNECTION_DTYPE, copy=True) if copy else np.ascontiguousarray(arr)
        self._ops.append(Op(batchops.OP_CONNECTION_PUT, data))

    def _validate_connections(self, arr: np.ndarray, what: str) -> None:
        """Raises ValidationError unless every record is a valid connection; records the
        failure in the black box."""
        from .validation import check_connections

        res = check_connections(arr)
        if res.all_ok:
            return
        obs = self._store._obs
        if obs is not None:
            obs.event("validation_failed", what=what, count=int(res.n_failed),
                      first=str(res.reasons[:1]))
        raise ValidationError(f"{res.n_failed} {what} of the batch",
                              [(f, m, v) for _i, f, m, v in res.reasons], int(res.n_failed))

    def delete_connections(self, keys: Any) -> None:
        """Deletes by key: connections (their a, b, type) or (a, b, type) triples."""
        self._check()
        k = _connection_keys(keys)
        if k.size:
            self._ops.append(Op(batchops.OP_CONNECTION_DELETE, k))

    _event_count = 0

    def put_reflexes(self, states: Any, connections: Any) -> None:
        """Adds reflexes: ``connections[i]`` for ``states[i]`` (8-float states, Token
        records, or raw (n, 8, 3) int16 coordinates).

        Each must be a valid connection (``validate_connection``). The stricter
        ``validate_reflex`` is the auto-consolidation gate (``try_auto_consolidate``,
        ``analyze``), not a storage rule: like the original's ``consolidate_reflex``, a
        store may hold Hypothesis reflexes, which the fast path answers only from
        confidence 200 and the Guardian's cleanup evicts once they decay."""
        from .connections import as_connection_array

        self._check()
        coords = _state_coords(states)
        conns = as_connection_array(connections)
        if conns.shape[0] != coords.shape[0]:
            raise InvalidArgumentError(f"{coords.shape[0]} states but {conns.shape[0]} connections")
        self._validate_connections(conns, "reflex(es)")
        data = np.zeros(coords.shape[0], dtype=batchops.REFLEX_PUT_DTYPE)
        data["state"] = coords
        data["connection"] = conns
        if data.size:
            self._ops.append(Op(batchops.OP_REFLEX_PUT, data))

    def delete_reflexes(self, states: Any, connections: Any = None) -> None:
        """Deletes the reflex of each state with the identity (token_a, token_b, type) of
        the matching connection, or every reflex of the states when ``connections`` is None."""
        from .connections import as_connection_array

        self._check()
        coords = _state_coords(states)
        data = np.zeros(coords.shape[0], dtype=batchops.REFLEX_DELETE_DTYPE)
        data["state"] = coords
        if connections is None:
            data["all"] = 1
        else:
            conns = as_connection_array(connections)
            if conns.shape[0] != coords.shape[0]:
                raise InvalidArgumentError(f"{coords.shape[0]} states but {conns.shape[0]} connections")
            data["token_a"], data["token_b"] = conns["token_a"], conns["token_b"]
            data["connection_type"] = conns["connection_type"]
        if data.size:
            self._ops.append(Op(batchops.OP_REFLEX_DELETE, data))

    def append_events(self, events: Any) -> None:
        """Adds experience events (copied now); sequence numbers are assigned at commit."""
        from .experience import _as_event_rows

        self._check()
        try:
            rows = _as_event_rows(events)
        except InvalidArgumentError:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"not experience events: {exc}") from None
        if rows.size:
            self._event_count += int(rows.size)
            self._ops.append(Op(batchops.OP_EVENT_APPEND, np.array(rows, dtype=EVENT_DTYPE, copy=True)))

    def commit(self) -> int:
        """Commits; returns the log position. Raises and writes nothing on refusal."""
        self._check()
        self._done = True
        self.position = self._store._commit(self._ops, self.durability)
        return self.position

    def discard(self) -> None:
        self._done = True
        self._ops = []

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _connection_keys(keys: Any) -> np.ndarray:
    """Connection keys (CONN_DELETE_DTYPE, canonical a <= b) from (a, b, type) triples or
    from connections; InvalidArgumentError for anything else."""
    if isinstance(keys, tuple) and len(keys) == 3 and all(isinstance(k, (int, np.integer)) for k in keys):
        keys = [keys]
    if isinstance(keys, list) and keys and all(isinstance(k, tuple) for k in keys):
        try:
            trip = np.array(keys, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"bad connection keys: {exc}") from None
        if trip.ndim != 2 or trip.shape[1] != 3:
            raise InvalidArgumentError("connection keys must be (a, b, type) triples")
        a, b, t = trip[:, 0], trip[:, 1], trip[:, 2]
    else:
        from .connections import as_connection_array

        arr = as_connection_array(keys)
        a, b, t = arr["token_a"], arr["token_b"], arr["connection_type"]
    _ids_array(a)
    _ids_array(b)
    if len(t) and (np.min(t) < 0 or np.max(t) > 255):
        raise InvalidArgumentError("connection_type must be in 0..255")
    k = np.zeros(len(a), dtype=batchops.CONN_DELETE_DTYPE)
    k["token_a"], k["token_b"] = np.minimum(a, b), np.maximum(a, b)
    k["connection_type"] = t
    return k


def _coalesce_puts(entries: list[tuple[int, list[Op]]]) -> Iterator[Op]:
    """The ops of ``entries`` in order, with runs of adjacent TOKEN_PUT ops (across
    batches) merged into one: a group of small commits then rewrites each chunk once.
    Same result: within a put the last record of an id wins, and only adjacent puts
    merge, so no delete or other op is reordered."""
    run: list[np.ndarray] = []
    for _pos, ops in entries:
        for op in ops:
            if op.kind == batchops.OP_TOKEN_PUT:
                run.append(op.data)
                continue
            if run:
                yield Op(batchops.OP_TOKEN_PUT, _concat_records(run))
                run = []
            yield op
    if run:
        yield Op(batchops.OP_TOKEN_PUT, _concat_records(run))


def _concat_records(run: list[np.ndarray]) -> np.ndarray:
    """Concatenates token record arrays as opaque 64-byte rows (numpy's concatenate of
    a structured dtype is several times slower)."""
    if len(run) == 1:
        return run[0]
    return np.concatenate([np.ascontiguousarray(r).view(RAW64) for r in run]).view(TOKEN_DTYPE)


def _state_coords(states: Any) -> np.ndarray:
    """Raw (n, 8, 3) int16 coordinates of states given as 8 floats, Tokens or raw coords."""
    from . import codec
    from .tokens import Token, TokenArray

    if isinstance(states, Token):
        return states._a["coordinates"].reshape(1, 8, 3).copy()
    if isinstance(states, TokenArray):
        return states.data["coordinates"].copy()
    a = np.asarray(states)
    if a.dtype == TOKEN_DTYPE:
        return a.reshape(-1)["coordinates"].copy()
    if a.dtype == np.int16 and a.shape[-2:] == (8, 3):
        return a.reshape(-1, 8, 3).copy()
    if a.dtype.kind in "fiu" and a.shape[-1:] == (8,):
        a = a.reshape(-1, 8)
        out = np.zeros((a.shape[0], 8, 3), dtype=np.int16)
        out[:, :, 0] = codec.encode_state(a.astype(np.float32))
        return out
    raise InvalidArgumentError(
        f"states must be (n, 8) floats, Token records or (n, 8, 3) int16 coordinates; got "
        f"{getattr(a, 'dtype', type(states))} {getattr(a, 'shape', '')}")


def _validate_tokens(arr: np.ndarray) -> None:
    """Rejects records a store must not hold (NaN/inf weight). Vectorised."""
    w = arr["weight"]
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"token id {int(arr['id'][i])} has a non-finite weight {float(w[i])!r}; "
            f"{int(bad.sum())} record(s) of the batch are invalid and nothing was written")


# ---------------------------------------------------------------------- snapshots

class _ReadTxn:
    """A plain read transaction for internal use (no views escape it)."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self.txn = kv.begin_read()

    def __enter__(self):
        return self.txn

    def __exit__(self, *exc: object) -> None:
        txn, self.txn = self.txn, None  # see _Lease.release: the slot goes with the object
        self._kv.end_read(txn)


class _Lease:
    """Owns a read transaction; ends it when the snapshot is closed AND no view lives."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        self.txn = kv.begin_read()
        self._refs = 1  # the snapshot itself
        self._lock = threading.Lock()
        self._map_size = int(kv.env.info()["map_size"])
        self._anchor = 0
        self._region: np.ndarray | None = None
        self._tokens: np.ndarray | None = None
        self._tokens_base = 0

    def acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            txn, self.txn = self.txn, None
            # py-lmdb frees the reader slot only when the transaction object is freed: an
            # aborted transaction still referenced keeps its slot (and so would exhaust
            # max_readers). Drop every reference here.
            self._region = self._tokens = None
            self.kv.end_read(txn)

    def view(self, value: memoryview, nbytes: int) -> np.ndarray:
        """A read-only uint8 array over the first ``nbytes`` of an LMDB value, zero copy,
        whose lifetime holds this lease.

        All views of a snapshot share one base object spanning the whole map (py-lmdb
        does not expose the map's address, so the span is anchored ``map_size`` below
        the first value seen: every value lies within ``map_size`` of it). One base per
        snapshot keeps the per-chunk cost to a slice.
        """
        addr = _address(value)
        region = self._region_for(addr)
        off = addr - self._anchor
        if 0 <= off and off + nbytes <= region.shape[0]:
            return region[off:off + nbytes]
        return np.asarray(_MappedRegion(addr, nbytes, self))  # not expected; still correct

    def records(self, value: memoryview, count: int) -> np.ndarray:
        """``count`` TOKEN_DTYPE records at the start of an LMDB value, zero copy.

        LMDB places a large value at 16 bytes into a page, so every chunk value of a
        snapshot sits at the same address modulo 64: a region typed as TOKEN_DTYPE,
        anchored at that residue, turns each chunk into a plain slice."""
        addr = _address(value)
        self._region_for(addr)
        if self._tokens is None:
            self._tokens = self._region[(addr - self._anchor) % 64:].view(np.uint8)
            self._tokens = self._tokens[: self._tokens.shape[0] // 64 * 64].view(TOKEN_DTYPE)
            self._tokens_base = self._anchor + (addr - self._anchor) % 64
        off = addr - self._tokens_base
        if off >= 0 and off % 64 == 0 and off // 64 + count <= self._tokens.shape[0]:
            return self._tokens[off // 64: off // 64 + count]
        return self.view(value, count * 64).view(TOKEN_DTYPE)

    def _region_for(self, addr: int) -> np.ndarray:
        if self._region is None:
            self._anchor = max(4096, addr - self._map_size)
            span = 2 * self._map_size if self._anchor > 4096 else 2 * self._map_size + addr
            self._region = np.asarray(_MappedRegion(self._anchor, span, self))
        return self._region


_ffi = _native.ffi


def _address(value: memoryview) -> int:
    return int(_ffi.cast("uintptr_t", _ffi.from_buffer(value)))


class _MappedRegion:
    """The base object of every zero-copy view of a snapshot.

    numpy keeps it as the final ``base`` of each view and of every array derived from
    one; when the last of them is collected, the finalizer releases the lease (and so,
    eventually, the read transaction). ``data=(addr, True)`` makes the arrays read-only
    in a way numpy will not let a caller undo.
    """

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, addr: int, size: int, lease: _Lease) -> None:
        self.__array_interface__ = {"data": (addr, True), "shape": (size,), "typestr": "|u1", "version": 3}
        lease.acquire()
        weakref.finalize(self, lease.release)


class Snapshot:
    """A consistent, read-only view of the store at one moment.

    ``snapshot.tokens`` gives zero-copy numpy views; see the module docstring for how
    long they stay valid. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lease = _Lease(store._kv)
        self._closed = False
        self._layout = store._layout

    @property
    def tokens(self) -> "TokenView":
        """The snapshot's tokens (zero-copy views, gathers, columns)."""
        return TokenView(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _txn(self):
        if self._closed:
            raise StoreClosedError("this snapshot is closed")
        return self._lease.txn

    def close(self) -> None:
        """Ends the snapshot. Views handed out stay valid until they are dropped."""
        if not self._closed:
            self._closed = True
            lease = self._lease
            # The lease must not hold the region base: views alone keep it (and so the
            # transaction) alive from now on.
            lease._region = lease._tokens = None
            lease.release()

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class TokenView:
    """The tokens of a snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap  # Snapshot.tokens makes a new view each time: no reference cycle
        self._layout = snap._layout

    def count(self) -> int:
        txn = self._snap._txn()
        v = txn.get(M_COUNTERS, db=self._snap._lease.kv.dbs[DB_META])
        return 0 if v is None else _COUNTERS.unpack(bytes(v))[COUNTER_KEYS.index(M_TOKENS_LIVE)]

    def __len__(self) -> int:
        return self.count()

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(first_id, array)``: zero-copy, read-only views of runs of present ids.

        A full chunk is one run. Each array is a TOKEN_DTYPE view into the LMDB map,
        valid for as long as it is referenced (see the module docstring).
        """
        txn = self._snap._txn()
        lease = self._snap._lease
        layout = self._layout
        full = layout.full_bitmap
        rb, vb, slots, shift = layout.records_bytes, layout.value_bytes, layout.slots, layout.shift
        records = lease.records
        from_bytes = int.from_bytes
        for key, value in txn.cursor(db=lease.kv.dbs[DB_TOKENS]):
            if len(value) != vb:
                layout.check(value, from_bytes(key, "big"))
            first = from_bytes(key, "big") << shift
            rows = records(value, slots)
            bitmap = value[rb:]
            if bitmap == full:
                yield first, rows
                continue
            bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little").astype(np.int8)
            edges = np.flatnonzero(np.diff(np.concatenate(([0], bits, [0]))))
            for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist()):
                yield first + s, rows[s:e]

    def __iter__(self) -> Iterator[Any]:
        """Yields a Token (a copy) per present token, in id order."""
        from .tokens import Token

        for _first, arr in self.chunks():
            for i in range(arr.shape[0]):
                yield Token._view(arr[i:i + 1].copy())

    def ids(self) -> np.ndarray:
        parts = [a["id"].copy() for _f, a in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint32)

    def column(self, name: str) -> np.ndarray:
        """One field of every present token, in id order (a new array).

        One C call reads the field straight out of the mapped chunk values (GIL
        released), so this is the fast way to scan a column: about the cost of the same
        field access on an in-RAM array."""
        from . import _native

        if name not in TOKEN_DTYPE.names:
            raise InvalidArgumentError(f"no token field {name!r}; fields are {TOKEN_DTYPE.names}")
        field_dt, offset = TOKEN_DTYPE.fields[name][:2]
        txn = self._snap._txn()
        bufs = [v for _k, v in txn.cursor(db=self._snap._lease.kv.dbs[DB_TOKENS])]
        raw_dt = np.dtype((np.void, field_dt.itemsize))
        out = _native.gather_column(bufs, self._layout.shift, offset, raw_dt, self.count())
        return out.view(field_dt.base).reshape((-1,) + field_dt.shape)

    def to_array(self) -> np.ndarray:
        """Every present token as one TOKEN_DTYPE array (a copy)."""
        parts = [a for _f, a in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, TOKEN_DTYPE)

    def _chunk_values(self, ids: np.ndarray) -> tuple[np.ndarray, list[memoryview]]:
        txn = self._snap._txn()
        db = self._snap._lease.kv.dbs[DB_TOKENS]
        layout = self._layout
        if ids.size == 0:
            return np.zeros(0, np.uint32), []
        chunks = ids >> layout.shift
        lo, hi = int(chunks.min()), int(chunks.max())
        if hi - lo < 4 * ids.size + 1024:
            seen = np.zeros(hi - lo + 1, dtype=bool)
            seen[chunks - lo] = True
            uniq = np.flatnonzero(seen).astype(np.uint32) + np.uint32(lo)
        else:
            uniq = np.unique(chunks)
        keys, bufs = [], []
        for c in uniq.tolist():
            v = txn.get(ChunkLayout.key(c), db=db)
            if v is not None:
                layout.check(v, c)
                keys.append(c)
                bufs.append(v)
        return np.asarray(keys, dtype=np.uint32), bufs

    def get(self, ids: Any, *, missing: str = "raise"):
        """Tokens for ``ids`` (in order) by a vectorised gather; a TokenArray copy."""
        from . import _native
        from .tokens import TokenArray

        if missing not in ("raise", "skip"):
            raise InvalidArgumentError(f"missing must be 'raise' or 'skip', got {missing!r}")
        ids = _ids_array(ids)
        keys, bufs = self._chunk_values(ids)
        out, found = _native.gather64(ids, keys, bufs, self._layout.shift)
        if not found.all():
            if missing == "raise":
                absent = ids[~found]
                shown = ", ".join(str(int(x)) for x in absent[:5])
                more = f" and {absent.size - 5} more" if absent.size > 5 else ""
                raise NotFoundError(f"no token with id {shown}{more} in {self._snap._store.path}")
            out = out[found]
        return TokenArray(out.view(TOKEN_DTYPE) if out.dtype != TOKEN_DTYPE else out)

    def _presence(self, ids: np.ndarray) -> np.ndarray:
        keys, bufs = self._chunk_values(ids)
        layout = self._layout
        present = np.zeros(ids.size, dtype=bool)
        if not bufs:
            return present
        pos = np.searchsorted(keys, ids >> layout.shift)
        pos_c = np.minimum(pos, keys.size - 1)
        has_chunk = keys[pos_c] == (ids >> layout.shift)
        bitmaps = np.stack([layout.bitmap(b) for b in bufs])
        slots = (ids & layout.mask).astype(np.intp)
        bits = bitmaps[pos_c, slots >> 3] >> (slots & 7) & 1
        present[:] = has_chunk & (bits == 1)
        return present

    def __contains__(self, token_id: object) -> bool:
        try:
            ids = _ids_array([token_id])
        except InvalidArgumentError:
            return False
        return bool(self._presence(ids)[0])


@dataclass
class CheckReport:
    ok: bool
    problems: list[str]
    facts: dict[str, Any]

    def __str__(self) -> str:
        lines = [f"check: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        lines += [f"  {k}: {v}" for k, v in self.facts.items()]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)
