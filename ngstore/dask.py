"""Many stores as one dataset on Dask: a dataframe of tokens, a dask array of coordinates.

    ddf = ngstore.dask.read_tokens(paths, columns=["weight", "flags"])
    ddf.groupby("flags").weight.mean().compute()
    coords = ngstore.dask.read_tokens_array(paths)          # (n, 8, 3) float32, decoded

``dask[dataframe,array,distributed]`` is an optional dependency (``ngstore[dask]``).

The plan and the tasks
----------------------
Building the collection (on the client) opens each store read-only for a moment and
lists its chunks and how many tokens each holds (one LMDB cursor pass over the chunk
keys and presence bitmaps; no record is read). Partitions are runs of consecutive chunks
of one store, about ``partition_tokens`` tokens each, ordered by id. When no chunk index
appears in two stores -- always true of stores written by a ``ShardSet``, which routes
whole blocks of ids -- the dataframe is indexed by ``id`` with **known divisions** (the
first id of each partition's first chunk), so ``loc`` by id and joins on ids prune
partitions. Stores whose chunks overlap give unknown divisions (the data is the same).

Each task runs on a worker: it opens its store read-only (once per worker process, kept
open for the next task), takes a snapshot, reads its chunks (zero-copy views of the
map) and copies only the requested fields of only its chunks into the partition. So a
worker holds at most its partitions' columns, never a store, and reads through the page
cache of its own machine.

Consistency: every task takes its own snapshot. While a writer commits, two partitions
may show the stores at different moments; for one consistent state, read stores that
are not being written (a restored backup, or a pause in writing).

On a real cluster
-----------------
Every worker that may run a task must be able to open the store's path: either each
store lives on a shared file system mounted at the same path everywhere (NFS, Lustre,
CephFS: LMDB readers need working ``mmap`` and POSIX locks on it), or each machine holds
its shards on local disk and the tasks of a shard must run there. ``read_tokens`` does
not place tasks by itself (every worker must see every path); for node-local shards,
build the collection from the same pieces it uses -- ``plan_of`` run on the node that
holds a store (``client.submit(plan_of, path, workers=[node])``), then one
``client.submit(read_part, part, columns, workers=[node])`` per ``Part`` and
``dd.from_delayed`` of the futures with the plan's divisions. A worker that dies mid-compute loses only its
in-flight partitions, which the scheduler reruns elsewhere (up to
``distributed.scheduler.allowed-failures`` times).
"""
from __future__ import annotations

import importlib
import itertools
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrow import FLAT_COLUMNS, token_columns
from .codec import decode
from .errors import InvalidArgumentError

#: The default size of a partition, in tokens (64 MiB of records).
PARTITION_TOKENS = 1 << 20

_open_stores: dict[str, Any] = {}
_open_lock = threading.Lock()


def _store(path: str) -> Any:
    """This process's read-only handle of ``path`` (opened on first use, kept open)."""
    import ngstore

    with _open_lock:
        s = _open_stores.get(path)
        if s is None or s.stats().get("closed"):
            s = ngstore.open(path, readonly=True, observability=False)
            _open_stores[path] = s
        return s


@dataclass(frozen=True)
class Part:
    """One partition: chunks ``first_chunk <= c < end_chunk`` of the store at ``path``."""
    path: str
    first_chunk: int
    end_chunk: int
    tokens: int
    first_id: int


@dataclass(frozen=True)
class Plan:
    parts: list[Part]
    divisions: tuple[int, ...] | None   # None: unknown (chunks overlap across stores)
    chunk_slots: int


def plan_of(path: str) -> tuple[int, np.ndarray, np.ndarray]:
    """``(chunk_slots, chunk indexes, tokens per chunk)`` of one store (read-only)."""
    s = _store(os.path.realpath(path))
    slots = int(s.stats()["chunk_slots"])
    shift = slots.bit_length() - 1
    counts: dict[int, int] = {}
    with s.snapshot() as snap:
        for first, arr in snap.tokens.chunks():
            c = first >> shift
            counts[c] = counts.get(c, 0) + arr.shape[0]
    keys = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    vals = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    return slots, keys, vals


def plan(paths: Sequence[str | os.PathLike[str]], partition_tokens: int = PARTITION_TOKENS) -> Plan:
    """The partitions of ``paths`` (see the module docstring)."""
    if partition_tokens < 1:
        raise InvalidArgumentError(f"partition_tokens must be ≥ 1, got {partition_tokens}")
    real = [os.path.realpath(os.fspath(p)) for p in paths]
    if not real or len(set(real)) != len(real):
        raise InvalidArgumentError("give one or more distinct store paths")
    listed = [plan_of(p) for p in real]
    slots = {s for s, _k, _v in listed}
    if len(slots) != 1:
        raise InvalidArgumentError(f"the stores must share chunk_slots; found {sorted(slots)}")
    (chunk_slots,) = slots
    shift = chunk_slots.bit_length() - 1
    rows = [(int(c), i, int(n)) for i, (_s, keys, vals) in enumerate(listed)
            for c, n in zip(keys.tolist(), vals.tolist(), strict=True)]
    rows.sort()
    overlap = any(a[0] == b[0] for a, b in itertools.pairwise(rows))
    if overlap:
        rows.sort(key=lambda r: (r[1], r[0]))
    parts: list[Part] = []
    cur: list[tuple[int, int, int]] = []

    def flush() -> None:
        if cur:
            c0, store, _n = cur[0]
            parts.append(Part(real[store], c0, cur[-1][0] + 1, sum(n for _c, _s, n in cur), c0 << shift))
            cur.clear()

    for row in rows:
        if cur and (row[1] != cur[-1][1] or sum(n for _c, _s, n in cur) >= partition_tokens):
            flush()
        cur.append(row)
    flush()
    divisions: tuple[int, ...] | None = None
    if not overlap and parts:
        divisions = (*[p.first_id for p in parts], (parts[-1].end_chunk << shift) - 1)
    return Plan(parts, divisions, chunk_slots)


