"""ngstore.aio: the store as the database handle of an asyncio application.

::

    async with await ngstore.aio.open("/data/s") as db:
        position = await db.put_tokens(tokens)
        async with db.batch() as b:                 # committed on exit, all or nothing
            b.put_tokens(more); b.append_events(events)
        found = await db.get_tokens(ids)
        engine = await db.intuition()
        report = await engine.analyze()
        async with await db.snapshot() as snap:
            async for first_id, rows in snap.token_chunks():   # zero-copy views
                ...

The same store, the same files and the same promises as ``ngstore.Store`` (``db.store`` is
the blocking handle underneath; a blocking call on it blocks the loop).

Commits never block the loop and hold no thread while they wait
--------------------------------------------------------------
A commit is *submitted* (``Batch.submit`` -> ``commit.Writer.submit``): its batch joins the
writer's group-commit queue like a blocking commit's, and the loop gets on with other
tasks. The log append, the one fdatasync per group and -- for reflex writes -- the wait for
the applier run in the writer's threads (the commit leader, or its one committer thread,
``ngstore.committer``), which hand the outcome back with ``loop.call_soon_threadsafe``. So
1,000 tasks committing at once are 1,000 futures and a few group commits, not 1,000
threads; ``benchmarks/bench_aio.py`` measures the loop's longest stall meanwhile.

The commit calls (``put_tokens``, ``delete_tokens``, ``put_connections``,
``delete_connections``, ``write_events``, ``AsyncBatch.commit``) submit **when called** and
return a :class:`Commit`: await it for the position (``write_events``: the first event's
sequence number). Their records are validated and copied on the loop (as ``Store`` does in
the caller's thread): microseconds for small batches; a batch of ``OFFLOAD_BYTES`` (1 MiB)
or more is validated, copied and encoded in the loop's default executor instead.

Cancellation never cancels a commit
-----------------------------------
A batch is committed or not, as a whole, whatever happens to the task that awaits it:
awaiting a :class:`Commit` is shielded, so a cancelled ``await`` leaves the commit going.
Keep the handle to learn its outcome -- ``c = db.put_tokens(a)``; after ``await c`` was
cancelled, ``await c`` again (or ``c.result()`` once ``c.done()``) gives its position, or
the exception the commit raised: ``QuotaExceededError`` and the like when it was refused
(nothing written), ``OutcomeUnknownError`` when its log record was written and the sync
failed (reopen to learn; see ``docs/api.md``). An ``async with db.batch() as b`` whose
body is cancelled before the exit discards the batch; cancelled during the exit, the
commit goes on and ``b.outcome`` is its handle. ``close()`` waits for every commit in
flight.

What runs inline, what runs in a thread
---------------------------------------
Inline on the loop (microseconds): submitting a commit, ``get_token``, ``contains``,
``reflex_table``, the reflex lookups of :class:`AsyncIntuition` (``try_fast_path``,
``try_fast_path_batch``: an immutable table, no lock), each step of ``token_chunks`` (one
cursor step, a view; the loop runs between chunks -- a cold store can page-fault inside a
step), closing a snapshot. In the loop's default executor (they wait for the applier, an
fdatasync, or do O(n) work): ``open``, ``close``, ``flush``, ``checkpoint``,
``resize_reflexes``, ``get_tokens``, ``get_connections``, ``connections_between``,
``neighbors``, ``count``, ``stats``, ``check``, ``snapshot``, ``intuition``,
``AsyncIntuition.analyze`` and ``.stats``.

A handle belongs to the loop that opened it.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np

from . import store as _store
from .batch import Batch, CommitResult
from .check import CheckReport
from .config import IntuitionConfig
from .connections import Connection, ConnectionArray
from .intuition import AnalysisReport, FastPathBatch, IntuitionEngine
from .options import Options
from .reflex import ReflexHit, ReflexTable
from .snapshot import Snapshot
from .tokens import Token, TokenArray

__all__ = ["OFFLOAD_BYTES", "AsyncBatch", "AsyncIntuition", "AsyncSnapshot", "AsyncStore", "Commit", "open"]

T = TypeVar("T")

#: A commit of at least this many bytes of records is validated, copied and encoded in a
#: worker thread rather than on the loop (a copy of 1 MiB costs ~100 µs).
OFFLOAD_BYTES = 1 << 20


async def open(path: Any, options: Options | None = None, **overrides: Any) -> AsyncStore:
    """``ngstore.open`` (same arguments) in the loop's default executor -- recovery and
    its fdatasyncs never run on the loop; use ``async with await ngstore.aio.open(...)``."""
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, functools.partial(_store.open, path, options, **overrides))
    return AsyncStore(store, loop)


def _position(result: CommitResult) -> int:
    return result.position


def _first_event(result: CommitResult) -> int | None:
    return result.first_event


def _nbytes(records: Any) -> int:
    for obj in (records, getattr(records, "data", None)):
        n = getattr(obj, "nbytes", None)
        if isinstance(n, int):
            return n
    return 0


class Commit(Generic[T]):
    """A submitted commit. ``await`` it for its value (shielded: cancelling the ``await``
    never cancels the commit); :meth:`done`, :meth:`result`, :attr:`commit_result` tell
    its outcome without waiting."""

    __slots__ = ("_future", "_pick")

    def __init__(self, future: asyncio.Future[CommitResult], pick: Callable[[CommitResult], T]) -> None:
        self._future = future
        self._pick = pick

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        return self._pick(await asyncio.shield(self._future))

    def done(self) -> bool:
        """Whether the commit's outcome is known (committed, or refused / failed)."""
        return self._future.done()

    def result(self) -> T:
        """The value once done; raises what the commit raised, or ``InvalidStateError``
        while it is still going."""
        return self._pick(self._future.result())

    @property
    def commit_result(self) -> CommitResult:
        """The whole CommitResult (position and first event) once done."""
        return self._future.result()

    def __repr__(self) -> str:
        state = "pending" if not self.done() else (
            "failed" if self._future.exception() is not None else f"at {self._future.result().position}")
        return f"<ngstore.aio.Commit {state}>"


