"""Typed wrappers of ``csrc/similarity.c``: exact k nearest tokens, box and ball filters,
the Z-order step of the spatial index.

Every function here reads buffers it is handed (token chunk values, index pages) in one C
call with the GIL released; the caller keeps the buffers mapped (a snapshot's read
transaction) until the call returns. Results are new arrays.

Distances are measured on the **raw** stored coordinates (the i16 fixed-point values of
docs/format.md §2.1, as ``Token.raw_coordinates``), like the original ``token_similarity``:
one unit is one step of the layer's fixed point. Decoded coordinates would weigh the
layers by their scales (1/100 against 1/10000), which no caller asked for.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from ._native import check_status, ffi, lib, pointer_array
from .errors import InvalidArgumentError
from .records import TOKEN_DTYPE
from .tokens import Token, TokenArray

METRICS = {"l2": 0, "cosine": 1}

#: Below this many (query, token) pairs one thread does the whole scan.
_PARALLEL_PAIRS = 1 << 22
_THREADS = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="ngstore-knn")
        return _pool


class Neighbors(NamedTuple):
    """What :meth:`TokenView.knn` returns: ``ids`` (uint32) and ``distances`` (float64),
    each of shape ``(k',)`` for one query or ``(n, k')`` for a batch, nearest first,
    where ``k' = min(k, tokens present)``."""

    ids: np.ndarray
    distances: np.ndarray


# -- arguments ---------------------------------------------------------------------------

def query_coordinates(queries: Any) -> tuple[np.ndarray, bool]:
    """``(q, single)``: the queries as a C-contiguous ``(n, 24)`` int16 array of raw
    coordinates, and whether one query was given.

    Accepted: a Token; a TokenArray or TOKEN_DTYPE array (0-d: one query); integer arrays
    or nested lists of shape ``(24,)`` or ``(8, 3)`` (one query) or ``(n, 24)`` or
    ``(n, 8, 3)`` (a batch), each value in the i16 range."""
    if isinstance(queries, Token):
        return np.ascontiguousarray(np.asarray(queries.raw_coordinates).reshape(1, 24), dtype=np.int16), True
    if isinstance(queries, TokenArray):
        return np.ascontiguousarray(queries.raw_coordinates.reshape(-1, 24), dtype=np.int16), False
    arr = np.asarray(queries)
    if arr.dtype == TOKEN_DTYPE:
        single = arr.ndim == 0
        return np.ascontiguousarray(arr.reshape(-1)["coordinates"].reshape(-1, 24), dtype=np.int16), single
    if arr.dtype.kind not in "iu":
        hint = " (decoded coordinates: encode them first with ngstore.codec.encode)" if arr.dtype.kind == "f" else ""
        raise InvalidArgumentError(f"queries must be raw integer coordinates or tokens, got dtype {arr.dtype}{hint}")
    if arr.shape in ((24,), (8, 3)):
        single, arr = True, arr.reshape(1, 24)
    elif arr.ndim == 2 and arr.shape[1] == 24:
        single = False
    elif arr.ndim == 3 and arr.shape[1:] == (8, 3):
        single, arr = False, arr.reshape(-1, 24)
    else:
        raise InvalidArgumentError(f"queries must have shape (24,), (8, 3), (n, 24) or (n, 8, 3); got {arr.shape}")
    if arr.size and (int(arr.min()) < -32768 or int(arr.max()) > 32767):
        raise InvalidArgumentError("raw coordinates must be in the i16 range -32768..32767")
    return np.ascontiguousarray(arr, dtype=np.int16), single


