"""Graph walks against a plain Python BFS and Dijkstra over the same random graphs."""
from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ngstore
from ngstore.connections import new_connections
from ngstore.errors import InvalidArgumentError


def connections(a, b, types, strength):
    a, b = np.asarray(a, np.uint32), np.asarray(b, np.uint32)
    recs = new_connections(np.minimum(a, b), np.maximum(a, b), 0x50, now=1_700_000_000)
    recs = recs if isinstance(recs, np.ndarray) else recs.data
    recs["connection_type"] = types
    recs["pull_strength"] = strength
    return recs


def adjacency(recs, direction="both", types=None, min_strength=None):
    adj: dict[int, list[tuple[int, float]]] = {}
    for r in recs:
        a, b, t, s = int(r["token_a"]), int(r["token_b"]), int(r["connection_type"]), float(r["pull_strength"])
        if (types is not None and t not in types) or (min_strength is not None and not s >= min_strength):
            continue
        cost = 1.0 / s if s > 0 and math.isfinite(s) else 1.0
        if direction in ("both", "out"):
            adj.setdefault(a, []).append((b, cost))
        if direction in ("both", "in") and (a != b or direction == "in"):
            adj.setdefault(b, []).append((a, cost))
    return adj


def bfs(adj, seeds, k):
    depth = {int(s): 0 for s in seeds}
    frontier = list(depth)
    for level in range(1, k + 1):
        nxt = []
        for n in frontier:
            for m, _c in adj.get(n, ()):
                if m not in depth:
                    depth[m] = level
                    nxt.append(m)
        frontier = nxt
    return depth


def dijkstra(adj, src, dst):
    dist = {src: 0.0}
    heap = [(0.0, src)]
    while heap:
        d, n = heapq.heappop(heap)
        if n == dst:
            return d
        if d > dist[n]:
            continue
        for m, c in adj.get(n, ()):
            if d + c < dist.get(m, math.inf):
                dist[m] = d + c
                heapq.heappush(heap, (d + c, m))
    return None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_walks_match_python_bfs_and_dijkstra_on_random_graphs(tmp_path_factory, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    nodes = data.draw(st.integers(2, 60))
    m = data.draw(st.integers(0, 200))
    a, b = rng.integers(0, nodes, m), rng.integers(0, nodes, m)
    types = rng.choice([0x50, 0x51, 0x10], m)
    strength = rng.choice([0.0, 0.5, 1.0, 2.5, 7.0, 100.0], m).astype(np.float32)
    recs = connections(a, b, types, strength)
    direction = data.draw(st.sampled_from(["both", "out", "in"]))
    tfilter = data.draw(st.sampled_from([None, [0x50], [0x51, 0x10]]))
    floor = data.draw(st.sampled_from([None, 0.0, 1.0, 5.0]))
    k = data.draw(st.integers(0, 4))
    seeds = rng.integers(0, nodes, data.draw(st.integers(1, 5)))
    path = str(tmp_path_factory.mktemp("graph") / "s")
    with ngstore.open(path, observability=False) as s:
        if m:
            s.put_connections(recs)
        stored = s.snapshot().connections.to_array()
        adj = adjacency(stored, direction, tfilter, floor)
        opts = dict(types=tfilter, min_strength=floor, direction=direction)
        hops = s.k_hop(seeds, k, **opts)
        want = bfs(adj, seeds, k)
        assert hops.ids.tolist() == sorted(want)
        assert hops.depth.tolist() == [want[i] for i in sorted(want)]
        src, dst = int(seeds[0]), int(rng.integers(0, nodes))
        got = s.shortest_path(src, dst, **opts)
        want_cost = dijkstra(adj, src, dst)
        if want_cost is None:
            assert got is None
        else:
            assert got is not None and got.ids[0] == src and got.ids[-1] == dst
            assert got.cost == pytest.approx(want_cost, rel=1e-12)
            hop = s.shortest_path(src, dst, weight=None, **opts)
            assert hop is not None and hop.cost == len(hop.ids) - 1 == bfs(adj, [src], nodes)[dst]
            for x, y in zip(got.ids[:-1].tolist(), got.ids[1:].tolist(), strict=True):  # a real path
                assert any(n == y for n, _c in adj.get(x, ()))


def test_a_walk_reads_one_snapshot(store):
    store.put_connections(connections([1, 2], [2, 3], [0x50, 0x50], [1.0, 1.0]))
    with store.snapshot() as snap:
        store.put_connections(connections([3], [4], [0x50], [1.0]))
        assert snap.connections.k_hop(1, 5).ids.tolist() == [1, 2, 3]
    assert store.k_hop(1, 5).ids.tolist() == [1, 2, 3, 4]
    assert store.k_hop([], 2).ids.size == 0


@pytest.mark.parametrize("call", [
    lambda s: s.k_hop([1], -1),
    lambda s: s.k_hop([1], 1.5),
    lambda s: s.k_hop([-1], 1),
    lambda s: s.k_hop([1], 1, direction="up"),
    lambda s: s.k_hop([1], 1, types=[300]),
    lambda s: s.k_hop([1], 1, min_strength="strong"),
    lambda s: s.shortest_path(1, 2, weight="rigidity"),
    lambda s: s.shortest_path(1, 2**32),
])
def test_bad_walk_arguments_are_refused(store, call):
    with pytest.raises(InvalidArgumentError):
        call(store)