class AsyncStore:
    """An open store for asyncio (see the module docstring); make one with :func:`open`."""

    def __init__(self, store: _store.Store, loop: asyncio.AbstractEventLoop) -> None:
        #: the blocking handle underneath (its blocking calls block the loop)
        self.store = store
        self._loop = loop
        self._in_flight: set[asyncio.Future[CommitResult]] = set()
        # Outcomes reach the loop in bulk: the writer's threads append here and schedule one
        # drain while none is scheduled -- one wake-up of the loop per group commit, not one
        # per commit (each call_soon_threadsafe writes to the loop's self-pipe).
        self._outcomes: deque[tuple[asyncio.Future[CommitResult], CommitResult | BaseException]] = deque()
        self._drain_lock = threading.Lock()
        self._drain_scheduled = False

    def _soon(self, fn: Callable[[], None]) -> None:
        self._loop.call_soon(fn)

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _future(self) -> asyncio.Future[CommitResult]:
        fut: asyncio.Future[CommitResult] = self._loop.create_future()
        self._in_flight.add(fut)
        fut.add_done_callback(self._in_flight.discard)
        return fut

    def _outcome(self, fut: asyncio.Future[CommitResult]) -> Callable[[CommitResult | BaseException], None]:
        def outcome(result: CommitResult | BaseException) -> None:  # in a thread of the writer
            self._outcomes.append((fut, result))
            with self._drain_lock:
                if self._drain_scheduled:
                    return
                self._drain_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._settle_outcomes)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to tell

        return outcome

    def _settle_outcomes(self) -> None:
        """On the loop: every outcome that arrived reaches its future."""
        with self._drain_lock:
            self._drain_scheduled = False  # before draining: a later outcome schedules again
        outcomes = self._outcomes
        while outcomes:
            fut, result = outcomes.popleft()
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def _submit(self, batch: Batch, pick: Callable[[CommitResult], T]) -> Commit[T]:
        """Submits a filled batch: inline, or from a worker thread when it is large."""
        fut = self._future()
        outcome = self._outcome(fut)
        if batch.nbytes < OFFLOAD_BYTES:
            try:
                batch.submit(outcome, self._soon)  # the committer wakes once the loop is through this burst
            except BaseException:
                fut.cancel()
                self._in_flight.discard(fut)
                raise
        else:
            self._loop.run_in_executor(None, _submit_or_report, batch, outcome)
        return Commit(fut, pick)

    def _commit(self, fill: Callable[[Batch], None], durability: str | None, size: int,
                pick: Callable[[CommitResult], T]) -> Commit[T]:
        """A one-shot commit: a batch filled by ``fill`` and submitted; validated and copied
        in a worker thread when ``size`` says the records are large."""
        if size < OFFLOAD_BYTES:
            b = self.store.batch(durability)
            fill(b)
            return self._submit(b, pick)
        fut = self._future()
        outcome = self._outcome(fut)

        def build_and_submit() -> None:
            try:
                b = self.store.batch(durability)
                fill(b)
            except BaseException as exc:
                outcome(exc)
                return
            _submit_or_report(b, outcome)

        self._loop.run_in_executor(None, build_and_submit)
        return Commit(fut, pick)

    # ------------------------------------------------------------------ writing

    def batch(self, durability: str | None = None) -> AsyncBatch:
        """A batch: ``async with db.batch() as b: ...`` commits on exit (discards on an
        exception); or fill it and ``await b.commit()``."""
        return AsyncBatch(self, self.store.batch(durability))

    def put_tokens(self, tokens: Any, *, durability: str | None = None) -> Commit[int]:
        """``Store.put_tokens``, submitted now; await it for the log position."""
        return self._commit(lambda b: b.put_tokens(tokens), durability, _nbytes(tokens), _position)

    def delete_tokens(self, ids: Any, *, durability: str | None = None) -> Commit[int]:
        return self._commit(lambda b: b.delete_tokens(ids), durability, _nbytes(ids), _position)

    def put_connections(self, connections: Any, *, durability: str | None = None) -> Commit[int]:
        return self._commit(lambda b: b.put_connections(connections), durability, _nbytes(connections), _position)

    def delete_connections(self, keys: Any, *, durability: str | None = None) -> Commit[int]:
        return self._commit(lambda b: b.delete_connections(keys), durability, _nbytes(keys), _position)

    def write_events(self, events: Any, *, durability: str | None = None) -> Commit[int | None]:
        """``Store.write_events``; await it for the first event's sequence number (None
        when there were no events)."""
        return self._commit(lambda b: b.append_events(events), durability, _nbytes(events), _first_event)

    async def resize_reflexes(self, capacity: int, *, durability: str | None = None) -> int:
        """``Store.resize_reflexes`` (rare: in the default executor)."""
        return await self._run(self.store.resize_reflexes, capacity, durability=durability)

    async def flush(self) -> None:
        await self._run(self.store.flush)

    async def checkpoint(self) -> None:
        await self._run(self.store.checkpoint)

    # ------------------------------------------------------------------ reading

    async def get_token(self, token_id: int) -> Token:
        """Inline: one overlay lookup or one LMDB get (microseconds)."""
        return self.store.get_token(token_id)

    async def contains(self, token_id: int) -> bool:
        """Inline, like :meth:`get_token`."""
        return self.store.contains(token_id)

    async def get_tokens(self, ids: Any, *, missing: str = "raise") -> TokenArray:
        return await self._run(self.store.get_tokens, ids, missing=missing)

    async def get_connection(self, a: int, b: int, connection_type: int | None = None) -> Connection:
        return await self._run(self.store.get_connection, a, b, connection_type)

    async def get_connections(self, keys: Any, *, missing: str = "raise") -> ConnectionArray:
        return await self._run(self.store.get_connections, keys, missing=missing)

    async def connections_between(self, a: int, b: int) -> ConnectionArray:
        return await self._run(self.store.connections_between, a, b)

    async def neighbors(self, token_id: int, direction: str = "both") -> ConnectionArray:
        return await self._run(self.store.neighbors, token_id, direction)

    async def count(self) -> int:
        return await self._run(self.store.count)

    async def snapshot(self) -> AsyncSnapshot:
        """A snapshot that includes every commit awaited before it (taken in the executor:
        it waits for the applier)."""
        return AsyncSnapshot(await self._run(self.store.snapshot))

    def reflex_table(self) -> ReflexTable | None:
        """Inline: the current immutable table version."""
        return self.store.reflex_table()

    async def intuition(self, config: IntuitionConfig | None = None) -> AsyncIntuition:
        """The store's IntuitionEngine (made in the executor: it loads the newest events)."""
        return AsyncIntuition(self, await self._run(self.store.intuition, config))

    # ------------------------------------------------------------------ information, closing

    async def stats(self) -> dict[str, Any]:
        return await self._run(self.store.stats)

    async def check(self) -> CheckReport:
        return await self._run(self.store.check)

    async def close(self) -> None:
        """Waits for every commit in flight (whatever became of their awaits), then closes
        the store in the executor (its final checkpoint fdatasyncs)."""
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))
        await self._run(self.store.close)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<ngstore.aio.AsyncStore {self.store.path!r}, {len(self._in_flight)} commit(s) in flight>"


