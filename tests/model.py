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
