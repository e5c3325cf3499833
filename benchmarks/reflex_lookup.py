"""How fast is the reflex fast path on a table of 1,000,000 reflexes, against its limits?

Questions, each answered against peers and limits measured in the same run:

1. A batch lookup (``try_fast_path_batch``: encode, fingerprint, probe, compare, measure the
   similarity, all in one C call), per state, for hits, misses and a 50/50 mix -- against
   the bare C loop (``ng_reflex_bench_loop``: the same work without Python and without
   prefetching), a Python dict of precomputed grid-hash ints, and this machine's
   memory-latency limit: a numpy random gather (one 8-byte load per state) over an array as
   large as the table.
2. A single ``try_fast_path`` (hit, miss) against an empty cffi call, both bare and called
   through the same lambda as the lookup (the timing harness's own cost).
3. The nearest fallback: the fast path with the fallback off and on (radius 0.9 cells) on
   states moved 3/4 of a cell from a reflex, and the cost per fallback answer.
4. Memory: bytes per reflex, and how much of the table sits in transparent huge pages.
5. Two threads against one (the GIL is released during a batch).

Issue 11's goals: batch hits <= 50 ns per state and >= 20x faster than the dict; a single
hit <= 4x an empty cffi call. Issue 14's: each fallback answer <= 5 us in batch; with the
fallback off no slower than format 1 (118.5 ns per state on the 50/50 mix, measured on this
machine with the format-1 code of this script's previous version).

Run:  python benchmarks/reflex_lookup.py [--n 1000000] [--runs 5]

Prints the environment (load average included: the machine is shared, so wall-clock medians
are printed beside the process CPU time), a table of medians and the ratios. Timings are
never asserted by tests; this script only reports.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable

import numpy as np

import ngstore
from ngstore import _native
from ngstore.records import CONNECTION_DTYPE, SCALE_FACTORS
from ngstore.reflex import LookupParams, state_keys


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median wall seconds, median process-CPU seconds) of ``runs`` calls, after a warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def per_call(fn: Callable[[], object], number: int, runs: int) -> float:
    """Median ns per call over ``runs`` repeats of ``number`` calls."""
    return statistics.median(timeit.repeat(fn, number=number, repeat=runs)) / number * 1e9


def random_states(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform in [-1, 1) per layer: with the default shifts every layer has many cells, so
    # almost every state is its own cell.
    return rng.uniform(-1.0, 1.0, size=(n, 8)).astype(np.float32)


def _numpy_hugepages() -> str:
    try:
        from numpy._core.multiarray import _get_madvise_hugepage  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        try:
            from numpy.core.multiarray import _get_madvise_hugepage
        except ImportError:
            return "unknown"
    return str(bool(_get_madvise_hugepage()))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def anon_huge_mib() -> float:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def connections(n: int, rng: np.random.Generator) -> np.ndarray:
    conns = np.zeros(n, CONNECTION_DTYPE)
    conns["token_a"] = np.arange(n, dtype=np.uint32)
    conns["token_b"] = np.arange(n, dtype=np.uint32) + 1
    conns["connection_type"] = 0x50
    conns["mutability"] = 1
    conns["pull_strength"] = 1.0
    conns["rigidity"] = 200
    conns["confidence"] = rng.integers(150, 256, n)
    conns["target_vector"] = rng.integers(-32768, 32767, (n, 8))
    return conns


def gather_limit(nbytes: int, n: int, rng: np.random.Generator, runs: int) -> tuple[float, float]:
    """The memory-latency limit: n random 8-byte loads from an array of ``nbytes``."""
    arena = np.ones(nbytes // 8, np.uint64)
    idx = rng.integers(0, arena.size, n)
    return median_time(lambda: np.take(arena, idx), runs)


def dict_baseline(states: np.ndarray, queries: np.ndarray, runs: int) -> tuple[float, float]:
    """A Python dict of the grid-hash ints of ``states`` (-> row), looked up from Python."""
    hashes, _ = state_keys(states)
    d = {int(h): i for i, h in enumerate(hashes)}
    qkeys = [int(h) for h in state_keys(queries)[0]]

    def dict_loop() -> None:
        get = d.get
        for k in qkeys:
            get(k)

    return median_time(dict_loop, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="reflexes in the table and states per batch")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n, runs = args.n, args.runs
    lib, ffi = _native.lib, _native.ffi

    print("# reflex_lookup benchmark")
    print(f"python {sys.version.split()[0]} numpy {np.__version__} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; C core {os.path.basename(_native._ngcore.__file__)} "
          f"(ABI {lib.ng_abi_version()}); in-memory table, no fsync involved; numpy asks for huge pages: "
          f"{_numpy_hugepages()}")

    rng = np.random.default_rng(42)
    states = random_states(rng, n)
    conns = connections(n, rng)
    rss0, huge0 = rss_mib(), anon_huge_mib()
    engine = ngstore.IntuitionEngine.create(ngstore.IntuitionConfig(reflex_capacity=n))
    t0 = time.perf_counter()
    engine.consolidate_reflex(states, conns)
    build_s = time.perf_counter() - t0
    table = engine.table
    assert table is not None and len(table) == n
    rss1, huge1 = rss_mib(), anon_huge_mib()
    st = table.stats()
    print(f"table: {len(table):,} reflexes, room {table.room:,}, {table.slot_count:,} index slots (load "
          f"{st['load_factor']:.3f}), {table.segment_count} segments, {table.memory_bytes / 2**20:.1f} MiB; built in "
          f"{build_s:.2f} s ({build_s / n * 1e9:.0f} ns/reflex, {st['growths']} growth)")

    hits = states[rng.permutation(n)]
    misses = random_states(rng, n)
    mixed = np.concatenate([hits[: n // 2], misses[: n - n // 2]])[rng.permutation(n)]
    rows: list[tuple[str, float, float, str]] = []

    def batch(q: np.ndarray, with_connections: bool = False) -> Callable[[], object]:
        return lambda: engine.try_fast_path_batch(q, with_connections=with_connections)

    results = {}
    for name, q in (("hits", hits), ("misses", misses), ("50/50 mix", mixed)):
        w, c = median_time(batch(q), runs)
        results[name] = w / n * 1e9
        rows.append((f"try_fast_path_batch, {name}", w / n * 1e9, c / n * 1e9, "ns/state"))
    w, c = median_time(batch(hits, True), runs)
    rows.append(("  hits, with the connection records", w / n * 1e9, c / n * 1e9, "ns/state"))
    w, c = median_time(batch(mixed, True), runs)
    results["mix+records"] = w / n * 1e9
    rows.append(("  50/50 mix, with the connection records", w / n * 1e9, c / n * 1e9, "ns/state"))

    # The bare C loop: the same per-state work, no Python, no prefetching.
    params = LookupParams()
    answered = ffi.new("uint64_t *")
    qbuf = ffi.from_buffer(hits)
    handle = table._v.handle  # type: ignore[union-attr]  # the benchmark reaches in on purpose

    def c_loop() -> None:
        assert lib.ng_reflex_bench_loop(handle, 0, qbuf, n, params._c, answered) == 0

    w, c = median_time(c_loop, runs)
    results["c loop"] = w / n * 1e9
    rows.append(("bare C loop, hits (no prefetching)", w / n * 1e9, c / n * 1e9, "ns/state"))

    w, c = gather_limit(table.memory_bytes, n, rng, runs)
    results["gather"] = w / n * 1e9
    rows.append(("numpy random gather, 8 B per state, same size", w / n * 1e9, c / n * 1e9, "ns/state"))
    w, c = dict_baseline(states, hits, max(2, runs // 2))
    results["dict"] = w / n * 1e9
    rows.append(("Python dict.get of precomputed grid-hash ints, hits", w / n * 1e9, c / n * 1e9, "ns/state"))

    # Single lookups.
    hit_state = hits[0].tolist()
    miss_state = misses[0].tolist()
    assert engine.try_fast_path(hit_state) is not None and engine.try_fast_path(miss_state) is None
    k = 200_000
    empty = lib.ng_abi_version
    single = {
        "empty cffi call": per_call(empty, k, runs),
        "lambda calling an empty cffi call": per_call(lambda: empty(), k, runs),
        "try_fast_path, hit": per_call(lambda: engine.try_fast_path(hit_state), k, runs),
        "try_fast_path, miss": per_call(lambda: engine.try_fast_path(miss_state), k, runs),
    }
    for name, v in single.items():
        rows.append((name, v, float("nan"), "ns/call"))

    # The nearest fallback, on states moved along layer 2 (cells of 16 raw units) from a
    # reflex: 6 units with radius 0.5 cells, and 12 units with radius 0.9 (where the ball
    # meets far more neighbour cells). Fallback off and on, on the same table.
    fb: dict[float, tuple[float, int, float, int]] = {}
    for moved, radius in ((6, 0.5), (12, 0.9)):
        near = hits.copy()
        near[:, 1] += np.float32(moved / SCALE_FACTORS[1])
        fb_params = LookupParams(nearest_fallback=radius)
        exact = int(table.lookup_batch(near, with_connections=False).found.sum())
        n_fb = int(table.lookup_batch(near, params=fb_params, with_connections=False).fallback.sum())
        before = table.stats()
        w_off, c_off = median_time(lambda near=near: table.lookup_batch(near, with_connections=False), runs)
        w_on, c_on = median_time(lambda near=near, fb_params=fb_params: table.lookup_batch(
            near, params=fb_params, with_connections=False), max(2, runs // 2))
        after = table.stats()
        cells = (after["fallback_cells"] - before["fallback_cells"]) / max(after["fallback_answers"]
                                                                          - before["fallback_answers"], 1)
        per_fb = (w_on - w_off) / max(n_fb, 1) * 1e9
        fb[radius] = (per_fb, n_fb, cells, after["fallback_scans"] - before["fallback_scans"])
        rows.append((f"states {moved}/16 cell off, fallback off", w_off / n * 1e9, c_off / n * 1e9, "ns/state"))
        rows.append((f"  fallback on, radius {radius} cells ({exact:,} exact, {n_fb:,} by the fallback)",
                     w_on / n * 1e9, c_on / n * 1e9, "ns/state"))
        rows.append(("  cost per fallback answer", per_fb, (c_on - c_off) / max(n_fb, 1) * 1e9, "ns/answer"))

    # Two threads against one, the same total work.
    def one_thread() -> None:
        engine.try_fast_path_batch(mixed, with_connections=False)
        engine.try_fast_path_batch(mixed, with_connections=False)

    def two_threads() -> None:
        ts = [threading.Thread(target=engine.try_fast_path_batch, args=(mixed,), kwargs={"with_connections": False})
              for _ in range(2)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()

    t1, _ = median_time(one_thread, runs)
    t2, _ = median_time(two_threads, runs)
    rows.append(("2 x batch of the mix, one thread", t1 * 1e3, float("nan"), "ms"))
    rows.append(("2 x batch of the mix, two threads", t2 * 1e3, float("nan"), "ms"))
    rows.append(("table bytes per reflex (memory_bytes / n)", table.memory_bytes / n, float("nan"), "B"))
    rows.append(("RSS growth per reflex (create + consolidate)", (rss1 - rss0) * 2**20 / n, float("nan"), "B"))
    rows.append(("transparent huge pages gained", huge1 - huge0, float("nan"), "MiB"))

    share = float(engine.try_fast_path_batch(mixed).found.mean())
    print(f"\nmedians of {runs} runs (CPU = process CPU time); {share:.1%} of the mix answered; fallback: "
          + "; ".join(f"radius {r}: {cells:.0f} cells probed per answer, {scans} scans"
                      for r, (_, _, cells, scans) in fb.items()) + "\n")
    width = max(len(r[0]) for r in rows)
    print(f"  {'':<{width}}  {'wall':>10}  {'CPU':>10}")
    for name, v, c, unit in rows:
        cpu = f"{c:10.1f}" if c == c else " " * 10
        print(f"  {name:<{width}}  {v:10.1f}  {cpu} {unit}")
    hit = results["hits"]
    print("\nratios (goal in brackets)")
    print(f"  batch hits, ns/state                    {hit:7.1f}    [<= 50]")
    print(f"  dict.get / batch hits                   {results['dict'] / hit:7.2f}x   [>= 20x]")
    print(f"  batch hits / memory-latency limit       {hit / results['gather']:7.2f}x")
    print(f"  batch hits / bare C loop                {hit / results['c loop']:7.2f}x")
    ratio = single["try_fast_path, hit"] / single["empty cffi call"]
    print(f"  single hit / empty cffi call            {ratio:7.2f}x   [<= 4x]")
    print(f"  single hit / lambda + empty cffi call   "
          f"{single['try_fast_path, hit'] / single['lambda calling an empty cffi call']:7.2f}x"
          "   (both through the same lambda)")
    miss_ratio = single["try_fast_path, miss"] / single["empty cffi call"]
    print(f"  single miss / empty cffi call           {miss_ratio:7.2f}x")
    for r, (per_fb, _, _, _) in fb.items():
        print(f"  fallback answer at radius {r}, ns        {per_fb:7.0f}    [<= 5000]")
    print(f"  50/50 mix, fallback off, ns/state       {results['50/50 mix']:7.1f}    [<= 118.5, format 1]")
    print(f"  two threads speed-up                    {t1 / t2:7.2f}x")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