def _submit_or_report(batch: Batch, outcome: Callable[[CommitResult | BaseException], None]) -> None:
    try:
        batch.submit(outcome)
    except BaseException as exc:  # refused at once (closed, failed): nothing was written
        outcome(exc)


class AsyncBatch:
    """A batch for asyncio: its ``put_*``/``delete_*``/``append_events`` add (validate and
    copy) inline, like ``Batch``'s; ``commit()`` submits it."""

    def __init__(self, db: AsyncStore, batch: Batch) -> None:
        self._db = db
        self._batch = batch
        #: the commit's handle once submitted (its outcome after a cancelled ``await``)
        self.outcome: Commit[int] | None = None

    def put_tokens(self, tokens: Any) -> None:
        self._batch.put_tokens(tokens)

    def delete_tokens(self, ids: Any) -> None:
        self._batch.delete_tokens(ids)

    def put_connections(self, connections: Any) -> None:
        self._batch.put_connections(connections)

    def delete_connections(self, keys: Any) -> None:
        self._batch.delete_connections(keys)

    def append_events(self, events: Any) -> None:
        self._batch.append_events(events)

    def put_reflexes(self, states: Any, connections: Any) -> None:
        self._batch.put_reflexes(states, connections)

    def delete_reflexes(self, states: Any, connections: Any = None) -> None:
        self._batch.delete_reflexes(states, connections)

    @property
    def first_event(self) -> int | None:
        """The sequence number of the first event it appended, once committed."""
        return self._batch.first_event

    def commit(self) -> Commit[int]:
        """Submits the batch now; await the result for its log position."""
        self.outcome = self._db._submit(self._batch, _position)
        return self.outcome

    def discard(self) -> None:
        self._batch.discard()

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.outcome is not None:
            return
        if exc_type is None:
            await self.commit()
        else:
            self.discard()


