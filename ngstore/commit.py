"""The writer: a commit is a log append, then the overlay; LMDB follows in groups.

A :class:`Writer` owns the commit side of one writing handle: the log (``wal``), the
group-commit queue, the durability modes, the overlay's producer end, the sequence numbers
of events not yet applied, and the Guardian's quota checks and cleanup. The LMDB side --
counters, applied position, reflex table, checkpoints -- is the :class:`applier.Applier`'s.

Commit, top to bottom
---------------------
``commit(ops, durability)``:

1. the batch joins the queue; the first committer to find no leader becomes the leader
   and commits everything queued so far (group commit), in queue order = log order;
2. the leader checks each batch's quotas against LMDB's counters plus what the overlay
   may add (a refused batch gets its error and nothing of it is written);
3. waits while the overlay is full (back-pressure), then appends the accepted batches
   to the log as one record each, in one ``write``, and -- if any is ``sync`` -- one
   fdatasync for the whole group;
4. puts each batch into the overlay (``overlay.Overlay.add``): from here on reads through
   this handle see it; the applier moves it into LMDB later;
5. wakes each committer with its position. A batch that writes reflexes, or too many
   tokens to index, waits for the applier before its commit returns, so that lookups and
   point reads see it.

There is no LMDB transaction on this path. ``durability``: ``"sync"`` returns after the
log record was fdatasync'ed; ``"async"`` after it was written (page cache), a flusher
fdatasyncs within ``flush_interval``; ``"none"`` after it was written, durable at the next
sync commit, ``flush()``, checkpoint or close. Very large ``sync`` batches
(``direct_threshold`` bytes and up) skip the log: the applier writes them to LMDB after
everything pending and a checkpoint follows before the call returns.

What a crash can do, in syscall terms: a process crash (kill -9) loses nothing that was
visible -- every batch was ``write()``-n to the log (page cache) before it became visible,
and recovery replays the log after LMDB's applied position. A power loss or OS crash keeps
the ``sync`` batches that returned; ``async`` batches of at most the last
``flush_interval`` plus one fdatasync (two when an fdatasync takes longer than
``flush_interval``), and ``none`` batches since the last durable point,
may be lost -- always a suffix of the commit order, never part of a batch.

After an I/O error (fsyncgate) the writer refuses every later write: the state of the
log or of LMDB's file is unknown, and only reopening (recovery) is sound. An error of the
store's files reaches the caller as the named ``errors.StorageError`` of its errno
(``DiskFullError``, ...) in state "stopped"; a commit whose record may have reached the log
gets it as an ``OutcomeUnknownError`` that is also that leaf; every later write gets
``errors.refusal`` of it. A close that fails leaves the store closed and openable: its
error is restated "closed" (nothing acknowledged is lost: it is in the log).
"""
from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from . import reflex_store, wal
from .applier import Applier
from .batch import CommitResult
from .committer import Committer
from .directory import Directory
from .errors import (
    NgStoreError,
    OutcomeUnknownError,
    StorageError,
    StoreState,
    refusal,
    refused,
    storage_error,
)
from .guardian import Guardian, Usage
from .interrupts import Gate, Signal
from .kv import KV
from .layout import KnownOutcome
from .obs.metrics import CommitTimings, pack_timing_row
from .ops import (
    OP_CONNECTION_DELETE,
    OP_CONNECTION_PUT,
    OP_EVENT_APPEND,
    OP_EVENT_TRIM,
    OP_OUTCOME_KEY,
    OP_REFLEX_DELETE_KEY,
    OP_TOKEN_DELETE,
    OP_TOKEN_PUT,
    PUTS_CONNECTIONS,
    PUTS_OF,
    PUTS_TOKENS,
    REFLEX_KINDS,
    KeyOp,
    Op,
    batch_key,
    batch_summary,
    encode_ops,
    token_writes,
)
from .outcomes import DEFAULT_REMEMBER_KEYS, KeyFilter, Outcome, outcome_in, point_lookup
from .overlay import Overlay
from .quota import GroupAdds, Quota

if TYPE_CHECKING:
    from .obs import Observability

T = TypeVar("T")

#: Op kinds a batch may hold to be committed alone by a committer that finds no leader
#: (``Writer._commit_solo``), after its OUTCOME_KEY op if it has one: no events to number,
#: no reflexes to wait for.
_SOLO_KINDS = frozenset({OP_TOKEN_PUT, OP_TOKEN_DELETE, OP_CONNECTION_PUT, OP_CONNECTION_DELETE})

#: Called with (first sequence number, events) for every committed EVENT_APPEND, in
#: commit order, as the batch becomes visible.
CommitListener = Callable[[int, np.ndarray], None]
#: Gets a submitted batch's outcome (:meth:`Writer.submit`): its CommitResult, or the
#: exception a blocking commit would have raised.
SubmitCallback = Callable[[CommitResult | BaseException], None]

#: Seconds a committer waiting for its group, or an exclusive caller waiting for the
#: leadership, sleeps before it looks again without a wake-up (one an interrupt cut
#: short: interrupts.py).
WAKE_RECHECK = 1.0


#: The writer's counters (``Writer.stats_counters``; ``stats()`` shows them as zeros for a
#: read-only handle).
STATS_COUNTERS = ("commits_total", "commit_errors_total", "panics_recovered_total", "wal_records_written_total",
                  "wal_records_replayed_total", "direct_commits_total", "commits_already_committed_total")


@dataclass(frozen=True)
class WriterOptions:
    """The writer's share of the store's options (see ``options.Options``)."""

    flush_interval: float
    direct_threshold: int
    #: A batch with more token writes than this is not indexed in the overlay: its
    #: commit waits for the applier instead (indexing costs per token, applying per chunk).
    index_limit: int = 4096
    #: ``"evict"``: a reflex put into a full table pushes the weakest out; ``"refuse"``: the
    #: batch is refused (QuotaExceededError) before anything of it is written.
    reflex_eviction: str = "evict"
    remember_keys: int = DEFAULT_REMEMBER_KEYS  #: the keys a keyed batch's record keeps (``outcomes``)


