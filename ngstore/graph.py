"""Graph walks over the stored connections: k-hop neighbourhoods and shortest paths.

A connection (a, b, type) is stored once, in canonical order a <= b (docs/format.md §2.2,
§3): the store keeps no direction, so a walk follows a connection both ways by default
(``direction="out"`` follows a -> b only, ``"in"`` b -> a only). A node's connections are
one prefix scan of ``connections`` (where it is ``a``) and one of ``conn_by_b`` (where it
is ``b``), so a walk costs time in proportion to the connections it touches, never to the
size of the graph, and reads one LMDB read transaction: one consistent state.

Strength and weights. ``pull_strength`` (f32, stored range [0, 100]; reflexes (0, 100];
see ``validation``) is how strongly a connection pulls its tokens together: stronger is
closer. ``min_strength`` keeps only connections with ``pull_strength >= min_strength``.
``shortest_path(weight="pull_strength")`` gives a connection the cost ``1 / pull_strength``
-- the original Graph's Dijkstra rule -- and 1 when the strength is 0 or below (a fresh
connection's 0.0) or not finite; between two tokens joined by several connections the
cheapest counts. ``weight=None`` counts hops.
"""
from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ._native import check_status, ffi, lib
from .errors import InvalidArgumentError
from .inputs import ids_array

_U32 = struct.Struct(">I")
_F32 = struct.Struct("<f")
DIRECTIONS = ("both", "out", "in")


class Hops(NamedTuple):
    """What ``k_hop`` returns: the ids reached (uint32, ascending; the seeds included) and
    the depth (uint32) at which each was first reached (0 for a seed)."""

    ids: np.ndarray
    depth: np.ndarray


class Path(NamedTuple):
    """A shortest path: its ids from ``a`` to ``b`` (uint32) and its cost (hops, or the
    sum of the connections' costs)."""

    ids: np.ndarray
    cost: float


class Filter:
    """Which connections a walk follows."""

    def __init__(self, types: Any, min_strength: Any, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise InvalidArgumentError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        self.types: frozenset[int] | None = None
        if types is not None:
            if isinstance(types, (int, np.integer)) and not isinstance(types, bool):
                types = [types]
            try:
                self.types = frozenset(int(t) for t in types)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"types must be connection type codes 0..255, got {types!r}") from None
            if any(not 0 <= t <= 255 for t in self.types):
                raise InvalidArgumentError(f"types must be connection type codes 0..255, got {types!r}")
        if min_strength is not None and (isinstance(min_strength, bool) or not isinstance(
                min_strength, (int, float, np.integer, np.floating)) or math.isnan(min_strength)):
            raise InvalidArgumentError(f"min_strength must be a number or None, got {min_strength!r}")
        self.min_strength = None if min_strength is None else float(min_strength)


def _strength(record: Any) -> float:
    return float(_F32.unpack_from(record, 16)[0])


class Walker:
    """One cursor per database for a whole walk (a cursor costs more than a step)."""

    def __init__(self, txn: Any, conn_db: Any, rev_db: Any, f: Filter) -> None:
        self.txn, self.conn_db, self.f = txn, conn_db, f
        self.fwd = txn.cursor(db=conn_db) if conn_db is not None and f.direction != "in" else None
        self.rev = txn.cursor(db=rev_db) if rev_db is not None and f.direction != "out" else None


def edges(w: Walker, node: int, values: bool) -> Iterator[tuple[int, int, Any]]:
    """``(neighbour, type, record or None)`` of every connection of ``node`` the filter
    keeps (the record is read when ``values`` or the filter needs it)."""
    prefix = _U32.pack(node)
    f, txn, conn_db = w.f, w.txn, w.conn_db
    need = values or f.min_strength is not None
    types, floor = f.types, f.min_strength
    if w.fwd is not None:
        cur = w.fwd
        if cur.set_range(prefix):
            for key, value in (cur.iternext(keys=True, values=True) if need else
                               ((key, None) for key in cur.iternext(keys=True, values=False))):
                if key[:4] != prefix:
                    break
                t = key[8]
                if types is not None and t not in types:
                    continue
                if floor is not None and not _strength(value) >= floor:
                    continue
                yield int.from_bytes(key[4:8], "big"), t, value if need else None
    if w.rev is not None:
        cur = w.rev
        if cur.set_range(prefix):
            for key in cur.iternext(keys=True, values=False):
                if key[:4] != prefix:
                    break
                t = key[8]
                other = int.from_bytes(key[4:8], "big")
                if (types is not None and t not in types) or (other == node and f.direction == "both"):
                    continue  # a self-connection was met on the forward side already
                value = None
                if need:
                    value = txn.get(bytes(key[4:8]) + prefix + bytes(key[8:9]), db=conn_db)
                    if value is None or (floor is not None and not _strength(value) >= floor):
                        continue
                yield other, t, value


