"""ngstore.aio: the store as an asyncio application's handle (issue 16).

Every public operation through ``ngstore.aio``; 1,000 tasks committing at once share group
commits and hold no thread each; cancelling an ``await`` never cancels a commit, and its
outcome -- committed, refused, or unknown after a failed sync -- stays retrievable. The
loop's longest stall during the 1,000-task run is measured in ``benchmarks/bench_aio.py``,
not asserted here."""
from __future__ import annotations

import asyncio
import errno
import threading

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
import ngstore.aio
from ngstore.fileio import FileIO
from ngstore.records import CONNECTION_DTYPE

pytestmark = pytest.mark.asyncio


def conns(pairs, confidence=230) -> np.ndarray:
    c = np.zeros(len(pairs), CONNECTION_DTYPE)
    c["token_a"] = [a for a, _ in pairs]
    c["token_b"] = [b for _, b in pairs]
    c["connection_type"] = 0x50
    c["confidence"] = confidence
    c["mutability"] = ngstore.Mutability.LEARNABLE
    return c


class GatedSync(FileIO):
    """A file seam whose log fdatasyncs wait at a gate once armed, and then may fail."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = False

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.entered.set()
            assert self.gate.wait(30)
            if self.fail:
                raise OSError(errno.EIO, "injected EIO on fdatasync")
        super().fdatasync(fd)


async def test_every_operation_through_aio(tmp_path):
    path = str(tmp_path / "store")
    async with await ngstore.aio.open(path) as db:
        assert isinstance(db, ngstore.aio.AsyncStore) and isinstance(db.store, ngstore.Store)
        first = await db.put_tokens(make_tokens(range(100)))
        assert first == 1
        assert await db.delete_tokens([0, 1]) == first + 1
        assert await db.count() == 98
        assert await db.contains(5) and not await db.contains(0)
        assert (await db.get_token(5)).id == 5
        assert (await db.get_tokens([7, 3])).ids.tolist() == [7, 3]
        with pytest.raises(ngstore.NotFoundError):
            await db.get_tokens([0])
        await db.put_connections(conns([(2, 3), (2, 4), (2, 5)]))
        assert (await db.get_connection(2, 3)).token_b == 3
        assert len(await db.get_connections([(2, 4, 0x50)])) == 1
        assert len(await db.connections_between(2, 5)) == 1
        assert len(await db.neighbors(2)) == 3
        await db.delete_connections([(2, 4, 0x50)])
        assert len(await db.neighbors(2)) == 2
        two = np.zeros(2, ngstore.EVENT_DTYPE)
        two["event_type"] = [1, 2]
        seq = await db.write_events(two)
        assert seq == 0 and await db.write_events({"event_type": 3}) == 2

        async with db.batch() as b:
            b.put_tokens(make_tokens([500, 501]))
            b.delete_tokens([2])
            b.append_events({"event_type": 4})
        assert b.outcome is not None and b.outcome.done() and b.first_event == 3
        assert await db.count() == 99
        with pytest.raises(RuntimeError):
            async with db.batch() as b2:
                b2.put_tokens(make_tokens([600]))
                raise RuntimeError("discarded")
        assert not await db.contains(600) and b2.outcome is None

        async with await db.snapshot() as snap:
            seen = []
            async for first_id, rows in snap.token_chunks():
                assert rows.base is not None  # a zero-copy view into the map
                seen.extend(rows["id"].tolist())
            assert seen == sorted(set(range(3, 100)) | {500, 501})
        assert snap.snapshot.closed

        engine = await db.intuition()
        assert engine.try_fast_path([0.1] * 8) is None
        states = np.random.default_rng(0).uniform(-1, 1, (3, 8)).astype(np.float32)
        async with db.batch() as b:
            b.put_reflexes(states, conns([(10, 11), (12, 13), (14, 15)], confidence=250))
        hit = engine.try_fast_path(states[1])  # a reflex commit returns once it is applied
        assert hit is not None and int(hit.connection["token_a"]) == 12
        assert engine.try_fast_path_batch(states).found.all()
        assert db.reflex_table() is not None and len(db.reflex_table()) == 3
        report = await engine.analyze()
        assert report.events_sampled == 4  # the four events written above
        assert (await engine.stats())["total_reflexes"] >= 3
        assert await db.resize_reflexes(1000) > 0 and (await db.stats())["reflex_capacity"] == 1000

        await db.flush()
        await db.checkpoint()
        st = await db.stats()
        assert st["tokens_live"] == 99 and st["checkpoints_total"] >= 1
        assert (await db.check()).ok
    assert db.store.stats()["closed"]
    with ngstore.open(path) as s:
        assert s.count() == 99 and s.stats()["reflexes_live"] == 3 and s.stats()["reflex_capacity"] == 1000


async def test_a_thousand_tasks_commit_through_shared_group_commits_and_no_thread_each(tmp_path):
    async with await ngstore.aio.open(str(tmp_path / "store")) as db:
        await db.put_tokens(make_tokens([0]))  # the writer's threads are up
        threads_before = threading.active_count()
        ticks = 0
        done = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def one(i: int) -> int:
            return await db.put_tokens(make_tokens([1000 + i]))

        beat = asyncio.create_task(heartbeat())
        tasks = [asyncio.create_task(one(i)) for i in range(1000)]
        await asyncio.sleep(0)  # every task has submitted and waits on its future
        threads_waiting = threading.active_count()
        positions = await asyncio.gather(*tasks)
        done.set()
        await beat
        assert sorted(positions) == list(range(2, 1002))  # each its own log record, none lost
        assert threads_waiting <= threads_before + 1      # the committer: not a thread per commit
        assert ticks > 1                                  # the loop kept running other tasks
        st = await db.stats()
        assert st["tokens_live"] == 1001 and st["commits_total"] == 1001
        assert db.store.obs.wal_write_seconds.count < 1000  # groups: fewer appends than commits


async def test_blocking_and_async_committers_share_the_leadership(tmp_path):
    async with await ngstore.aio.open(str(tmp_path / "store")) as db:
        def blocking(t: int) -> None:
            for j in range(50):
                db.store.put_tokens(make_tokens([100_000 + 1000 * t + j]))

        threads = [threading.Thread(target=blocking, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        await asyncio.gather(*[db.put_tokens(make_tokens([i])) for i in range(300)])
        await asyncio.get_running_loop().run_in_executor(None, lambda: [th.join() for th in threads])
        assert await db.count() == 300 + 200


async def test_a_cancelled_await_leaves_the_commit_going_and_its_outcome_retrievable(tmp_path):
    io = GatedSync()
    async with await ngstore.aio.open(str(tmp_path / "store"), io=io) as db:
        io.armed = True
        commit = db.put_tokens(make_tokens([1, 2, 3]))
        waiter = asyncio.create_task(_await(commit))
        await asyncio.get_running_loop().run_in_executor(None, io.entered.wait, 30)  # in the log's fdatasync
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not commit.done()
        io.armed = False
        io.gate.set()
        position = await commit  # the same commit, awaited again
        assert commit.done() and commit.result() == position and commit.commit_result.position == position
        assert await db.count() == 3


async def test_a_cancelled_await_of_a_commit_whose_sync_failed_reports_the_unknown_outcome(tmp_path):
    io = GatedSync()
    path = str(tmp_path / "store")
    db = await ngstore.aio.open(path, io=io)
    io.armed, io.fail = True, True
    commit = db.put_tokens(make_tokens([7]))
    waiter = asyncio.create_task(_await(commit))
    await asyncio.get_running_loop().run_in_executor(None, io.entered.wait, 30)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    io.gate.set()
    with pytest.raises(ngstore.OutcomeUnknownError) as exc:
        await commit
    assert exc.value.position >= 1 and commit.done()
    io.armed = False
    await db.close()
    with ngstore.open(path) as s:  # reopening decides: the record reached the page cache, so it stays
        assert 7 in s


async def test_a_batch_cancelled_before_its_exit_is_discarded_and_during_it_is_committed(tmp_path):
    io = GatedSync()
    async with await ngstore.aio.open(str(tmp_path / "store"), io=io) as db:
        started = asyncio.Event()

        async def cancelled_in_body() -> None:
            async with db.batch() as b:
                b.put_tokens(make_tokens([1]))
                started.set()
                await asyncio.sleep(30)

        t = asyncio.create_task(cancelled_in_body())
        await started.wait()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert not await db.contains(1)

        batch = db.batch()
        io.armed = True

        async def cancelled_in_exit() -> None:
            async with batch as b:
                b.put_tokens(make_tokens([2]))

        t = asyncio.create_task(cancelled_in_exit())
        await asyncio.get_running_loop().run_in_executor(None, io.entered.wait, 30)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        io.armed = False
        io.gate.set()
        assert batch.outcome is not None
        assert await batch.outcome >= 1 and await db.contains(2)


async def test_a_refused_commit_raises_through_its_await_and_writes_nothing(tmp_path):
    async with await ngstore.aio.open(str(tmp_path / "store"), max_tokens=10) as db:
        await db.put_tokens(make_tokens(range(10)))
        with pytest.raises(ngstore.QuotaExceededError):
            await db.put_tokens(make_tokens([10]))
        bad = make_tokens([11])
        bad["weight"] = np.nan
        with pytest.raises(ngstore.InvalidArgumentError):
            await db.put_tokens(bad)  # validated at the call, before anything is submitted
        assert await db.count() == 10


async def test_large_batches_are_prepared_off_the_loop_and_behave_the_same(tmp_path):
    n = ngstore.aio.OFFLOAD_BYTES // 64 + 10
    async with await ngstore.aio.open(str(tmp_path / "store"), direct_threshold=4 * ngstore.aio.OFFLOAD_BYTES,
                                      max_tokens=None) as db:
        assert await db.put_tokens(make_tokens(range(n))) == 1
        bad = make_tokens(range(n, 2 * n))
        bad["weight"][-1] = np.inf
        with pytest.raises(ngstore.InvalidArgumentError):
            await db.put_tokens(bad)  # the same error, from the worker thread
        huge = make_tokens(range(2 * n, 2 * n + 5 * n))  # past direct_threshold: straight to LMDB
        await db.put_tokens(huge)
        assert await db.count() == 6 * n and (await db.stats())["direct_commits_total"] == 1


async def test_close_waits_for_commits_nobody_awaited(tmp_path):
    path = str(tmp_path / "store")
    db = await ngstore.aio.open(path)
    commits = [db.put_tokens(make_tokens([i])) for i in range(100)]
    await db.close()
    assert all(c.done() for c in commits)
    with ngstore.open(path) as s:
        assert s.count() == 100


async def test_a_closed_handle_refuses_commits_at_the_call(tmp_path):
    db = await ngstore.aio.open(str(tmp_path / "store"))
    await db.close()
    with pytest.raises(ngstore.StoreClosedError):
        db.put_tokens(make_tokens([1]))


async def _await(commit):
    return await commit


async def test_a_blocking_call_on_the_loop_after_a_submit_does_not_wait_for_the_loop(tmp_path):
    # The lead of a submitted batch starts from the loop's next iteration; a blocking
    # commit, flush or close made on the loop meanwhile must not wait for that iteration.
    async with await ngstore.aio.open(str(tmp_path / "store")) as db:
        first = db.put_tokens(make_tokens([1]))
        db.store.put_tokens(make_tokens([2]))  # blocking, on the loop thread
        assert first.done() or await first >= 1
        db.put_tokens(make_tokens([3]))
        db.store.flush()                       # exclusive, on the loop thread
        assert await db.count() == 3
    path = str(tmp_path / "other")
    db = await ngstore.aio.open(path)
    c = db.put_tokens(make_tokens([4]))
    db.store.close()                            # closing under a submitted batch
    await asyncio.sleep(0)
    assert await c >= 1
    with ngstore.open(path) as s:
        assert 4 in s
