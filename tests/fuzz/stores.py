"""Small real stores for the fuzz targets: the seed corpus is cut out of them
(``make_corpus.py``) and the targets that read through LMDB run against one (``targets.py``).

Every store here is made through the public API, so its bytes are what a real writer
writes; the sizes are chosen to keep each seed a few KB (8 tokens per chunk, a small
black-box ring, a reflex table with small segments).
"""
from __future__ import annotations

import numpy as np

import ngstore
from ngstore import learning
from ngstore.records import CONNECTION_DTYPE, EVENT_DTYPE, TOKEN_DTYPE

#: Tokens per chunk of every fuzz store: a chunk value is 8 * 64 + 1 = 513 bytes.
CHUNK_SLOTS = 8
#: LMDB address space of a fuzz store (its data stays far below it). Small, so that a
#: process holding one can still run under an address-space limit.
MAP_SIZE = 32 << 20
#: Black-box records of a fuzz store: a ring file of 4096 + 8 * 256 bytes.
BLACKBOX_CAPACITY = 8
#: The reflex capacity of a fuzz store: its table stays one record and one index segment.
REFLEX_CAPACITY = 24

OPTIONS = dict(chunk_slots=CHUNK_SLOTS, map_size=MAP_SIZE, blackbox_capacity=BLACKBOX_CAPACITY,
               reflex_capacity=REFLEX_CAPACITY, crash_handlers=False, tracing=False)


def tokens(ids: object) -> np.ndarray:
    """Token records with the given ids and contents derived from the id."""
    arr = np.asarray(ids, dtype=np.uint32)
    out = np.zeros(arr.size, TOKEN_DTYPE)
    out["id"] = arr
    out["flags"] = 1
    out["weight"] = (arr % 100).astype(np.float32) / 100
    out["timestamp"] = 1_700_000_000
    out["coordinates"][:, 0, 0] = (arr * 37 % 3000).astype(np.int16)
    out["coordinates"][:, 1, 1] = -(arr % 200).astype(np.int16)
    out["field_radius"] = (arr % 256).astype(np.uint8)
    return out


def connections(pairs: list[tuple[int, int, int]]) -> np.ndarray:
    out = np.zeros(len(pairs), CONNECTION_DTYPE)
    for i, (a, b, t) in enumerate(pairs):
        out[i]["token_a"], out[i]["token_b"], out[i]["connection_type"] = a, b, t
    out["pull_strength"] = 0.5
    out["preferred_distance"] = 1.0
    out["rigidity"] = 200
    out["confidence"] = 220
    out["mutability"] = 1
    out["created_at"] = 1_700_000_000
    out["target_vector"] = np.arange(8, dtype=np.int16) * 100
    return out


def events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(n, EVENT_DTYPE)
    out["timestamp_us"] = 1_700_000_000_000_000 + np.arange(n) * 1000
    out["episode_id"] = 7
    out["step"] = np.arange(n)
    out["event_type"] = np.arange(n) % 3
    out["state"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    out["action"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    out["reward_goal"] = rng.uniform(0, 1, n).astype(np.float32)
    return out


def reflexes(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 8-float states and the reflex connections to store for them."""
    rng = np.random.default_rng(seed)
    states = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    conns = connections([(10 + i, 1000 + i, 1) for i in range(n)])
    conns["confidence"] = rng.integers(150, 256, n)
    return states, conns


def fold(first_seq: int, end_seq: int, evs: np.ndarray) -> np.ndarray:
    """The LEARN_UPDATE items of the events ``evs`` (4 bins per dimension)."""
    bins = np.arange(len(evs), dtype=np.uint64) % 5
    actions = evs["event_type"].astype(np.uint16)
    rewards = evs["reward_goal"].astype(np.float64)
    b, a, moments = learning.group_moments(bins, actions, rewards, evs["action"], evs["state"])
    return learning.make_fold(4, first_seq, end_seq, b, a, moments)


def fill(store: ngstore.Store) -> None:
    """Writes one of everything a store holds, one batch per kind (so the log holds one
    record of each op type) and a batch with several ops."""
    store.put_tokens(tokens(range(20)))
    store.delete_tokens([3, 17])
    store.put_connections(connections([(1, 9, 0), (1, 12, 2), (4, 9, 1)]))
    store.delete_connections([(1, 12, 2)])
    evs = events(6)
    store.write_events(evs)
    with store.batch() as b:
        states, conns = reflexes(6)
        b.put_reflexes(states, conns)
        b.put_tokens(tokens([30, 31]))
    with store.batch() as b:
        b.delete_reflexes(states[:1], conns[:1])
    with store.batch() as b:
        b.update_learning(fold(0, len(evs), evs))


def make(path: str, **overrides: object) -> None:
    """A closed store in ``path`` holding one of everything."""
    with ngstore.open(path, **{**OPTIONS, **overrides}) as s:
        fill(s)
