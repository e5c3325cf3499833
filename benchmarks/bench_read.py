"""How fast are reads: one token by id, a batch of random ids, a full column scan (warm and
with the file's page cache dropped)?

Peers read the datasets ``bench_ingest`` wrote (the same tokens). The limits are an in-RAM
numpy array: ``arr[i]`` for a point read, an opaque 64-byte view ``take`` for a gather, a
strided ``arr["weight"].sum()`` for a scan.

Targets: ``get_token`` ≤ 2 µs and ≤ 1.5× what it must do, bare (a py-lmdb get of the chunk
in a read transaction of its own, and the 64-byte slice; the two are timed in rounds, one
run of each a round, and the check reads the median of the rounds' ratios); ``get_tokens`` of 1M random ids
≤ 200 ns/token; a column scan -- over the snapshot's views, and with ``column()`` -- ≤ 1.5×
the same scan of an in-RAM array, at 10^6 and at 10^7 tokens (10^7 is scanned even when
``--max-size`` stops the other reads at 10^6: the store alone, no peer; the two scans and
the in-RAM column are timed in rounds, and the checks read the median of the rounds'
ratios). The views' scan runs
numpy once per chunk, as a scan of bare py-lmdb chunk values does: that peer's ratio is
reported beside it as its floor, and the per-chunk costs (µs a chunk of 1,024 tokens) split
what the scan pays beyond one numpy call: walking the chunk views, and numpy's own call per
chunk (an in-RAM column summed chunk by chunk, less the same column summed whole).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lmdb
import numpy as np
from _harness import LIMITS, Bench, alternated, drop_file_cache, repeat
from bench_ingest import (
    CHUNK_TOKENS,
    LMDB_MAP,
    dataset,
    rocks_open,
    rocksdict_available,
    sqlite_connect,
    store_options,
    token_data,
)

import ngstore

W_POINT = "point read"
NG_VIEWS = "ngstore snapshot views"
NG_COLUMN = "ngstore column()"
RAM_COLUMN = "numpy in-RAM column"
RAM_CHUNKED = "numpy in-RAM column, summed chunk by chunk"
NG_GET = "ngstore get_token"
BARE_GET = "lmdb get in a fresh read txn"
W_GATHER = "batch random gather"
W_SCAN = "column scan, warm"
W_COLD = "column scan, cold"
W_CHUNK = "column scan, cost per chunk"
SCAN_AT_SCALE = 10_000_000
LIMITS[W_POINT] = "numpy in-RAM arr[i]"
LIMITS[W_GATHER] = "numpy in-RAM V64 take"
LIMITS[W_SCAN] = "numpy in-RAM column"
LIMITS[W_COLD] = "numpy memmap .npy"
V64 = np.dtype("V64")


def ng_scan(s: Any) -> float:
    total = 0.0
    with s.snapshot() as snap:
        for _first, a in snap.tokens.chunks():
            total += float(a["weight"].sum())
    return total


def ng_chunk_walk(s: Any) -> int:
    """The views' walk alone: every chunk view made and dropped, nothing summed."""
    k = 0
    with s.snapshot() as snap:
        for _first, _a in snap.tokens.chunks():
            k += 1
    return k


def ram_chunked_scan(arr: np.ndarray) -> float:
    total = 0.0
    for i in range(0, arr.shape[0], CHUNK_TOKENS):
        total += float(arr[i:i + CHUNK_TOKENS]["weight"].sum())
    return total


