"""The spatial index: Z-ordered pages of (id, x, y, z) per layer (docs/format.md §3.5).

Writing (``apply.apply_ops``, in the transaction that writes the tokens): a
:class:`IndexUpdate` is told, before each token op of a group, which ids the op touches;
it records each id's coordinates as they were before the group (the first time it sees
the id). At the end of the group it reads the ids' final state and moves only the entries
that changed: an id whose coordinates in a layer did not change costs nothing in that
layer. So a group of many small commits rewrites each page once, and replaying the log
rebuilds exactly the same pages (the update is a function of the state before and after).

Reading (:func:`query`): the pages of one layer whose Z-range meets the query's box of
cells, found by walking the pages in key order and jumping over the runs of Z-order
codes that leave the box (``similarity.ZBox``); their entries are filtered by one C call.

Checking (:func:`check_layer_pages`): the page rules of the format, for ``check()``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _native, similarity
from .errors import CorruptionError
from .layout import (
    DB_SPATIAL,
    SPATIAL_CELL_SHIFT,
    SPATIAL_ENTRY_BYTES,
    SPATIAL_ENTRY_DTYPE,
    SPATIAL_PAGE_MAX,
    SPATIAL_PAGE_SPLIT,
    ChunkLayout,
    seal,
    spatial_page_key,
    spatial_page_key_fields,
    spatial_region_bytes,
    spatial_sort_keys,
    unseal,
)
from .records import TOKEN_DTYPE


def layers_of(mask: int) -> list[int]:
    return [layer for layer in range(8) if mask >> layer & 1]


def token_state(txn: Any, db: Any, layout: ChunkLayout, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(present, coordinates (n, 24) int16)`` of ``ids`` (uint32) as of ``txn``."""
    if ids.size == 0:
        return np.zeros(0, bool), np.zeros((0, 24), np.int16)
    chunks = np.unique(ids >> layout.shift)
    keys, bufs = [], []
    for c in chunks.tolist():
        v = txn.get(layout.key(c), db=db)
        if v is not None:
            layout.check(v, c)
            keys.append(c)
            bufs.append(v)
    out, found = _native.gather64(ids, np.asarray(keys, dtype=np.uint32), bufs, layout.shift, dtype=TOKEN_DTYPE)
    return found, out["coordinates"].reshape(-1, 24)


class IndexUpdate:
    """The index changes of one applied group (see the module docstring)."""

    def __init__(self, mask: int, layout: ChunkLayout) -> None:
        self.layers = layers_of(mask)
        self._layout = layout
        self._ids: list[np.ndarray] = []
        self._present: list[np.ndarray] = []
        self._coords: list[np.ndarray] = []

    def before(self, txn: Any, tokens_db: Any, ids: np.ndarray) -> None:
        """Records the state of ``ids`` before the op that is about to change them."""
        if not self.layers:
            return
        ids = _unique(np.asarray(ids, dtype=np.uint32))
        present, coords = token_state(txn, tokens_db, self._layout, ids)
        self._ids.append(ids)
        self._present.append(present)
        self._coords.append(coords)

    def finish(self, txn: Any, tokens_db: Any, index_db: Any) -> None:
        """Writes the index changes of every id seen, from its first recorded state to now."""
        if not self._ids:
            return
        if len(self._ids) == 1:
            ids, was, old = self._ids[0], self._present[0], self._coords[0]
        else:  # the first record of an id is its state before the group
            ids, first = np.unique(np.concatenate(self._ids), return_index=True)
            was = np.concatenate(self._present)[first]
            old = np.concatenate(self._coords)[first]
        now, new = token_state(txn, tokens_db, self._layout, ids)
        for layer in self.layers:
            a, b = old[:, 3 * layer:3 * layer + 3], new[:, 3 * layer:3 * layer + 3]
            moved = was & now & np.any(a != b, axis=1)
            gone, came = (was & ~now) | moved, (now & ~was) | moved
            if gone.any() or came.any():
                removed, rk = similarity.spatial_entries(*_rows(gone, ids, old), layer, SPATIAL_ENTRY_DTYPE)
                added, ak = similarity.spatial_entries(*_rows(came, ids, new), layer, SPATIAL_ENTRY_DTYPE)
                update_layer(txn, index_db, layer, removed, rk, added, ak)


