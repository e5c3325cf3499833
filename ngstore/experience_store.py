"""The ExperienceStream of a store: persistent events, the in-memory ring as a cache.

Writes (``write_event``/``write_events``) commit a batch through the store; after the
LMDB transaction commits, the store appends the same events to this ring in commit
order (``_append_committed``), so the ring's sequence numbers are the store's.
Reads, sampling, subscriptions and appraisal work on the ring exactly as for an
in-memory stream.

Limit: reward slots written later into an event already committed
(``set_appraiser_reward``, ``appraise``) change the ring only, not the stored event; a
reopened store has the rewards the events were written with.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from .experience import ExperienceStream
from .kv import DB_EVENTS
from .records import EVENT_DTYPE

if TYPE_CHECKING:
    from .store import Store

_SEQ = struct.Struct(">Q")
MAX_RING = 1 << 20  # the ring caches at most this many of the newest events


class StoreExperienceStream(ExperienceStream):
    def __init__(self, store: "Store", channel_size: int = 1000) -> None:
        super().__init__(capacity=min(store._event_capacity, MAX_RING), channel_size=channel_size)
        self._store = store
        self._loading = True  # restore() calls write_events: those go to the ring only
        try:
            self._load()
        finally:
            self._loading = False

    def _load(self) -> None:
        from .store import M_EVENTS_NEXT, _ReadTxn, read_counter

        store = self._store
        with _ReadTxn(store._kv) as txn:
            next_seq = read_counter(txn, store._kv, M_EVENTS_NEXT)
            first = max(0, next_seq - self.capacity)
            db = store._kv.dbs[DB_EVENTS]
            rows = []
            first_seq = next_seq
            if db is not None:
                cur = txn.cursor(db=db)
                if cur.set_range(_SEQ.pack(first)):
                    for key, value in cur:
                        if not rows:
                            first_seq = _SEQ.unpack(bytes(key))[0]
                        rows.append(bytes(value))
        events = np.frombuffer(b"".join(rows), dtype=EVENT_DTYPE).copy() if rows \
            else np.zeros(0, EVENT_DTYPE)
        self.restore(first_seq, events)
        if first_seq + events.shape[0] != next_seq:  # pragma: no cover - a check() problem
            raise AssertionError("stored events are not contiguous")

    def write_event(self, event: Any) -> int:
        """Commits one event through the store; returns its sequence number."""
        return self._store.write_events(event)

    def write_events(self, events: Any) -> int:
        """Commits events through the store; returns the first sequence number."""
        if self._loading:
            return ExperienceStream.write_events(self, events)
        return self._store.write_events(events)

    def _append_committed(self, first_seq: int, events: np.ndarray) -> None:
        got = ExperienceStream.write_events(self, events)
        if got != first_seq:  # pragma: no cover - the ring and the store disagree
            raise AssertionError(f"experience ring at {got}, store at {first_seq}")
