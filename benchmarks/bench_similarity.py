"""Issue 14's questions on similarity and traversal, against their peers in the same run.

* ``knn`` exact k=10 over the 24 coordinates, a batch of 100 queries, on n random tokens
  (uniform over the whole i16 range): against faiss ``IndexFlatL2`` (the same data as
  float32; faiss-cpu is an optional extra of the benchmarks only) and numpy brute force
  (timed on 5 queries, scaled to 100).
* ``within`` on one layer at about 0.1 % selectivity (a ball of radius 4065.5 raw units:
  0.1 % of the i16 cube's volume): the store's index, the same store without it (a full
  scan in C), scipy ``cKDTree.query_ball_point`` (tree in RAM, build not counted) and a
  numpy mask over the layer's coordinates (held in RAM).
* ``k_hop(k=2)`` from 1,000 seeds on a graph of n connections over n/10 tokens, against a
  Python BFS over a dict of adjacency lists (built beforehand, not counted).
* What the spatial index costs writes: a bulk put of n tokens, and 10-token commits
  (``durability="none"``, timed until applied), each with and without the index.

Targets (issue 14): knn ≤ 1 × faiss; within ≤ 3 × cKDTree and ≥ 20 × faster than the mask;
k_hop ≥ 20 × faster than the Python BFS.
"""
from __future__ import annotations

import collections

import numpy as np
from _harness import Bench, repeat

import ngstore
from ngstore.connections import new_connections
from ngstore.records import TOKEN_DTYPE

W_KNN = "knn k=10, 100 queries"
W_WITHIN = "within, 0.1% of tokens"
W_HOP = "k_hop k=2, 1000 seeds"
W_INGEST = "bulk put, spatial index"
W_SMALL = "10-token commits, index"
RADIUS = 4065.5
LAYER = 3


def _tokens(n: int, seed: int = 14) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(n, TOKEN_DTYPE)
    a["id"] = np.arange(n, dtype=np.uint32)
    a["flags"] = 1
    a["coordinates"] = rng.integers(-32768, 32768, size=(n, 8, 3), dtype=np.int16)
    return a


def _open(b: Bench, name: str, index: bool) -> ngstore.Store:
    return ngstore.open(b.tmpdir("similarity", name), spatial_index=index, max_tokens=None, max_bytes=None,
                        crash_handlers=False)