def scan_rows(b: Bench, s: Any, arr: np.ndarray, n: int, reps: int) -> dict[str, list[float]]:
    """The warm scans of the store and of the in-RAM column, in rounds (one run of each a
    round: the host's phases hit them alike), and the per-chunk costs. Returns each store
    scan's time ÷ the in-RAM column's, round by round."""
    rounds = alternated({NG_VIEWS: lambda: ng_scan(s), NG_COLUMN: lambda: ng_column_scan(s),
                         RAM_COLUMN: lambda: float(arr["weight"].sum()),
                         RAM_CHUNKED: lambda: ram_chunked_scan(arr)},
                        max(reps, 7), scale=1e9 / n, warmup=True)
    for name, times in rounds.items():
        b.record(W_SCAN, name, n, "ns/token", times)
    whole, chunked = rounds[RAM_COLUMN], rounds[RAM_CHUNKED]
    ratios = {name: [x / y for x, y in zip(rounds[name], whole, strict=True)] for name in (NG_VIEWS, NG_COLUMN)}
    chunks = ng_chunk_walk(s)
    b.record(W_CHUNK, "ngstore chunks() walk", n, "µs/chunk",
             repeat(lambda: ng_chunk_walk(s), reps, scale=1e6 / chunks, warmup=True),
             note=f"{chunks:,} chunks; a view made per chunk, nothing summed")
    per = CHUNK_TOKENS / 1e3  # ns/token -> µs/chunk
    b.record(W_CHUNK, "numpy's call per chunk (in RAM)", n, "µs/chunk",
             [max(0.0, (c - float(np.median(whole))) * per) for c in chunked],
             note="an in-RAM column summed chunk by chunk, less summed whole")
    return ratios


def scan_at_scale(b: Bench, n: int, reps: int) -> dict[str, list[float]]:
    """The warm scans at ``n`` tokens, the store alone (its peers' datasets are not built);
    :func:`scan_rows`' ratios."""
    arr = token_data(b, n)
    with ngstore.open(dataset(b, "ngstore", n), **store_options(n)) as s:
        ratios = scan_rows(b, s, arr, n, reps)
        want = float(arr["weight"].sum())
        assert abs(ng_scan(s) - want) <= 1e-3 * abs(want) + 1, "ngstore scan disagrees with numpy"
    b.cache.pop(("tokens", n), None)  # 640 MB
    return ratios


def ng_column_scan(s: Any) -> float:
    with s.snapshot() as snap:
        return float(snap.tokens.column("weight").sum())


def lmdb_chunk_scan(env: Any) -> float:
    total = 0.0
    with env.begin(buffers=True) as txn:
        for _k, v in txn.cursor():
            total += float(np.frombuffer(v, ngstore.TOKEN_DTYPE)["weight"].sum())
    return total


def npy_path(b: Bench, n: int) -> str:
    return os.path.join(dataset(b, "numpy .npy + fsync", n), "tokens.npy")


