"""Known outcomes against a model: any sequence of keyed commits, outcome questions, reopens
with another ``remember_keys`` and applies agrees with a window of the newest keys.

The model applies each logged keyed batch in order: a new key is recorded and the oldest
beyond the batch's window is forgotten. The store decides duplicates when it commits, against
the keys pending in its overlay and those LMDB holds, and LMDB forgets lazily (when the
applier applies the batches that push a key out). So where the model has forgotten a key
the store may still know it: a key inside the model's window must be answered COMMITTED and
deduplicated; a key the model forgot may be either, until the applier has caught up -- after
``flush()`` the answers are exact. Every run ends with ``check()``.
"""
from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

import ngstore
from ngstore import Outcome
from ngstore.experience import new_events

KEYS = [f"key-{i}" for i in range(7)]
keys_st = st.sampled_from(KEYS)
OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 27)


class OutcomesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ngstore-outcomes-")
        self.path = self.dir + "/s"
        self.remember = 3
        self.store = ngstore.open(self.path, **OPEN, remember_keys=self.remember, durability="none",
                                  apply_interval=3600.0)
        self.window: list[str] = []          # the keys LMDB will hold, oldest first
        self.ever: set[str] = set()          # every key ever recorded
        self.first: dict[str, int] = {}      # the first event of a key's latest recorded batch
        self.forgotten = 0
        self.next_event = 0

    def _record(self, key: str, n: int) -> None:
        self.window.append(key)
        self.ever.add(key)
        self.first[key] = self.next_event
        self.next_event += n
        while len(self.window) > self.remember:
            self.window.pop(0)
            self.forgotten += 1

    @rule(key=keys_st, n=st.integers(1, 3), durability=st.sampled_from(["sync", "async", "none"]))
    def commit(self, key: str, n: int, durability: str) -> None:
        with self.store.batch(durability, key=key) as b:
            b.append_events(new_events(n, event_type=1, step=self.next_event, timestamp_us=1))
        if key in self.window:
            assert b.already_committed and b.first_event == self.first[key]
        elif key not in self.ever:
            assert not b.already_committed and b.first_event == self.next_event
        elif b.already_committed:  # forgotten by the model, not yet by LMDB
            assert b.first_event == self.first[key]
        if not b.already_committed:
            assert b.first_event == self.next_event
            self._record(key, n)

    @rule(key=keys_st)
    def outcome(self, key: str) -> None:
        got = self.store.outcome(key)
        if key in self.window:
            assert got is Outcome.COMMITTED
        elif key in self.ever:
            assert got in (Outcome.COMMITTED, Outcome.UNKNOWN_KEY)
        elif self.forgotten == 0:
            assert got is Outcome.NOT_COMMITTED
        else:
            assert got in (Outcome.NOT_COMMITTED, Outcome.UNKNOWN_KEY)

    @rule()
    def applied_answers_are_exact(self) -> None:
        self.store.flush()  # LMDB holds every commit: it has forgotten what the model has
        for key in KEYS:
            expect = (Outcome.COMMITTED if key in self.window
                      else Outcome.NOT_COMMITTED if self.forgotten == 0 else Outcome.UNKNOWN_KEY)
            assert self.store.outcome(key) is expect, key

    @rule(remember=st.integers(1, 5))
    def reopen(self, remember: int) -> None:
        self.store.close()
        self.remember = remember  # the window of the batches committed from now on
        self.store = ngstore.open(self.path, **OPEN, remember_keys=remember, durability="none",
                                  apply_interval=3600.0)

    def teardown(self) -> None:
        try:
            report = self.store.check()
            assert report.ok, str(report)
            assert report.facts["outcome_keys"] == len(self.window)
            assert report.facts["outcome_keys_forgotten"] == self.forgotten
            assert self.store.stats()["events_live"] == self.next_event
            with self.store.snapshot() as snap:
                _first, rows = snap.events.since(0)
            for k in self.window:  # each remembered key's first event is its batch's (step = that number)
                assert int(rows["step"][self.first[k]]) == self.first[k]
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


TestOutcomesModel = OutcomesModel.TestCase
TestOutcomesModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
