"""A plain-Python model of a store, for property tests to compare the real one against.

It holds what a store promises and nothing of how: tokens by id (the last write wins),
connections by canonical key (a, b, type), and an event log with retention (the newest
``event_capacity`` events; sequence numbers count every event ever written). A batch is
applied whole, in the order of its operations, as the store applies it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ModelStore:
    event_capacity: int = 1_000_000
    tokens: dict[int, bytes] = field(default_factory=dict)
    connections: dict[tuple[int, int, int], bytes] = field(default_factory=dict)
    events: dict[int, bytes] = field(default_factory=dict)  # sequence -> the event's bytes
    next_sequence: int = 0

    # -- writes (each is one batch of the real store) -----------------------------

    def put_tokens(self, records: np.ndarray) -> None:
        for r in records:
            self.tokens[int(r["id"])] = r.tobytes()

    def delete_tokens(self, ids) -> None:
        for i in ids:
            self.tokens.pop(int(i), None)

    def put_connections(self, records: np.ndarray) -> None:
        for r in records:
            self.connections[(int(r["token_a"]), int(r["token_b"]), int(r["connection_type"]))] = r.tobytes()

    def delete_connections(self, keys) -> None:
        for a, b, t in keys:
            self.connections.pop((min(a, b), max(a, b), t), None)

    def write_events(self, events: np.ndarray) -> int:
        """Appends events; returns the sequence number of the first (the store's rule)."""
        first = self.next_sequence
        for k, e in enumerate(events):
            row = np.array(e, copy=True)
            row["sequence"] = (first + k) & 0xFFFFFFFF
            self.events[first + k] = row.tobytes()
        self.next_sequence += len(events)
        for seq in [s for s in self.events if s < self.next_sequence - self.event_capacity]:
            del self.events[seq]
        return first

    # -- reads ------------------------------------------------------------------------

    def get_tokens(self, ids) -> list[bytes]:
        return [self.tokens[int(i)] for i in ids]

    def count(self) -> int:
        return len(self.tokens)

    def __contains__(self, token_id: int) -> bool:
        return token_id in self.tokens

    def neighbors(self, token_id: int) -> set[tuple[int, int, int]]:
        return {k for k in self.connections if token_id in (k[0], k[1])}

    # -- similarity and walks (what snapshot.tokens.knn / box / within and k_hop promise) ---------

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, raw coordinates (n, 24) int64) of the tokens."""
        ids = np.array(sorted(self.tokens), dtype=np.uint32)
        rows = [np.frombuffer(self.tokens[int(i)], dtype="<i2", count=24) for i in ids]
        return ids, (np.array(rows, dtype=np.int64) if rows else np.zeros((0, 24), np.int64))

    def knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 over the 24 raw coordinates; ties to the smaller id."""
        ids, x = self.coordinates()
        d = ((x - q.astype(np.int64)) ** 2).sum(1)
        order = np.lexsort((ids, d))[:k]
        return ids[order], d[order].astype(np.float64)

    def box(self, layer: int, lo, hi) -> list[int]:
        ids, x = self.coordinates()
        c = x[:, 3 * layer:3 * layer + 3]
        return ids[np.all((c >= lo) & (c <= hi), axis=1)].tolist()

    def within(self, layer: int, center, radius: float) -> list[int]:
        ids, x = self.coordinates()
        c = x[:, 3 * layer:3 * layer + 3]
        return ids[((c - np.asarray(center)) ** 2).sum(1) <= radius * radius].tolist()

    def k_hop(self, seeds, k: int) -> dict[int, int]:
        """Breadth first over the connections, both ways."""
        adj: dict[int, set[int]] = {}
        for a, b, _t in self.connections:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        depth = {int(s): 0 for s in seeds}
        frontier = list(depth)
        for level in range(1, k + 1):
            nxt = [m for n in frontier for m in sorted(adj.get(n, ())) if m not in depth]
            for m in nxt:
                depth.setdefault(m, level)
            frontier = list(dict.fromkeys(nxt))
        return depth
