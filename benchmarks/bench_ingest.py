"""What does a durable bulk ingest of N tokens cost, against what a user would pick instead?

Every writer below returns only once the data is durable (fsync'd), except the numpy
``.npy`` file which is fsync'd but not atomic (a crash mid-write leaves a torn file).
This module also owns the dataset builders the read/open/disk benchmarks reuse.

Targets: ``put_tokens`` of 1M tokens (sync) ≤ 1.3× bare py-lmdb 64 KiB chunk values in one
synced transaction, and ≥ 15× faster than sqlite3 (WAL, synchronous=FULL, one transaction,
INTEGER PRIMARY KEY + BLOB); the same through ``store.batch()`` ≤ 1.3× the chunked LMDB write.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable

import lmdb
import numpy as np
from _harness import LIMITS, Bench, repeat

import ngstore

W = "durable ingest"
LIMITS[W] = "lmdb 64 KiB chunks"

CHUNK_TOKENS = 1024            # 1024 × 64 B = 64 KiB per LMDB value
LMDB_MAP = 8 << 30             # sparse; never the limit here


def token_data(b: Bench, n: int) -> np.ndarray:
    """The same N tokens for every system (ids 0..n-1, random weights)."""
    key = ("tokens", n)
    if key not in b.cache:
        a = ngstore.Token.create_batch(n).data
        a["weight"] = np.random.default_rng(n).random(n, dtype=np.float32)
        b.cache[key] = a
    return b.cache[key]


def _u8(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))


def store_options(n: int) -> dict:
    return {"max_tokens": max(10_000_000, 2 * n), "max_bytes": None}


# ---------------------------------------------------------------------------- writers
# Each: writer(path, arr) -> None, durable on return. Setup (open) is inside for the peers
# whose open is trivial; for ngstore the open is outside the timed region (see run()).

def write_lmdb_chunks(path: str, arr: np.ndarray) -> None:
    env = lmdb.open(path, map_size=LMDB_MAP, sync=True, metasync=True, writemap=False)
    mv = _u8(arr)
    step = CHUNK_TOKENS * 64
    with env.begin(write=True) as txn:
        put = txn.put
        for c, off in enumerate(range(0, len(mv), step)):
            put(c.to_bytes(8, "big"), mv[off:off + step], append=True)
    env.close()


def write_lmdb_keys(path: str, arr: np.ndarray) -> None:
    env = lmdb.open(path, map_size=LMDB_MAP, sync=True, metasync=True, writemap=False)
    mv = _u8(arr)
    keys = np.arange(len(arr), dtype=">u8").tobytes()
    with env.begin(write=True) as txn:
        txn.cursor().putmulti(((keys[i * 8:i * 8 + 8], mv[i * 64:i * 64 + 64]) for i in range(len(arr))),
                              append=True)
    env.close()


def sqlite_connect(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(os.path.join(path, "db.sqlite"), isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


def write_sqlite(path: str, arr: np.ndarray) -> None:
    con = sqlite_connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data BLOB)")
    mv = _u8(arr)
    con.execute("BEGIN")
    con.executemany("INSERT INTO t VALUES (?, ?)", ((i, mv[i * 64:i * 64 + 64]) for i in range(len(arr))))
    con.execute("COMMIT")
    con.close()


def write_npy(path: str, arr: np.ndarray) -> None:
    p = os.path.join(path, "tokens.npy")
    with open(p, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


def rocksdict_available() -> bool:
    try:
        import rocksdict  # noqa: F401

        return True
    except ImportError:
        return False


def rocks_open(path: str):
    from rocksdict import Options, Rdict

    return Rdict(os.path.join(path, "rocks"), Options(raw_mode=True))


def write_rocksdict(path: str, arr: np.ndarray) -> None:
    from rocksdict import WriteBatch, WriteOptions

    db = rocks_open(path)
    mv = _u8(arr)
    keys = np.arange(len(arr), dtype=">u8").tobytes()
    wb = WriteBatch(raw_mode=True)
    for i in range(len(arr)):
        wb.put(keys[i * 8:i * 8 + 8], bytes(mv[i * 64:i * 64 + 64]))
    wo = WriteOptions()
    wo.sync = True
    db.write(wb, wo)
    db.close()


def write_ngstore(path: str, arr: np.ndarray) -> None:
    with ngstore.open(path, durability="sync", **store_options(len(arr))) as s:
        s.put_tokens(arr)


PEERS: dict[str, Callable[[str, np.ndarray], None]] = {
    "lmdb 64 KiB chunks": write_lmdb_chunks,
    "lmdb key per record": write_lmdb_keys,
    "sqlite3 WAL FULL": write_sqlite,
    "numpy .npy + fsync": write_npy,
}
if rocksdict_available():
    PEERS["rocksdict sync batch"] = write_rocksdict

BUILDERS: dict[str, Callable[[str, np.ndarray], None]] = {"ngstore": write_ngstore, **PEERS}


def dataset(b: Bench, system: str, n: int) -> str:
    """A directory holding the N tokens written by ``system`` (built once per run)."""
    key = ("dataset", system, n)
    if key not in b.cache:
        p = b.tmpdir("data", system.replace(" ", "_"), str(n))
        BUILDERS[system](p, token_data(b, n))
        b.cache[key] = p
    return b.cache[key]


# ---------------------------------------------------------------------------- the benchmark

def _ng_ingest(b: Bench, n: int, arr: np.ndarray, via_batch: bool) -> list[float]:
    holder: dict[str, object] = {}

    def setup() -> None:
        p = b.tmpdir("ingest", "ngstore")
        holder["s"] = ngstore.open(p, durability="sync", **store_options(n))

    def fn() -> None:
        s = holder["s"]
        if via_batch:
            with s.batch(durability="sync") as bt:  # type: ignore[attr-defined]
                bt.put_tokens(arr)
        else:
            s.put_tokens(arr)  # type: ignore[attr-defined]

    out = []
    for _ in range(b.repeats):
        out += repeat(fn, 1, setup=setup, scale=1e9 / n)
        holder["s"].close()  # type: ignore[attr-defined]
    return out


def run(b: Bench) -> None:
    b.log(f"## {W}")
    for n in b.sizes:
        arr = token_data(b, n)
        b.record(W, "ngstore put_tokens", n, "ns/token", _ng_ingest(b, n, arr, False),
                 note="sync; ≥ direct_threshold bypasses the log" if n * 64 >= 16 << 20 else "sync, via the log")
        b.record(W, "ngstore batch()", n, "ns/token", _ng_ingest(b, n, arr, True), note="sync")
        for name, writer in PEERS.items():
            if name in ("sqlite3 WAL FULL", "rocksdict sync batch", "lmdb key per record") and n > 1_000_000:
                continue  # bounded: these peers take minutes at 10^7
            reps = b.repeats if name != "sqlite3 WAL FULL" or n < 1_000_000 else max(2, b.repeats // 2)
            path = {"p": ""}

            def setup(name: str = name) -> None:
                path["p"] = b.tmpdir("ingest", name.replace(" ", "_"))

            b.record(W, name, n, "ns/token",
                     repeat(lambda writer=writer: writer(path["p"], arr), reps, setup=setup, scale=1e9 / n))
        shutil.rmtree(os.path.join(b.root, "ingest"), ignore_errors=True)
    n = 1_000_000 if b.max_size >= 1_000_000 else b.max_size
    b.ratio_check("store core", f"put_tokens {n:,} (sync) ÷ lmdb 64 KiB chunks, 1 synced txn", W,
                  "ngstore put_tokens", "lmdb 64 KiB chunks", "<=", 1.3, n)
    b.ratio_check("store core", f"sqlite3 (WAL, FULL, 1 txn) ÷ put_tokens {n:,} (speed-up)", W,
                  "ngstore put_tokens", "sqlite3 WAL FULL", ">=", 15, n, invert=True)
    b.ratio_check("log", f"store.batch() ingest {n:,} (sync) ÷ lmdb 64 KiB chunks", W,
                  "ngstore batch()", "lmdb 64 KiB chunks", "<=", 1.3, n)
