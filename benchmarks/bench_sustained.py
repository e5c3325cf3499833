"""Sustained small updates, not bursts: what the applier keeps up with, and whether the
data file levels off.

* **Rate**: random one-token ``async`` updates to a store of 1M tokens from one thread for
  ``SECONDS`` (60; 10 with ``--quick``), with the default ``max_apply_lag`` and without a
  bound (``math.inf``), against rocksdict ``put`` with ``sync=False`` of
  64-byte values over the same 1M keys for the same time. The applier's throughput bounds
  the store's: when it falls behind, the overlay fills and commits wait (back-pressure).
  A column scan of the store after the run, against the same column of an in-RAM array,
  shows what the chunk layout that serves the updates costs reads.
* **Growth**: random one-token ``async`` updates to a store of 1M tokens for ``MINUTES``
  (10; 1 with ``--quick``); data.mdb's size after each minute. Checkpoints recycle the
  pages the pin kept from reuse, so the file should level off.

Targets: sustained rate ≥ 0.5× rocksdict's; data.mdb after the last minute ≤ 2× after the
first.
"""
from __future__ import annotations

import math
import os
import shutil
import time

import numpy as np
from _harness import LIMITS, Bench
from bench_ingest import dataset, rocks_open, rocksdict_available, store_options

import ngstore
from ngstore.records import TOKEN_DTYPE

W_RATE = "sustained random 1-token updates"
W_GROWTH = "data.mdb under sustained updates (n = minutes)"
W_SCAN = "column scan after sustained updates"
LIMITS[W_RATE] = "rocksdict put sync=False"
LIMITS[W_SCAN] = "numpy column (in RAM)"
N = 1_000_000


def _updates(put, seconds: float, seed: int) -> float:
    """Random one-token updates through ``put(id, record)`` for ``seconds``; updates/s."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, N, 1 << 20)
    rec = np.zeros(1, TOKEN_DTYPE)
    rec["flags"] = 1
    n = 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    while True:
        for _ in range(256):
            i = int(ids[n & ((1 << 20) - 1)])
            rec["id"] = i
            rec["weight"] = n
            put(i, rec)
            n += 1
        if time.perf_counter() >= stop:
            return n / (time.perf_counter() - t0)


def _copy(b: Bench, system: str, tag: str) -> str:
    dst = os.path.join(b.root, "sustained", tag)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(dataset(b, system, N), dst)
    return dst


def run(b: Bench) -> None:
    seconds = 10.0 if b.quick else float(os.environ.get("NGSTORE_SUSTAINED_SECONDS", "60"))
    minutes = 1 if b.quick else int(os.environ.get("NGSTORE_GROWTH_MINUTES", "10"))
    b.log(f"## {W_RATE} ({seconds:.0f} s each)")
    path = _copy(b, "ngstore", "rate")
    s = ngstore.open(path, durability="async", **store_options(N))
    rate = _updates(lambda _i, r: s.put_tokens(r), seconds, 1)
    st = s.stats()
    b.record(W_RATE, "ngstore put_tokens async", N, "updates/s", [rate], higher_is_better=True,
             note=f"{st['apply_groups_total']:,} LMDB applies, {st['checkpoints_total']} checkpoints")
    s.flush()
    with s.snapshot() as snap:
        scan = [_timed(lambda: snap.tokens.column("weight")) for _ in range(b.repeats)]
    s.close()
    path = _copy(b, "ngstore", "rate-unbounded")
    s = ngstore.open(path, durability="async", max_apply_lag=math.inf, **store_options(N))
    rate_inf = _updates(lambda _i, r: s.put_tokens(r), seconds, 1)
    st = s.stats()
    s.close()
    b.record(W_RATE, "ngstore put_tokens async, max_apply_lag=inf", N, "updates/s", [rate_inf],
             higher_is_better=True, note=f"{st['apply_groups_total']:,} LMDB applies, {st['checkpoints_total']} "
                                         "checkpoints; LMDB may fall seconds behind")
    arr = np.zeros(N, TOKEN_DTYPE)
    ram = [_timed(lambda: np.ascontiguousarray(arr["weight"])) for _ in range(b.repeats)]
    b.record(W_SCAN, "ngstore column('weight')", N, "ns/token", [t / N * 1e9 for t in scan])
    b.record(W_SCAN, "numpy column (in RAM)", N, "ns/token", [t / N * 1e9 for t in ram])
    if rocksdict_available():
        from rocksdict import WriteOptions

        db = rocks_open(_copy(b, "rocksdict sync batch", "rocks"))
        wo = WriteOptions()
        wo.sync = False
        rrate = _updates(lambda i, r: db.put(i.to_bytes(8, "big"), r.tobytes(), wo), seconds, 1)
        db.close()
        b.record(W_RATE, "rocksdict put sync=False", N, "updates/s", [rrate], higher_is_better=True)
        b.check("log", "sustained 1-token async updates ÷ rocksdict non-sync puts (updates/s)", rate / rrate,
                ">=", 0.5, f"{rate:,.0f} vs {rrate:,.0f} updates/s over {seconds:.0f} s", N)
        b.check("log", "the same, max_apply_lag=inf (no bound on LMDB's lag) ÷ rocksdict", rate_inf / rrate,
                "report", 0.0, f"{rate_inf:,.0f} vs {rrate:,.0f} updates/s over {seconds:.0f} s", N)
    shutil.rmtree(os.path.join(b.root, "sustained"), ignore_errors=True)

    b.log(f"## {W_GROWTH} ({minutes} min)")
    path = _copy(b, "ngstore", "growth")
    s = ngstore.open(path, durability="async", **store_options(N))
    sizes = []
    for m in range(minutes):
        _updates(lambda _i, r: s.put_tokens(r), 60.0, 100 + m)
        sizes.append(os.path.getsize(os.path.join(path, "data.mdb")))
        b.record(W_GROWTH, "ngstore data.mdb", m + 1, "MiB", [sizes[-1] / 2**20])
    st = s.stats()
    s.close()
    b.notes.append(f"growth run: {st['checkpoints_total']} checkpoints, {st['apply_groups_total']:,} applies, "
                   f"data.mdb per minute (MiB): {[round(x / 2**20) for x in sizes]}")
    b.check("log", "data.mdb after the last minute ÷ after the first", sizes[-1] / sizes[0], "<=", 2.0,
            f"{sizes[-1] / 2**20:.0f} vs {sizes[0] / 2**20:.0f} MiB over {minutes} min", N)
    shutil.rmtree(os.path.join(b.root, "sustained"), ignore_errors=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
