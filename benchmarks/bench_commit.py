"""What does one small durable commit cost, how does it scale with committing threads,
and what do the durability modes buy?

* Latency (p50 = median, p99 in the notes) of a one-token durable commit on a store already
  holding n tokens, against the limit -- a bare ``pwrite`` + ``fdatasync`` of the same bytes
  as the log record into a pre-zeroed file (what the log does) -- and a growing-file append,
  sqlite3 (WAL, synchronous=FULL, autocommit INSERT), py-lmdb (one put per synced txn) and
  rocksdict (``put`` with ``sync=True``).
* Concurrent small commits from 1, 2, 4, 8 threads (commits/s; ``n`` is the thread count).
* One thread, sync vs async vs none (commits/s).
* Known outcomes: a one-token commit with an idempotency key (``key=``: one more op in the
  record, a look-up of the key in the overlay and LMDB before the append, the key recorded
  in the applier's transaction) beside the same commit without one, p50 in ``sync`` mode and
  in ``none`` mode (no fdatasync to hide the CPU it costs). Keyed and unkeyed commits
  alternate, one each, so drift of the machine falls on both alike.

Targets: one commit ≤ 1.3× the bare write + fdatasync; 8 threads ≥ 5× the commits/s of one;
async ≥ 20× the rate of sync.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable

import lmdb
import numpy as np
from _harness import LIMITS, Bench
from bench_ingest import LMDB_MAP, dataset, rocks_open, rocksdict_available, sqlite_connect, store_options

import ngstore
from ngstore import ops

W_LAT = "small durable commit"
W_CONC = "concurrent commits (n = threads)"
W_MODE = "commit modes, 1 thread"
W_KEYED = "keyed vs unkeyed one-token commit"
LIMITS[W_LAT] = "pwrite + fdatasync (pre-zeroed)"
LIMITS[W_CONC] = "pwrite + fdatasync (pre-zeroed)"
LIMITS[W_MODE] = "pwrite + fdatasync (pre-zeroed)"
LIMITS[W_KEYED] = "ngstore unkeyed (sync)"


def one_token(i: int) -> np.ndarray:
    a = ngstore.Token.create_batch(1, start=i).data
    a["weight"] = 0.5
    return a


def record_bytes() -> int:
    """Bytes of the log frame of a one-token batch (40-byte frame header + payload)."""
    return 40 + len(ops.encode_ops([ops.Op(ops.OP_TOKEN_PUT, one_token(0))]))


def latencies(fn: Callable[[int], None], k: int) -> list[float]:
    out = []
    for i in range(k):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _record_latency(b: Bench, system: str, n: int, lat: list[float], note: str = "") -> None:
    b.record(W_LAT, system, n, "µs", lat, note=note, p99=float(np.percentile(lat, 99)))


class BareLog:
    """pwrite + fdatasync of ``size`` bytes: into a pre-zeroed file, or appended to a growing one."""

    def __init__(self, path: str, size: int, prezeroed: bool) -> None:
        self.size, self.prezeroed = size, prezeroed
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if prezeroed else os.O_APPEND), 0o644)
        self.cap = 64 << 20
        if prezeroed:
            os.write(self.fd, b"\0" * self.cap)
            os.fsync(self.fd)
        self.payload = os.urandom(size)
        self.off = 0
        self.lock = threading.Lock()

    def commit(self, _i: int = 0) -> None:
        with self.lock:
            if self.prezeroed:
                os.pwrite(self.fd, self.payload, self.off)
                self.off = (self.off + self.size) % (self.cap - self.size)
            else:
                os.write(self.fd, self.payload)
            os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _copy(b: Bench, system: str, n: int, tag: str) -> str:
    src = dataset(b, system, n)
    dst = os.path.join(b.root, "commit", tag, system.replace(" ", "_"))
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def _peers(b: Bench, n: int, tag: str) -> dict[str, tuple[Callable[[int], None], Callable[[], None]]]:
    """name -> (commit(i) of one record, close)."""
    out: dict[str, tuple[Callable[[int], None], Callable[[], None]]] = {}
    blob = one_token(0).tobytes()

    con = sqlite_connect(_copy(b, "sqlite3 WAL FULL", n, tag))
    lock = threading.Lock()

    def sq(i: int) -> None:
        with lock:  # one connection shared by the threads: sqlite serialises writers anyway
            con.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (n + i, blob))

    out["sqlite3 WAL FULL"] = (sq, con.close)
    env = lmdb.open(_copy(b, "lmdb key per record", n, tag), map_size=LMDB_MAP, sync=True, writemap=False)

    def lm(i: int) -> None:
        with env.begin(write=True) as txn:  # py-lmdb serialises write txns across threads
            txn.put((n + i).to_bytes(8, "big"), blob)

    out["lmdb one put per txn"] = (lm, env.close)
    if rocksdict_available() and n <= 1_000_000:
        from rocksdict import WriteOptions

        db = rocks_open(_copy(b, "rocksdict sync batch", n, tag))
        wo = WriteOptions()
        wo.sync = True

        def rk(i: int) -> None:
            db.put((n + i).to_bytes(8, "big"), blob, wo)

        out["rocksdict put sync"] = (rk, db.close)
    return out


def _rate(commit: Callable[[int], None], threads: int, seconds: float) -> float:
    """Commits per second of ``threads`` threads committing for ``seconds``."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = time.perf_counter() + seconds + 0.05

    def work(t: int) -> None:
        start.wait()
        c = 0
        base = 10_000_000 * (t + 1)
        while time.perf_counter() < stop:
            commit(base + c)
            c += 1
        counts[t] = c

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def run(b: Bench) -> None:
    b.log(f"## {W_LAT}")
    k = 150 if b.quick else 400
    rb = record_bytes()
    b.notes.append(f"one-token commit: log frame of {rb} B; the bare baseline writes the same {rb} B")
    for n in b.sizes:
        if n > 1_000_000:
            continue  # commit latency does not depend on size beyond the page-cache-resident case
        path = _copy(b, "ngstore", n, "lat")
        s = ngstore.open(path, durability="sync", **store_options(n))
        toks = [one_token(n + i) for i in range(k)]
        s.put_tokens(toks[0])
        _record_latency(b, "ngstore put_tokens (sync)", n, latencies(lambda i: s.put_tokens(toks[i]), k))
        s.close()
        for prez, name in ((True, "pwrite + fdatasync (pre-zeroed)"), (False, "append + fdatasync")):
            bl = BareLog(os.path.join(b.root, "commit", "bare.log"), rb, prez)
            bl.commit()
            _record_latency(b, name, n, latencies(bl.commit, k))
            bl.close()
            os.unlink(os.path.join(b.root, "commit", "bare.log"))
        for name, (fn, close) in _peers(b, n, "lat").items():
            fn(-1)
            _record_latency(b, name, n, latencies(fn, k))
            close()
        shutil.rmtree(os.path.join(b.root, "commit", "lat"), ignore_errors=True)
    n_lat = max(x for x in b.sizes if x <= 1_000_000)
    b.ratio_check("log", "one small durable commit (p50) ÷ bare pwrite + fdatasync of the same bytes", W_LAT,
                  "ngstore put_tokens (sync)", "pwrite + fdatasync (pre-zeroed)", "<=", 1.3, n_lat)

    # -- concurrency (on the largest ≤ 1M store)
    b.log(f"## {W_CONC}")
    secs = 0.4 if b.quick else 1.0
    reps = 2 if b.quick else 3
    n = n_lat
    path = _copy(b, "ngstore", n, "conc")
    s = ngstore.open(path, durability="sync", **store_options(n))
    toks: dict[int, np.ndarray] = {}

    def ng_commit(i: int) -> None:
        t = toks.get(i)
        if t is None:
            t = toks[i] = one_token(n + (i % 1_000_000))
        s.put_tokens(t)

    bl = BareLog(os.path.join(b.root, "commit", "bare-conc.log"), rb, True)
    peers = _peers(b, n, "conc")
    systems = {"ngstore put_tokens (sync)": ng_commit, "pwrite + fdatasync (pre-zeroed)": bl.commit,
               **{name: fn for name, (fn, _c) in peers.items()}}
    for threads in (1, 2, 4, 8):
        for name, fn in systems.items():
            if name.startswith("rocksdict") and b.quick:
                continue
            b.record(W_CONC, name, threads, "commits/s", [_rate(fn, threads, secs) for _ in range(reps)],
                     higher_is_better=True, note=f"store of {n:,} tokens")
    one, eight = b.get(W_CONC, "ngstore put_tokens (sync)", 1), b.get(W_CONC, "ngstore put_tokens (sync)", 8)
    if one and eight:
        b.check("log", "group commit: 8 threads ÷ 1 thread (commits/s)", eight.median / one.median, ">=", 5.0,
                f"{eight.median:,.0f} vs {one.median:,.0f} commits/s", n)

    # -- durability modes, one thread
    b.log(f"## {W_MODE}")
    for mode in ("sync", "async", "none"):
        mode_toks = [one_token(n + i) for i in range(1000)]

        def fn(i: int, mode: str = mode, mode_toks: list = mode_toks) -> None:
            s.put_tokens(mode_toks[i % 1000], durability=mode)

        b.record(W_MODE, f"ngstore {mode}", n, "commits/s", [_rate(fn, 1, secs) for _ in range(reps)],
                 higher_is_better=True)
    s.flush()
    b.record(W_MODE, "pwrite + fdatasync (pre-zeroed)", n, "commits/s",
             [_rate(bl.commit, 1, secs) for _ in range(reps)], higher_is_better=True)
    sync, asy = b.get(W_MODE, "ngstore sync", n), b.get(W_MODE, "ngstore async", n)
    if sync and asy:
        b.check("log", "async ÷ sync commits/s, one thread", asy.median / sync.median, ">=", 20.0,
                f"{asy.median:,.0f} vs {sync.median:,.0f} commits/s", n)
    keyed_vs_unkeyed(b, s, n, 200 if b.quick else 1000)
    s.close()
    bl.close()
    for _name, (_fn, close) in peers.items():
        close()
    shutil.rmtree(os.path.join(b.root, "commit"), ignore_errors=True)


