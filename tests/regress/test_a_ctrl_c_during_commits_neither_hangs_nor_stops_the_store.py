"""A KeyboardInterrupt (Ctrl-C) that landed inside a commit on the main thread stopped the
writer as an I/O failure would ("the store refuses writes until reopened"), and could hang
the process: an interrupted commit kept the commit leadership for good (every later commit
waited forever), or kept a lock the applier needed (close() waited forever). Python runs
signal handlers between any two bytecodes of the main thread, so ``finally`` clauses,
``with cond:`` on a Condition and ``threading.Event`` were not enough.

Now an interrupted commit raises the interrupt with the store still writable, and is either
whole or absent, the same in the process and after a reopen. The child below arms a timer
before each commit whose handler raises KeyboardInterrupt a random few microseconds in,
and checks, per durability mode, alone and with other threads committing (the group
commit led by the interrupted thread): no commit is refused, the process's reads equal
what a reopen recovers, every acknowledged commit is there, and interrupted commits ended
both ways (so the interrupts did land inside commits). A hang fails the test by its
timeout."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from interrupting import PRELUDE

SCRIPT = PRELUDE + textwrap.dedent('''
    import json, random, statistics, sys, threading, time
    import ngstore

    path, mode, nthreads, commits = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(20261203)
    s = ngstore.open(path, durability=mode, observability=True)

    def token(tid, weight):
        t = ngstore.Token.create_batch(1, start=tid).data
        t["weight"] = weight
        return t

    def timed_commit(i):
        t0 = time.perf_counter()
        s.put_tokens(token(1 + i % 500, -1.0))
        return time.perf_counter() - t0

    typical = statistics.median(timed_commit(i) for i in range(500))  # every id the loop writes
    stop = threading.Event()
    errors, thread_acked = {}, {}

    def worker(k):  # commits beside the main thread: groups the main thread may lead
        j = 0
        while not stop.is_set():
            j += 1
            tid = 10_001 + 1_000 * k + j % 1_000
            try:
                s.put_tokens(token(tid, float(j)))
                thread_acked[tid] = float(j)
            except ngstore.NgStoreError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    acked, ended = {}, {"whole": 0, "absent": 0}
    for i in range(commits):
        tid, weight = 1 + i % 500, float(i)
        batch = token(tid, weight)
        try:
            arm(rng.uniform(1e-6, 3 * typical))
            s.put_tokens(batch)
            disarm()
            acked[tid] = weight
        except KeyboardInterrupt:
            got = float(s.get_token(tid).weight)  # the store answers after the interrupt
            ended["whole" if got == weight else "absent"] += 1
            acked[tid] = got  # whole or absent: what the store has is what it acknowledges now
        except ngstore.NgStoreError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            break
        finally:
            disarm()
    stop.set()
    for t in threads:
        t.join()

    def state(store):
        out = {}
        for tid in list(range(1, 501)) + list(range(10_001, 10_001 + 1_000 * nthreads)):
            try:
                out[tid] = float(store.get_token(tid).weight)
            except ngstore.NotFoundError:
                pass
        return out

    live = state(s)
    s.close()
    with ngstore.open(path) as r:
        recovered = state(r)
    print(json.dumps({
        "errors": errors, "ended": ended, "typical_us": typical * 1e6,
        "diverged": sorted(k for k in set(live) | set(recovered) if live.get(k) != recovered.get(k))[:10],
        "lost": sorted(k for k, w in {**acked, **thread_acked}.items() if recovered.get(k) != w)[:10],
        "thread_commits": len(thread_acked),
    }))
''')


@pytest.mark.parametrize("mode, threads, commits", [
    ("none", 0, 4000), ("async", 0, 4000), ("sync", 0, 1500), ("none", 2, 4000), ("sync", 2, 1500),
])
def test_an_interrupted_commit_is_whole_or_absent_and_the_store_stays_writable(tmp_path, mode, threads, commits):
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "s"), mode, str(threads), str(commits)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}, out
    assert out["diverged"] == [] and out["lost"] == [], out
    assert out["ended"]["whole"] > 0 and out["ended"]["absent"] > 0, out  # the interrupts landed inside commits
    if threads:
        assert out["thread_commits"] > 0, out