def run(b: Bench) -> None:
    n = b.max_size
    reps = b.repeats
    arr = _tokens(n)
    rng = np.random.default_rng(1)
    b.log(f"\n# similarity and traversal (n = {n})")

    # -- what the index costs writes ------------------------------------------------------
    stores = {}
    for index in (True, False):
        label = "with index" if index else "without index"
        s = _open(b, label, index)
        samples = []
        for r in range(max(2, reps // 2)):
            if r:
                s.delete_tokens(arr["id"])
            t = repeat(lambda: (s.put_tokens(arr), s.snapshot().close()), 1)
            samples += t
        b.record(W_INGEST, f"ngstore {label}", n, "s", samples)
        stores[index] = s
    small = 2000
    for index in (True, False):
        label = "with index" if index else "without index"
        s = stores[index]

        def commits() -> None:
            for i in range(small):
                chunk = arr[(i * 10) % (n - 10):(i * 10) % (n - 10) + 10].copy()
                chunk["coordinates"] += 1
                s.put_tokens(chunk, durability="none")
            s.snapshot().close()  # waits until LMDB has applied them all
        b.record(W_SMALL, f"ngstore {label}", small, "µs/commit", repeat(commits, max(2, reps // 2), scale=1e6 / small))
    b.ratio_check("similarity", "bulk put: with ÷ without the spatial index", W_INGEST, "ngstore with index",
                  "ngstore without index", "report", 0)
    b.ratio_check("similarity", "small commits: with ÷ without the spatial index", W_SMALL, "ngstore with index",
                  "ngstore without index", "report", 0)
    s, s_plain = stores[True], stores[False]

    # -- knn -------------------------------------------------------------------------------
    q = arr["coordinates"][rng.integers(0, n, 100)].reshape(100, 24).astype(np.int16) + 1
    with s.snapshot() as snap:
        b.record(W_KNN, "ngstore knn (C over the map)", n, "ms/batch",
                 repeat(lambda: snap.tokens.knn(q, 10), reps, scale=1e3, warmup=True))
        got = snap.tokens.knn(q, 10)
    xf = arr["coordinates"].reshape(n, 24).astype(np.float32)
    try:
        import faiss

        index = faiss.IndexFlatL2(24)
        index.add(xf)
        qf = q.astype(np.float32)
        b.record(W_KNN, f"faiss IndexFlatL2 ({faiss.omp_get_max_threads()} threads)", n, "ms/batch",
                 repeat(lambda: index.search(qf, 10), reps, scale=1e3, warmup=True))
        _d, fi = index.search(qf, 10)
        same = float(np.mean([len(set(fi[i]) & set(got.ids[i].tolist())) / 10 for i in range(100)]))
        b.log(f"  faiss agrees with ngstore on {same:.1%} of the neighbours (float32 vs exact)")
        b.ratio_check("similarity", "knn ÷ faiss IndexFlatL2", W_KNN, "ngstore knn (C over the map)",
                      f"faiss IndexFlatL2 ({faiss.omp_get_max_threads()} threads)", "<=", 1.0)
    except ImportError:
        b.notes.append("faiss-cpu is not installed: knn has no faiss figure (pip install faiss-cpu)")
    x64 = arr["coordinates"].reshape(n, 24).astype(np.int64)

    def numpy_knn() -> None:
        for i in range(5):
            d = ((x64 - q[i]) ** 2).sum(1)
            np.argpartition(d, 10)[:10]
    b.record(W_KNN, "numpy brute force (5 queries × 20)", n, "ms/batch",
             repeat(numpy_knn, max(2, reps // 2), scale=1e3 * 20))
    del xf

    # -- within ----------------------------------------------------------------------------
    centers = rng.integers(-20000, 20000, size=(200, 3))
    layer_xyz = np.ascontiguousarray(arr["coordinates"][:, LAYER, :])
    with s.snapshot() as snap:
        counts = [snap.tokens.within(c, RADIUS, layer=LAYER).size for c in centers[:20]]

        def within_all() -> None:
            for c in centers:
                snap.tokens.within(c, RADIUS, layer=LAYER)
        b.record(W_WITHIN, "ngstore within (index)", n, "µs/query",
                 repeat(within_all, reps, scale=1e6 / len(centers), warmup=True),
                 mean_results=float(np.mean(counts)))
    with s_plain.snapshot() as snap2:
        assert snap2.tokens.count() == n
        b.record(W_WITHIN, "ngstore within (no index: C scan)", n, "µs/query",
                 repeat(lambda: [snap2.tokens.within(c, RADIUS, layer=LAYER) for c in centers[:20]],
                        max(2, reps // 2), scale=1e6 / 20))
    s_plain.close()
    try:
        from scipy.spatial import cKDTree

        tree = cKDTree(layer_xyz.astype(np.float64))
        cf = centers.astype(np.float64)
        b.record(W_WITHIN, "scipy cKDTree (in RAM)", n, "µs/query",
                 repeat(lambda: [tree.query_ball_point(c, RADIUS) for c in cf], reps, scale=1e6 / len(centers),
                        warmup=True))
        b.ratio_check("similarity", "within ÷ scipy cKDTree", W_WITHIN, "ngstore within (index)",
                      "scipy cKDTree (in RAM)", "<=", 3.0)
    except ImportError:
        b.notes.append("scipy is not installed: within has no cKDTree figure (pip install scipy)")
    xyz32 = layer_xyz.astype(np.int32)

    def mask() -> None:
        for c in centers[:20]:
            d = (xyz32[:, 0] - c[0]) ** 2 + (xyz32[:, 1] - c[1]) ** 2 + (xyz32[:, 2] - c[2]) ** 2
            np.flatnonzero(d <= RADIUS * RADIUS)
    b.record(W_WITHIN, "numpy mask (in RAM)", n, "µs/query", repeat(mask, max(2, reps // 2), scale=1e6 / 20))
    b.ratio_check("similarity", "numpy mask ÷ within (faster by)", W_WITHIN, "numpy mask (in RAM)",
                  "ngstore within (index)", ">=", 20.0)
    s.close()

    # -- k_hop -----------------------------------------------------------------------------
    nodes = max(1000, n // 10)
    a_ = rng.integers(0, nodes, n)
    b_ = rng.integers(0, nodes, n)
    keep = a_ != b_
    lo, hi = np.minimum(a_, b_)[keep].astype(np.uint32), np.maximum(a_, b_)[keep].astype(np.uint32)
    recs = new_connections(lo, hi, 0x50, now=1_700_000_000)
    recs = recs if isinstance(recs, np.ndarray) else recs.data
    g = ngstore.open(b.tmpdir("similarity", "graph"), max_tokens=None, max_bytes=None, crash_handlers=False)
    for i in range(0, recs.shape[0], 200_000):
        g.put_connections(recs[i:i + 200_000])
    seeds = rng.integers(0, nodes, 1000)
    adj: dict[int, list[int]] = collections.defaultdict(list)
    for x, y in zip(lo.tolist(), hi.tolist(), strict=True):
        adj[x].append(y)
        adj[y].append(x)

    def python_bfs() -> int:
        depth = dict.fromkeys(seeds.tolist(), 0)
        frontier = list(depth)
        for level in (1, 2):
            nxt = []
            for node in frontier:
                for m in adj[node]:
                    if m not in depth:
                        depth[m] = level
                        nxt.append(m)
            frontier = nxt
        return len(depth)
    with g.snapshot() as snap:
        reached = snap.connections.k_hop(seeds, 2).ids.size
        assert reached == python_bfs()
        b.record(W_HOP, "ngstore k_hop (prefix scans)", recs.shape[0], "ms",
                 repeat(lambda: snap.connections.k_hop(seeds, 2), max(2, reps // 2), scale=1e3),
                 reached=reached)
    b.record(W_HOP, "python BFS over a dict (in RAM)", recs.shape[0], "ms", repeat(python_bfs, reps, scale=1e3))
    b.ratio_check("similarity", "python BFS ÷ k_hop (faster by)", W_HOP, "python BFS over a dict (in RAM)",
                  "ngstore k_hop (prefix scans)", ">=", 20.0)
    g.close()