class Tree(NamedTuple):
    """Where a read transaction's connection B-trees lie in the mapped data file (see
    csrc/graph.h): the map's address and readable length, LMDB's page size, and the root
    pages of ``connections`` and ``conn_by_b`` (2**64 - 1: empty)."""

    address: int
    length: int
    page_size: int
    fwd_root: int
    rev_root: int


def _walk_in_c(tree: Tree, seeds: np.ndarray, k: int, f: Filter, cap: int) -> Hops:
    mask = np.zeros(32, dtype=np.uint8)
    if f.types is None:
        mask[:] = 0xFF
    else:
        for t in f.types:
            mask[t >> 3] |= 1 << (t & 7)
    direction = {"out": 1, "in": 2, "both": 3}[f.direction]
    while True:
        ids = np.empty(max(cap, 1), dtype=np.uint32)
        depth = np.empty(max(cap, 1), dtype=np.uint32)
        n_out = ffi.new("size_t *")
        rc = lib.ng_graph_walk(ffi.cast("const uint8_t *", tree.address), tree.length, tree.page_size,
                               tree.fwd_root, tree.rev_root, ffi.from_buffer("uint32_t[]", seeds), seeds.size, k,
                               direction, ffi.from_buffer("uint8_t[]", mask), f.min_strength is not None,
                               f.min_strength if f.min_strength is not None else 0.0,
                               ffi.from_buffer("uint32_t[]", ids, require_writable=True),
                               ffi.from_buffer("uint32_t[]", depth, require_writable=True), cap, n_out)
        if rc == -6 and int(n_out[0]) > cap:  # NG_ERANGE: more were reached than guessed
            cap = int(n_out[0])
            continue
        check_status("ng_graph_walk", rc, "the connection B-tree pages are not what LMDB writes")
        n = int(n_out[0])
        order = np.argsort(ids[:n])  # the ids are distinct: no need for a stable sort
        return Hops(ids[:n][order], depth[:n][order])


def k_hop(txn: Any, conn_db: Any, rev_db: Any, seeds: Any, k: Any, f: Filter, tree: Tree | None = None,
          connections: int = 0) -> Hops:
    """The tokens within ``k`` connections of any seed (a multi-source breadth-first walk);
    in C over the mapped pages when ``tree`` is given (``connections``: how many are
    stored, which bounds the answer), else by py-lmdb prefix scans."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 0:
        raise InvalidArgumentError(f"k must be an int >= 0, got {k!r}")
    start = np.unique(ids_array(seeds))
    if tree is not None and int(k) < 2**32:
        return _walk_in_c(tree, np.ascontiguousarray(start, dtype=np.uint32), int(k), f,
                          start.size + 2 * connections)
    w = Walker(txn, conn_db, rev_db, f)
    depth: dict[int, int] = dict.fromkeys(start.tolist(), 0)
    frontier = list(depth)
    for level in range(1, int(k) + 1):
        nxt = []
        for node in frontier:
            for other, _t, _v in edges(w, node, values=False):
                if other not in depth:
                    depth[other] = level
                    nxt.append(other)
        if not nxt:
            break
        frontier = nxt
    ids = np.fromiter(depth.keys(), dtype=np.uint32, count=len(depth))
    d = np.fromiter(depth.values(), dtype=np.uint32, count=len(depth))
    order = np.argsort(ids, kind="stable")
    return Hops(ids[order], d[order])


def _cost(record: Any) -> float:
    s = _strength(record)
    return 1.0 / s if s > 0.0 and math.isfinite(s) else 1.0


def shortest_path(txn: Any, conn_db: Any, rev_db: Any, a: Any, b: Any, weight: Any, f: Filter) -> Path | None:
    """The cheapest path from ``a`` to ``b`` (ties: the first found in id order), or None."""
    if weight not in (None, "pull_strength"):
        raise InvalidArgumentError(f"weight must be None or 'pull_strength', got {weight!r}")
    src, dst = (int(x) for x in ids_array([a, b]))
    w = Walker(txn, conn_db, rev_db, f)
    parent: dict[int, int] = {src: src}
    if weight is None:  # breadth first: the first time dst is reached is the fewest hops
        frontier = [src]
        while frontier and dst not in parent:
            nxt = []
            for node in frontier:
                for other, _t, _v in edges(w, node, values=False):
                    if other not in parent:
                        parent[other] = node
                        nxt.append(other)
            frontier = nxt
    else:  # Dijkstra
        dist = {src: 0.0}
        heap = [(0.0, src)]
        done: set[int] = set()
        while heap:
            d, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            if node == dst:
                break
            for other, _t, value in edges(w, node, values=True):
                nd = d + _cost(value)
                if other not in done and nd < dist.get(other, math.inf):
                    dist[other] = nd
                    parent[other] = node
                    heapq.heappush(heap, (nd, other))
    if dst not in parent:
        return None
    path = [dst]
    while path[-1] != src:
        path.append(parent[path[-1]])
    path.reverse()
    cost = float(len(path) - 1) if weight is None else dist[dst]
    return Path(np.asarray(path, dtype=np.uint32), cost)
