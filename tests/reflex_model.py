"""A plain-Python model of the reflex table (format §7, version 2), for property tests.

It keeps {(cell, identity): (record bytes, write tick, source state)} and predicts every
outcome: upserts (the source state is replaced too), the 4-candidate cap, eviction at
capacity (tables used with this model hold <= 32 reflexes, so the eviction window covers
them all and the victim is the globally weakest: lowest confidence, then oldest write),
the exact-path answer and the nearest fallback for any thresholds. Similarity and
distance repeat the C expressions operation for operation, so comparisons with the
thresholds agree to the last bit.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ngstore.codec import DEFAULT_SHIFTS
from ngstore.reflex import quantized_state_bytes

Key = tuple[bytes, bytes]


def ref_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    a, b = [int(x) for x in a], [int(x) for x in b]
    if a == b:
        return 1.0
    na, nb = sum(x * x for x in a), sum(x * x for x in b)
    if na == 0 or nb == 0:
        return 0.0
    c = float(sum(x * y for x, y in zip(a, b, strict=True))) / math.sqrt(float(na) * float(nb))
    return min(max(c, 0.0), 1.0)


def ref_dist2(a: Sequence[int], b: Sequence[int], shifts: Sequence[int] = DEFAULT_SHIFTS) -> float:
    d2 = 0.0
    for i in range(24):
        w = float(1 << int(shifts[i // 3]))
        d = float(int(a[i]) - int(b[i]))
        d2 += d * d * (1.0 / (w * w))
    return d2


def raw_state(state: np.ndarray) -> tuple[int, ...]:
    """24 raw coordinates of an (8, 3) int16 state or of 8 floats (X axes)."""
    s = np.asarray(state)
    if s.dtype == np.int16:
        return tuple(int(x) for x in s.reshape(24))
    from ngstore.codec import state_coordinates

    return tuple(int(x) for x in state_coordinates(s.reshape(1, 8).astype(np.float32)).reshape(24))


class Model:
    def __init__(self, capacity: int, shifts: Sequence[int] = DEFAULT_SHIFTS) -> None:
        self.capacity = capacity
        self.shifts = tuple(shifts)
        self.entries: dict[Key, tuple[bytes, int, tuple[int, ...]]] = {}
        self.tick = 0

    def cell(self, raw: Sequence[int]) -> bytes:
        return quantized_state_bytes(np.asarray(raw, np.int16).reshape(8, 3), self.shifts)

    def _next(self) -> int:
        self.tick += 1
        return self.tick - 1

    @staticmethod
    def _strength(item: tuple[Key, tuple[bytes, int, tuple[int, ...]]]) -> tuple[int, int]:
        raw, tick, _ = item[1]
        return raw[33], tick

    def insert(self, state: Sequence[int], conn: bytes) -> str:
        q = self.cell(state)
        key = (q, conn[:9])
        if key in self.entries:
            self.entries[key] = (conn, self._next(), tuple(state))
            return "updated"
        same = [it for it in self.entries.items() if it[0][0] == q]
        outcome = "inserted"
        if len(same) >= 4:
            del self.entries[min(same, key=self._strength)[0]]
            outcome = "replaced"
        elif len(self.entries) >= self.capacity:
            del self.entries[min(self.entries.items(), key=self._strength)[0]]
            outcome = "evicted"
        self.entries[key] = (conn, self._next(), tuple(state))
        return outcome

    def delete(self, state: Sequence[int], ident: bytes | None) -> int:
        q = self.cell(state)
        keys = [k for k in self.entries if k[0] == q and (ident is None or k[1] == ident)]
        for k in keys:
            del self.entries[k]
        return len(keys)

    def known(self, state: Sequence[int]) -> bool:
        q = self.cell(state)
        return any(k[0] == q for k in self.entries)

    def _eligible(self, query: Sequence[int], conn: bytes, src: Sequence[int], min_conf: int, hyp: int,
                  sim: float) -> float | None:
        conf, mut = conn[33], conn[32]
        if conf < min_conf or (mut == 2 and conf < hyp):
            return None
        s = ref_similarity(query, src)
        return s if s > sim else None

    def answer(self, query: Sequence[int], min_conf: int = 150, hyp: int = 200, sim: float = 0.85,
               radius: float | None = None) -> tuple[bytes, bool] | None:
        """(record, by_fallback) of the answer, or None."""
        q = self.cell(query)
        best: tuple[tuple[int, float, int], bytes] | None = None
        for (kq, _), (conn, tick, src) in self.entries.items():
            if kq != q:
                continue
            s = self._eligible(query, conn, src, min_conf, hyp, sim)
            if s is not None and (best is None or (conn[33], s, tick) > best[0]):
                best = ((conn[33], s, tick), conn)
        if best is not None:
            return best[1], False
        if radius is None:
            return None
        near: tuple[tuple[float, int, int], bytes] | None = None
        r2 = radius * radius
        for (kq, _), (conn, tick, src) in self.entries.items():
            d2 = ref_dist2(query, src, self.shifts)
            if d2 > r2 or self._eligible(query, conn, src, min_conf, hyp, sim) is None:
                continue
            rank = (d2, -conn[33], -tick)
            if near is None or rank < near[0]:
                near = (rank, conn)
        return None if near is None else (near[1], True)
