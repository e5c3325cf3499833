"""Helpers for the store-level crash tests (tests/crash/test_store_*.py).

* :func:`state_of` reads everything a batch can change (tokens as id → record bytes, raw
  connection and event values, the counters) straight from LMDB, as one comparable value.
* :class:`Workload` is a deterministic sequence of batches (tokens, deletes, connections,
  connection deletes, events, mixed batches) built on :func:`tests.conftest.make_tokens`;
  the same sequence run on a healthy store gives the reference state after every prefix.
* :class:`ResettableRecordingIO` is ``walfaults.RecordingIO`` whose durable baseline can
  be re-taken mid-run (right after a checkpoint, when everything under ``root`` is durable).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from conftest import make_tokens
from walfaults import RecordingIO

from ngstore.connections import new_connections
from ngstore.experience import new_events
from ngstore.kv import KV, ReadTxn
from ngstore.layout import DB_CONN_REVERSE, DB_CONNECTIONS, DB_EVENTS

#: Options every store of these tests is opened with (no quotas, no observability threads,
#: a modest virtual map so hundreds of opens stay cheap).
FAST = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None,
            map_size=1 << 30, chunk_slots=64)

NOW = 1_700_000_000


# ------------------------------------------------------------------------- state --
def state_of(store) -> tuple:
    """Everything a batch changes, as a hashable value (equal iff the stores hold the same).

    Connections, their reverse index and events are read straight from LMDB (a second
    read-only handle of the LMDB layer), not through the store's read API."""
    with store.snapshot() as snap:
        arr = snap.tokens.to_array().copy()
    tokens = tuple((int(r["id"]), r.tobytes()) for r in arr)
    kv = KV(store.path, readonly=True)
    try:
        with ReadTxn(kv) as txn:
            raw = {}
            for name in (DB_CONNECTIONS, DB_CONN_REVERSE, DB_EVENTS):
                db = kv.dbs[name]
                raw[name] = tuple((bytes(k), bytes(v)) for k, v in txn.cursor(db=db)) if db is not None else ()
    finally:
        kv.close()
    st = store.stats()
    counters = (st["tokens_live"], st["tokens_created_total"], st["tokens_deleted_total"],
                st["connections_live"], st["connections_created_total"], st["events_live"],
                st["events_written_total"])
    assert st["tokens_live"] == len(tokens)
    assert st["connections_live"] == len(raw[DB_CONNECTIONS])
    return tokens, raw[DB_CONNECTIONS], raw[DB_CONN_REVERSE], raw[DB_EVENTS], counters


def describe(state: tuple) -> str:
    tokens, conns, _r, events, counters = state
    return f"{len(tokens)} tokens, {len(conns)} connections, {len(events)} events, counters {counters}"


# ---------------------------------------------------------------------- workload --
def conns(pairs, t: int = 0x50, strength: float = 1.0) -> np.ndarray:
    a = np.array([p[0] for p in pairs], dtype=np.uint32)
    b = np.array([p[1] for p in pairs], dtype=np.uint32)
    arr = new_connections(a, b, t, now=NOW)
    arr = arr if isinstance(arr, np.ndarray) else arr.data
    arr["pull_strength"] = strength
    return arr


def events(n: int, step: int) -> np.ndarray:
    return new_events(n, event_type=7, step=step, timestamp_us=NOW * 1_000_000 + step,
                      event_id=np.arange(n) + step * 1000 + 1)


@dataclass
class Step:
    """One batch of a workload; ``run(store, durability)`` commits it."""
    name: str
    run: Callable


def _put(ids, w):
    return lambda s, d: s.put_tokens(make_tokens(ids, weight=w), durability=d)


def _delete(ids):
    return lambda s, d: s.delete_tokens(np.asarray(ids, dtype=np.uint32), durability=d)


def _put_conns(pairs, strength):
    return lambda s, d: s.put_connections(conns(pairs, strength=strength), durability=d)


def _delete_conns(keys):
    return lambda s, d: s.delete_connections(keys, durability=d)


def _events(n, step):
    return lambda s, d: s.write_events(events(n, step), durability=d)


def _mixed(i, n_tokens=12):
    def run(s, d):
        with s.batch(durability=d) as b:
            b.put_tokens(make_tokens(np.arange(n_tokens) + 1000 * i + 5, weight=0.25 + i / 1000))
            b.delete_tokens(np.arange(3, dtype=np.uint32) + 1000 * (i - 1) + 5)
            b.put_connections(conns([(1000 * i + 5, 1000 * i + 6), (7, 1000 * i + 7)], strength=float(i)))
            b.append_events(events(3, i))
    return run


def big_mixed(i: int, n_tokens: int = 1200) -> Callable:
    """A batch of ≥ 64 KiB of records (the direct path with ``direct_threshold=64<<10``)."""
    def run(s, d):
        with s.batch(durability=d) as b:
            b.put_tokens(make_tokens(np.arange(n_tokens) + 50_000 + 2000 * i, weight=0.5))
            b.put_connections(conns([(50_000 + 2000 * i, 50_001 + 2000 * i)], strength=2.0))
            b.append_events(events(5, 500 + i))
    return run


def workload(n: int, seed: int = 0) -> list[Step]:
    """``n`` varied batches: every kind of change, overwrites and deletes of earlier ones."""
    rng = np.random.default_rng(seed)
    steps: list[Step] = []
    for i in range(n):
        k = i % 6
        if k == 0:
            ids = rng.choice(400, size=int(rng.integers(5, 30)), replace=False)
            steps.append(Step(f"put{i}", _put(ids, np.float32(i / 100))))
        elif k == 1:
            steps.append(Step(f"mixed{i}", _mixed(i)))
        elif k == 2:
            steps.append(Step(f"delete{i}", _delete(rng.choice(400, size=8, replace=False))))
        elif k == 3:
            pairs = [(int(a), int(a) + 1 + int(b))
                     for a, b in zip(rng.integers(0, 300, 4), rng.integers(0, 5, 4), strict=True)]
            steps.append(Step(f"conns{i}", _put_conns(pairs, float(i))))
        elif k == 4:
            steps.append(Step(f"events{i}", _events(int(rng.integers(1, 6)), i)))
        else:
            steps.append(Step(f"delconns{i}", _delete_conns([(7, 1000 * (i - 4) + 7, 0x50)])))
    return steps


# --------------------------------------------------------------------- recording --
class ResettableRecordingIO(RecordingIO):
    """RecordingIO whose baseline (the durable starting point of the power-loss model) can
    be re-taken at a moment when everything under ``root`` is known durable."""

    def rebase(self) -> None:
        self.ops = []
        self.baseline = {}
        for dp, _dn, fns in os.walk(self.root):
            for fn in fns:
                p = os.path.join(dp, fn)
                with open(p, "rb") as f:
                    self.baseline[p] = f.read()
