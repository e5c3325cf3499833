"""The ExperienceStream of a store: persistent events, the in-memory ring as a cache.

Writes (``write_event``/``write_events``) commit a batch through the store. As each
commit becomes visible, the writer calls :meth:`StoreExperienceStream.on_committed` with
the events it appended (in commit order), so the ring's sequence numbers are the store's
and an event is in the ring as soon as its commit returns; after each group reaches LMDB,
:meth:`StoreExperienceStream.on_applied` follows the events the Guardian trimmed. Reads,
sampling, subscriptions and appraisal work on the ring exactly as for an in-memory
stream.

Limit: reward slots written later into an event already committed
(``set_appraiser_reward``, ``appraise``) change the ring only, not the stored event; a
reopened store has the rewards the events were written with.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .apply import ApplyResult
from .experience import ExperienceStream
from .snapshot import Snapshot

MAX_RING = 1 << 20  # the ring caches at most this many of the newest events


class EventStore(Protocol):
    """What the stream needs from its store."""

    @property
    def event_capacity(self) -> int: ...

    def snapshot(self) -> Snapshot: ...

    def write_events(self, events: Any, *, durability: str | None = None) -> int: ...


class StoreExperienceStream(ExperienceStream):
    def __init__(self, store: EventStore, channel_size: int = 1000) -> None:
        super().__init__(capacity=min(store.event_capacity, MAX_RING), channel_size=channel_size)
        self._store = store
        self._loading = True  # restore() calls write_events: those go to the ring only
        try:
            with store.snapshot() as snap:
                next_seq = snap.events.next_sequence()
                first_seq, events = snap.events.since(max(0, next_seq - self.capacity))
            self.restore(first_seq, events)
        finally:
            self._loading = False
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

    def on_committed(self, first_seq: int, events: np.ndarray) -> None:
        """Events of a commit that just became visible join the ring."""
        got = ExperienceStream.write_events(self, events)
        if got != first_seq:  # pragma: no cover - the ring and the store disagree
            raise AssertionError(f"experience ring at {got}, store at {first_seq}")

    def on_applied(self, result: ApplyResult) -> None:
        """Events the Guardian trimmed from the store leave the ring too."""
        if result.events_trimmed:
            c = result.counters
            self.trim_before(min(c.events_next_seq - c.events_live, self.total_written))
