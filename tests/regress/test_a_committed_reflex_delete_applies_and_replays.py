"""``Batch.delete_reflexes`` logged a REFLEX_DELETE op that could never be applied: the
applier passed each row's state to ``ReflexTable.delete`` reshaped to ``(1, 8, 3)``, which
``delete`` reads as a batch of states and refuses (``InvalidArgumentError: delete takes one
state``). The commit failed after its record was in the log, the store refused every later
write, and every later open failed the same way while replaying that record: the store could
not be opened again. Found while building the seed corpus of the log fuzz targets."""
from __future__ import annotations

import numpy as np

import ngstore
from ngstore.records import CONNECTION_DTYPE


def _reflexes(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    states = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    conns = np.zeros(n, CONNECTION_DTYPE)
    conns["token_a"], conns["token_b"], conns["connection_type"] = np.arange(n), np.arange(n) + 100, 1
    conns["confidence"], conns["mutability"], conns["rigidity"] = 230, 1, 200
    conns["pull_strength"], conns["preferred_distance"] = 0.5, 1.0
    return states, conns


def test_a_reflex_delete_commits_and_the_store_opens_again(store_path):
    states, conns = _reflexes(4)
    with ngstore.open(store_path) as s:
        with s.batch() as b:
            b.put_reflexes(states, conns)
        with s.batch() as b:
            b.delete_reflexes(states[:1], conns[:1])     # one identity of one state
        with s.batch() as b:
            b.delete_reflexes(states[1:2])               # every reflex of a state
        assert len(s.reflex_table()) == 2
    with ngstore.open(store_path) as s:
        table = s.reflex_table()
        assert table is not None and len(table) == 2
        assert sorted(table.entries()["connection"]["token_a"].tolist()) == [2, 3]
