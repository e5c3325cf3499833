"""Which token-chunk size? Measures the trade-off docs/format.md §3.2 names, on bare py-lmdb.

Larger chunk values ingest and scan faster; smaller ones make a single-token update
cheaper (LMDB copies the whole value on every put). Run:

    python benchmarks/chunk_size.py [--tokens 1000000]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lmdb
import numpy as np


def measure(n_tokens: int, slots: int, repeats: int = 3) -> dict[str, float]:
    value_size = slots * 64 + slots // 8
    payload = np.random.default_rng(1).integers(0, 255, size=n_tokens * 64, dtype=np.uint8)
    ingest, update, scan = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            env = lmdb.open(d, map_size=1 << 34, max_dbs=2, sync=True, metasync=True, writemap=False)
            db = env.open_db(b"t")
            n_chunks = n_tokens // slots
            t0 = time.perf_counter()
            with env.begin(write=True, db=db) as txn:
                for c in range(n_chunks):
                    rec = payload[c * slots * 64:(c + 1) * slots * 64].tobytes()
                    txn.put(c.to_bytes(4, "big"), rec + b"\xff" * (slots // 8))
            ingest.append((time.perf_counter() - t0) / n_tokens * 1e9)
            # one-token update = read-modify-write of one chunk, no fsync (isolates copy cost)
            env2 = env
            t0 = time.perf_counter()
            k = 200
            for i in range(k):
                with env2.begin(write=True, db=db) as txn:
                    key = (i % n_chunks).to_bytes(4, "big")
                    buf = bytearray(txn.get(key))
                    buf[0] = i & 0xFF
                    txn.put(key, bytes(buf))
            update.append((time.perf_counter() - t0) / k * 1e6)
            with env.begin(db=db, buffers=True) as txn:
                t0 = time.perf_counter()
                total = 0.0
                for _, v in txn.cursor():
                    a = np.frombuffer(v, dtype=np.uint8, count=slots * 64).view("<u4")
                    total += float(a[12::16].sum())
                scan.append((time.perf_counter() - t0) / n_tokens * 1e9)
            env.close()
    return {"slots": slots, "value_bytes": value_size, "ingest_ns_per_token": statistics.median(ingest),
            "update_us_per_token": statistics.median(update), "scan_ns_per_token": statistics.median(scan)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=1_000_000)
    a = p.parse_args()
    print(f"{'slots':>6} {'value B':>8} {'ingest ns/tok':>14} {'1-token update us':>18} {'scan ns/tok':>12}")
    for slots in (256, 1024, 4096, 16384):
        r = measure(a.tokens - a.tokens % 16384, slots)
        print(f"{r['slots']:>6} {r['value_bytes']:>8} {r['ingest_ns_per_token']:>14.1f} "
              f"{r['update_us_per_token']:>18.1f} {r['scan_ns_per_token']:>12.2f}")


if __name__ == "__main__":
    main()