def read_part(part: Part, columns: Iterable[str]) -> Any:
    """The pandas DataFrame of one partition (runs on a worker): the columns asked for,
    indexed by ``id``; a copy of those fields of those chunks only."""
    import pandas as pd

    s = _store(part.path)
    pieces: dict[str, list[np.ndarray]] = {c: [] for c in ("id", *columns)}
    names = list(pieces)
    with s.snapshot() as snap:
        for _first, arr in snap.tokens.chunks(part.first_chunk, part.end_chunk):
            for name, col in token_columns(arr, names).items():
                pieces[name].append(col)
        data = {name: (np.concatenate(cols) if cols else np.zeros(0, _dtype(name)))
                for name, cols in pieces.items()}
    ids = data.pop("id")
    return pd.DataFrame(data, index=pd.Index(ids, name="id"), copy=False)


def read_coordinates(part: Part, decoded: bool) -> np.ndarray:
    """The (n, 8, 3) coordinates of one partition: float32 decoded, or the raw int16."""
    s = _store(part.path)
    with s.snapshot() as snap:
        cols = [arr["coordinates"] for _f, arr in snap.tokens.chunks(part.first_chunk, part.end_chunk)]
        raw = np.concatenate(cols) if cols else np.zeros((0, 8, 3), np.int16)
    if raw.shape[0] != part.tokens:
        raise InvalidArgumentError(f"{part.path} changed since the dask array was planned "
                                   f"({raw.shape[0]} tokens in chunks {part.first_chunk}.."
                                   f"{part.end_chunk - 1}, {part.tokens} planned); plan again")
    return np.asarray(decode(raw), dtype=np.float32) if decoded else raw


def _dtype(name: str) -> np.dtype:
    from .records import TOKEN_DTYPE

    return np.dtype(token_columns(np.zeros(1, TOKEN_DTYPE), [name])[name].dtype)


def read_tokens(paths: Sequence[str | os.PathLike[str]], columns: Sequence[str] | None = None, *,
                partition_tokens: int = PARTITION_TOKENS) -> Any:
    """A dask DataFrame of the tokens of the stores at ``paths``, indexed by ``id``.

    ``columns``: any of ``ngstore.arrow.FLAT_COLUMNS`` but ``id`` (``flags``, ``weight``,
    ..., ``x0`` … ``z7`` raw coordinates); by default all of them."""
    dd: Any = importlib.import_module("dask.dataframe")  # untyped: kept Any

    cols = [c for c in FLAT_COLUMNS if c != "id"] if columns is None else list(columns)
    for c in cols:
        if c not in FLAT_COLUMNS or c == "id":
            raise InvalidArgumentError(f"no column {c!r}; columns are {FLAT_COLUMNS[1:]} (id is the index)")
    p = plan(paths, partition_tokens)
    meta = read_part_meta(cols)
    if not p.parts:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(read_partition, p.parts, columns=cols, meta=meta, divisions=p.divisions,
                       label="ngstore-tokens", enforce_metadata=False)



def read_partition(part: Part, columns: Sequence[str] | None = None) -> Any:
    """The task of ``read_tokens``. Dask passes ``columns`` -- the ones a query needs --
    so ``ddf.weight.sum()`` reads only ``weight`` (projection pushdown)."""
    return read_part(part, FLAT_COLUMNS[1:] if columns is None else [c for c in columns if c != "id"])


def read_part_meta(columns: Sequence[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({c: np.zeros(0, _dtype(c)) for c in columns},
                        index=pd.Index(np.zeros(0, np.uint32), name="id"))


def read_tokens_array(paths: Sequence[str | os.PathLike[str]], *, decoded: bool = True,
                      partition_tokens: int = PARTITION_TOKENS) -> Any:
    """A dask array (n, 8, 3) of the coordinates of every token of the stores at
    ``paths``, in the order of ``read_tokens`` (float32 decoded, or raw int16 with
    ``decoded=False``). Its chunk sizes are known from the plan; a store that changed
    since fails the task that reads it (plan again)."""
    dask: Any = importlib.import_module("dask")
    da: Any = importlib.import_module("dask.array")

    p = plan(paths, partition_tokens)
    dtype = np.float32 if decoded else np.int16
    blocks = [da.from_delayed(dask.delayed(read_coordinates, pure=True)(part, decoded),
                              shape=(part.tokens, 8, 3), dtype=dtype) for part in p.parts]
    if not blocks:
        return da.zeros((0, 8, 3), dtype=dtype)
    return da.concatenate(blocks, axis=0)
