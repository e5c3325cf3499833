"""WAL micro-benchmarks: synced appends per second (with and without the zero runway),
replay throughput of a ~100 MB log, and what zstd does to token-like payloads.

    python benchmarks/wal_micro.py [--dir DIR] [--quick]

Prints the environment (file system of DIR, fsync on) and medians of 3 runs. The limits
measured on this machine kind (docs/performance.md): ≈3.5k fsync'd 1000-record (64 KiB) batches/s
appending, ≈6.8k/s into a pre-zeroed file; one fdatasync ≈ 90–146 µs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from ngstore import wal


def synced_appends(root: str, size: int, n: int, prealloc: int) -> float:
    d = os.path.join(root, f"sa_{size}_{prealloc}")
    log, _ = wal.Log.open(d, preallocate_bytes=prealloc)
    payload = os.urandom(size)
    t = time.perf_counter()
    for _ in range(n):
        log.append([(wal.BATCH, payload)])
        log.sync()
    dt = time.perf_counter() - t
    log.close()
    shutil.rmtree(d)
    return n / dt


def replay(root: str, rec_size: int, total: int) -> tuple[float, float]:
    d = os.path.join(root, f"rp_{rec_size}")
    log, _ = wal.Log.open(d)
    payload = os.urandom(rec_size)
    per_append = max(1, (1 << 20) // rec_size)
    n = 0
    while n * rec_size < total:
        log.append([(wal.BATCH, payload)] * per_append)
        n += per_append
    log.sync()
    log.close()
    t = time.perf_counter()
    log, _ = wal.Log.open(d)
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    got = 0
    for r in log.iter_records(0):
        got += len(r.payload)
    dt = time.perf_counter() - t
    log.close()
    shutil.rmtree(d)
    return got / dt / 1e6, got / t_open / 1e6


def tokens_payload(n: int) -> bytes:
    from ngstore.records import TOKEN_DTYPE
    rng = np.random.default_rng(0)
    a = np.zeros(n, TOKEN_DTYPE)
    a["id"] = np.arange(n)
    a["coordinates"] = rng.integers(-3000, 3000, size=(n, 8, 3))
    a["weight"] = rng.random(n).astype(np.float32)
    a["timestamp"] = 1_700_000_000
    return a.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(dir=args.dir)
    try:
        st = os.statvfs(root)
        print(f"# dir {root} (block size {st.f_bsize}); python {sys.version.split()[0]}; fdatasync on")
        n = 300 if args.quick else 2000
        for size in (100, 4096, 65536):
            for prealloc in (0, wal.PREALLOCATE_BYTES):
                rates = [synced_appends(root, size, n, prealloc) for _ in range(3)]
                print(f"append+fdatasync  {size:>6} B  runway {prealloc >> 10:>5} KiB: "
                      f"{statistics.median(rates):8.0f} /s  (runs {', '.join(f'{r:.0f}' for r in rates)})")
        total = (20 if args.quick else 100) << 20
        for rec_size in (1024, 65536, 1 << 20):
            res = [replay(root, rec_size, total) for _ in range(3)]
            it = statistics.median(r[0] for r in res)
            op = statistics.median(r[1] for r in res)
            print(f"replay {total >> 20} MB of {rec_size:>7} B records: iter_records {it:7.0f} MB/s, "
                  f"open (scan+verify) {op:7.0f} MB/s")
        import zstandard
        p = tokens_payload(16384)  # 1 MiB of tokens
        c = zstandard.ZstdCompressor(level=1)
        t = time.perf_counter()
        for _ in range(20):
            out = c.compress(p)
        dt = (time.perf_counter() - t) / 20
        print(f"zstd level 1 on 1 MiB of random-coordinate tokens: ratio {len(p) / len(out):.2f}, "
              f"{len(p) / dt / 1e6:.0f} MB/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
