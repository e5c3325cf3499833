"""``try_fast_path(None)``, ``("abc")``, ``(5)`` and ``([])`` returned None while a store had no
reflex table yet, and raised InvalidArgumentError once it had one: the input was validated
only on the way into the table. It is now validated first, whatever the table holds."""
from __future__ import annotations

import numpy as np
import pytest

import ngstore
from ngstore.errors import InvalidArgumentError
from ngstore.records import CONNECTION_DTYPE

BAD = [None, "abc", 5, [], [0.1] * 7, np.zeros((2, 8), np.float32)]


def _reflex() -> np.ndarray:
    c = np.zeros(1, CONNECTION_DTYPE)
    c["token_a"], c["token_b"], c["confidence"], c["mutability"] = 1, 2, 230, 1
    c["pull_strength"], c["rigidity"], c["evidence_count"] = 1.0, 200, 20
    return c


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_a_store_engine_refuses_a_non_state_with_and_without_reflexes(store, bad):
    engine = store.intuition()
    assert engine.table is None
    with pytest.raises(InvalidArgumentError):
        engine.try_fast_path(bad)
    engine.consolidate_reflex(np.full(8, 0.1, np.float32), _reflex())
    assert engine.table is not None
    with pytest.raises(InvalidArgumentError):
        engine.try_fast_path(bad)


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_a_disabled_fast_path_refuses_a_non_state_too(bad):
    engine = ngstore.IntuitionEngine.create(ngstore.IntuitionConfig(enable_fast_path=False))
    with pytest.raises(InvalidArgumentError):
        engine.try_fast_path(bad)
    assert engine.try_fast_path([0.1] * 8) is None
