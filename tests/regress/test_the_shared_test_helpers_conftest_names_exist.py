"""``tests/conftest.py`` put ``tests/`` on the import path for ``walfaults.py`` and
``model.py``, but ``model.py`` did not exist: the plain-Python model the property tests
compare the store with lived inside one test file."""
from __future__ import annotations

import importlib
import os
import re

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_helper_module_conftest_names_exists_and_imports():
    with open(os.path.join(TESTS, "conftest.py")) as f:
        text = f.read()
    names = set(re.findall(r"tests/(\w+)\.py", text))
    assert "model" in names
    for name in names:
        assert os.path.exists(os.path.join(TESTS, f"{name}.py")), f"tests/{name}.py is named but missing"
        importlib.import_module(name)


def test_the_model_applies_batches_as_the_store_promises():
    import numpy as np
    from conftest import make_tokens
    from model import ModelStore

    from ngstore.experience import new_events
    from ngstore.records import EVENT_DTYPE

    m = ModelStore(event_capacity=4)
    m.put_tokens(make_tokens([1, 2, 2]))
    m.delete_tokens([1, 9])
    assert m.count() == 1 and 2 in m and 1 not in m
    assert m.write_events(new_events(3, event_type=1)) == 0
    assert m.write_events(new_events(3, event_type=1)) == 3
    assert sorted(m.events) == [2, 3, 4, 5]  # retention keeps the newest four
    assert int(np.frombuffer(m.events[5], dtype=EVENT_DTYPE)["sequence"][0]) == 5