def run(b: Bench) -> None:
    b.log("## reads")
    rng = np.random.default_rng(7)
    reps = b.repeats
    pair_ratios: dict[int, list[float]] = {}  # get_token ÷ bare, per round, by store size
    scan_ratios: dict[int, dict[str, list[float]]] = {}  # store scan ÷ in-RAM column, per round, by size
    for n in b.sizes:
        arr = token_data(b, n)
        s = ngstore.open(dataset(b, "ngstore", n), **store_options(n))
        env_k = lmdb.open(dataset(b, "lmdb key per record", n), map_size=LMDB_MAP, readonly=True, lock=False)
        env_c = lmdb.open(dataset(b, "lmdb 64 KiB chunks", n), map_size=LMDB_MAP, readonly=True, lock=False)
        mm = np.load(npy_path(b, n), mmap_mode="r")
        sq = sqlite_connect(dataset(b, "sqlite3 WAL FULL", n)) if n <= 1_000_000 else None
        rk = rocks_open(dataset(b, "rocksdict sync batch", n)) if rocksdict_available() and n <= 1_000_000 else None
        d = {i: ngstore.Token.from_bytes(arr[i:i + 1].tobytes()) for i in range(n)} if n <= (
            100_000 if b.quick else 1_000_000) else None

        # -- point reads
        k = 20_000
        ids = rng.integers(0, n, k).tolist()
        kb = [i.to_bytes(8, "big") for i in ids]
        it: dict[str, Callable[[], Any]] = {}
        get_token = s.get_token
        it[NG_GET] = lambda: [get_token(i) for i in ids]
        it["numpy in-RAM arr[i]"] = lambda: [arr[i] for i in ids]
        tk = env_k.begin(buffers=True)
        it["lmdb key per record"] = lambda: [tk.get(x) for x in kb]
        tc = env_c.begin(buffers=True)
        ck = [(i // CHUNK_TOKENS).to_bytes(8, "big") for i in ids]
        offs = [(i % CHUNK_TOKENS) * 64 for i in ids]
        it["lmdb 64 KiB chunks (get + slice)"] = lambda: [tc.get(c)[o:o + 64] for c, o in zip(ck, offs, strict=False)]

        def fresh_txn_gets(env: Any = env_c, ck: list[bytes] = ck, offs: list[int] = offs) -> list[bytes]:
            out = []
            for c, o in zip(ck, offs, strict=False):  # what one get_token must do, bare
                with env.begin(buffers=True) as txn:
                    out.append(bytes(txn.get(c)[o:o + 64]))
            return out

        it[BARE_GET] = fresh_txn_gets
        if sq is not None:
            ex = sq.execute
            it["sqlite3 SELECT by pk"] = lambda: [ex("SELECT data FROM t WHERE id=?", (i,)).fetchone() for i in ids]
        if rk is not None:
            it["rocksdict get"] = lambda: [rk.get(x) for x in kb]
        if d is not None:
            it["python dict of Token"] = lambda: [d[i] for i in ids]
        # the target's pair in rounds (get_token, then its bare counterpart), the rest one by one
        pair = alternated({name: it.pop(name) for name in (NG_GET, BARE_GET)}, max(reps, 7), scale=1e9 / k,
                          warmup=True)
        for name, times in pair.items():
            b.record(W_POINT, name, n, "ns/read", times)
        pair_ratios[n] = [x / y for x, y in zip(pair[NG_GET], pair[BARE_GET], strict=True)]
        for name, fn in it.items():
            b.record(W_POINT, name, n, "ns/read", repeat(fn, reps, scale=1e9 / k, warmup=True))

        # -- batch random gathers (n random ids)
        g = rng.integers(0, n, n).astype(np.uint32)
        gl = g.tolist()
        raw = arr.view(V64)
        mmraw = mm.view(V64)
        b.record(W_GATHER, "ngstore get_tokens", n, "ns/token",
                 repeat(lambda: s.get_tokens(g), reps, scale=1e9 / n, warmup=True))
        b.record(W_GATHER, "numpy in-RAM V64 take", n, "ns/token",
                 repeat(lambda: raw[g], reps, scale=1e9 / n, warmup=True))
        b.record(W_GATHER, "numpy in-RAM structured take", n, "ns/token",
                 repeat(lambda: arr[g], reps, scale=1e9 / n, warmup=True))
        b.record(W_GATHER, "numpy memmap V64 take", n, "ns/token",
                 repeat(lambda: mmraw[g], reps, scale=1e9 / n, warmup=True))
        m = min(n, 100_000)
        gb = [i.to_bytes(8, "big") for i in gl[:m]]
        b.record(W_GATHER, "lmdb key per record", n, "ns/token",
                 repeat(lambda: [tk.get(x) for x in gb], reps, scale=1e9 / m, warmup=True),
                 note="" if m == n else f"{m:,} of the ids")
        if d is not None:
            b.record(W_GATHER, "python dict of Token", n, "ns/token",
                     repeat(lambda: [d[i] for i in gl], reps, scale=1e9 / n, warmup=True))
        tk.abort()
        tc.abort()

        # -- warm column scans
        scan_ratios[n] = scan_rows(b, s, arr, n, reps)
        b.record(W_SCAN, "numpy memmap .npy", n, "ns/token",
                 repeat(lambda: float(mm["weight"].sum()), reps, scale=1e9 / n, warmup=True))
        b.record(W_SCAN, "lmdb 64 KiB chunks", n, "ns/token",
                 repeat(lambda: lmdb_chunk_scan(env_c), reps, scale=1e9 / n, warmup=True))
        if sq is not None:
            def sq_scan() -> float:
                rows = sq.execute("SELECT data FROM t ORDER BY id").fetchall()
                return float(np.frombuffer(b"".join(r[0] for r in rows), ngstore.TOKEN_DTYPE)["weight"].sum())

            b.record(W_SCAN, "sqlite3 SELECT all", n, "ns/token",
                     repeat(sq_scan, max(2, reps // 2), scale=1e9 / n, warmup=True))
        if d is not None:
            b.record(W_SCAN, "python dict of Token", n, "ns/token",
                     repeat(lambda: sum(t.weight for t in d.values()), max(2, reps // 2), scale=1e9 / n))
        want = float(arr["weight"].sum())
        assert abs(ng_scan(s) - want) <= 1e-3 * abs(want) + 1, "ngstore scan disagrees with numpy"

        # -- cold column scans: close, drop the file's page cache, reopen (untimed), scan
        s.close()
        env_c.close()
        mm = mmraw = None  # a live mapping keeps its pages cached
        cold_reps = max(2, reps - 2)
        dropped: list[float] = []

        def cold(label: str, files: list[str], open_fn: Callable[[], Any], scan: Callable[[Any], float],
                 close: Callable[[Any], None]) -> None:
            out = []
            for _ in range(cold_reps):
                _ok, mb = drop_file_cache(files)
                dropped.append(mb)
                h = open_fn()
                out += repeat(lambda: scan(h), 1, scale=1e9 / n)
                close(h)
            b.record(W_COLD, label, n, "ns/token", out, note=f"dropped ≈{np.median(dropped):.0f} MB")

        ngp = dataset(b, "ngstore", n)
        cold("ngstore snapshot views", [os.path.join(ngp, "data.mdb")],
             lambda: ngstore.open(ngp, **store_options(n)), ng_scan, lambda h: h.close())
        cold("numpy memmap .npy", [npy_path(b, n)], lambda: np.load(npy_path(b, n), mmap_mode="r"),
             lambda h: float(h["weight"].sum()), lambda h: None)
        lcp = dataset(b, "lmdb 64 KiB chunks", n)
        cold("lmdb 64 KiB chunks", [lcp],
             lambda: lmdb.open(lcp, map_size=LMDB_MAP, readonly=True, lock=False), lmdb_chunk_scan,
             lambda h: h.close())
        env_k.close()
        if sq is not None:
            sq.close()
        if rk is not None:
            rk.close()
        d = None

    if not b.quick and SCAN_AT_SCALE not in b.sizes:
        scan_ratios[SCAN_AT_SCALE] = scan_at_scale(b, SCAN_AT_SCALE, reps)
    n = 1_000_000 if b.max_size >= 1_000_000 else b.max_size
    g = b.get(W_GATHER, "ngstore get_tokens", n)
    if g:
        b.check("store core", f"get_tokens of {n:,} random ids, ns/token", g.median, "<=", 200, "absolute", n)
    p = b.get(W_POINT, NG_GET, n)
    if p:
        b.check("store core", "get_token of one id, µs", p.median / 1e3, "<=", 2.0,
                f"{p.median:.0f} ns per call, store of {n:,}", n)
    if n in pair_ratios:
        r = pair_ratios[n]
        b.check("store core", "get_token ÷ a bare py-lmdb get in a fresh read txn (median of rounds)",
                float(np.median(r)), "<=", 1.5,
                f"{len(r)} rounds of {NG_GET} then {BARE_GET}, 20,000 random ids each; round ratios "
                f"{min(r):.3g}-{max(r):.3g}", n)
    for size in (n, SCAN_AT_SCALE):
        for name, what in ((NG_VIEWS, "over snapshot views"), (NG_COLUMN, "with column()")):
            r = scan_ratios.get(size, {}).get(name)
            if r:
                b.check("store core", f"column scan {what} ÷ in-RAM numpy (median of rounds)",
                        float(np.median(r)), "<=", 1.5,
                        f"{len(r)} rounds of the store's scans and the in-RAM column; round ratios "
                        f"{min(r):.3g}-{max(r):.3g}", size)
        if size == n:
            b.ratio_check("store core", "column scan over bare py-lmdb chunks ÷ in-RAM numpy (the views' floor)",
                          W_SCAN, "lmdb 64 KiB chunks", RAM_COLUMN, "report", 0.0, n)
