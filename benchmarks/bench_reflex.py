"""How fast is the reflex fast path of a store's IntuitionEngine?

A store holding n reflexes (random 8-float states, eligible connections), its
``intuition()`` engine (lookups on the LMDB-mapped table), queried with n known states
(hits) and n fresh ones (misses): batch (``try_fast_path_batch``, one C call, hash
included) against the bare C loop (``ng_reflex_bench_loop``, no Python around it), a
Python dict of the precomputed grid-hash ints, and the memory-latency limit (a numpy
random gather over an array as large as the table); single ``try_fast_path`` against an
empty cffi call; the nearest fallback's cost per answer; two threads against one; open +
first lookup; memory per reflex; one ``analyze()`` over 100 000 events. Helpers (states)
come from ``benchmarks/reflex_lookup.py``, which asks the same questions of an in-memory
table in more detail.

Targets (table of 1M): batch hits ≤ 50 ns/state, ≤ 1.5× the C loop and ≥ 20× faster than
the dict; single hit ≤ 4× an empty cffi call (the single-lookup rows are timed in rounds, one
run of each a round, and the check reads the median of the rounds' ratios); a fallback
answer (radius 0.5 cells) ≤ 5 µs; two threads ≥ 1.7× one; open + first lookup ≤ 50 ms;
analyze() of 100k events ≤ 1 s.
"""
from __future__ import annotations

import threading
import timeit
from collections.abc import Callable

import numpy as np
from _harness import LIMITS, Bench, alternated, disk_bytes, repeat
from reflex_lookup import random_states, rss_mib

import ngstore
from ngstore import _native
from ngstore.codec import encode_state
from ngstore.records import SCALE_FACTORS
from ngstore.reflex import LookupParams, ReflexTable, state_keys

W_HIT = "reflex batch lookup, hits"
W_MISS = "reflex batch lookup, misses"
W_ONE = "reflex single lookup"
ONE_HIT = "ngstore try_fast_path, hit"
EMPTY = "empty cffi call"
LAMBDA_EMPTY = "lambda calling an empty cffi call"
W_FB = "reflex nearest fallback"
LIMITS[W_HIT] = LIMITS[W_MISS] = "random gather, same bytes"
LIMITS[W_ONE] = "empty cffi call"


def connections(n: int, rng: np.random.Generator) -> np.ndarray:
    conns = np.zeros(n, ngstore.CONNECTION_DTYPE)
    conns["token_a"] = np.arange(n, dtype=np.uint32)
    conns["token_b"] = np.arange(n, dtype=np.uint32) + 1
    conns["connection_type"] = 0x50
    conns["mutability"] = 1
    conns["pull_strength"] = 50.0
    conns["rigidity"] = 200
    conns["confidence"] = rng.integers(150, 256, n)
    conns["target_vector"] = rng.integers(-32768, 32767, (n, 8))
    return conns


def events(n: int, rng: np.random.Generator) -> np.ndarray:
    """n experience events over 64 state clusters with 4 actions of different mean reward.

    The action taken is the event type (the analysis groups rewards by it: with every event of
    one type there is nothing to compare, which is how this benchmark once found 0 patterns);
    in each cluster one action pays about 1 and the other three about 0."""
    ev = np.zeros(n, ngstore.EVENT_DTYPE)
    cluster = rng.integers(0, 64, n)
    centers = rng.uniform(-0.9, 0.9, (64, 8)).astype(np.float32)
    ev["state"] = centers[cluster] + rng.normal(0, 0.01, (n, 8)).astype(np.float32)
    act = rng.integers(0, 4, n)
    ev["event_type"] = act + 1
    ev["action"] = (act[:, None] * 0.2).astype(np.float32)
    ev["reward_goal"] = (act == cluster % 4) * 1.0 + rng.normal(0, 0.1, n)
    ev["timestamp_us"] = np.arange(n) + 1
    ev["event_id_lo"] = np.arange(n) + 1
    ev["step"] = np.arange(n) % 1000
    return ev


