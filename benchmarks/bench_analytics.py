"""Analytics beyond one process (issue 15): Arrow with no copy, SQL over a snapshot, dask
over four stores, and online backups -- each against its in-RAM or `cp` peer.

Runs at the sizes of the run that are ≥ 10^6 tokens (``--max-size 1e7`` adds 10^7), or at
the largest size in ``--quick`` mode. Workloads and peers:

* ``to_arrow()`` of every token: its time, and how much the process's memory grew, split
  into anonymous memory (copies) and file-backed pages of the map it touched (LMDB reads
  the first and the last page of each chunk value: shared page cache, not a copy). Peer:
  ``to_array()`` (one copy of every record). Target: anonymous growth < 5 MB at 10^7.
* DuckDB ``SELECT flags, avg(weight), count(*) FROM tokens GROUP BY flags`` over
  ``ngstore.duckdb.connect(snapshot)`` against the same query over an in-RAM Arrow table of
  the same columns. Target ≤ 1.5×.
* dask ``weight.sum()`` and ``groupby(flags).weight.mean()`` over 4 stores (ShardSet, hash
  routing) on a LocalCluster of 2 worker processes, against numpy on one in-RAM array
  (contiguous columns: the best numpy does). Results must be identical. Target ≤ 2×.
* ``ngstore backup`` of a store while a writer process commits into it, against ``cp -r`` of
  the same directory at the same time. Throughput = the source's bytes (data.mdb + log) /
  seconds. Target ≥ 0.5× of cp.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np
from _harness import LIMITS, Bench, repeat

import ngstore

W_ARROW = "to_arrow() of all tokens"
W_ARROW_MEM = "to_arrow() memory growth"
W_SQL = "SQL group-by avg(weight)"
W_DASK_SUM = "dask sum(weight), 4 stores"
W_DASK_GB = "dask groupby mean, 4 stores"
W_BACKUP = "online backup"
LIMITS[W_ARROW] = "to_array() copy"
LIMITS[W_SQL] = "duckdb in-RAM arrow"
LIMITS[W_DASK_SUM] = "numpy in-RAM columns"
LIMITS[W_DASK_GB] = "numpy in-RAM columns"
LIMITS[W_BACKUP] = "cp -r (torn copy)"
QUERY = "SELECT flags, avg(weight), count(*) FROM tokens GROUP BY flags ORDER BY flags"
BATCH = 1_000_000


def _mem() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out.get("RssAnon", 0), out.get("RssFile", 0)


def _records(n: int, start: int = 0) -> np.ndarray:
    a = np.zeros(n, ngstore.TOKEN_DTYPE)
    ids = np.arange(start, start + n, dtype=np.uint32)
    a["id"] = ids
    a["flags"] = (ids % 7).astype(np.uint16)
    a["weight"] = (ids % 101).astype(np.float32)  # small integers: every sum below is exact
    a["timestamp"] = 1_700_000_000
    a["coordinates"][:, 0, 0] = (ids % 30000).astype(np.int16)
    return a


def _options(n: int) -> dict[str, Any]:
    return {"max_tokens": None, "max_bytes": None, "durability": "none", "direct_threshold": 1 << 40,
            "map_size": max(1 << 32, n * 256)}


def _fill(put: Any, n: int) -> None:
    for start in range(0, n, BATCH):
        put(_records(min(BATCH, n - start), start))


def _store(b: Bench, n: int) -> str:
    path = os.path.join(b.root, "analytics", f"one-{n}")
    if not os.path.exists(os.path.join(path, "NGSTORE")):
        with ngstore.open(path, **_options(n)) as s:
            _fill(s.put_tokens, n)
    return path


def _shards(b: Bench, n: int) -> list[str]:
    from ngstore.shards import ShardSet

    paths = [os.path.join(b.root, "analytics", f"shard-{n}-{k}") for k in range(4)]
    if not all(os.path.exists(os.path.join(p, "NGSTORE")) for p in paths):
        with ShardSet(paths, "hash", **_options(n)) as sh:
            _fill(sh.put_tokens, n)
    return paths


def run(b: Bench) -> None:
    b.log("## analytics (issue 15)")
    sizes = [s for s in b.sizes if s >= 1_000_000] or [b.max_size]
    for n in sizes:
        path = _store(b, n)
        _arrow(b, n, path)
        _sql(b, n, path)
        _dask(b, n)
        _backup(b, n, path)


_RSS_PROBE = """
import sys, gc, json
import pyarrow, ngstore
def mem():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon:", "RssFile:")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out["RssAnon"], out["RssFile"]
res = []
with ngstore.open(sys.argv[1], readonly=True) as s, s.snapshot() as snap:
    pyarrow.array([1]).sum()  # pyarrow's own first-use allocations, outside the figure
    for _ in range(3):
        a0, f0 = mem()
        table = snap.tokens.to_arrow()
        a1, f1 = mem()
        res.append([(a1 - a0) / 1e6, (f1 - f0) / 1e6])
        del table
        gc.collect()
