"""Shared fixtures. Every store lives in pytest's tmp_path; nothing touches the repo."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# Let tests import shared helpers (tests/walfaults.py, tests/model.py) by module name.
sys.path.insert(0, os.path.dirname(__file__))

import ngstore
from ngstore.records import TOKEN_DTYPE


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def store(store_path):
    s = ngstore.open(store_path)
    yield s
    s.close()


def make_tokens(ids, weight=None, seed=0) -> np.ndarray:
    """Token records with the given ids and recognisable contents derived from the id."""
    ids = np.asarray(ids, dtype=np.uint32)
    a = np.zeros(ids.size, dtype=TOKEN_DTYPE)
    a["id"] = ids
    a["flags"] = 1
    a["weight"] = (ids % 1000).astype(np.float32) / 1000 if weight is None else weight
    a["timestamp"] = 1_700_000_000
    a["coordinates"][:, 0, 0] = (ids % 30000).astype(np.int16)
    a["coordinates"][:, 7, 2] = -(ids % 20000).astype(np.int16)
    a["field_radius"] = (ids % 256).astype(np.uint8)
    return a