class _Wake(Protocol):
    def release(self) -> None: ...


class _Pending:
    """A batch in the group-commit queue. ``wake`` is a lock held from creation: the
    leader releases it to say "done" or "lead now" (a lock costs a tenth of an Event). A
    submitted batch (:meth:`Writer.submit`) has a :class:`_Notify` instead, and its
    ``callback`` gets the outcome."""

    __slots__ = (
        "add_tokens",
        "already",
        "callback",
        "done",
        "dup_of",
        "durability",
        "error",
        "first_event",
        "handed",
        "key",
        "ops",
        "payload",
        "position",
        "wait_applied",
        "wake",
    )

    def __init__(self, ops: list[Op], durability: str, wake: _Wake | None = None) -> None:
        self.ops = ops
        self.durability = durability
        key = batch_key(ops)
        #: the digest of the batch's idempotency key (None: unkeyed)
        self.key = key[0] if key is not None else None
        #: the key was committed already: the batch was not written (``position`` is the
        #: original's)
        self.already = False
        #: an earlier batch of the same group with the same key, whose fate this one shares
        self.dup_of: _Pending | None = None
        self.payload = b""
        self.add_tokens = 0
        self.done = False
        #: its committer is to lead the group commit (``Writer._hand_over``)
        self.handed = False
        self.position = 0
        self.first_event: int | None = None
        self.error: BaseException | None = None
        self.wait_applied = False
        self.callback: SubmitCallback | None = None
        if wake is None:
            wake = threading.Lock()
            wake.acquire()
        self.wake = wake


_TIMING_BYTES_KEPT = CommitTimings.ROW_BYTES * CommitTimings.KEPT


class _Turn:
    """A leader's turn that no batch of the queue stands for (``Writer._lead``)."""

    __slots__ = ("handed",)

    def __init__(self) -> None:
        self.handed = True


class _NoWake:
    """The wake of a batch nobody waits for (a solo commit's, on its error path)."""

    __slots__ = ()

    def release(self) -> None:
        pass


_NO_WAKE = _NoWake()


class _Notify:
    """The wake of a submitted batch: the leader's "release" -- done, or lead now -- is
    handed to ``on_wake`` (``Writer._on_submitted``), never acted on by the submitter."""

    __slots__ = ("_on_wake", "_pending")

    def __init__(self, pending: _Pending, on_wake: Callable[[_Pending], None]) -> None:
        self._pending = pending
        self._on_wake = on_wake

    def release(self) -> None:
        self._on_wake(self._pending)


