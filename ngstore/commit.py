"""The writer: group commit, durability modes, and everything that changes LMDB.

A :class:`Writer` owns what one writing handle changes: the LMDB environment (``kv``),
the log (``wal``), the checkpointer, the counters and applied position, the current reflex
table version, the Guardian's quota checks and cleanup. The facade hands it batches;
recovery hands it replayed records; nothing else writes.

Commit, top to bottom
---------------------
``commit(ops, durability)``:

1. the batch joins the queue; the first committer to find no leader becomes the leader
   and commits everything queued so far (group commit), in queue order = log order;
2. the leader checks each batch's Guardian quotas (a refused batch gets its error and
   nothing of it is written);
3. appends the accepted batches to the log as one record each, in one ``write``;
4. applies them to LMDB in one transaction that also stores the last applied position
   (``apply.apply_ops``), committed without an fsync -- for ``sync`` batches in the
   applier thread while the leader waits in the log's fdatasync, so a durable commit
   costs about one fdatasync;
5. wakes each committer with its position.

``durability``: ``"sync"`` returns after the log record was fdatasync'ed; ``"async"``
after it was written (page cache), a flusher fdatasyncs within ``flush_interval``;
``"none"`` after it was written, durable at the next sync commit, ``flush()``,
checkpoint or close. Very large ``sync`` batches (``direct_threshold`` bytes and up) skip
the log: they are applied to LMDB directly and a checkpoint follows before the call
returns, which makes them durable; they never need replay.

What a crash can do, in syscall terms: a process crash (kill -9) loses nothing that was
visible -- every batch was ``write()``-n to the log and committed to LMDB in the page cache
before it became visible; recovery replays the log after LMDB's applied position. A
power loss or OS crash keeps the ``sync`` batches that returned; ``async`` batches of at
most the last ``flush_interval`` and ``none`` batches since the last durable point may be
lost -- always a suffix of the commit order, never part of a batch, never a corruption.

After an I/O error (fsyncgate) the writer refuses every later write: the state of the
log or of LMDB's file is unknown, and only reopening (recovery) is sound.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from . import reflex_store, wal
from .apply import ApplyResult, ApplyState, Entry, apply_ops
from .batch import CommitResult
from .checkpoint import Checkpointer
from .directory import Directory
from .errors import NgStoreError
from .guardian import Guardian, Usage
from .kv import KV, ReadTxn
from .layout import DB_TOKENS, ChunkLayout, Counters, Meta
from .ops import (
    OP_CONNECTION_PUT,
    OP_EVENT_APPEND,
    OP_EVENT_TRIM,
    OP_REFLEX_DELETE_KEY,
    OP_REFLEX_PUT,
    OP_TOKEN_PUT,
    Op,
    encode_ops,
)
from .reflex import ReflexTable
from .reflex_store import ReflexVersion
from .snapshot import presence

if TYPE_CHECKING:
    from .obs import Observability

T = TypeVar("T")


@dataclass(frozen=True)
class WriterOptions:
    """The writer's share of the store's options (see ``options.Options``)."""

    flush_interval: float
    checkpoint_bytes: int
    checkpoint_interval: float
    direct_threshold: int


@dataclass
class _Pending:
    """A batch waiting in the group-commit queue."""

    ops: list[Op]
    durability: str
    payload: bytes = b""
    add_tokens: int = 0
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    position: int = 0
    first_event: int | None = None
    error: BaseException | None = None


#: Called with each applied group's result, after LMDB committed it (in commit order).
ApplyListener = Callable[[ApplyResult], None]


class Writer:
    """The one writer of a store (see the module docstring)."""

    #: Groups a leader commits before handing leadership to a waiting committer: more
    #: rounds save thread handoffs, fewer bound the leader's own latency.
    LEADER_ROUNDS = 8
    #: Fraction of the refusal point from which aggressive cleanup runs, and what it trims.
    CLEANUP_MARGIN = 0.9
    CLEANUP_EVENT_FRACTION = 0.25

    def __init__(self, directory: Directory, kv: KV, log: wal.Log, meta: Meta, reflexes: ReflexVersion | None,
                 guardian: Guardian, options: WriterOptions, obs: Observability | None) -> None:
        self._directory = directory
        self._kv = kv
        self._log = log
        self._guardian = guardian
        self._options = options
        self._obs = obs
        self.layout = ChunkLayout(meta.chunk_slots)
        self.event_capacity = meta.event_capacity
        self.reflex_capacity = meta.reflex_capacity
        self._counters = meta.counters.copy()
        self._applied = meta.applied_position
        self._reflexes = reflexes
        self._reflex_carry: dict[str, int] = {}  # C counters of table versions swapped out
        self.reflexes_written_total = 0
        self._checkpointer = Checkpointer(directory, kv, log, obs)
        kv.before_grow = lambda: self._checkpointer.write(self._applied, pin=False)
        self._listeners: list[ApplyListener] = []
        self._failed: BaseException | None = None
        self._closed = False
        # group commit
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._leader = False
        self._unsynced = False
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._applier: _Applier | None = None
        self.stats_counters = {"commits_total": 0, "commit_errors_total": 0, "panics_recovered_total": 0,
                               "wal_records_written_total": 0, "wal_records_replayed_total": 0,
                               "direct_commits_total": 0}

    # -- state others read ---------------------------------------------------------------

    @property
    def applied_position(self) -> int:
        return self._applied

    @property
    def counters(self) -> Counters:
        """The live counters (a copy)."""
        return self._counters.copy()

    @property
    def reflex_table(self) -> ReflexTable | None:
        """The current reflex table version (immutable; swapped after each reflex commit)."""
        v = self._reflexes
        return v.table if v is not None else None

    @property
    def failed(self) -> BaseException | None:
        """The I/O error after which this writer refuses writes, if any."""
        return self._failed if self._failed is not None else self._log.failed

    @property
    def log(self) -> wal.Log:
        return self._log

    @property
    def checkpoints_total(self) -> int:
        return self._checkpointer.count

    @property
    def last_checkpoint_unix(self) -> float:
        return self._checkpointer.last_unix

    def reflex_counters(self) -> dict[str, int]:
        """The reflex table's lookup counters, summed over every version this writer had."""
        c = reflex_store.counters(self.reflex_table)
        return {k: c[k] + self._reflex_carry.get(k, 0) for k in c}

    def usage(self) -> Usage:
        t = self.reflex_table
        c = self._counters
        return Usage(tokens=c.tokens_live, connections=c.connections_live, events=c.events_live,
                     reflex_bytes=len(t) * 128 if t is not None else 0)

    def add_listener(self, listener: ApplyListener) -> None:
        """Calls ``listener(result)`` after every group applied from now on."""
        self._listeners.append(listener)

    # -- guards ------------------------------------------------------------------------

    def check_writable(self) -> None:
        if self._closed:
            raise NgStoreError(f"the writer of {self._directory.path} is closed")
        failed = self.failed
        if failed is not None:
            raise NgStoreError(
                f"the store {self._directory.path} stopped accepting writes after an I/O error "
                f"({failed!r}); close it and open it again to recover")

    # -- commit ------------------------------------------------------------------------

    def commit(self, ops: list[Op], durability: str) -> CommitResult:
        """Commits one batch (see the module docstring); raises and writes nothing on a
        refusal, raises after an I/O error (the batch may or may not have reached the log)."""
        self.check_writable()
        if not ops:
            return CommitResult(self._applied)
        p = _Pending(ops, durability)
        nbytes = sum(op.data.nbytes for op in ops)
        if durability == "sync" and nbytes >= self._options.direct_threshold:
            return self._run_exclusive(lambda: self._commit_direct(p))
        p.payload = encode_ops(ops)
        with self._cv:
            self._queue.append(p)
            lead = not self._leader
            if lead:
                self._leader = True
        while True:
            if lead:
                self._lead()
            p.wake.wait()
            if p.done:
                break
            p.wake.clear()  # asked to lead: the previous leader handed over
            lead = True
        if p.error is not None:
            raise p.error
        return CommitResult(p.position, p.first_event)

    def _lead(self) -> None:
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

    def _run_exclusive(self, fn: Callable[[], T]) -> T:
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
        g = self._guardian
        add_tokens = 0
        add_bytes = 0
        for op in p.ops:
            if op.kind == OP_TOKEN_PUT:
                n = op.count
                usage = self.usage()
                if (g.max_tokens is not None and usage.tokens + pending_tokens + n > g.max_tokens) or \
                        (g.byte_limit is not None and usage.bytes + (pending_tokens + n) * 64 > g.byte_limit):
                    n = self._count_absent(op.data["id"])  # exact, only near the limits
                add_tokens += n
                add_bytes += n * 64
            elif op.kind == OP_CONNECTION_PUT:
                add_bytes += op.count * 64  # an upper bound: overwrites add nothing
            elif op.kind == OP_EVENT_APPEND:
                live = self._counters.events_live
                add_bytes += (min(self.event_capacity, live + op.count) - live) * 128
            elif op.kind == OP_REFLEX_PUT:
                add_bytes += op.count * 128  # an upper bound: updates add nothing
        usage = self.usage()
        usage.tokens += pending_tokens
        g.check(usage, add_tokens, add_bytes)
        p.add_tokens = add_tokens

    def _count_absent(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.uint32))
        with ReadTxn(self._kv) as txn:
            present = presence(txn, self._kv.dbs[DB_TOKENS], self.layout, ids)
        return int(ids.size - np.count_nonzero(present))

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
            positions = self._log.append([(wal.RECORD_BATCH, p.payload) for p in accepted])
            self.stats_counters["wal_records_written_total"] += len(accepted)
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
        entries: list[Entry] = [(pos, p.ops) for pos, p in zip(positions, accepted, strict=True)]
        result: ApplyResult
        try:
            if need_sync:
                # The LMDB apply (no fsync) runs in the applier thread while this thread
                # waits in the log's fdatasync, so a durable commit costs about one
                # fdatasync. Safe for invariant 1: LMDB becomes durable only at a
                # checkpoint, and a checkpoint fdatasyncs the log first.
                job = self._applier_thread().submit(lambda: self.apply(entries))
                sync_error: BaseException | None = None
                try:
                    self._log.sync()
                    self._unsynced = False
                except BaseException as exc:
                    sync_error = exc
                result = job.wait()  # raises what the apply raised
                if sync_error is not None:
                    raise sync_error
            else:
                result = self.apply(entries)
        except BaseException as exc:
            self._fail(accepted, exc, "log sync / LMDB apply", span)
            return
        self.stats_counters["commits_total"] += len(accepted)
        for pos, p in zip(positions, accepted, strict=True):
            p.position, p.first_event, p.done = pos, result.first_event.get(pos), True
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
                if OP_TOKEN_PUT in kinds:
                    obs.token_creation_seconds.observe(t1 - t0)
                if OP_CONNECTION_PUT in kinds:
                    obs.connection_creation_seconds.observe(t1 - t0)
            obs.event("commit", batches=len(accepted), first=positions[0], last=positions[-1],
                      records=records, durability=accepted[0].durability)
            if span is not None:
                span.set("last_position", positions[-1])
                span.set("records", records)

    def _fail(self, accepted: list[_Pending], exc: BaseException, where: str, span: Any) -> None:
        self._failed = exc
        self.stats_counters["commit_errors_total"] += len(accepted)
        self.stats_counters["panics_recovered_total"] += 1  # the original's name for a caught failure
        for p in accepted:
            p.error, p.done = exc, True
        if self._obs is not None:
            self._obs.event("error", op=where, error=repr(exc))
            self._obs.logger.error("commit failed in %s: %r; the store refuses writes until "
                                   "reopened", where, exc)
            if span is not None:
                span.error(exc)

    def _commit_direct(self, p: _Pending) -> CommitResult:
        """A large sync batch: straight into LMDB, then a checkpoint makes it durable."""
        self.check_writable()
        t0 = time.perf_counter()
        try:
            self._quota_check(p, 0)
        except BaseException as exc:
            if self._obs is not None:
                self._obs.event("quota_refused", error=str(exc))
            raise
        try:
            result = self.apply([(self._applied, p.ops)])
            self._checkpointer.write(self._applied, pin=True)
        except BaseException as exc:
            self._fail([p], exc, "direct commit", None)
            raise
        self.stats_counters["commits_total"] += 1
        self.stats_counters["direct_commits_total"] += 1
        if self._obs is not None:
            n = sum(op.count for op in p.ops)
            self._obs.commit_seconds.observe(time.perf_counter() - t0)
            self._obs.batch_records.observe(n)
            self._obs.event("commit", batches=1, direct=True, records=n, last=self._applied)
        return CommitResult(self._applied, result.first_event.get(self._applied))

    # -- apply (commits and replay) -------------------------------------------------------

    def apply(self, entries: list[Entry]) -> ApplyResult:
        """Applies ``entries`` in one LMDB transaction and adopts the result."""
        state = ApplyState(self.layout, self.event_capacity, self.reflex_capacity, self._counters,
                           self.reflex_table)
        dbs = self._kv.dbs
        result = self._kv.write(lambda txn: apply_ops(txn, dbs, state, entries))
        self._counters = result.counters
        self._applied = result.applied_position
        if result.reflexes is not None:  # swap in the new version; lookups never wait
            for k, v in reflex_store.counters(self.reflex_table).items():
                self._reflex_carry[k] = self._reflex_carry.get(k, 0) + v
            self._reflexes = ReflexVersion(result.reflexes)
            self.reflexes_written_total += result.reflexes_written
        for listener in self._listeners:
            listener(result)
        return result

    def note_replayed(self, records: int) -> None:
        self.stats_counters["wal_records_replayed_total"] += records

    # -- durability ------------------------------------------------------------------------

    def _applier_thread(self) -> _Applier:
        if self._applier is None:
            self._applier = _Applier()
        return self._applier

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher_stop.clear()
            self._flusher = threading.Thread(target=self._flush_loop, name="ngstore-flusher", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._flusher_stop.wait(self._options.flush_interval):
            if self._unsynced and self._failed is None:
                try:
                    self._unsynced = False
                    self._log.sync()
                except BaseException as exc:  # the next commit reports it
                    self._failed = exc

    def flush(self) -> None:
        """Makes every batch committed so far durable (one fdatasync of the log)."""
        self.check_writable()

        def do() -> None:
            self._log.sync()
            self._unsynced = False

        self._run_exclusive(do)

    def checkpoint(self) -> None:
        """Makes LMDB durable, then drops the log segments it covers."""
        self.check_writable()
        self._run_exclusive(self.checkpoint_now)

    def checkpoint_now(self) -> None:
        """A checkpoint, by a caller that already excludes commits (open, recovery)."""
        try:
            self._checkpointer.write(self._applied, pin=True)
            self._unsynced = False
        except BaseException as exc:  # fsyncgate: after a failed sync nothing is known
            self._failed = exc
            raise

    def protect_checkpoint(self) -> None:
        """At open, before anything is written: after a process crash LMDB is ahead of the
        last checkpoint C, whose pin died with the old writer, and a new commit could
        reuse C's freed pages (a power loss before the next checkpoint would then roll
        back onto a damaged tree). So make the current transaction the checkpoint; when
        LMDB is at C already (a clean close, or a rollback), pin it."""
        ckpt = self._directory.read_checkpoint()
        if ckpt is None or ckpt.txnid != self._kv.last_txnid():
            self.checkpoint_now()
        else:
            self._kv.pin()

    def _maybe_cleanup(self) -> None:
        """Guardian's aggressive cleanup, near the byte quota: evict decayed Hypothesis
        reflexes and trim the oldest quarter of the experience events, through one logged
        batch (so replay does the same)."""
        g = self._guardian
        if self._failed is not None or not g.should_cleanup(self.usage(), self.CLEANUP_MARGIN):
            return
        ops = []
        stale = reflex_store.decayed_hypotheses(self.reflex_table, int(time.time()))
        if stale.size:
            ops.append(Op(OP_REFLEX_DELETE_KEY, stale))
        n = int(self._counters.events_live * self.CLEANUP_EVENT_FRACTION)
        if n:
            ops.append(Op(OP_EVENT_TRIM, np.array([n], dtype="<u8")))
        if not ops:
            return
        p = _Pending(ops, "sync", payload=encode_ops(ops))
        before = self.usage().bytes
        self._commit_group([p])
        if p.error is None:
            g.aggressive_cleanups_total += 1
            if self._obs is not None:
                after = self.usage().bytes
                self._obs.event("cleanup", events_trimmed=n, hypotheses_evicted=int(stale.size),
                                bytes_before=before, bytes_after=after)
                self._obs.logger.warning(
                    "aggressive cleanup: trimmed the %d oldest events, evicted %d decayed hypothesis "
                    "reflexes (%d -> %d accounted bytes)", n, int(stale.size), before, after)

    def _maybe_checkpoint(self) -> None:
        if self._failed is not None:
            return
        if self._checkpointer.due(self._options.checkpoint_bytes, self._options.checkpoint_interval):
            try:
                self._checkpointer.write(self._applied, pin=True)
                self._unsynced = False
            except BaseException as exc:
                self._failed = exc

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the flusher; if the writer is healthy, a final checkpoint makes LMDB durable
        and empties the log, and the state file records a clean close. Then releases the
        log and the applier (the KV and the directory belong to the caller)."""
        if self._closed:
            return
        try:
            self._flusher_stop.set()
            if self._flusher is not None:
                self._flusher.join()
            if self.failed is None:
                self._run_exclusive(lambda: self._checkpointer.write(self._applied, pin=False, final=True))
                self._directory.write_state(clean=True)
        finally:
            self._closed = True
            self.release()

    def release(self) -> None:
        """Releases threads and the log without checkpointing (after a failed open, or
        when a close could not checkpoint)."""
        self._flusher_stop.set()
        if self._applier is not None:
            self._applier.close()
            self._applier = None
        self._log.close()


class _Job:
    def __init__(self, owner: _Applier) -> None:
        self._owner = owner

    def wait(self) -> Any:
        return self._owner._wait()


class _Applier:
    """A thread that runs one LMDB apply at a time for the commit leader, so that the
    apply overlaps the leader's log fdatasync. Each apply's write transaction begins and
    commits in this thread (LMDB's rule for write transactions)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._fn: Callable[[], Any] | None = None
        self._result: tuple[bool, Any] | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ngstore-applier", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> _Job:
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
            assert fn is not None
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