class AsyncSnapshot:
    """A snapshot for asyncio: ``async with``, and ``async for`` over its token chunks.
    ``snapshot`` is the ``Snapshot`` underneath (its calls are blocking reads of one
    read transaction: fine for point reads, put scans in a thread)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    async def token_chunks(self) -> AsyncIterator[tuple[int, np.ndarray]]:
        """``Snapshot.tokens.chunks()`` -- ``(first_id, zero-copy TOKEN_DTYPE view)`` of each
        run of present ids -- letting the loop run between chunks."""
        for item in self.snapshot.tokens.chunks():
            yield item
            await asyncio.sleep(0)

    def close(self) -> None:
        self.snapshot.close()

    async def __aenter__(self) -> AsyncSnapshot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncIntuition:
    """The store's IntuitionEngine for asyncio; ``engine`` is the engine itself."""

    def __init__(self, db: AsyncStore, engine: IntuitionEngine) -> None:
        self._db = db
        self.engine = engine

    def try_fast_path(self, state: Any) -> ReflexHit | None:
        """Inline: a lookup on the current immutable table (microseconds, no lock)."""
        return self.engine.try_fast_path(state)

    def try_fast_path_batch(self, states: Any, *, with_connections: bool = True) -> FastPathBatch:
        """Inline: one C call for the whole batch."""
        return self.engine.try_fast_path_batch(states, with_connections=with_connections)

    async def analyze(self, rng: Any = None) -> AnalysisReport:
        """One analysis cycle in the executor (CPU work, then one reflex commit)."""
        return await self._db._run(self.engine.analyze, rng)

    async def stats(self) -> dict[str, Any]:
        return await self._db._run(self.engine.stats)