def _rows(mask: np.ndarray, ids: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids and coordinate rows ``mask`` selects (no copy when it selects all: a bulk
    insert)."""
    return (ids, coords) if bool(mask.all()) else (ids[mask], coords[mask])


def _unique(ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted and unique (as given when it already is: the common case)."""
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return ids
    return np.unique(ids)


# -- pages -----------------------------------------------------------------------------------

def _page_entries(value: Any, key: bytes) -> np.ndarray:
    if len(value) % SPATIAL_ENTRY_BYTES or not value:
        raise CorruptionError(f"spatial index page {key.hex()} is {len(value)} bytes, not a positive "
                              f"multiple of {SPATIAL_ENTRY_BYTES}")
    page: np.ndarray = np.frombuffer(value, dtype=SPATIAL_ENTRY_DTYPE).copy()
    return page


def _locate(cur: Any, layer: int, sort_key: int) -> tuple[bytes, bool] | None:
    """Positions ``cur`` on the page of ``layer`` an entry of ``sort_key`` belongs to (the
    greatest key <= it, else the layer's first page); returns (its key, whether it is the
    layer's first page), or None when the layer has no page."""
    probe = spatial_page_key(layer, sort_key)
    if not cur.set_range(probe):
        if not (cur.last() and cur.key()[0] == layer):
            return None
    elif (bytes(cur.key()) != probe and not (cur.prev() and cur.key()[0] == layer)
          and (not cur.set_range(probe) or cur.key()[0] != layer)):
        return None  # below the layer's first page (back on it: set_range), or no page at all
    key = bytes(cur.key())
    first = not (cur.prev() and cur.key()[0] == layer)
    cur.set_key(key)
    return key, first


def _next_key(cur: Any, layer: int) -> int | None:
    """The sort key of the page after the cursor's, in the same layer (cursor moves)."""
    if cur.next() and cur.key()[0] == layer:
        return spatial_page_key_fields(cur.key())[1]
    return None


def _cut(entries: np.ndarray, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(sort key of its first entry, entries)`` of the pages ``entries`` are written as."""
    n = entries.size
    if n <= SPATIAL_PAGE_MAX:
        return [(int(keys[0]), entries)]
    parts = -(-n // SPATIAL_PAGE_SPLIT)
    cuts = [n * i // parts for i in range(parts + 1)]
    return [(int(keys[cuts[i]]), entries[cuts[i]:cuts[i + 1]]) for i in range(parts)]


def update_layer(txn: Any, db: Any, layer: int, removed: np.ndarray, rk: np.ndarray, added: np.ndarray,
                 ak: np.ndarray) -> None:
    """Removes the entries ``removed`` and adds ``added`` (SPATIAL_ENTRY_DTYPE, each in
    ascending order of its sort keys ``rk`` / ``ak``) in ``layer``."""
    ri = ai = 0
    while ri < rk.size or ai < ak.size:
        lowest = min(int(rk[ri]) if ri < rk.size else 1 << 64, int(ak[ai]) if ai < ak.size else 1 << 64)
        cur = txn.cursor(db=db)
        where = _locate(cur, layer, lowest)
        if where is None:  # the layer has no page yet
            if ri < rk.size:
                raise CorruptionError(f"the spatial index of layer {layer} has no page for a token it should hold")
            for k, part in _cut(added[ai:], ak[ai:]):
                pkey = spatial_page_key(layer, k)
                txn.put(pkey, seal(DB_SPATIAL, pkey, part.tobytes()), db=db)
            return
        key, _first = where
        page_k = spatial_page_key_fields(key)[1]
        value = cur.value()  # the writer's own read: lengths checked, the trailer rewritten below
        page = _page_entries(unseal(DB_SPATIAL, key, value, spatial_region_bytes(value), verify=False), key)
        upper = _next_key(cur, layer)
        # np.uint64: a Python int would be compared as a float64 and lose the low bits
        r_end = rk.size if upper is None else int(np.searchsorted(rk, np.uint64(upper)))
        a_end = ak.size if upper is None else int(np.searchsorted(ak, np.uint64(upper)))
        pk = similarity.spatial_keys(page)  # ascending (the page rule)
        if r_end > ri:
            gone = np.searchsorted(pk, rk[ri:r_end])
            if bool(np.any(gone >= pk.size)) or not np.array_equal(pk[np.minimum(gone, pk.size - 1)], rk[ri:r_end]):
                raise CorruptionError(f"the spatial index page {key.hex()} lacks entries of tokens it should hold")
            page, pk = np.delete(page, gone), np.delete(pk, gone)
        if a_end > ai:
            at = np.searchsorted(pk, ak[ai:a_end])
            if bool(np.any(pk[np.minimum(at, max(pk.size - 1, 0))] == ak[ai:a_end])) if pk.size else False:
                raise CorruptionError(f"the spatial index page {key.hex()} would hold an entry twice")
            page, pk = np.insert(page, at, added[ai:a_end]), np.insert(pk, at, ak[ai:a_end])
        ri, ai = r_end, a_end
        if page.size == 0:
            txn.delete(key, db=db)
            continue
        pages = _cut(page, pk)
        first_k = min(page_k, pages[0][0])
        if first_k != page_k:
            txn.delete(key, db=db)
        pages[0] = (first_k, pages[0][1])
        for k, part in pages:
            pkey = spatial_page_key(layer, k)
            txn.put(pkey, seal(DB_SPATIAL, pkey, part.tobytes()), db=db)


# -- queries ----------------------------------------------------------------------------------------

def _seek(cur: Any, layer: int, sort_key: int) -> bool:
    """``_locate`` for readers: positions ``cur`` on the page an entry of ``sort_key``
    belongs to; False when the layer has no page."""
    probe = spatial_page_key(layer, sort_key)
    if not cur.set_range(probe):
        return bool(cur.last() and cur.key()[0] == layer)
    if cur.key()[0] == layer and bytes(cur.key()) == probe:
        return True
    if cur.prev() and cur.key()[0] == layer:
        return True
    return bool(cur.set_range(probe) and cur.key()[0] == layer)


def query(txn: Any, db: Any, layer: int, lo: Sequence[int], hi: Sequence[int], center: Sequence[int] | None,
          r2: float, region: Callable[[bytes, bytes, Any, int], Any] | None = None) -> np.ndarray:
    """Ids (ascending) of the tokens whose layer-``layer`` coordinates are in the box
    ``lo..hi`` (raw, lo <= hi), and within ``r2`` of ``center`` when it is given. Plain
    ints throughout: a query touches a handful of pages, and numpy's per-call cost on
    3-element arrays would be most of its time."""
    shift = SPATIAL_CELL_SHIFT
    zbox = similarity.ZBox([(v + 32768) >> shift for v in lo], [(v + 32768) >> shift for v in hi])
    zmin = zbox.next_inside(0)
    cur = txn.cursor(db=db)
    pages: list[Any] = []
    if zmin is not None and _seek(cur, layer, zmin << 32):
        while True:
            value = cur.value()
            pages.append(region(DB_SPATIAL, bytes(cur.key()), value, spatial_region_bytes(value)) if region
                         else unseal(DB_SPATIAL, bytes(cur.key()), value, spatial_region_bytes(value), verify=False))
            if not cur.next():
                break
            key = cur.key()
            if key[0] != layer:
                break
            nz = int.from_bytes(key[1:9], "big") >> 32
            nxt = zbox.next_inside(nz)
            if nxt is None:
                break
            if nxt != nz and not _seek(cur, layer, nxt << 32):  # starts outside the box: jump
                break
    ids = similarity.filter_entries(pages, lo, hi, center, r2)
    ids.sort()
    return ids


# -- checking -----------------------------------------------------------------------------------

def read_layers(txn: Any, db: Any, problem: Callable[[str, bytes, Any], None],
                region: Callable[[bytes, Any], Any] | None = None) -> dict[int, np.ndarray]:
    """Every entry of the index by layer, checking the page rules of format.md §3.5 on the
    way (a broken page is reported as ``problem(reason, key, value)`` and its entries left
    out; ``value`` is the page's LMDB value, so the caller can place it in the file)."""
    by_layer: dict[int, list[np.ndarray]] = {}
    prev_layer, prev_last = -1, -1
    for raw_key, value in (txn.cursor(db=db) if db is not None else ()):
        key = bytes(raw_key)
        try:
            layer, k = spatial_page_key_fields(key)
            if region is not None:  # check(): the page's length and checksum (format.md §3.0)
                body = region(key, value)
                if body is None:
                    continue
            else:
                body = unseal(DB_SPATIAL, key, value, spatial_region_bytes(value), verify=False)
            page = _page_entries(body, key)
        except CorruptionError as exc:
            problem(exc.reason, key, value)
            continue
        if layer > 7:
            problem(f"spatial index page {key.hex()} names layer {layer}", key, value)
            continue
        sk = spatial_sort_keys(page)
        if page.size > SPATIAL_PAGE_MAX:
            problem(f"spatial index page {key.hex()} holds {page.size} entries (at most {SPATIAL_PAGE_MAX})", key,
                    value)
        if sk.size > 1 and bool(np.any(sk[1:] <= sk[:-1])):
            problem(f"spatial index page {key.hex()}: entries are not in ascending sort-key order", key, value)
        if int(sk[0]) < k:
            problem(f"spatial index page {key.hex()}: an entry sorts below the page's key", key, value)
        if layer == prev_layer and k <= prev_last:
            problem(f"spatial index page {key.hex()}: an entry of the previous page sorts at or above it", key,
                    value)
        prev_layer, prev_last = layer, int(sk.max())
        by_layer.setdefault(layer, []).append(page)
    return {layer: np.concatenate(parts) for layer, parts in by_layer.items()}