print(json.dumps(res))
"""


def _arrow(b: Bench, n: int, path: str) -> None:
    import pyarrow as pa  # noqa: F401 - imported before the memory is measured

    with ngstore.open(path, readonly=True) as s:
        with s.snapshot() as snap:  # warm the code paths and the page cache
            snap.tokens.to_arrow()
            snap.tokens.to_array()
        times, anon, filed = [], [], []
        for _ in range(b.repeats):
            with s.snapshot() as snap:
                a0, f0 = _mem()
                t0 = time.perf_counter()
                table = snap.tokens.to_arrow()
                times.append((time.perf_counter() - t0) * 1e3)
                a1, f1 = _mem()
                assert table.num_rows == n
                anon.append((a1 - a0) / 1e6)
                filed.append((f1 - f0) / 1e6)
                del table
        chunks = -(-n // 1024)
        b.record(W_ARROW, "ngstore to_arrow()", n, "ms", times, note=f"{chunks} chunks")
        # in this process the heap may reuse what earlier copies freed: measure in a fresh one
        probe = json.loads(subprocess.run([sys.executable, "-c", _RSS_PROBE, path], check=True,
                                          capture_output=True, text=True).stdout)
        b.record(W_ARROW_MEM, "ngstore to_arrow() anon RSS", n, "MB", [p[0] for p in probe],
                 note="fresh process; first call first")
        b.record(W_ARROW_MEM, "ngstore to_arrow() file RSS", n, "MB", [p[1] for p in probe],
                 note="map pages touched: chunk headers and bitmaps (page cache, shared)")
        del anon, filed
        with s.snapshot() as snap:
            b.record(W_ARROW, "ngstore to_arrow(all fields)", n, "ms",
                     repeat(lambda: snap.tokens.to_arrow(columns=[
                         "id", "flags", "weight", "field_radius", "field_strength", "timestamp", "coordinates"]),
                            b.repeats, scale=1e3))
            copy_times, copy_anon = [], []
            for _ in range(max(2, b.repeats // 2)):
                a0, _f = _mem()
                t0 = time.perf_counter()
                arr = snap.tokens.to_array()
                copy_times.append((time.perf_counter() - t0) * 1e3)
                copy_anon.append((_mem()[0] - a0) / 1e6)
                del arr
        b.record(W_ARROW, "to_array() copy", n, "ms", copy_times)
        b.record(W_ARROW_MEM, "to_array() copy anon RSS", n, "MB", copy_anon)
    m = b.get(W_ARROW_MEM, "ngstore to_arrow() anon RSS", n)
    if m is not None:
        b.check("analytics", f"to_arrow anon RSS growth at n={n}", m.median, "<=", 5.0, "MB, goal < 5 MB (no copy)",
                size=n)
    b.ratio_check("analytics", f"to_arrow time vs to_array copy, n={n}", W_ARROW, "ngstore to_arrow()",
                  "to_array() copy", "report", 0, size=n)


def _sql(b: Bench, n: int, path: str) -> None:
    import duckdb
    import pyarrow as pa

    import ngstore.duckdb as ngduck

    with ngstore.open(path, readonly=True) as s:
        snap = s.snapshot()
        t0 = time.perf_counter()
        con = ngduck.connect(snap)
        connect_ms = (time.perf_counter() - t0) * 1e3
        got = con.sql(QUERY).fetchall()
        b.record(W_SQL, "ngstore duckdb over the map", n, "ms",
                 repeat(lambda: con.sql(QUERY).fetchall(), b.repeats, warmup=True, scale=1e3),
                 note=f"connect {connect_ms:.0f} ms")
        t0 = time.perf_counter()
        copied = ngduck.connect(snap, copy=True)
        copy_ms = (time.perf_counter() - t0) * 1e3
        assert copied.sql(QUERY).fetchall() == got
        b.record(W_SQL, "ngstore duckdb, copy=True", n, "ms",
                 repeat(lambda: copied.sql(QUERY).fetchall(), b.repeats, warmup=True, scale=1e3),
                 note=f"connect (the copy) {copy_ms:.0f} ms")
        copied.close()
        arr = snap.tokens.to_array()
        snap.close()
    table = pa.table({c: arr[c] for c in ("id", "flags", "weight", "field_radius", "field_strength", "timestamp")})
    del arr
    ram = duckdb.connect()
    ram.register("tokens", table)
    want = ram.sql(QUERY).fetchall()
    assert got == want, (got, want)
    b.record(W_SQL, "duckdb in-RAM arrow", n, "ms",
             repeat(lambda: ram.sql(QUERY).fetchall(), b.repeats, warmup=True, scale=1e3))
    con.close()
    ram.close()
    b.ratio_check("analytics", f"duckdb over snapshot ÷ in-RAM arrow, n={n}", W_SQL, "ngstore duckdb over the map",
                  "duckdb in-RAM arrow", "<=", 1.5, size=n)
    b.ratio_check("analytics", f"duckdb copy=True ÷ in-RAM arrow, n={n}", W_SQL, "ngstore duckdb, copy=True",
                  "duckdb in-RAM arrow", "report", 0, size=n)


def _dask(b: Bench, n: int) -> None:
    import distributed

    import ngstore.dask as ngdask

    paths = _shards(b, n)
    flags = (np.arange(n, dtype=np.uint32) % 7).astype(np.uint16)
    weight = (np.arange(n, dtype=np.uint32) % 101).astype(np.float32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster):
        t0 = time.perf_counter()
        ddf = ngdask.read_tokens(paths, ["weight", "flags"])
        plan_ms = (time.perf_counter() - t0) * 1e3
        w64 = ddf.weight.astype("float64")  # the same accumulator as numpy's below
        total = w64.sum().compute()
        assert total == weight.astype(np.float64).sum(), (total, weight.sum())
        gb = w64.groupby(ddf.flags).mean().compute().sort_index()
        counts = np.bincount(flags)
        want = np.bincount(flags, weights=weight.astype(np.float64)) / counts
        assert gb.to_numpy().tolist() == want.tolist()
        reps = max(3, b.repeats)
        b.record(W_DASK_SUM, "ngstore dask, 2 workers", n, "ms",
                 repeat(lambda: w64.sum().compute(), reps, scale=1e3),
                 note=f"{ddf.npartitions} partitions; plan {plan_ms:.0f} ms")
        b.record(W_DASK_GB, "ngstore dask, 2 workers", n, "ms",
                 repeat(lambda: w64.groupby(ddf.flags).mean().compute(), reps, scale=1e3))
    b.record(W_DASK_SUM, "numpy in-RAM columns", n, "ms",
             repeat(lambda: weight.astype(np.float64).sum(), reps, scale=1e3))
    b.record(W_DASK_GB, "numpy in-RAM columns", n, "ms",
             repeat(lambda: np.bincount(flags, weights=weight.astype(np.float64)) / np.bincount(flags), reps,
                    scale=1e3))
    for w in (W_DASK_SUM, W_DASK_GB):
        b.ratio_check("analytics", f"{w} ÷ numpy, n={n}", w, "ngstore dask, 2 workers", "numpy in-RAM columns",
                      "<=", 2.0, size=n)


_WRITER = """
import sys, time, numpy as np, ngstore
n = int(sys.argv[2])
with ngstore.open(sys.argv[1], max_tokens=None, max_bytes=None, durability="async",
                  map_size=max(1 << 32, n * 256)) as s:
    rng = np.random.default_rng(1)
    print("ready", flush=True)
    i = 0
    while True:
        a = np.zeros(1000, ngstore.TOKEN_DTYPE)
        a["id"] = rng.integers(0, n, 1000, dtype=np.uint32)
        a["weight"] = i
        s.put_tokens(a)
        i += 1
