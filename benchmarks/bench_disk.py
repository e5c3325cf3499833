"""How many bytes on disk does each system use for n tokens (64 B of payload each)?

Allocated bytes (``st_blocks``) of everything each system keeps, after the writer closed,
per token. Target: ngstore ≤ 1.1 × 64 MB for 1M consecutive ids (≤ 70.4 B/token).
"""
from __future__ import annotations

import os

from _harness import LIMITS, Bench, disk_bytes
from bench_ingest import BUILDERS, dataset

W = "bytes on disk"
LIMITS[W] = "numpy .npy + fsync"


def run(b: Bench) -> None:
    b.log(f"## {W}")
    for n in b.sizes:
        for system in BUILDERS:
            if system in ("sqlite3 WAL FULL", "rocksdict sync batch", "lmdb key per record") and n > 1_000_000:
                continue
            p = dataset(b, system, n)
            alloc, apparent = disk_bytes(p)
            note = f"apparent {apparent / n:.1f} B/token"
            if system == "ngstore":
                dm = disk_bytes(os.path.join(p, "data.mdb"))[0]
                wal = disk_bytes(os.path.join(p, "wal"))[0] if os.path.isdir(os.path.join(p, "wal")) else 0
                note += f"; data.mdb {dm / n:.1f}, wal {wal / 2**20:.1f} MiB"
            b.record(W, system, n, "B/token", [alloc / n], note=note)
    n = 1_000_000 if b.max_size >= 1_000_000 else b.max_size
    m = b.get(W, "ngstore", n)
    if m:
        b.check("store core", f"bytes on disk for {n:,} consecutive ids ÷ 64 B × n", m.median / 64, "<=", 1.1,
                f"{m.median * n / 2**20:.1f} MiB allocated; {m.note}", n)
