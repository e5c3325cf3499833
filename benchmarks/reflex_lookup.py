"""How fast is the reflex fast path, and what does the Python boundary cost?

Question: on a table of 1,000,000 reflexes, what does a batch lookup (grid hash +
fingerprint + probe, all in one C call) cost per state, and how does it compare with
(1) the same work as a bare C loop with no Python around it (ng_reflex_bench_loop),
(2) a Python dict of the same keys, looked up from Python,
(3) a single lookup vs an empty cffi call,
(4) two threads vs one (the GIL is released during the C call)?
And: how many bytes does a reflex cost in RAM and in the stored segments?

Targets (DESIGN.md section 11): batch <= 1.5x the bare C loop; >= 20x a Python dict;
single lookup <= 3x an empty cffi call; two threads >= 1.7x one.

Run:  python benchmarks/reflex_lookup.py [--n 1000000] [--runs 5]
Prints the environment, a table of medians and the ratios. Timings are never asserted
by tests; this script only reports.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable

import numpy as np

from ngstore import _native
from ngstore.codec import DEFAULT_SHIFTS
from ngstore.records import CONNECTION_DTYPE, SCALE_FACTORS
from ngstore.reflex import ReflexTable, state_keys


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_states(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform in [-1, 1) per layer: with the default shifts every layer has many buckets,
    # so almost every state is its own grid cell.
    return rng.uniform(-1.0, 1.0, size=(n, 8)).astype(np.float32)


def python_key(state: list[float], scales: tuple[int, ...], shifts: tuple[int, ...]) -> tuple[int, ...]:
    """A pure-Python fallback's key: the quantized X axes (what a dict-based engine would use)."""
    out = []
    for v, sc, sh in zip(state, scales, shifts):
        x = v * sc
        x = 0 if x != x else int(max(-32768.0, min(32767.0, x)))
        out.append(x >> sh)
    return tuple(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="reflexes in the table and states per batch")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n, runs = args.n, args.runs
    lib, ffi = _native.lib, _native.ffi

    print("# reflex_lookup benchmark")
    print(f"python {sys.version.split()[0]} numpy {np.__version__} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs; C core {_native._ngcore.__file__} (ABI {lib.ng_abi_version()}); "
          f"no fsync involved (in-memory table)")

    rng = np.random.default_rng(42)
    states = random_states(rng, n)
    conns = np.zeros(n, CONNECTION_DTYPE)
    conns["token_a"] = np.arange(n, dtype=np.uint32)
    conns["token_b"] = np.arange(n, dtype=np.uint32) + 1
    conns["connection_type"] = 0x50
    conns["mutability"] = 1
    conns["confidence"] = rng.integers(150, 256, n)
    conns["target_vector"] = rng.integers(-32768, 32767, (n, 8))
    rss0 = rss_mib()
    table = ReflexTable.create(n)
    t0 = time.perf_counter()
    table.insert_batch(states, conns)
    build_s = time.perf_counter() - t0
    rss1 = rss_mib()
    st = table.stats()
    print(f"table: {len(table)} reflexes, capacity {table.capacity}, {table.segment_count} segments x "
          f"{table.slots_per_segment} slots, load {st['load_factor']:.3f}, built in {build_s:.2f} s "
          f"({build_s / n * 1e9:.0f} ns/insert), evictions {st['evictions']}")

    # Queries: half known states (hits), half fresh random states (misses), shuffled.
    q = np.concatenate([states[rng.permutation(n)[: n // 2]], random_states(rng, n - n // 2)])
    q = q[rng.permutation(n)]
    miss_q = random_states(rng, n)

    rows: list[tuple[str, float, str]] = []
    t_batch = median_time(lambda: table.lookup_batch(q), runs) / n * 1e9
    t_batch_nc = median_time(lambda: table.lookup_batch(q, with_connections=False), runs) / n * 1e9
    t_batch_miss = median_time(lambda: table.lookup_batch(miss_q, with_connections=False), runs) / n * 1e9
    res = table.lookup_batch(q)
    answered_frac = float(res.found.mean())

    params = ffi.new("ng_reflex_params *", (150, 200, 0.85))
    answered = ffi.new("uint64_t *")
    qbuf = ffi.from_buffer(q)

    def c_loop() -> None:
        rc = lib.ng_reflex_bench_loop(table._handle(), 0, qbuf, n, params, answered)
        assert rc == 0

    t_c = median_time(c_loop, runs) / n * 1e9

    # Python dict of the same keys (grid hash -> row), looked up from Python.
    hashes, _ = state_keys(states)
    d = {int(h): i for i, h in enumerate(hashes)}
    qkeys = [int(h) for h in state_keys(q)[0]]

    def dict_loop() -> None:
        get = d.get
        for k in qkeys:
            get(k)

    t_dict = median_time(dict_loop, runs) / n * 1e9

    # A pure-Python fallback: the key computed per state in Python, then the dict.
    sub = min(n, 100_000)
    shifts = tuple(DEFAULT_SHIFTS)
    pyd = {python_key(s, SCALE_FACTORS, shifts): i for i, s in enumerate(states[:sub].tolist())}
    qlist = q[:sub].tolist()

    def py_fallback() -> None:
        get = pyd.get
        for s in qlist:
            get(python_key(s, SCALE_FACTORS, shifts))

    t_pyfb = median_time(py_fallback, max(1, runs // 2)) / sub * 1e9

    # Single lookups vs an empty cffi call (each timed over 200k calls, median of runs).
    hit_state = states[int(np.argmax(conns["confidence"] >= 217))].tolist()
    assert table.lookup(hit_state) is not None
    miss_state = miss_q[0].tolist()
    k = 200_000

    def per_call(stmt: Callable[[], object]) -> float:
        return statistics.median(timeit.repeat(stmt, number=k, repeat=runs)) / k * 1e9

    empty = lib.ng_abi_version
    t_empty = per_call(empty)
    t_one_miss = per_call(lambda: table.lookup(miss_state))
    t_one_hit = per_call(lambda: table.lookup(hit_state))
    t_lambda = per_call(lambda: empty())  # the lambda's own cost, included in both above

    # Two threads vs one: the same total work (2 batches), sequential vs concurrent.
    def one_thread() -> None:
        table.lookup_batch(q, with_connections=False)
        table.lookup_batch(q, with_connections=False)

    def two_threads() -> None:
        ts = [threading.Thread(target=table.lookup_batch, args=(q,), kwargs={"with_connections": False})
              for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    t_1t = median_time(one_thread, runs)
    t_2t = median_time(two_threads, runs)

    seg_bytes = table.segment_count * table.slots_per_segment * 96
    rows += [
        ("batch lookup, hash included (50% known states)", t_batch, "ns/state"),
        ("  same, without copying the connection records", t_batch_nc, "ns/state"),
        ("  same, all unknown states (misses)", t_batch_miss, "ns/state"),
        ("bare C loop (ng_reflex_bench_loop), same states", t_c, "ns/state"),
        ("Python dict.get of precomputed grid-hash ints", t_dict, "ns/state"),
        ("pure-Python fallback (key computed in Python + dict)", t_pyfb, "ns/state"),
        ("empty cffi call (ng_abi_version)", t_empty, "ns/call"),
        ("single lookup(), unknown state", t_one_miss, "ns/call"),
        ("single lookup(), answered (builds record + action)", t_one_hit, "ns/call"),
        ("  (lambda overhead inside the timings above)", t_lambda - t_empty, "ns/call"),
        ("2 x 1M batch lookups, one thread", t_1t * 1e3, "ms"),
        ("2 x 1M batch lookups, two threads", t_2t * 1e3, "ms"),
        ("segment bytes per reflex (stored = in RAM)", seg_bytes / len(table), "B"),
        ("RSS growth per reflex (table create + insert_batch)", (rss1 - rss0) * 2**20 / len(table), "B"),
    ]
    print(f"\nmedians of {runs} runs; {answered_frac:.1%} of the mixed queries answered\n")
    w = max(len(r[0]) for r in rows)
    for name, v, unit in rows:
        print(f"  {name:<{w}}  {v:10.1f} {unit}")
    print("\nratios (target in brackets)")
    print(f"  batch / bare C loop             {t_batch_nc / t_c:6.2f}x   [<= 1.5x]  (with records: {t_batch / t_c:.2f}x)")
    print(f"  dict.get / batch                {t_dict / t_batch:6.2f}x   [>= 20x]")
    print(f"  pure-Python fallback / batch    {t_pyfb / t_batch:6.1f}x")
    print(f"  single miss / empty cffi call   {t_one_miss / t_empty:6.2f}x   [<= 3x]")
    print(f"  single hit / empty cffi call    {t_one_hit / t_empty:6.2f}x")
    print(f"  two threads speed-up            {t_1t / t_2t:6.2f}x   [>= 1.7x]")
    print(f"  batch vs DESIGN limit 15 ns     {t_batch / 15:6.2f}x")
    print(f"\nmax RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