def run(b: Bench) -> None:
    b.log("## reflexes")
    lib, ffi = _native.lib, _native.ffi
    rng = np.random.default_rng(42)
    reps = b.repeats
    k_one = 50_000 if b.quick else 200_000  # calls a round of each single-lookup row
    one_ratios: dict[int, dict[str, list[float]]] = {}  # try_fast_path hit ÷ a baseline, per round
    for n in b.sizes:
        if n > 1_000_000:
            continue  # the table is the store's reflex capacity: 10^7 reflexes are out of scope here
        states = random_states(rng, n)
        conns = connections(n, rng)
        p = b.tmpdir("reflex", str(n))
        empty_alloc = 0
        s = ngstore.open(p, reflex_capacity=n)
        empty_alloc = disk_bytes(p)[0]
        with s.batch() as bt:
            bt.put_reflexes(states, conns)
        eng = s.intuition()
        table = eng.table
        hits = states[rng.permutation(n)]
        misses = random_states(rng, n)
        for w, q in ((W_HIT, hits), (W_MISS, misses)):
            b.record(w, "ngstore try_fast_path_batch", n, "ns/state",
                     repeat(lambda q=q: eng.try_fast_path_batch(q, with_connections=False), reps,
                            scale=1e9 / n, warmup=True))
            b.record(w, "ngstore batch + connection records", n, "ns/state",
                     repeat(lambda q=q: eng.try_fast_path_batch(q), reps, scale=1e9 / n, warmup=True))
            params = LookupParams()
            answered = ffi.new("uint64_t *")
            qbuf = ffi.from_buffer(np.ascontiguousarray(q))
            handle = table._v.handle  # the benchmark reaches into the table on purpose

            def c_loop(qbuf=qbuf, handle=handle) -> None:
                rc = lib.ng_reflex_bench_loop(handle, 0, qbuf, n, params._c, answered)
                assert rc == 0

            b.record(w, "bare C loop", n, "ns/state", repeat(c_loop, reps, scale=1e9 / n, warmup=True))
            arena = np.ones(table.memory_bytes // 8, np.uint64)
            idx = rng.integers(0, arena.size, n)
            b.record(w, "random gather, same bytes", n, "ns/state",
                     repeat(lambda arena=arena, idx=idx: np.take(arena, idx), reps, scale=1e9 / n, warmup=True),
                     note="numpy: one random 8-byte load per state over as many bytes as the table")
            del arena, idx
            hashes = {int(h): i for i, h in enumerate(state_keys(states)[0])}
            qkeys = [int(h) for h in state_keys(q)[0]]

            def dict_loop(qkeys=qkeys) -> None:
                get = hashes.get
                for k in qkeys:
                    get(k)

            b.record(w, "python dict.get of grid-hash ints", n, "ns/state",
                     repeat(dict_loop, max(2, reps // 2), scale=1e9 / n), note="hash precomputed, not timed")
            hashes = {}

        # single lookups
        hit_state = states[0].tolist()
        assert eng.try_fast_path(hit_state) is not None
        miss_state = misses[0].tolist()
        empty = lib.ng_abi_version
        row = states[0].copy()
        rec = np.zeros(1, ngstore.TOKEN_DTYPE)
        rec["coordinates"][0, :, 0] = encode_state(states[:1])[0]
        tok = ngstore.Token.from_bytes(rec.tobytes())
        assert eng.try_fast_path(tok) is not None
        hk = int(state_keys(states[:1])[0][0])
        dd = {hk: 0}
        calls: dict[str, Callable[[], object]] = {
            ONE_HIT: lambda: eng.try_fast_path(hit_state),
            "ngstore try_fast_path, miss": lambda: eng.try_fast_path(miss_state),
            "ngstore try_fast_path, hit, a numpy float32 row": lambda: eng.try_fast_path(row),
            "ngstore try_fast_path, hit, a Token": lambda: eng.try_fast_path(tok),
            EMPTY: empty,
            LAMBDA_EMPTY: lambda: empty(),
            "python dict.get": lambda: dd.get(hk),
        }
        # in rounds, each timing k calls of every one in turn (see _harness.alternated)
        rounds = alternated({name: timeit.Timer(fn).timeit for name, fn in calls.items()}, max(reps, 7),
                            args=(k_one,), scale=1e9 / k_one, warmup=True)
        for name, times in rounds.items():
            b.record(W_ONE, name, n, "ns/call", times,
                     note="the harness's own call overhead, included in the ngstore rows" if name == LAMBDA_EMPTY
                     else "")
        one_ratios[n] = {den: [x / y for x, y in zip(rounds[ONE_HIT], rounds[den], strict=True)]
                         for den in (EMPTY, LAMBDA_EMPTY)}

        # the nearest fallback: states 6/16 of a cell (layer 2) from a reflex, radius 0.5
        near = hits.copy()
        near[:, 1] += np.float32(6 / SCALE_FACTORS[1])
        fb_params = LookupParams(nearest_fallback=0.5)
        n_fb = int(table.lookup_batch(near, params=fb_params, with_connections=False).fallback.sum())
        t_off = repeat(lambda: table.lookup_batch(near, with_connections=False), reps, warmup=True)
        t_on = repeat(lambda: table.lookup_batch(near, params=fb_params, with_connections=False), reps)
        b.record(W_FB, "ngstore fallback answer, radius 0.5", n, "ns/answer",
                 [(on - off) / max(n_fb, 1) * 1e9 for on, off in zip(t_on, t_off, strict=True)],
                 note=f"{n_fb:,} of {n:,} states answered by the fallback; the rest exactly")

        if n == max(x for x in b.sizes if x <= 1_000_000):
            # two threads vs one, same total work
            def one_thread() -> None:
                eng.try_fast_path_batch(hits, with_connections=False)
                eng.try_fast_path_batch(hits, with_connections=False)

            def two_threads() -> None:
                ts = [threading.Thread(target=eng.try_fast_path_batch, args=(hits,),
                                       kwargs={"with_connections": False}) for _ in range(2)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()

            t1 = repeat(one_thread, reps, warmup=True)
            t2 = repeat(two_threads, reps, warmup=True)
            b.record("reflex 2 × batch, 1 vs 2 threads", "one thread", n, "ms", [x * 1e3 for x in t1])
            b.record("reflex 2 × batch, 1 vs 2 threads", "two threads", n, "ms", [x * 1e3 for x in t2])
            b.check("reflexes", "two threads ÷ one thread (speed-up)", float(np.median(t1) / np.median(t2)),
                    ">=", 1.7, f"{np.median(t1) * 1e3:.1f} ms vs {np.median(t2) * 1e3:.1f} ms for 2 × {n:,} states",
                    n)
            # memory per reflex
            seg = table.memory_bytes
            s.close()
            alloc = disk_bytes(p)[0] - empty_alloc
            r0 = rss_mib()
            t = ReflexTable.create(n)
            t.insert_batch(states, conns)
            r1 = rss_mib()
            t.close()
            b.record("memory per reflex", "table memory_bytes (RAM = mapped)", n, "B/reflex", [seg / n])
            b.record("memory per reflex", "RSS growth, in-memory table", n, "B/reflex", [(r1 - r0) * 2**20 / n])
            b.record("memory per reflex", "on disk (store growth)", n, "B/reflex", [alloc / n])
            b.notes.append(f"memory per reflex: {seg / n:.0f} B of table (RAM = mapped), "
                           f"{(r1 - r0) * 2**20 / n:.0f} B RSS growth in memory, {alloc / n:.0f} B on disk")

            # open + first lookup
            def open_first() -> None:
                with ngstore.open(p) as s2:
                    assert s2.intuition().try_fast_path(hit_state) is not None

            t_of = repeat(open_first, reps, warmup=True)
            b.record("open + first reflex lookup", "ngstore", n, "ms", [x * 1e3 for x in t_of],
                     note="warm page cache; includes close")
            b.check("reflexes", f"open a store with {n:,} reflexes + first lookup, ms", float(np.median(t_of)) * 1e3,
                    "<=", 50, "median, warm page cache, open+lookup+close", n)
        else:
            s.close()

    nmax = max(x for x in b.sizes if x <= 1_000_000)
    m = b.get(W_HIT, "ngstore try_fast_path_batch", nmax)
    if m is not None:
        b.check("reflexes", "batch fast path, hits, ns/state", m.median, "<=", 50, "issue 11's goal", nmax)
    b.ratio_check("reflexes", "batch fast path ÷ bare C loop (hits)", W_HIT, "ngstore try_fast_path_batch",
                  "bare C loop", "<=", 1.5, nmax)
    b.ratio_check("reflexes", "batch fast path ÷ memory-latency limit (hits)", W_HIT, "ngstore try_fast_path_batch",
                  "random gather, same bytes", "report", 0, nmax)
    f = b.get(W_FB, "ngstore fallback answer, radius 0.5", nmax)
    if f is not None:
        b.check("reflexes", "nearest fallback answer, radius 0.5, ns", f.median, "<=", 5000, "issue 14's goal", nmax)
    b.ratio_check("reflexes", "python dict ÷ batch fast path (speed-up, hits)", W_HIT, "ngstore try_fast_path_batch",
                  "python dict.get of grid-hash ints", ">=", 20, nmax, invert=True)
    for den, ratios in one_ratios.get(nmax, {}).items():
        b.check("reflexes", f"single try_fast_path (hit) ÷ {den} (median of rounds)", float(np.median(ratios)), "<=",
                4.0, f"{len(ratios)} rounds of {k_one:,} calls of each single-lookup row; round ratios "
                f"{min(ratios):.3g}-{max(ratios):.3g}", nmax)

    # analyze() over 100 000 events, in a fresh store each run (with the default learning, a
    # cycle folds every event written since the last one: a second cycle would fold none)
    m = 100_000
    ev = events(m, rng)
    for label, cfg in (("ngstore IntuitionEngine.analyze", ngstore.IntuitionConfig()),
                       ("ngstore analyze, learning='sample', batch_size=100,000",
                        ngstore.IntuitionConfig(learning="sample", batch_size=m))):
        times, rep = [], None
        for r in range(max(2, reps // 2)):
            p = b.tmpdir("reflex", f"analyze-{cfg.learning}-{r}")
            with ngstore.open(p) as s:
                for i in range(0, m, 10_000):
                    s.write_events(ev[i:i + 10_000], durability="none")
                eng = s.intuition(cfg)
                t = repeat(lambda eng=eng: eng.analyze(rng=np.random.default_rng(1)), 1)
                times += t
                rep = eng.last_report
        assert rep is not None
        found = (f"{len(rep.patterns)} patterns over {rep.events_sampled:,} events, "
                 f"{rep.consolidated} reflexes written (at most max_proposals_per_cycle = 5 a cycle)")
        b.record("analyze()", label, m, "s", times, note=found)
        if cfg.learning == "accumulate":
            b.check("reflexes", f"analyze() over {m:,} events, s", float(np.median(times)), "<=", 1.0, found, m)
