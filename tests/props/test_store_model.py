"""The store against a plain in-memory model: any sequence of operations agrees.

Ids are drawn from a few clustered ranges so chunks fill, split into runs, empty and
disappear; reopen is a step; every run ends with ``check()``.
"""
from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ngstore
from conftest import make_tokens

CHUNK = 16  # small chunks make every chunk-boundary case reachable quickly
ids_st = st.one_of(st.integers(0, 3 * CHUNK), st.integers(2**32 - 2 * CHUNK, 2**32 - 1),
                   st.integers(0, 2**32 - 1))


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ngstore-model-")
        self.path = self.dir + "/s"
        self.store = ngstore.open(self.path, chunk_slots=CHUNK, durability="async")
        self.model: dict[int, bytes] = {}
        self.version = 0

    @rule(ids=st.lists(ids_st, min_size=1, max_size=40))
    def put(self, ids):
        self.version += 1
        recs = make_tokens(ids, weight=np.float32(self.version))
        self.store.put_tokens(recs)
        for r in recs:
            self.model[int(r["id"])] = r.tobytes()

    @rule(ids=st.lists(ids_st, max_size=20), data=st.data())
    def delete(self, ids, data):
        if self.model and data.draw(st.booleans()):
            ids = ids + data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=10))
        if not ids:
            return
        self.store.delete_tokens(ids)
        for i in ids:
            self.model.pop(i, None)

    @rule(data=st.data())
    @precondition(lambda self: self.model)
    def get_present(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=30))
        got = self.store.get_tokens(ids)
        assert [r.tobytes() for r in got.data] == [self.model[i] for i in ids]

    @rule(i=ids_st)
    def contains(self, i):
        assert (i in self.store) == (i in self.model)

    @rule()
    def snapshot_matches(self):
        with self.store.snapshot() as snap:
            runs = list(snap.tokens.chunks())
            got = {int(r["id"]): r.tobytes() for _f, arr in runs for r in arr}
            for first, arr in runs:
                assert arr["id"].tolist() == list(range(first, first + arr.shape[0]))
            assert snap.tokens.count() == len(self.model)
        assert got == self.model

    @rule(durability=st.sampled_from(["sync", "async", "none"]))
    def reopen(self, durability):
        self.store.close()
        self.store = ngstore.open(self.path, durability=durability)

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @invariant()
    def count_matches(self):
        assert self.store.count() == len(self.model)

    def teardown(self) -> None:
        try:
            report = self.store.check()
            assert report.ok, str(report)
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


StoreModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestStoreModel = StoreModel.TestCase