"""


def _backup(b: Bench, n: int, path: str) -> None:
    from ngstore import backup as ngbackup

    work = os.path.join(b.root, "analytics", f"backup-{n}")
    src = os.path.join(work, "src")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    shutil.copytree(path, src)  # the writer commits into this copy
    child = subprocess.Popen([sys.executable, "-c", _WRITER, src, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        ours, peers, reports = [], [], []
        cp_failures = 0
        for k in range(b.repeats):
            size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _d, fs in os.walk(src)
                       for f in fs if f == "data.mdb" or f.endswith(".wal"))
            dest = os.path.join(work, f"b{k}")
            t0 = time.perf_counter()
            r = ngbackup.backup(src, dest)
            dt = time.perf_counter() - t0
            ours.append(size / dt / 1e6)
            reports.append(r)
            cp = os.path.join(work, f"cp{k}")
            t0 = time.perf_counter()
            # cp of a live store can fail outright: a checkpoint deletes a log segment it listed
            while subprocess.run(["cp", "-r", src, cp], capture_output=True).returncode != 0:
                cp_failures += 1
                shutil.rmtree(cp, ignore_errors=True)
                t0 = time.perf_counter()
            peers.append(size / (time.perf_counter() - t0) / 1e6)
            shutil.rmtree(dest)
            shutil.rmtree(cp)
        commits_during = reports[-1].end_position
    finally:
        child.kill()
        child.wait()
    b.record(W_BACKUP, "ngstore backup", n, "MB/s", ours, higher_is_better=True,
             note=f"writer committing; retries {sum(r.attempts - 1 for r in reports)}; "
                  f"last backup at log position {commits_during}; wrote {reports[-1].bytes / 1e6:.0f} MB")
    b.record(W_BACKUP, "cp -r (torn copy)", n, "MB/s", peers, higher_is_better=True,
             note=f"{cp_failures} cp run(s) failed on a vanished log segment and were retried")
    b.ratio_check("analytics", f"backup ÷ cp throughput, n={n}", W_BACKUP, "ngstore backup", "cp -r (torn copy)",
                  ">=", 0.5, size=n, invert=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # python benchmarks/bench_analytics.py [max size]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    top = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
    bench = Bench(sizes=[s for s in (1_000_000, 10_000_000) if s <= top], repeats=5, quick=False, out=".")
    try:
        run(bench)
    finally:
        bench.cleanup()
    print(json.dumps([c.__dict__ for c in bench.checks], indent=1, default=str))
