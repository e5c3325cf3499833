"""The applier: the one thread that writes LMDB, and the state LMDB holds.

Commits end in the log and the overlay (``commit``, ``overlay``); the :class:`Applier`
moves the overlay into LMDB in groups -- one write transaction for every commit pending
at that moment (``apply.apply_ops``) -- and then drops them from the overlay. It runs when

* the overlay's oldest entry is ``apply_interval`` old (50 ms by default), or the overlay
  holds ``apply_bytes``;
* a reader needs LMDB to be current (:meth:`Applier.wait_applied`: snapshots, scans,
  counts, connection and event reads through the writer's handle), or a commit must be
  in LMDB before it returns (reflex writes; large token batches);
* ``flush()``, ``checkpoint()``, a large direct commit, or ``close()`` asks for it.

Everything else that writes LMDB also runs in this thread, one job at a time: checkpoints
(``checkpoint.Checkpointer``), direct commits, the final checkpoint at close. So LMDB has
one writer thread and needs no lock; LMDB binds nothing to it either (py-lmdb opens the
environment with ``MDB_NOTLS``), so recovery's replay runs in the opening thread before
the applier starts.

The applier owns the state LMDB holds: the counters, the applied log position and the
current reflex table version. A failed LMDB write or sync stops it (fsyncgate): every
waiter gets the error, the writer refuses commits, and reopening recovers from the log.
Nobody waits for most applies, so the failure is seen by the next write or read that
needs the applier: it raises :func:`errors.refusal` -- for a full disk a
``DiskFullError`` saying the store stopped after it (state "stopped", this write not
applied) -- and so does every later one, until the store is closed and opened again.

Crash model: a commit in the log and the overlay but not yet in LMDB is replayed from the
log after a crash, exactly as before the overlay existed -- LMDB was never the commit
point. A crash during a group apply leaves LMDB at its previous transaction (LMDB commits
are atomic) and the whole group in the log.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from . import reflex_store, wal
from .apply import ApplyResult, ApplyState, Entry, apply_ops
from .checkpoint import Checkpointer
from .directory import Directory
from .errors import NgStoreError, StorageError, StoreState, refusal, storage_error
from .interrupts import Gate, Signal
from .kv import KV
from .layout import ChunkLayout, Counters, Meta
from .ops import Op
from .overlay import Overlay
from .reflex import Current, ReflexTable

if TYPE_CHECKING:
    from .obs import Observability

T = TypeVar("T")

#: Seconds the idle applier, or a thread waiting for it, sleeps before it looks again
#: without a notification (one an interrupt cut short: interrupts.py).
IDLE_RECHECK = 1.0

#: Called with each applied group's result, in the applier thread, in log order.
ApplyListener = Callable[[ApplyResult], None]


@dataclass(frozen=True)
class ApplierOptions:
    apply_interval: float
    apply_bytes: int
    checkpoint_bytes: int
    checkpoint_interval: float


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = Signal()  # waited on by a committing thread: interrupts.py
        self.result: object = None
        self.error: BaseException | None = None


class Applier:
    """Applies the overlay to LMDB and runs every other LMDB write (module docstring)."""

    def __init__(self, directory: Directory, kv: KV, log: wal.Log, meta: Meta, reflexes: ReflexTable | None,
                 overlay: Overlay, options: ApplierOptions, obs: Observability | None) -> None:
        self._kv = kv
        self._log = log
        self._overlay = overlay
        self._options = options
        self._obs = obs
        self.layout = ChunkLayout(meta.chunk_slots)
        self.event_capacity = meta.event_capacity
        self.reflex_capacity = meta.reflex_capacity
        self._counters = meta.counters.copy()
        self._applied = meta.applied_position
        #: the table lookups use (swapped after each reflex-writing apply; None once closed)
        self.current = Current(reflexes)
        self._reflex_carry: dict[str, int] = {}  # C counters of table versions swapped out
        self.reflexes_written_total = 0
        self.reflexes_created_total = 0
        self.groups_applied_total = 0
        self.entries_applied_total = 0
        self._written_since_checkpoint = 0
        self._checkpointer = Checkpointer(directory, kv, log, obs)
        kv.before_grow = lambda: self._checkpointer.write(self._applied, pin=False)
        self._listeners: list[ApplyListener] = []
        # Entered through its lock, and waited on with a bound (interrupts.py)
        self._mutex = threading.RLock()
        self._cv = threading.Condition(self._mutex)  # the applier thread's own waits
        self._waiting = Gate()  # under _mutex: threads waiting for an apply (wait_applied)
        self._jobs: deque[_Job] = deque()
        self._wanted = 0
        self._stopping = False
        self._failure: BaseException | None = None
        #: set once the applier has failed: nothing will drain the overlay any more
        self.failed_event = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state others read ---------------------------------------------------------------

    @property
    def applied_position(self) -> int:
        return self._applied

    @property
    def kv(self) -> KV:
        return self._kv

    @property
    def overlay(self) -> Overlay:
        return self._overlay

    @property
    def apply_bytes(self) -> int:
        """The overlay size from which an apply starts at once."""
        return self._options.apply_bytes

    @property
    def counters(self) -> Counters:
        """The counters of what LMDB holds. The applier replaces the object at each apply
        and never changes one it handed out: treat it as read-only."""
        return self._counters

    @property
    def reflex_table(self) -> ReflexTable | None:
        return self.current.table

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    @property
    def checkpoints_total(self) -> int:
        return self._checkpointer.count

    @property
    def last_checkpoint_unix(self) -> float:
        return self._checkpointer.last_unix

    def reflex_counters(self) -> dict[str, int]:
        """The reflex table's lookup counters, summed over every version it had."""
        c = reflex_store.counters(self.reflex_table)
        return {k: c[k] + self._reflex_carry.get(k, 0) for k in c}

    def _carry_counters(self) -> None:
        """Adds the current table's lookup counters to those of the versions before it
        (before the table is replaced or dropped)."""
        for k, v in reflex_store.counters(self.reflex_table).items():
            self._reflex_carry[k] = self._reflex_carry.get(k, 0) + v

    def add_listener(self, listener: ApplyListener) -> None:
        self._listeners.append(listener)

    # -- applying ------------------------------------------------------------------------

    def apply_now(self, entries: list[Entry], count: int | None = None) -> ApplyResult:
        """Applies ``entries`` in one LMDB transaction and adopts the result. Runs in the
        calling thread: only the applier thread, or the opening thread before
        :meth:`start`, may call it. ``count``: the log entries they stand for, when runs
        were merged (``Overlay.take``)."""
        state = ApplyState(self.layout, self.event_capacity, self.reflex_capacity, self._counters,
                           self.reflex_table,  # apply_ops works on a copy of the counters
                           partial(self._kv.record, writing=True))
        dbs = self._kv.dbs
        result = self._kv.write(lambda txn: apply_ops(txn, dbs, state, entries))
        self._counters = result.counters
        self._written_since_checkpoint += result.bytes_written
        if result.reflexes is not None:  # swap in the new version; lookups never wait
            self._carry_counters()
            self.current.table = result.reflexes
            self.reflexes_written_total += result.reflexes_written
            self.reflexes_created_total += result.reflexes_created
        if result.reflex_capacity is not None:
            self.reflex_capacity = result.reflex_capacity
        # Last: wait_applied returns as soon as it sees the position, and its caller reads
        # the table and the capacity next (a refusal check plans on them).
        self._applied = result.applied_position
        if result.reflex_displaced:
            self._report_displaced(result.reflex_displaced)
        if result.duplicates and self._obs is not None:
            # The writer never logs a key twice: a log that holds one came from elsewhere.
            self._obs.event("duplicate_batch_skipped", count=len(result.duplicates), first=result.duplicates[0])
            self._obs.logger.warning("%d logged batch(es) whose idempotency key was committed already were not "
                                     "applied again, the first at log position %d", len(result.duplicates),
                                     result.duplicates[0])
        self.groups_applied_total += 1
        self.entries_applied_total += len(entries) if count is None else count
        for listener in self._listeners:
            listener(result)
        return result

    def _report_displaced(self, displaced: dict[int, tuple[int, int]]) -> None:
        """Says so, once per batch, when a batch's reflexes pushed others out of the table
        (``reflex_evictions_total`` counts each one)."""
        obs = self._obs
        if obs is None:
            return
        for position, (count, first) in displaced.items():
            obs.event("reflex_evicted", position=position, count=count, first=first,
                      capacity=self.reflex_capacity)
            obs.logger.warning(
                "the reflexes of the batch at log position %d pushed %d reflex(es) out of the table, the first "
                "at its put #%d (capacity %d): resize_reflexes() to keep them, or open with "
                "reflex_eviction='refuse' to be refused instead", position, count, first, self.reflex_capacity)

    def _drain(self) -> None:
        """Applies everything pending in the overlay, then drops it; checkpoints if due."""
        taken = self._overlay.take()
        if taken.log_entries:
            t0 = time.perf_counter()
            result = self.apply_now(taken.entries, taken.log_entries)
            self._overlay.drop(result.applied_position)
            if self._obs is not None:
                self._obs.event("apply", entries=taken.log_entries, first=taken.first,
                                last=result.applied_position, seconds=round(time.perf_counter() - t0, 6))
            if self._checkpoint_due():
                self._checkpoint(pin=True)
        # Waiters wake after the checkpoint an apply made due: whoever waited for the
        # applier then also knows how that checkpoint went.
        with self._mutex:
            self._waiting.notify_all()

    def _checkpoint_due(self) -> bool:
        o = self._options
        return (self._written_since_checkpoint >= o.checkpoint_bytes
                or self._checkpointer.due(o.checkpoint_bytes, o.checkpoint_interval))

    def _checkpoint(self, pin: bool, final: bool = False, drop_log: bool = True) -> None:
        self._checkpointer.write(self._applied, pin=pin, final=final, drop_log=drop_log)
        self._written_since_checkpoint = 0

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ngstore-applier", daemon=True)
        self._thread.start()

    def _in_thread(self) -> bool:
        return self._thread is None or threading.current_thread() is self._thread

    def poke(self) -> None:
        """Tells the applier the overlay changed from empty (it sleeps until then)."""
        with self._mutex:
            self._cv.notify_all()

    def _run(self) -> None:
        o = self._options
        while True:
            with self._mutex:
                while True:
                    if self._jobs:
                        job: _Job | None = self._jobs.popleft()
                        break
                    if self._stopping:
                        return
                    due = None
                    if self._failure is None:
                        if self._wanted > self._applied:
                            job = None
                            break
                        due = self._overlay.due_in(o.apply_interval, o.apply_bytes)
                        if due == 0.0:
                            job = None
                            break
                    self._cv.wait(IDLE_RECHECK if due is None else due)
            try:
                if job is not None:
                    job.result = job.fn()
                elif self._failure is None:
                    self._drain()
            except BaseException as exc:
                if self._failure is None:  # fsyncgate: LMDB's state is unknown from here on
                    exc = self._fail(exc)
                if job is not None:
                    job.error = exc
            finally:
                if job is not None:
                    job.done.set()

    def _fail(self, exc: BaseException) -> BaseException:
        """Stops the applier after ``exc``; returns the error as it is reported: an
        ``OSError`` of the store's files as its named StorageError, in state "stopped"."""
        if isinstance(exc, StorageError):
            exc.restate(StoreState.STOPPED)
        elif isinstance(exc, OSError) and not isinstance(exc, NgStoreError):
            exc = storage_error(exc, "applying commits to LMDB", StoreState.STOPPED)
        self._failure = exc
        self.failed_event.set()
        self._overlay.wake_waiters()
        if self._obs is not None:
            self._obs.event("error", op="apply", error=repr(exc))
            self._obs.logger.error("applying the overlay to LMDB failed: %r; the store refuses writes "
                                   "until reopened", exc)
        with self._mutex:
            self._cv.notify_all()
            self._waiting.notify_all()
        return exc

    def _refusal(self) -> NgStoreError:
        return refusal(self._kv.path, self._failure)

    def run(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` in the applier thread (after what is queued) and returns its result."""
        if self._in_thread():
            return fn()
        job = _Job(fn)
        with self._mutex:
            if self._failure is not None:
                raise self._refusal()
            self._jobs.append(job)
            self._cv.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def wait_applied(self, position: int) -> None:
        """Returns once LMDB holds every entry up to ``position`` (a barrier)."""
        if self._applied >= position:
            return
        if self._in_thread():
            self._drain()
            return
        while True:
            with self._mutex:
                if self._applied >= position or self._failure is not None or self._stopping:
                    break
                if position > self._wanted:
                    self._wanted = position
                    self._cv.notify_all()
                waiter = self._waiting.add_waiter()
            waiter.acquire(timeout=IDLE_RECHECK)
        if self._applied < position:
            raise self._refusal() if self._failure is not None else NgStoreError("the applier has stopped")

    # -- jobs -----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Applies the overlay, then makes LMDB durable and drops the log it covers."""
        def job() -> None:
            self._drain()
            self._checkpoint(pin=True)

        self.run(job)

    def checkpoint_now(self, *, drop_log: bool = True) -> None:
        """A checkpoint in the calling thread (at open, before :meth:`start`).

        ``drop_log=False`` leaves the deletion of the log segments it covers to the applier
        thread, its first job once started: the checkpoint after a replay would otherwise
        unlink the replayed segments inside the open (~30 ms for a 64 MiB segment here)."""
        self._checkpoint(pin=True, drop_log=drop_log)
        if not drop_log:
            position = self._applied
            self._jobs.append(_Job(lambda: self._drop_log(position)))

    def _drop_log(self, position: int) -> None:
        """Deletes the log segments a checkpoint at ``position`` covers. A failure is only
        reported: the segments stay, a later checkpoint deletes them, and records at or
        below ``position`` are never replayed again (wal: both states are valid)."""
        try:
            self._log.drop_through(position)
        except OSError as exc:
            if self._obs is not None:
                self._obs.logger.warning("deleting the log segments through position %d after the open's "
                                         "checkpoint failed: %r; a later checkpoint deletes them", position, exc)

    def protect_checkpoint(self, directory: Directory) -> None:
        """At open, before anything is written: after a process crash LMDB is ahead of the
        last checkpoint C, whose pin died with the old writer, and a new commit could
        reuse C's freed pages (a power loss before the next checkpoint would then roll
        back onto a damaged tree). So make the current transaction the checkpoint; when
        LMDB is at C already (a clean close, or a rollback), pin it."""
        ckpt = directory.read_checkpoint()
        if ckpt is None or ckpt.txnid != self._kv.last_txnid():
            self.checkpoint_now()
        else:
            self._kv.pin()

    def direct(self, ops: list[Op]) -> ApplyResult:
        """Applies a batch that skipped the log after everything pending, then checkpoints
        so that it is durable (the caller holds the commit leadership, so nothing is
        appended meanwhile). It has no log record: it takes the applied position."""
        def job() -> ApplyResult:
            self._drain()
            result = self.apply_now([(self._applied, ops)])
            self._checkpoint(pin=True)
            return result

        return self.run(job)

    def close(self, final: bool) -> None:
        """Stops the thread; with ``final`` (a healthy writer closing, no commits running)
        first applies the overlay and writes the final checkpoint, which empties the log."""
        try:
            if final and self._failure is None:
                def job() -> None:
                    self._drain()
                    self._checkpoint(pin=False, final=True)

                self.run(job)
        finally:
            with self._mutex:
                self._stopping = True
                self._cv.notify_all()
                self._waiting.notify_all()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            self._overlay.wake_waiters()
            # Let go of the table: one attached at open holds a read lease (and with it the
            # LMDB environment), and the writer's objects form reference cycles, which would
            # keep it until a garbage collection. A table handed out keeps its own lease.
            # Its lookup counters stay counted (the close's last stats read them).
            self._carry_counters()
            self.current.table = None