def keyed_vs_unkeyed(b: Bench, s: ngstore.Store, n: int, k: int) -> None:
    """p50 of a one-token commit with and without an idempotency key, alternating."""
    b.log(f"## {W_KEYED}")
    for mode, count in (("sync", k), ("none", 10 * k)):
        toks = [one_token(n + i) for i in range(count)]
        plain: list[float] = []
        keyed: list[float] = []
        for i in range(count):
            t = time.perf_counter()
            s.put_tokens(toks[i], durability=mode)
            t1 = time.perf_counter()
            s.put_tokens(toks[i], durability=mode, key=f"{mode}-{n}-{i}")
            t2 = time.perf_counter()
            plain.append((t1 - t) * 1e6)
            keyed.append((t2 - t1) * 1e6)
        for name, lat in ((f"ngstore unkeyed ({mode})", plain), (f"ngstore keyed ({mode})", keyed)):
            b.record(W_KEYED, name, n, "µs", lat, p99=float(np.percentile(lat, 99)))
    s.flush()
    b.ratio_check("outcomes", "keyed ÷ unkeyed one-token commit, sync (p50)", W_KEYED,
                  "ngstore keyed (sync)", "ngstore unkeyed (sync)", "<=", 1.1, n)
    # In none mode the key's own cost shows: the digest and its op (~4 µs, most of it numpy's
    # and the frozen Op's construction), the look-up in one LMDB read transaction (~2 µs).
    keyed_none, plain_none = b.get(W_KEYED, "ngstore keyed (none)", n), b.get(W_KEYED, "ngstore unkeyed (none)", n)
    if keyed_none and plain_none:
        b.check("outcomes", "keyed − unkeyed one-token commit, none (p50, µs)", keyed_none.median - plain_none.median,
                "<=", 10.0, f"{keyed_none.median:.1f} vs {plain_none.median:.1f} µs", n)
