"""SQL over a snapshot: a DuckDB connection with ``tokens``, ``connections`` and ``events``.

    con = ngstore.duckdb.connect(store)          # or a Snapshot
    con.sql("SELECT flags, avg(weight), count(*) FROM tokens GROUP BY flags").fetchall()

``duckdb`` is an optional dependency (``pip install ngstore[duckdb]``).

How ``tokens`` reaches DuckDB with no copy
------------------------------------------
DuckDB scans numpy arrays in place, strided ones included (a column whose values are 64
bytes apart is read by stepping 64 bytes; only the vectors DuckDB works on are ever
copied). Arrow, by contrast, has no strided arrays (see ``ngstore.arrow``), so an Arrow
table of fields would be a copy of every column before the first query. So ``tokens`` is a
view over one strided numpy column per field, each spanning the snapshot's whole mapped
region (``TokenView.mapped_runs``: every chunk of a snapshot lies at the same address
modulo 64, so one array of 64-byte rows covers them all), filtered by a mask of the rows
that hold a present token (1 byte per row of the region: the one thing built per
connection). DuckDB pushes the projection down -- a query reads the fields it names --
and runs the scan on all its threads.

The price of no copy is memory traffic: a strided scan of ``weight`` touches a 64-byte
cache line per token where a column reads 4 bytes, and DuckDB's strided numpy scan copies
value by value. ``connect(..., copy=True)`` trades the other way: contiguous copies of
every field (one C gather each, about 64 bytes per token) made once, then queries at the
speed of an in-RAM table. Measured in ``docs/performance.md``.

Where the chunks are not rows of one region (chunks small enough to live inside LMDB's
pages, ``chunk_slots`` ≤ 16, or a map that could not be found), ``tokens`` is built from
copies as with ``copy=True``, with the same columns.

Columns of ``tokens``: ``id``, ``flags``, ``weight``, ``field_radius``, ``field_strength``,
``timestamp`` (the raw record fields, ``docs/format.md`` §2.1: ``field_radius`` is the
value × 100, ``field_strength`` × 255) and the 24 raw int16 coordinates ``x0, y0, z0`` …
``x7, y7, z7`` (layer L, axis X/Y/Z; divide by ``ngstore.SCALE_FACTORS[L]`` for the value).
``connections`` and ``events`` are Arrow tables with a column per record field: copies
(each record is its own LMDB value).

Lifetime: the connection holds the snapshot's read transaction (through the arrays it
scans) until it is closed -- ``con.close()`` -- or the views are dropped
(``con.unregister``); LMDB cannot reuse the pages it sees meanwhile.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .arrow import COORDINATE_COLUMNS, SCALAR_COLUMNS, token_columns

if TYPE_CHECKING:
    from .snapshot import Snapshot

#: Registered names of the raw scans behind the views.
_TOKENS_SCAN = "_ngstore_token_rows"


class _HasSnapshot(Protocol):
    def snapshot(self) -> Snapshot: ...


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("duckdb is needed for SQL over a snapshot: pip install 'ngstore[duckdb]'") from None
    return duckdb


def _present_mask(nrows: int, runs: np.ndarray) -> np.ndarray:
    """A bool per row: True for the rows of ``runs`` ((first_id, row, count) each)."""
    mask = np.zeros(nrows, dtype=bool)
    for row, count in runs[:, 1:].tolist():
        mask[row:row + count] = True
    return mask


def register_tokens(con: Any, snap: Snapshot, name: str = "tokens", *, copy: bool = False) -> bool:
    """Registers the view ``name`` of ``snap``'s tokens on DuckDB connection ``con``.
    Returns True when it scans the mapped records in place, False when it scans a copy
    (``copy=True``, or chunks that are not rows of one region)."""
    mapped = None if copy else snap.tokens.mapped_runs()
    if mapped is not None:
        rows, runs = mapped
        cols = token_columns(rows)
        cols["_present"] = _present_mask(rows.shape[0], runs)
        zero_copy = True
    else:
        # contiguous copies of the present tokens' fields: one C gather per scalar field
        cols = {c: snap.tokens.column(c) for c in SCALAR_COLUMNS}
        coords = snap.tokens.column("coordinates")
        for layer in range(8):
            for a, axis in enumerate("xyz"):
                cols[f"{axis}{layer}"] = np.ascontiguousarray(coords[:, layer, a])
        del coords
        cols["_present"] = np.ones(cols["id"].shape[0], dtype=bool)
        zero_copy = False
    scan = f"{_TOKENS_SCAN}_{name}"
    con.register(scan, cols)
    listed = ", ".join(SCALAR_COLUMNS + COORDINATE_COLUMNS)
    where = " WHERE _present" if zero_copy else ""
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT {listed} FROM "{scan}"{where}')
    return zero_copy


def connect(source: Snapshot | _HasSnapshot, *, con: Any = None, copy: bool = False) -> Any:
    """A DuckDB connection (``con``, or a new in-memory one) with the views ``tokens``,
    ``connections`` and ``events`` of ``source``: a Snapshot, or a Store (a snapshot of it
    is taken now). Queries see that snapshot, whatever is committed later.

    ``copy=True`` gives ``tokens`` contiguous copies of every field (about 64 bytes per
    token, made once here) instead of strided scans of the map: queries then run at the
    speed of an in-RAM table, for the memory of one (see the module docstring)."""
    duckdb = _duckdb()
    from .snapshot import Snapshot as _Snapshot

    own = not isinstance(source, _Snapshot)
    snap = source.snapshot() if own else source  # type: ignore[union-attr]
    assert isinstance(snap, _Snapshot)
    con = duckdb.connect() if con is None else con
    try:
        register_tokens(con, snap, copy=copy)
        con.register("connections", snap.connections.to_arrow())
        con.register("events", snap.events.to_arrow())
    finally:
        if own:
            snap.close()  # the registered arrays hold its transaction from here on
    return con


__all__ = ["COORDINATE_COLUMNS", "SCALAR_COLUMNS", "connect", "register_tokens", "token_columns"]
