"""Regression: ``Batch.delete_reflexes`` stopped the writer.

The apply of a REFLEX_DELETE op handed each row's state to ``ReflexTable.delete`` as a batch
of one, shape (1, 8, 3), which ``delete`` refuses ("delete takes one state"): the applier
failed, the store refused every later write, and -- the record being in the log -- every
reopen replayed the same failure. Found while planning ``reflex_eviction="refuse"`` on a
copy of the table (issue 16)."""
from __future__ import annotations

import numpy as np

import ngstore
from ngstore.records import CONNECTION_DTYPE


def test_delete_reflexes_is_applied_and_survives_a_reopen(tmp_path):
    c = np.zeros(3, CONNECTION_DTYPE)
    c["token_a"], c["token_b"], c["confidence"], c["mutability"] = [1, 2, 3], [2, 3, 4], 230, 1
    states = np.random.default_rng(0).uniform(-1, 1, (3, 8)).astype(np.float32)
    path = str(tmp_path / "store")
    with ngstore.open(path) as s:
        with s.batch() as b:
            b.put_reflexes(states, c)
        with s.batch() as b:
            b.delete_reflexes(states[:1], c[:1])   # by identity
            b.delete_reflexes(states[1:2])         # every reflex of the state
        assert s.stats()["reflexes_live"] == 1 and s.stats()["write_failed"] is False
        s.put_tokens(ngstore.Token.create_batch(1))  # still writable
    with ngstore.open(path) as s:
        assert s.stats()["reflexes_live"] == 1 and s.check().ok