def coordinate_dims(layers: Any) -> np.ndarray:
    """The coordinate indexes (uint8, ascending) of ``layers``: None for all 8, one layer
    0..7, or an iterable of them."""
    if layers is None:
        return np.arange(24, dtype=np.uint8)
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [int(layers)]
    try:
        chosen = sorted({int(x) for x in layers if not isinstance(x, bool) and int(x) == x})
        count = len(list(layers))
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"layers must be None, a layer 0..7 or layers 0..7, got {layers!r}") from None
    if not chosen or len(chosen) != count or chosen[0] < 0 or chosen[-1] > 7:
        raise InvalidArgumentError(f"layers must be distinct layers 0..7 (at least one), got {layers!r}")
    return np.array([3 * layer + a for layer in chosen for a in range(3)], dtype=np.uint8)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise InvalidArgumentError(f"k must be a positive int, got {k!r}")
    return int(k)


def check_metric(metric: Any) -> int:
    if metric not in METRICS:
        raise InvalidArgumentError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return METRICS[metric]


# -- k nearest -------------------------------------------------------------------------------



def _knn_part(bufs: Sequence[Any], slot_shift: int, q: np.ndarray, dims: np.ndarray, metric: int,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    nq = q.shape[0]
    dist = np.empty((nq, k), dtype=np.float64)
    ids = np.empty((nq, k), dtype=np.uint32)
    ptrs, lens = pointer_array(bufs)  # bufs (the caller's) own the memory until this returns
    n_out = ffi.new("size_t *")
    rc = lib.ng_knn_chunks(ptrs, lens, len(bufs),
                           slot_shift, ffi.from_buffer("int16_t[]", q), nq, ffi.from_buffer("uint8_t[]", dims),
                           dims.size, metric, k, ffi.from_buffer("double[]", dist, require_writable=True),
                           ffi.from_buffer("uint32_t[]", ids, require_writable=True), n_out)
    check_status("ng_knn_chunks", rc, "a token chunk has the wrong length")
    m = int(n_out[0])
    return ids[:, :m], dist[:, :m]


def knn(bufs: Sequence[Any], slot_shift: int, present: int, q: np.ndarray, dims: np.ndarray, metric: int,
        k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, distances)`` of shape ``(n, min(k, tokens))`` over the chunk values ``bufs``
    (ascending chunk order); ``present`` is their token count, used to split the scan
    over threads (each part in C, GIL released; parts merged by (distance, id), which
    keeps the result exactly that of one scan)."""
    nq = q.shape[0]
    if nq == 0:
        return np.zeros((0, 0), np.uint32), np.zeros((0, 0), np.float64)
    parts = min(_THREADS, len(bufs))
    if parts < 2 or present * max(nq, 4) < _PARALLEL_PAIRS:
        return _knn_part(bufs, slot_shift, q, dims, metric, k)
    cuts = np.linspace(0, len(bufs), parts + 1).astype(int)
    futures = [_executor().submit(_knn_part, bufs[cuts[i]:cuts[i + 1]], slot_shift, q, dims, metric, k)
               for i in range(parts)]
    results = [f.result() for f in futures]
    ids = np.concatenate([r[0] for r in results], axis=1)
    dist = np.concatenate([r[1] for r in results], axis=1)
    order = np.lexsort((ids, dist), axis=-1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(dist, order, axis=1)


# -- box and ball filters ------------------------------------------------------------------------

Point = Sequence[int]  # 3 raw coordinates


def _filter_args(lo: Point, hi: Point, center: Point | None) -> tuple[Any, Any, Any]:
    c_lo = ffi.new("int16_t[3]", list(lo))
    c_hi = ffi.new("int16_t[3]", list(hi))
    c_center = ffi.new("int16_t[3]", list(center)) if center is not None else ffi.NULL
    return c_lo, c_hi, c_center


def filter_entries(pages: Sequence[Any], lo: Point, hi: Point, center: Point | None, r2: float) -> np.ndarray:
    """Ids of the spatial index entries of ``pages`` inside the box ``lo..hi`` (and, with
    a ``center``, within squared distance ``r2`` of it), in page order."""
    ptrs, lens = pointer_array(pages)  # pages (the caller's) own the memory until this returns
    cap = sum(lens[i] for i in range(len(pages))) // 10
    out = np.empty(max(cap, 1), dtype=np.uint32)
    n_out = ffi.new("size_t *")
    c_lo, c_hi, c_center = _filter_args(lo, hi, center)
    rc = lib.ng_filter_entries(ptrs, lens, len(pages), c_lo, c_hi, c_center, r2,
                               ffi.from_buffer("uint32_t[]", out, require_writable=True),
                               cap, n_out)
    check_status("ng_filter_entries", rc, "a spatial index page is not a whole number of entries")
    return out[: int(n_out[0])]


def filter_chunks(bufs: Sequence[Any], slot_shift: int, layer: int, present: int, lo: Point, hi: Point,
                  center: Point | None, r2: float) -> np.ndarray:
    """The same filter over the present tokens of chunk values (ids ascending): the scan
    a store without the index answers with."""
    ptrs, lens = pointer_array(bufs)  # bufs (the caller's) own the memory until this returns
    out = np.empty(max(present, 1), dtype=np.uint32)
    n_out = ffi.new("size_t *")
    c_lo, c_hi, c_center = _filter_args(lo, hi, center)
    rc = lib.ng_filter_chunks(ptrs, lens, len(bufs),
                              slot_shift, layer, c_lo, c_hi, c_center, r2,
                              ffi.from_buffer("uint32_t[]", out, require_writable=True), present, n_out)
    check_status("ng_filter_chunks", rc, "a token chunk has the wrong length, or the live counter is low")
    return out[: int(n_out[0])]


def spatial_entries(ids: np.ndarray, coords: np.ndarray, layer: int, entry_dtype: np.dtype) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """``(entries, sort keys)`` of tokens ``ids`` (uint32, strictly ascending) with raw
    coordinates ``coords`` ((n, 24) int16) in ``layer``, in ascending sort-key order
    (docs/format.md §3.5), by a radix sort in C."""
    n = ids.size
    entries = np.empty(n, dtype=entry_dtype)
    keys = np.empty(n, dtype=np.uint64)
    if n:
        ids_c = np.require(ids, np.uint32, ["C", "A"])
        coords_c = np.require(coords, np.int16, ["C", "A"])
        rc = lib.ng_spatial_entries(ffi.from_buffer("uint32_t[]", ids_c), ffi.from_buffer("int16_t[]", coords_c), n,
                                    layer, ffi.from_buffer("uint8_t[]", entries.view(np.uint8), require_writable=True),
                                    ffi.from_buffer("uint64_t[]", keys, require_writable=True))
        check_status("ng_spatial_entries", rc, "ids must be strictly ascending")
    return entries, keys


def spatial_keys(entries: np.ndarray) -> np.ndarray:
    """The sort keys (uint64) of spatial index entries, in C (``layout.spatial_sort_keys``
    is the numpy statement of the same rule)."""
    keys = np.empty(entries.shape[0], dtype=np.uint64)
    if keys.size:
        rc = lib.ng_spatial_keys(ffi.from_buffer("uint8_t[]", np.ascontiguousarray(entries).view(np.uint8)),
                                 keys.size, ffi.from_buffer("uint64_t[]", keys, require_writable=True))
        check_status("ng_spatial_keys", rc)
    return keys


class ZBox:
    """A box of cells (0..1023 per axis) and the Z-order step over it."""

    __slots__ = ("_hi", "_lo", "_out")

    def __init__(self, lo_cells: Sequence[int], hi_cells: Sequence[int]) -> None:
        self._lo = ffi.new("uint16_t[3]", [int(v) for v in lo_cells])
        self._hi = ffi.new("uint16_t[3]", [int(v) for v in hi_cells])
        self._out = ffi.new("uint32_t *")

    def next_inside(self, z: int) -> int | None:
        """The smallest Z-order code >= z whose cell is inside the box, or None."""
        rc = lib.ng_zorder_next_in_box(z, self._lo, self._hi, self._out)
        if rc == -5:  # NG_ENOTFOUND
            return None
        check_status("ng_zorder_next_in_box", rc)
        return int(self._out[0])
