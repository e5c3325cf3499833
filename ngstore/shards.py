"""Many stores as one id space: a ShardSet routes each token to one of N stores by its id.

    with ShardSet(["/d/s0", "/d/s1", "/d/s2", "/d/s3"], route="hash") as shards:
        shards.put_tokens(tokens)                       # split by id, one commit per store
    ddf = ngstore.dask.read_tokens(shards.paths)        # read back as one dataset

Routing is by **block of 2¹⁶ ids** (``BLOCK_IDS``), never by single id: a block is a whole
number of chunks whatever ``chunk_slots`` is, so every chunk lives in exactly one store,
the zero-copy views stay whole, and ``ngstore.dask`` gets partitions whose id ranges do
not overlap (known divisions).

* ``route="hash"``: block ``b`` goes to store ``(b × 0x9E3779B1 mod 2³²) × N >> 32``
  (Fibonacci hashing): neighbouring blocks spread over the stores, so dense ids balance.
* ``route="range"``: store ``k`` holds the ids in ``[bounds[k-1], bounds[k])`` (``bounds``:
  N−1 increasing multiples of ``BLOCK_IDS``; by default the u32 id space in N equal parts).
  Range scans of ids touch few stores.

The routing is not stored anywhere: open a ShardSet with the same paths, in the same
order, with the same ``route`` and ``bounds`` every time.

A ShardSet commit is **one commit per store**, not one atomic commit: a crash between
two of them leaves some stores with their part of the batch and others without it (each
store's part is atomic and durable as usual). Retrying a put is idempotent (the same
records land on the same stores); there is no cross-store transaction.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .inputs import ids_array
from .records import TOKEN_DTYPE

#: Ids are routed in blocks of this many (a whole number of chunks for every chunk size).
BLOCK_SHIFT = 16
BLOCK_IDS = 1 << BLOCK_SHIFT
_GOLDEN = np.uint64(0x9E3779B1)


def route_ids(ids: np.ndarray, n: int, route: str = "hash", bounds: Sequence[int] | None = None) -> np.ndarray:
    """The store index (0 … n−1) of each id of ``ids`` (uint32), as ShardSet routes it."""
    ids = np.asarray(ids, dtype=np.uint32)
    if route == "hash":
        blocks = (ids >> np.uint32(BLOCK_SHIFT)).astype(np.uint64)
        h = (blocks * _GOLDEN) & np.uint64(0xFFFFFFFF)
        shard: np.ndarray = ((h * np.uint64(n)) >> np.uint64(32)).astype(np.intp)
        return shard
    if route == "range":
        edges = np.asarray(check_bounds(n, bounds), dtype=np.uint64)
        where: np.ndarray = np.searchsorted(edges, ids.astype(np.uint64), side="right").astype(np.intp)
        return where
    raise InvalidArgumentError(f"route must be 'hash' or 'range', got {route!r}")


def check_bounds(n: int, bounds: Sequence[int] | None) -> list[int]:
    """The N−1 range boundaries: given (checked) or the u32 id space in N equal blocks."""
    if bounds is None:
        step = -(-(1 << 32) // n)
        return [min(1 << 32, -(-(k * step) // BLOCK_IDS) * BLOCK_IDS) for k in range(1, n)]
    b = [int(x) for x in bounds]
    if len(b) != n - 1 or any(x % BLOCK_IDS for x in b) or b != sorted(set(b)) \
            or (b and not b[0] > 0 and b[-1] < 1 << 32):
        raise InvalidArgumentError(f"bounds must be {n - 1} increasing multiples of {BLOCK_IDS} "
                                   f"inside the u32 id space, got {bounds!r}")
    return b


class ShardSet:
    """N stores written and read as one id space (see the module docstring).

    Every keyword argument is an ``ngstore.open`` option applied to each store
    (``readonly=True`` to only read)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], route: str = "hash", *,
                 bounds: Sequence[int] | None = None, **options: Any) -> None:
        import ngstore

        if not paths:
            raise InvalidArgumentError("a ShardSet needs at least one store path")
        self.paths = [os.path.realpath(os.fspath(p)) for p in paths]
        if len(set(self.paths)) != len(self.paths):
            raise InvalidArgumentError("a store path appears twice in the ShardSet")
        route_ids(np.zeros(0, np.uint32), len(self.paths), route, bounds)  # checks route and bounds
        self.route = route
        self.bounds = check_bounds(len(self.paths), bounds) if route == "range" else None
        self.stores: list[Any] = []
        try:
            for p in self.paths:
                self.stores.append(ngstore.open(p, **options))
        except BaseException:
            self.close()
            raise
        slots = {s.stats()["chunk_slots"] for s in self.stores}
        if len(slots) > 1:
            self.close()
            raise InvalidArgumentError(f"the stores of a ShardSet must share chunk_slots; found {sorted(slots)}")

    def shard_of(self, ids: Any) -> np.ndarray:
        """The store index of each id."""
        return route_ids(ids_array(ids), len(self.stores), self.route, self.bounds)

    def put_tokens(self, tokens: Any, *, durability: str | None = None) -> list[int | None]:
        """Stores tokens (a TOKEN_DTYPE array or a TokenArray), each in its store: one
        commit per store that receives any. Returns each store's log position (None
        where nothing was sent). Not atomic across stores (module docstring)."""
        data = tokens.data if hasattr(tokens, "data") and not isinstance(tokens, np.ndarray) else tokens
        arr = np.asarray(data)
        if arr.dtype != TOKEN_DTYPE or arr.ndim != 1:
            raise InvalidArgumentError(f"put_tokens takes a 1-d TOKEN_DTYPE array, got {arr.dtype} {arr.shape}")
        where = self.shard_of(arr["id"])
        out: list[int | None] = []
        for k, store in enumerate(self.stores):
            part = arr[where == k]
            out.append(store.put_tokens(part, durability=durability) if part.size else None)
        return out

    def delete_tokens(self, ids: Any, *, durability: str | None = None) -> list[int | None]:
        """Deletes tokens by id, each from its store (one commit per store concerned)."""
        arr = ids_array(ids)
        where = self.shard_of(arr)
        return [store.delete_tokens(arr[where == k], durability=durability) if (where == k).any() else None
                for k, store in enumerate(self.stores)]

    def get_tokens(self, ids: Any, *, missing: str = "raise") -> np.ndarray:
        """Tokens for ``ids`` in the given order (a TOKEN_DTYPE copy), each read from its
        store. ``missing="skip"`` leaves absent ids out."""
        arr = ids_array(ids)
        where = self.shard_of(arr)
        out = np.zeros(arr.size, TOKEN_DTYPE)
        found = np.zeros(arr.size, bool)
        for k, store in enumerate(self.stores):
            sel = np.flatnonzero(where == k)
            if sel.size:
                with store.snapshot() as snap:
                    present = snap.tokens.presence(arr[sel])
                    if missing == "raise" and not present.all():
                        snap.tokens.get(arr[sel], missing="raise")  # raises NotFoundError naming them
                    got = snap.tokens.get(arr[sel][present], missing="raise").data
                out[sel[present]] = got
                found[sel[present]] = True
        return out if missing == "raise" else out[found]

    def count(self) -> int:
        """Tokens present in all the stores."""
        return sum(s.count() for s in self.stores)

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