class Writer:
    """The commit side of the one writer of a store (see the module docstring)."""

    #: Groups a leader commits before handing leadership to a waiting committer: more
    #: rounds save thread handoffs, fewer bound the leader's own latency.
    LEADER_ROUNDS = 8
    #: Fraction of the refusal point from which aggressive cleanup runs, and what it trims.
    CLEANUP_MARGIN = 0.9
    CLEANUP_EVENT_FRACTION = 0.25

    def __init__(self, directory: Directory, kv: KV, log: wal.Log, applier: Applier, overlay: Overlay,
                 guardian: Guardian, options: WriterOptions, obs: Observability | None) -> None:
        self._directory = directory
        self._kv = kv
        self._log = log
        self._applier = applier
        self._overlay = overlay
        #: ``overlay.token``, bound once: the point reads' first step (``Store.get_token``)
        self.pending_token = overlay.token
        self._guardian = guardian
        self._options = options
        self._obs = obs
        self._next_event = applier.counters.events_next_seq
        self._key_filter: KeyFilter | None = None  # built at the first keyed look-up
        self._apply_bytes = applier.apply_bytes
        applier.add_listener(lambda _result: self.observe_pending())  # histograms, off the commit path
        self._listeners: list[CommitListener] = []
        self._failed: BaseException | None = None
        self._closed = False
        self._released = False  # release() ran to its end: the threads are stopped
        # Group commit: the queue and the leader flag under one plain lock (cheaper than a
        # Condition); a Condition on the same lock only for the rare exclusive callers.
        self._qlock = threading.Lock()
        #: (batches, log position before them) while a group's write is in progress
        self._writing: tuple[list[_Pending], int] | None = None
        self._free = Gate()  # under _qlock: the exclusive callers waiting for the leadership
        self._queue: list[_Pending] = []
        self._leader = False
        #: the leader is a submitted batch whose lead waits for its ``defer`` (``submit``)
        self._lead_deferred = False
        self._unsynced = False
        self._flusher: threading.Thread | None = None
        self._flusher_stop = Signal()
        #: per batch: its group's seconds logging and in all, its ``batch_summary``
        #: (``CommitTimings``), observed in bulk by ``observe_pending``
        self._timings = None if obs is None else CommitTimings(
            obs.wal_write_seconds, obs.commit_seconds, obs.batch_records,
            ((PUTS_TOKENS, obs.token_creation_seconds), (PUTS_CONNECTIONS, obs.connection_creation_seconds)),
            lambda: obs.tracer)
        self._quota = Quota(guardian, kv, applier, overlay, options.reflex_eviction == "refuse")
        #: leads and finishes submitted batches (one thread, started by the first one)
        self._committer = Committer(self._lead, applier.wait_applied, "ngstore-committer")
        self.stats_counters = dict.fromkeys(STATS_COUNTERS, 0)

    # -- state others read ---------------------------------------------------------------

    @property
    def applier(self) -> Applier:
        return self._applier

    @property
    def overlay(self) -> Overlay:
        return self._overlay

    @property
    def log(self) -> wal.Log:
        return self._log

    @property
    def failed(self) -> BaseException | None:
        """The I/O error after which this writer refuses writes, if any."""
        return self._failed or self._log.failed or self._applier.failure

    def usage(self, overlay: bool = True) -> Usage:
        """What the Guardian counts (``Quota.usage``)."""
        return self._quota.usage(overlay)

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def check_writable(self) -> None:
        if self._failed is None and not self._closed and self._applier.failure is None \
                and self._log.failed is None:
            return
        if self._closed:
            raise NgStoreError(f"the writer of {self._directory.path} is closed")
        failed = self.failed
        if failed is not None:
            raise refusal(self._directory.path, failed)

    # -- commit ------------------------------------------------------------------------

    def commit(self, ops: list[Op], durability: str) -> CommitResult:
        """Commits one batch (see the module docstring); raises and writes nothing on a
        refusal, raises after an I/O error (the batch may or may not have reached the log).
        Every error it raises says whether the batch's outcome is known (``errors``). A
        keyed batch whose key is committed already is not written: the result is the
        original's, with ``already_committed``."""
        if self._failed is not None or self._closed or self._applier.failure is not None \
                or self._log.failed is not None:  # check_writable's test, inline on this path
            self.check_commit()
        if not ops:
            return CommitResult(self._log.last_position)
        if durability == "sync" and sum(op.nbytes for op in ops) >= self._options.direct_threshold:
            return self._run_exclusive(lambda: self._commit_direct(ops))
        payload = encode_ops(ops)
        if len(ops) == 1:
            alone = ops[0].kind in _SOLO_KINDS
        elif len(ops) == 2 and ops[0].kind == OP_OUTCOME_KEY:  # a keyed small commit
            alone = ops[1].kind in _SOLO_KINDS
        else:
            keyed = ops[0].kind == OP_OUTCOME_KEY  # a key is the first op (format §5.2)
            alone = all(op.kind in _SOLO_KINDS for op in (ops[1:] if keyed else ops))
        if alone:
            solo = led = False  # solo: this commit leads; led: it still does
            before = self._log.last_position
            try:
                with self._qlock:
                    if not self._leader:
                        self._leader = solo = led = True
                if solo:
                    position, wait, first_event, already = self._commit_solo(ops, durability, payload)
            except BaseException as exc:
                if solo and not isinstance(exc, Exception):  # an interrupt (interrupts.py)
                    self._finish_interrupted(ops, durability, payload, before)
                raise
            finally:
                if led:
                    turn: _Turn | None = None
                    try:
                        with self._qlock:  # nobody queued meanwhile (the usual case): done leading
                            if not self._queue and not self._free.waiters:
                                self._leader = led = False
                        if led:  # those who queued meanwhile; or give up leadership
                            turn = _Turn()
                            self._lead(turn)
                    except BaseException:
                        if led and (turn is None or turn.handed):  # interrupted before _lead began
                            with self._qlock:
                                self._hand_over()
                        raise
            if solo:
                if wait:  # too many token writes to index, or an original still in the overlay
                    try:
                        self._applier.wait_applied(position)
                    except NgStoreError as exc:
                        raise _committed_not_applied(position, exc) from exc
                return CommitResult(position, first_event, already)
        wake = threading.Lock()
        wake.acquire()
        p = _Pending(ops, durability, wake)
        p.payload = payload
        interrupt: BaseException | None = None
        try:
            with self._qlock:
                if not self._leader:
                    self._leader = p.handed = True
                kick, self._lead_deferred = self._lead_deferred, False
                self._queue.append(p)  # last: an interrupt finds the batch queued or not
            if kick:  # a submitted batch's lead waits for its event loop, which may be this thread
                self._committer.request_lead()
        except BaseException as exc:
            if isinstance(exc, Exception) or p not in self._queue:
                raise
            interrupt = exc  # queued: see it through (interrupts.py), then raise
        while not p.done:
            try:
                if p.handed:  # first in line, or the previous leader handed over
                    self._lead(p)
                else:  # done, or asked to lead; bounded: a release an interrupt cut short
                    wake.acquire(timeout=WAKE_RECHECK)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    raise
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt
        if p.error is not None:
            raise p.error
        if p.wait_applied:
            try:
                self._applier.wait_applied(p.position)
            except NgStoreError as exc:
                raise _committed_not_applied(p.position, exc) from exc
        return CommitResult(p.position, p.first_event, p.already)

    def check_commit(self) -> None:
        """check_writable, its refusal marked as the error of a commit that wrote nothing."""
        try:
            self.check_writable()
        except NgStoreError as exc:
            raise refused(exc) from None

    def submit(self, ops: list[Op], durability: str, callback: SubmitCallback,
               defer: Callable[[Callable[[], None]], None] | None = None) -> None:
        """Commits one batch like :meth:`commit`, without blocking or waiting: the batch joins
        the same group commits, and ``callback`` gets its CommitResult (or the exception
        ``commit`` would have raised) from a thread of the writer's -- the leader's, or the
        committer's (``committer``), which also leads, syncs and waits for the applier for
        it. Raises at once, writing nothing, when the writer refuses writes. An empty batch
        is reported at once, in the caller's thread; a very large ``sync`` batch
        (``direct_threshold``) commits in a thread of its own. ``defer``, when given, runs
        the request that wakes the committer to lead (an event loop passes its
        ``call_soon``: the committer starts once the loop has submitted everything ready,
        instead of competing with it for the GIL meanwhile)."""
        self.check_commit()
        if not ops:
            callback(CommitResult(self._log.last_position))
            return
        if durability == "sync" and sum(op.nbytes for op in ops) >= self._options.direct_threshold:
            def blocking() -> None:
                try:
                    result: CommitResult | BaseException = self.commit(ops, durability)
                except BaseException as exc:
                    result = exc
                callback(result)

            threading.Thread(target=blocking, name="ngstore-direct-commit", daemon=True).start()
            return
        p = _Pending(ops, durability)
        p.payload = encode_ops(ops)
        p.callback = callback
        p.wake = _Notify(p, self._on_submitted)  # replaces the lock: nobody waits on it
        with self._qlock:
            self._queue.append(p)
            lead = not self._leader
            if lead:
                self._leader = True
                self._lead_deferred = defer is not None
        if lead:
            if defer is None:
                self._committer.request_lead()
            else:
                defer(self._deferred_lead)

    def _deferred_lead(self) -> None:
        """The deferred start of a submitted batch's lead -- unless a blocking committer or an
        exclusive caller came first and started it (they never wait for a deferred lead:
        the loop that would run it may be the very thread they block)."""
        with self._qlock:
            lead, self._lead_deferred = self._lead_deferred, False
        if lead:
            self._committer.request_lead()

    def _on_submitted(self, p: _Pending) -> None:
        """A submitted batch was woken: lead (not done), or report its outcome -- after the
        applier applied it when its commit must wait for that (``commit`` does the same)."""
        callback = p.callback
        assert callback is not None
        if not p.done:
            self._committer.request_lead()
        elif p.error is not None:
            callback(p.error)
        elif p.wait_applied:
            result = CommitResult(p.position, p.first_event, p.already)
            position = p.position
            self._committer.after_apply(position, lambda error: callback(
                result if error is None else _committed_not_applied(position, error)))
        else:
            callback(CommitResult(p.position, p.first_event, p.already))

    def _lead(self, p: _Pending | _Turn | None = None) -> None:
        """Commits queued groups until the queue is empty (or LEADER_ROUNDS), waking each
        committer whose batch is done; then hands over or gives up leadership. ``p``: the
        batch whose committer leads (None: the committer thread leads for a submitted
        one). Interrupted, it hands over (interrupts.py)."""
        if p is not None:
            p.handed = False  # before any call: interrupted sooner, p's committer leads again
        rounds = 0
        leading = True  # changes with the leader flag, in the same statement
        try:
            while True:
                group: list[_Pending] = []
                try:
                    with self._qlock:
                        group, self._queue = self._queue, []
                        if not group:
                            self._leader = leading = False
                            if self._free.waiters:
                                self._free.notify_all()
                            return
                    self._commit_group(group)
                    if self._quota.cleanup_headroom <= 0:
                        self._maybe_cleanup()
                except BaseException as exc:
                    if not isinstance(exc, Exception):
                        self._interrupted_group(group, exc)
                    raise
                finally:
                    for q in group:
                        if not q.done:  # only on an unexpected internal error
                            q.error = q.error or NgStoreError("the commit was abandoned by an internal error")
                            q.done = True
                        try:
                            q.wake.release()
                        except RuntimeError:  # released already, and not taken: an interrupted wait
                            pass
                rounds += 1
                if rounds >= self.LEADER_ROUNDS:  # hand over: _hand_over, without a call
                    first = None
                    try:
                        with self._qlock:
                            first = self._queue[0] if self._queue else None
                            if first is not None:
                                first.handed, leading = True, False
                            else:
                                self._leader = leading = False
                                if self._free.waiters:
                                    self._free.notify_all()
                    finally:
                        if first is not None:
                            try:
                                first.wake.release()
                            except RuntimeError:  # released already, not taken: it sees ``handed``
                                pass
                    return
        except BaseException:
            if leading:
                with self._qlock:
                    self._hand_over()
            raise

    def _interrupted_group(self, group: list[_Pending], exc: BaseException) -> None:
        """An interrupt stopped the leader inside a group commit (interrupts.py). Nothing of
        it in the log: its batches not done go back to the head of the queue, for the next
        leader. All of its write in the log: the batches are finished as the write's return
        would have (in the overlay, synced), unless they hold events (their listeners may
        have run). Otherwise they fail as after a failed write, and the writer stops."""
        writing, self._writing = self._writing, None
        left = [q for q in group if not q.done]
        if writing is not None:
            left += [q for q in writing[0] if not q.done and q not in left]  # a cleanup's batch
        if not left:
            return
        accepted, before = writing if writing is not None else ([], self._log.last_position)
        log = self._log
        try:
            last = log.last_position
            while last < before + len(accepted) and log.failed is None:  # frames written, not yet taken
                taken = log.adopt_next()
                if taken == last:
                    break
                last = taken
            if last == before:
                with self._qlock:
                    self._queue[:0] = left
                group[:] = [q for q in group if q.done]
                return
            if last == before + len(accepted) and not any(op.kind == OP_EVENT_APPEND for q in accepted
                                                          for op in q.ops):
                self._settle_appended(any(q.durability == "sync" for q in accepted),
                                      any(q.durability == "async" for q in accepted))
                for i, q in enumerate(accepted):
                    if not q.done:
                        self._finish_logged(q, before + 1 + i)
                for q in left:
                    if not q.done and q.dup_of is not None:
                        self._settle_duplicate(q)
                return
        except Exception as failure:
            exc = failure
        self._fail([q for q in left if not q.done], exc, "an interrupted group commit", None, writing=True)

    def _finish_logged(self, p: _Pending, position: int) -> None:
        """What ``_commit_accepted`` does for a batch of no events once its record is in the
        log at ``position``: without adding it to the overlay twice."""
        p.position = position
        tokens = token_writes(p.ops, self._options.index_limit)
        p.wait_applied = tokens is None or any(op.kind in REFLEX_KINDS for op in p.ops)
        key = (p.key, None) if p.key is not None else None
        if self._overlay.last_position < position and self._applier.applied_position < position:
            self._add_to_overlay(position, p.ops, p.payload, tokens, key)
            self.stats_counters["commits_total"] += 1
        elif p.key is not None and self._key_filter is not None:
            self._key_filter.add(p.key, position)
        p.done = True

    def _commit_solo(self, ops: list[Op], durability: str, payload: bytes) -> tuple[int, bool, int | None, bool]:
        """As the leader, with nobody queued: commits one batch of token and connection ops,
        keyed or not, as a group of its own -- what ``_commit_group`` and
        ``_commit_accepted`` do for such a group, without the queue, the wake-up lock and
        the per-batch bookkeeping a group of many needs (a one-token commit spends about a
        fifth of its time there, a keyed one more than half). Returns ``(position, wait,
        first_event, already)``: ``wait`` when ``commit`` must wait for the applier (the
        overlay could not index the token writes, or the key's original is still in the
        overlay), ``already`` when the key was committed already (nothing was written; the
        position and first event are the original's). Raises what ``commit`` raises."""
        obs = self._obs
        t0 = time.perf_counter()
        key: bytes | None = None
        first = ops[0]
        if first.kind == OP_OUTCOME_KEY:
            try:
                key = _solo_key(ops)
                assert key is not None  # its first op is a key
                original = self._original(key)
            except Exception as exc:  # nothing of it is written
                raise refused(exc) from None
            if original is not None:  # not written: the original's outcome
                at, first_event, wait = original
                return at, wait, first_event, True
        body = ops[1:] if key is not None else ops  # a key adds nothing: one-op paths below
        try:
            self._quota.check(body, None, len(payload))
        except Exception as exc:  # refused: nothing of it is written
            if obs is not None:
                obs.event("quota_refused", error=str(exc))
            raise refused(exc) from None
        writing = False
        position: int | None = None
        try:
            if self._overlay.wait_for_room(len(payload), self._applier.failed_event):
                self.check_writable()  # commit checked before; waiting gave time to fail
            writing = True
            position = self._log.append_one(wal.RECORD_BATCH, payload, mapped=durability != "sync")
            self.stats_counters["wal_records_written_total"] += 1
            t_logged = time.perf_counter()
            self._settle_appended(durability == "sync", durability == "async")
        except Exception as exc:  # as _commit_accepted: the writer stops (fsyncgate)
            p = _Pending(ops, durability, _NO_WAKE)
            self._fail([p], exc, "log append/sync", [position] if position is not None else [], writing)
            assert p.error is not None
            if p.error is exc:  # refused before anything was written: exc itself
                raise
            raise p.error from exc  # as _fail sets it: the error names exc as its cause
        tokens = token_writes(body, self._options.index_limit)
        self._add_to_overlay(position, body, payload, tokens, (key, None) if key is not None else None)
        self.stats_counters["commits_total"] += 1
        timings = self._timings
        if timings is not None:  # observed, and traced when sampled, in bulk (CommitTimings)
            t1 = time.perf_counter()
            rows = timings.rows
            if len(ops) == 1:  # batch_summary's one-op case, without its call
                op = ops[0]
                rows += pack_timing_row(t_logged - t0, t1 - t0, op.count, PUTS_OF.get(op.kind, 0), t1, position)
            else:
                rows += pack_timing_row(t_logged - t0, t1 - t0, *batch_summary(ops), t1, position)
            if len(rows) > _TIMING_BYTES_KEPT:
                timings.drain()
        if self._quota.cleanup_headroom <= 0:
            self._maybe_cleanup()
        return position, tokens is None, None, False

    def _finish_interrupted(self, ops: list[Op], durability: str, payload: bytes, before: int) -> None:
        """An interrupt stopped a solo commit that began with the log at ``before``. If its
        record reached the log, finishes it -- in the overlay, synced as its mode says -- so
        that this process goes on with the state recovery would find; if not, nothing of
        it happened (interrupts.py). A failure here stops the writer as a failed write."""
        log = self._log
        try:
            position = log.last_position
            if position == before and log.failed is None:
                position = log.adopt_next()
            if position == before:
                return
            if position != before + 1:
                raise AssertionError(f"the log moved from {before} to {position} under a solo commit")
            p = _Pending(ops, durability, _NO_WAKE)  # finished as a group's batch would be
            p.payload = payload
            self._finish_logged(p, position)
            self._settle_appended(durability == "sync", durability == "async")
        except Exception as exc:
            self._fail([], exc, "finishing an interrupted commit")

    def _give_up_leadership(self) -> None:
        """With ``_qlock`` held: no leader from now on; wake an exclusive caller waiting."""
        self._leader = False
        if self._free.waiters:
            self._free.notify_all()

    def _hand_over(self) -> None:
        """With ``_qlock`` held, as the leader: the oldest queued committer leads next (it
        alone may take the queue: the leader flag stays set), or no one if none waits."""
        if self._queue:
            first = self._queue[0]
            first.handed = True
            try:
                first.wake.release()
            except RuntimeError:  # released already, and not taken: its committer sees ``handed``
                pass
        else:
            self._give_up_leadership()

    def _run_exclusive(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` as the commit leader (no group commit runs meanwhile)."""
        led = False
        try:
            while True:
                with self._qlock:
                    if self._lead_deferred:  # see _deferred_lead
                        self._lead_deferred = False
                        self._committer.request_lead()
                    if not self._leader:
                        self._leader = led = True
                        break
                    waiter = self._free.add_waiter()  # interrupts.Gate: what Condition.wait does
                waiter.acquire(timeout=WAKE_RECHECK)
            return fn()
        finally:
            if led:
                with self._qlock:
                    self._hand_over()

    def _commit_group(self, group: list[_Pending]) -> None:
        accepted: list[_Pending] = []
        duplicates: list[_Pending] = []
        keys: dict[bytes, _Pending] = {}  # the keys of the accepted batches
        adds = GroupAdds()
        obs = self._obs
        t0 = time.perf_counter()
        for p in group:
            if p.key is not None:
                first = keys.get(p.key)
                if first is not None:  # the same key earlier in this group: share its fate
                    p.dup_of = first
                    duplicates.append(p)
                    continue
                try:
                    if self._answer_if_committed(p):
                        continue
                except Exception as exc:
                    p.error, p.done = refused(exc), True
                    continue
            try:
                p.add_tokens = self._quota.check(p.ops, adds, len(p.payload))
            except Exception as exc:  # refused: nothing of it is written
                p.error, p.done = refused(exc), True
                if obs is not None:
                    obs.event("quota_refused", error=str(exc))
                continue
            accepted.append(p)
            if p.key is not None:
                keys[p.key] = p
        try:
            if accepted:
                self._commit_accepted(accepted, t0)
        finally:
            for p in duplicates:
                self._settle_duplicate(p)

    def _original(self, digest: bytes) -> tuple[int, int | None, bool] | None:
        """``(position, first event, wait)`` of the committed batch with key ``digest`` (None:
        none), counted as an answer. The overlay is looked at first: the applier drops a key
        from it only after LMDB has committed it, so a key cannot fall between the two looks.
        ``wait``: the original is pending there; the retry returns once it is applied."""
        hit = self._overlay.key(digest)
        if hit is not None:
            answer = (hit[0], hit[1], True)
        else:
            f = self._key_filter
            if f is None:  # built in a thread of its own (KeyFilter.start)
                applier = self._applier
                f = self._key_filter = KeyFilter.start(self._kv, self._options.remember_keys,
                                                       lambda: applier.applied_position, self._overlay.key_digests)
            known = self.lookup_key(digest) if f.may_hold(digest) else None
            if known is None:
                return None
            answer = (known.position, known.first_event, False)
        self.stats_counters["commits_already_committed_total"] += 1
        return answer

    def _answer_if_committed(self, p: _Pending) -> bool:
        """If the key of ``p`` is committed already, ``p`` is done with the original's
        position and True is returned; it is not written."""
        assert p.key is not None
        original = self._original(p.key)
        if original is None:
            return False
        p.position, p.first_event, p.wait_applied = original
        p.already = p.done = True
        return True

    def _settle_duplicate(self, p: _Pending) -> None:
        """``p`` had the key of an earlier batch of its group: it gets that batch's outcome,
        as a batch whose key was committed already (or that batch's error)."""
        first = p.dup_of
        assert first is not None
        if not first.done:
            return  # an internal error: the leader gives both its error
        if first.error is not None:
            p.error = first.error
        else:
            p.position, p.first_event, p.wait_applied = first.position, first.first_event, first.wait_applied
            p.already = True
            self.stats_counters["commits_already_committed_total"] += 1
        p.done = True

    def lookup_key(self, digest: bytes) -> KnownOutcome | None:
        """The outcome LMDB records for a key digest (None: none is recorded); see
        ``outcomes.point_lookup``."""
        return point_lookup(self._kv, digest)

    def outcome(self, digest: bytes) -> Outcome:
        """What is known of the batch with key ``digest``: committed (pending in the overlay,
        or in LMDB), not committed (in neither, and the store never forgot a key), or
        unknown. Raises after an I/O error: which of the last batches reached the log is
        known only after reopening."""
        failed = self.failed
        if failed is not None:
            raise NgStoreError(
                f"the store {self._directory.path} stopped accepting writes after an I/O error ({failed!r}); "
                "whether its last batches committed is known only after recovery: close it, open it again, "
                "then ask store.outcome(key)")
        if self._overlay.key(digest) is not None:
            return Outcome.COMMITTED
        return outcome_in(self._kv, digest, sees_everything=True)

    def _commit_accepted(self, accepted: list[_Pending], t0: float) -> None:
        """Appends the accepted batches of a group to the log (one write, one fdatasync if
        any is ``sync``), then adds them to the overlay."""
        positions: list[int] = []
        writing = False
        nbytes = 0
        sync = asynchronous = False
        for p in accepted:
            nbytes += len(p.payload)
            sync = sync or p.durability == "sync"
            asynchronous = asynchronous or p.durability == "async"
        try:
            self._overlay.wait_for_room(nbytes, self._applier.failed_event)
            self.check_writable()
            writing = True
            self._writing = (accepted, self._log.last_position)  # what an interrupt finishes
            positions = self._log.append([(wal.RECORD_BATCH, p.payload) for p in accepted])
            self.stats_counters["wal_records_written_total"] += len(accepted)
            t_logged = time.perf_counter()
            self._settle_appended(sync, asynchronous)
        except Exception as exc:  # an interrupt goes on to _lead
            # fsyncgate: after a failed write or fsync the log's state is unknown; stop
            # writing. Reopening recovers whatever reached the log, each batch whole.
            self._fail(accepted, exc, "log append/sync", positions, writing)
            return
        limit = self._options.index_limit
        for pos, p in zip(positions, accepted, strict=True):
            p.position = pos
            for op in p.ops:
                if op.kind == OP_EVENT_APPEND:
                    if p.first_event is None:
                        p.first_event = self._next_event
                    for listener in self._listeners:
                        listener(self._next_event, op.data)
                    self._next_event += op.count
                elif op.kind in REFLEX_KINDS:
                    p.wait_applied = True
            tokens = token_writes(p.ops, limit)
            if tokens is None:
                p.wait_applied = True
            self._add_to_overlay(pos, p.ops, p.payload, tokens,
                                 (p.key, p.first_event) if p.key is not None else None)
            p.done = True
        self._writing = None
        self.stats_counters["commits_total"] += len(accepted)
        timings = self._timings
        if timings is not None:  # observed, and traced when sampled, in bulk (CommitTimings)
            t1 = time.perf_counter()
            total = t1 - t0
            logging_s = t_logged - t0
            values: list[float] = []
            for p in accepted:
                values += (logging_s, total, *batch_summary(p.ops), t1, p.position)
                logging_s = -1.0  # observed once per group
            rows = timings.rows
            rows += array("d", values)  # one call: a drain sees the whole group or none of it
            if len(rows) > _TIMING_BYTES_KEPT:
                timings.drain()

    def _settle_appended(self, sync: bool, asynchronous: bool) -> None:
        """After a log append: fdatasync it (``sync``), or note it unsynced and make sure
        the flusher runs (``asynchronous``: it bounds how long the append stays unsynced)."""
        if sync:
            self._log.sync()
            self._unsynced = False
        else:
            self._unsynced = True
            if asynchronous and self._flusher is None:  # started once: it runs until close
                self._ensure_flusher()

    def _add_to_overlay(self, position: int, ops: list[Op], payload: bytes,
                        tokens: list[tuple[int, bytes | None]] | None,
                        key: tuple[bytes, int | None] | None = None) -> None:
        """Adds a logged batch to the overlay, and wakes the applier when the overlay just
        became due: it was empty (the applier starts counting its age) or passed its size."""
        after = self._overlay.add(position, ops, payload, tokens, key)
        if key is not None and self._key_filter is not None:
            self._key_filter.add(key[0], position)
        before = after - len(payload)
        if before == 0 or before < self._apply_bytes <= after:
            self._applier.poke()

    def observe_pending(self) -> None:
        """Turns the timings of recent groups into histogram observations (called off the
        commit path: by ``stats()`` and the metrics collector)."""
        if self._timings is not None:
            self._timings.drain()

    def _fail(self, accepted: list[_Pending], exc: BaseException, where: str,
              positions: list[int] | None = None, writing: bool = False) -> None:
        """Stops the writer after ``exc``. Batches that were written to the log before it
        (``positions``) get an OutcomeUnknownError: recovery decides whether they stay. A
        failed log write (``writing``) may have put some of the group's records on disk
        whole, so its batches get one too (``outcome_known`` False, ``position`` None). The
        others wrote nothing and get ``exc``, marked so (``errors.refused``)."""
        if isinstance(exc, StorageError) and exc.refused_by is None:  # a refusal wrote nothing
            exc.restate(StoreState.STOPPED, outcome_known=False)
        self._failed = exc
        self.stats_counters["commit_errors_total"] += len(accepted)
        self.stats_counters["panics_recovered_total"] += 1  # the original's name for a caught failure
        written = dict(zip((id(p) for p in accepted), positions or [], strict=False))
        for p in accepted:
            pos = written.get(id(p))
            if pos is not None:
                p.error = OutcomeUnknownError(
                    f"the batch was written to the log (position {pos}), then syncing the log failed "
                    f"({type(exc).__name__}, the cause of this error); whether it is committed is known "
                    "only once the store is reopened: close it and open it again -- recovery keeps the "
                    f"batch whole if its record reached the disk, or drops it whole. {_ASK_AFTER_REOPEN}",
                    pos, exc)
                p.error.__cause__ = exc
            elif writing and not (isinstance(exc, NgStoreError) and exc.outcome_known):  # not refused first
                p.error = OutcomeUnknownError(
                    f"writing the batch to the log failed ({type(exc).__name__}, the cause of this error): part "
                    "or all of its record may have reached the file, so whether it is committed is known only "
                    "once the store is reopened: close it and open it again -- recovery keeps the batch whole "
                    f"if its whole record reached the disk, or drops it whole. {_ASK_AFTER_REOPEN}", None, exc)
                p.error.__cause__ = exc
            else:
                p.error = refused(exc)
            p.done = True
        if self._obs is not None:
            self._obs.event("error", op=where, error=repr(exc))
            self._obs.logger.error("commit failed in %s: %r; the store refuses writes until "
                                   "reopened", where, exc)
            if self._obs.tracer is not None:
                self._obs.tracer.record("group_commit", 0.0, exc, attributes=lambda: {"batches": len(accepted)})

    def _commit_direct(self, ops: list[Op]) -> CommitResult:
        """A large sync batch: straight into LMDB after everything pending, then a
        checkpoint makes it durable."""
        self.check_commit()
        t0 = time.perf_counter()
        key = batch_key(ops)
        if key is not None:  # exclusive: nothing commits meanwhile, so the look stays true
            p = _Pending(ops, "sync")
            if self._answer_if_committed(p):
                if p.wait_applied:
                    self._applier.wait_applied(p.position)
                return CommitResult(p.position, p.first_event, True)
        self._quota.forget_slack()  # this batch goes to LMDB past the overlay
        try:
            self._quota.full_check(ops, GroupAdds())
        except BaseException as exc:
            if self._obs is not None:
                self._obs.event("quota_refused", error=str(exc))
            raise refused(exc) from None
        try:
            result = self._applier.direct(ops)
        except BaseException as exc:
            self._fail([], exc, "direct commit")
            # The applier was healthy (check_commit above, and this thread leads): whatever
            # failed may have come after LMDB committed the batch, in its checkpoint.
            raise OutcomeUnknownError(
                f"committing the batch straight to LMDB failed ({type(exc).__name__}, the cause of this error): "
                "LMDB may hold it without its checkpoint, so whether it is committed is known only once the "
                f"store is reopened. {_ASK_AFTER_REOPEN}", None, exc) from exc
        position = result.applied_position
        if key is not None and self._key_filter is not None:
            self._key_filter.add(key[0], position)
        first = result.first_event.get(position)
        for first_seq, events in result.appended:
            for listener in self._listeners:
                listener(first_seq, events)
        self._next_event = result.counters.events_next_seq
        self.stats_counters["commits_total"] += 1
        self.stats_counters["direct_commits_total"] += 1
        if self._obs is not None:
            n = sum(op.count for op in ops)
            self._obs.commit_seconds.observe(time.perf_counter() - t0)
            self._obs.batch_records.observe(n)
            self._obs.event("commit", batches=1, direct=True, records=n, last=position)
        return CommitResult(position, first)

    def note_replayed(self, records: int) -> None:
        self.stats_counters["wal_records_replayed_total"] += records

    # -- durability ------------------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            stop = self._flusher_stop = Signal()
            flusher = threading.Thread(target=self._flush_loop, args=(stop,), name="ngstore-flusher", daemon=True)
            flusher.start()  # kept once started: close() joins it (an interrupted start left one it could not)
            self._flusher = flusher

    def _flush_loop(self, stop: Signal) -> None:
        # Syncs start flush_interval apart, counted from the start of the previous sync
        # (at once after a sync that took longer). A batch written at t, just after a sync
        # began and too late for it, is then in the next sync, which starts by
        # t + max(flush_interval, that sync's time): durable by t + flush_interval + one
        # fdatasync while an fdatasync takes at most flush_interval (two fdatasyncs
        # otherwise). Waiting flush_interval after a sync ended would add a second one.
        interval = self._options.flush_interval
        next_start = time.monotonic() + interval
        while not stop.wait(max(0.0, next_start - time.monotonic())):
            next_start = time.monotonic() + interval
            if self._unsynced and self._failed is None:
                try:
                    self._unsynced = False
                    self._log.sync()
                except BaseException as exc:  # the next commit reports it
                    self._failed = exc

    def flush(self) -> None:
        """Makes every batch committed so far durable (one fdatasync of the log), and
        applied to LMDB, where other processes see it."""
        self.check_writable()

        def do() -> None:
            self._log.sync()
            self._unsynced = False

        self._run_exclusive(do)
        self.barrier()

    def barrier(self) -> None:
        """Returns once LMDB holds every batch committed so far."""
        self._applier.wait_applied(self._overlay.last_position)

    def connection_barrier(self) -> None:
        """Returns once LMDB holds every batch committed so far that put or deleted
        connections: what a read of connections alone needs. A token commit in the overlay
        then costs it nothing (it waited ~0.3 ms for the apply of each one)."""
        self._applier.wait_applied(self._overlay.connection_position)

    def checkpoint(self) -> None:
        """Applies the overlay, makes LMDB durable, and drops the log segments it covers."""
        self.check_writable()
        self._applier.checkpoint()

    def _maybe_cleanup(self) -> None:
        """Guardian's aggressive cleanup, near the byte quota: evict decayed Hypothesis
        reflexes and trim the oldest quarter of the experience events, through one logged
        batch (so replay does the same)."""
        g = self._guardian
        limit = g.byte_limit
        if self.failed is not None or limit is None or not g.enable_aggressive_cleanup:
            self._quota.cleanup_headroom = 1 << 62
            return
        usage = self.usage(overlay=False)
        self._quota.cleanup_headroom = int(self.CLEANUP_MARGIN * limit) - usage.bytes
        if not g.should_cleanup(usage, self.CLEANUP_MARGIN):
            return
        ops = []
        stale = reflex_store.decayed_hypotheses(self._applier.reflex_table, int(time.time()))
        if stale.size:
            ops.append(Op(OP_REFLEX_DELETE_KEY, stale))
        n = int(self.usage().events * self.CLEANUP_EVENT_FRACTION)
        if n:
            ops.append(Op(OP_EVENT_TRIM, np.array([n], dtype="<u8")))
        if not ops:
            return
        p = _Pending(ops, "sync")
        p.payload = encode_ops(ops)
        before = usage.bytes
        self._commit_group([p])
        if p.error is None:
            # Usage counts the overlay's additions, not its trims: wait for this one to be
            # applied, so the next look sees what it freed (cleanup is rare).
            self._applier.wait_applied(p.position)
            self._quota.cleanup_headroom = int(self.CLEANUP_MARGIN * limit) - self.usage(overlay=False).bytes
            g.aggressive_cleanups_total += 1
            if self._obs is not None:
                self._obs.event("cleanup", events_trimmed=n, hypotheses_evicted=int(stale.size),
                                bytes_before=before)
                self._obs.logger.warning(
                    "aggressive cleanup: trimmed the %d oldest events, evicted %d decayed hypothesis "
                    "reflexes (%d accounted bytes before)", n, int(stale.size), before)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the flusher; if the writer is healthy, the applier applies the overlay and a
        final checkpoint empties the log, and the state file records a clean close. Then
        releases the applier and the log (the KV and the directory belong to the caller)."""
        if self._closed:
            if not self._released:  # what a close an interrupt stopped left (each step may run again)
                self._committer.close()
                self.release()
            return
        try:
            self._kv.set_writer_barrier(None)
            self._flusher_stop.set()
            if self._flusher is not None:
                self._flusher.join()
            if self.failed is None:
                self._run_exclusive(lambda: self._applier.close(final=True))
                if self.failed is None:
                    self._directory.write_state(clean=True)
        except StorageError as exc:
            # Nothing acknowledged is lost: every commit is in the log, which a failed final
            # checkpoint has not dropped; the state file still says "unclean", so the next
            # open recovers.
            raise exc.restate(StoreState.CLOSED) from exc.__cause__
        except OSError as exc:
            if isinstance(exc, NgStoreError):
                raise
            raise storage_error(exc, "closing the store", StoreState.CLOSED) from exc
        finally:
            self._closed = True
            self._committer.close()
            self.release()

    def release(self) -> None:
        """Stops the applier and closes the log without checkpointing (after a failed
        open, or once a close has checkpointed)."""
        self._flusher_stop.set()
        try:
            self._applier.close(final=False)
        finally:
            self._log.close()
        self._released = True


_ASK_AFTER_REOPEN = "For a batch with an idempotency key, call store.outcome(key) after reopening."


def _solo_key(ops: list[Op]) -> bytes | None:
    """The key digest of a batch of solo kinds, None when it has no key."""
    first = ops[0]
    if first.kind != OP_OUTCOME_KEY:
        return None
    if type(first) is KeyOp:  # the API's: its digest at hand
        return first.digest
    key = batch_key(ops)
    assert key is not None  # its first op is a key
    return key[0]


def _committed_not_applied(position: int, cause: BaseException) -> NgStoreError:
    """The error of a batch that is committed (in the log) but whose wait for the applier
    failed: it is replayed from the log when the store is reopened."""
    exc = NgStoreError(
        f"the batch is committed (log position {position}), but the store failed before applying it "
        f"({cause!r}); it is applied when the store is reopened: close it and open it again")
    exc.outcome_known, exc.committed = True, True
    exc.__cause__ = cause
    return exc
