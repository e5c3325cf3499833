"""Does ``ngstore.aio`` keep the event loop responsive while 1,000 tasks commit?

1,000 tasks each commit one durable (``sync``) one-token batch, at once, while a heartbeat
task asks to wake every millisecond; the **stall** is how late the heartbeat wakes (the
longest time the loop could not run it). Three ways of committing from asyncio:

* ``ngstore.aio`` -- submitted commits awaited through futures (the writer's group commit
  and one committer thread do the log append and the fdatasync);
* ``run_in_executor`` -- each task runs the blocking ``Store.put_tokens`` in the loop's
  default executor (a thread per waiting commit, up to the executor's size);
* blocking calls on the loop -- each task calls ``Store.put_tokens`` directly (what an
  application gets when it forgets to wrap one call): the loop stops for every fdatasync.

Reported per way: the longest stall and the 99th percentile of the heartbeat's lateness
(ms), the loop thread's own CPU time within that longest stall (the rest is the GIL held by
other threads and the CPU taken by other processes), the commits per second, the threads
alive while the commits wait, and the commits per log append (group commit at work).

The 1,000 tasks are created at once, so their first steps -- each validating, copying and
submitting its batch -- run back to back in one iteration of the loop: that iteration is
the longest stall, whatever the store does (asyncio runs every ready callback of an
iteration before it looks at timers). Target: ≤ 50 ms with ``ngstore.aio``.

    python benchmarks/run_all.py --only aio --out /tmp/bench-aio
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np
from _harness import Bench

import ngstore
import ngstore.aio

W = "asyncio: 1,000 tasks committing (n = tasks)"
TASKS = 1000
BEAT = 0.001  # the heartbeat's period, seconds


def one_token(i: int) -> np.ndarray:
    a = ngstore.Token.create_batch(1, start=i).data
    a["weight"] = 0.5
    return a


#: the records, made before any measurement (the stall is the store's and asyncio's, not numpy's)
TOKENS = [one_token(i) for i in range(TASKS + 1)]


async def _heartbeat(lags: list[float], cpu: list[float], stop: asyncio.Event) -> None:
    """Lateness of each wake, in wall time, and the loop thread's CPU time spent meanwhile
    (its own work: what remains of a stall once other processes and threads are taken out)."""
    while not stop.is_set():
        t, c = time.perf_counter(), time.thread_time()
        await asyncio.sleep(BEAT)
        lags.append(time.perf_counter() - t - BEAT)
        cpu.append(time.thread_time() - c)


async def _measure(commit_one: Callable[[int], Awaitable[object]]
                   ) -> tuple[list[float], list[float], float, int]:
    """(heartbeat lateness in s, loop CPU per beat in s, seconds for all commits, threads
    alive while they wait)."""
    lags: list[float] = []
    cpu: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(lags, cpu, stop))
    await asyncio.sleep(3 * BEAT)
    lags.clear()
    cpu.clear()
    t = time.perf_counter()
    tasks = [asyncio.create_task(_call(commit_one, i)) for i in range(TASKS)]
    await asyncio.sleep(0)
    threads = threading.active_count()
    await asyncio.gather(*tasks)
    dt = time.perf_counter() - t
    stop.set()
    await beat
    return lags, cpu, dt, threads


async def _call(fn: Callable[[int], Awaitable[object]], i: int) -> object:
    return await fn(i)


async def _aio(path: str) -> tuple[list[float], list[float], float, int, float]:
    async with await ngstore.aio.open(path, durability="sync") as db:
        await db.put_tokens(TOKENS[0])
        appends = db.store.stats()["wal_records_written_total"]
        before = _wal_writes(db.store)
        lags, cpu, dt, threads = await _measure(lambda i: db.put_tokens(TOKENS[1 + i]))
        per_append = (db.store.stats()["wal_records_written_total"] - appends) / max(1, _wal_writes(db.store) - before)
    return lags, cpu, dt, threads, per_append


async def _executor(path: str) -> tuple[list[float], list[float], float, int, float]:
    loop = asyncio.get_running_loop()
    with ngstore.open(path, durability="sync") as s:
        s.put_tokens(TOKENS[0])
        before = _wal_writes(s)
        lags, cpu, dt, threads = await _measure(lambda i: loop.run_in_executor(None, s.put_tokens, TOKENS[1 + i]))
        per_append = TASKS / max(1, _wal_writes(s) - before)
    return lags, cpu, dt, threads, per_append


async def _blocking(path: str) -> tuple[list[float], list[float], float, int, float]:
    with ngstore.open(path, durability="sync") as s:
        s.put_tokens(TOKENS[0])
        before = _wal_writes(s)

        async def commit(i: int) -> object:
            return s.put_tokens(TOKENS[1 + i])

        lags, cpu, dt, threads = await _measure(commit)
        per_append = TASKS / max(1, _wal_writes(s) - before)
    return lags, cpu, dt, threads, per_append


def _wal_writes(s: ngstore.Store) -> int:
    s.stats()  # turns the pending group timings into histogram observations
    obs = s.obs
    return obs.wal_write_seconds.count if obs is not None else 0


def run(b: Bench) -> None:
    b.log(f"## {W}")
    b.log(f"  switch interval {sys.getswitchinterval() * 1e3:.1f} ms; heartbeat every {BEAT * 1e3:.0f} ms")
    reps = max(3, b.repeats)
    ways = {"ngstore.aio": _aio, "run_in_executor(Store.put_tokens)": _executor,
            "blocking Store.put_tokens on the loop": _blocking}
    worst: dict[str, list[float]] = {}
    for system, fn in ways.items():
        stalls, cpus, p99s, rates, threads, grouping = [], [], [], [], [], []
        for r in range(reps):
            lags, cpu, dt, th, per_append = asyncio.run(fn(b.tmpdir("aio", f"{len(worst)}-{r}")))
            stalls.append(max(lags, default=dt) * 1e3)  # no beat at all: the whole run was one stall
            cpus.append(cpu[int(np.argmax(lags))] * 1e3 if lags else 0.0)  # the loop's own work in it
            p99s.append(float(np.percentile(lags, 99)) * 1e3 if lags else dt * 1e3)
            rates.append(TASKS / dt)
            threads.append(th)
            grouping.append(per_append)
        worst[system] = stalls
        b.record(W, system, TASKS, "ms longest stall", stalls, note="loop stall while the commits run",
                 loop_cpu_in_longest_ms=float(np.median(cpus)),
                 p99_lateness_ms=float(np.median(p99s)), commits_per_s=float(np.median(rates)),
                 threads_while_waiting=float(np.median(threads)), commits_per_log_append=float(np.median(grouping)))
    med = float(np.median(worst["ngstore.aio"]))
    blocking = float(np.median(worst["blocking Store.put_tokens on the loop"]))
    b.check("asyncio", "longest loop stall, 1,000 tasks committing through ngstore.aio (ms)", med, "<=", 50.0,
            f"median of {reps} runs; blocking calls on the loop: {blocking:.0f} ms", TASKS)
