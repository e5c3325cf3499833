"""Arrow tables of a snapshot's records: the mapped token bytes with no copy, fields by copy.

``snapshot.tokens.to_arrow()``, ``snapshot.connections.to_arrow()`` and
``snapshot.events.to_arrow()`` call this module; ``pyarrow`` is an optional dependency
(``pip install ngstore[arrow]``), imported when one of them is first called.

What is a copy and what is not
------------------------------
An Arrow array is a set of *contiguous* buffers: Arrow has no strided arrays. A token's
fields are interleaved in its 64-byte record (``docs/format.md`` §2.1), so the ``weight`` of
consecutive tokens lies 64 bytes apart, and no Arrow primitive array can point at it.
Three layouts were weighed:

* **the record as ``fixed_size_binary(64)``** -- one Arrow chunk per run of present ids, a
  slice of one array whose data buffer *is* the snapshot's mapped region of LMDB's map
  (``pa.foreign_buffer``; ``TokenView.mapped_runs``), or, where chunks are not rows of one
  region, an array per run over the run's own bytes. No copy: the cost is a few C++
  objects per run, so time and memory grow with the number of chunks, not of tokens.
  Every field, ids included, is in those bytes at the offsets of §2.1.
  This is the column ``record``, and what ``to_arrow()`` gives by default.
* **one Arrow column per field, gathered** -- ``weight`` as ``float32`` and so on: what
  SQL engines and dataframes want. Each is a copy of that field only (4 bytes per token
  for ``weight``), made by the C gather of ``TokenView.column`` in one call with the GIL
  released, then sliced to the runs of ``record`` (slices are free). Asked for by name:
  ``to_arrow(columns=["id", "weight"])``.
* rejected: **``ListView``/``BinaryView`` arrays pointing into the records** -- they need an
  offset (or a 16-byte view) per token, which costs as much memory as copying the field,
  and consumers copy them again. **Field columns built lazily** -- an Arrow array cannot
  be lazy; the lazy path is ``ngstore.duckdb`` (DuckDB scans strided numpy columns) and
  ``ngstore.dask`` (a partition is read when its task runs).

Connections and events are one LMDB value per record, scattered over the map: their
tables are copies (one contiguous copy of the records, then a column per field).

Lifetime
--------
The ``record`` buffers are views of the snapshot's map: each holds (through its base, the
snapshot's shared mapped region) a reference on the snapshot's read transaction, so the
table, any slice of it and any array taken from it stay valid for as long as they are
referenced -- after ``snapshot.close()`` and ``store.close()`` too -- and keep LMDB from
reusing the pages they see (the file grows while they live). Copy what you keep
(``table.combine_chunks()`` copies nothing for fixed-width types, ``pa.concat_arrays``
or ``.to_numpy()`` does) and drop the rest. Field columns are copies you own.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .records import CONNECTION_DTYPE, EVENT_DTYPE, TOKEN_DTYPE

try:
    import pyarrow as pa
except ImportError:  # pragma: no cover - exercised only without the extra
    pa = None

#: The name of the zero-copy column of whole 64-byte records.
RECORD = "record"
#: Every field column a token table can have, in record order.
TOKEN_FIELDS: tuple[str, ...] = tuple(TOKEN_DTYPE.names or ())
CONNECTION_FIELDS: tuple[str, ...] = tuple(CONNECTION_DTYPE.names or ())
EVENT_FIELDS: tuple[str, ...] = tuple(EVENT_DTYPE.names or ())
#: Flat token columns (``ngstore.duckdb``, ``ngstore.dask``): the scalar fields, then the 24
#: raw int16 coordinates x0, y0, z0, x1, ... z7 (layer L, axis X/Y/Z).
SCALAR_COLUMNS = ("id", "flags", "weight", "field_radius", "field_strength", "timestamp")
COORDINATE_COLUMNS = tuple(f"{axis}{layer}" for layer in range(8) for axis in "xyz")
FLAT_COLUMNS = SCALAR_COLUMNS + COORDINATE_COLUMNS


def token_columns(rows: np.ndarray, names: Sequence[str] = FLAT_COLUMNS) -> dict[str, np.ndarray]:
    """Flat columns of TOKEN_DTYPE ``rows`` as views (strided, no copy), by name."""
    cols: dict[str, np.ndarray] = {}
    for name in names:
        if name in SCALAR_COLUMNS:
            cols[name] = rows[name]
        elif name in COORDINATE_COLUMNS:
            cols[name] = rows["coordinates"][:, int(name[1]), "xyz".index(name[0])]
        else:
            raise InvalidArgumentError(f"no token column {name!r}; columns are {FLAT_COLUMNS}")
    return cols


def require_pyarrow() -> Any:
    """The pyarrow module, or an ImportError that says how to get it."""
    if pa is None:
        raise ImportError("pyarrow is needed for Arrow tables: pip install 'ngstore[arrow]'")
    return pa


def arrow_type(dtype: np.dtype, field: str) -> Any:
    """The Arrow type of one field of a record dtype: its scalar type, or a
    ``fixed_size_list`` of it for a sub-array field (coordinates: 24 int16)."""
    fields = dtype.fields
    assert fields is not None
    fdt = fields[field][0]
    base = pa.from_numpy_dtype(fdt.base)
    if fdt.shape:
        return pa.list_(base, int(np.prod(fdt.shape)))
    return base


def schema(dtype: np.dtype, columns: Sequence[str]) -> Any:
    record_bytes = dtype.itemsize
    return pa.schema([pa.field(c, pa.binary(record_bytes) if c == RECORD else arrow_type(dtype, c),
                               nullable=False) for c in columns])


def check_columns(columns: Sequence[str] | None, dtype: np.dtype, default: Sequence[str]) -> list[str]:
    """The column names asked for, checked: ``None`` is ``default``."""
    names = tuple(dtype.names or ())
    if columns is None:
        return list(default)
    if isinstance(columns, str):
        raise InvalidArgumentError(f"columns must be a list of names, got the string {columns!r}")
    out = list(columns)
    for c in out:
        if c != RECORD and c not in names:
            raise InvalidArgumentError(f"no column {c!r}; columns are {RECORD!r} and {names}")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"a column is named twice in {out}")
    return out


def field_array(values: np.ndarray, dtype: np.dtype, field: str) -> Any:
    """An Arrow array over a contiguous array of one field's values (no further copy):
    a scalar field as itself, a sub-array field as a ``fixed_size_list``."""
    fields = dtype.fields
    assert fields is not None
    fdt = fields[field][0]
    values = np.ascontiguousarray(values)
    if fdt.shape:
        width = int(np.prod(fdt.shape))
        flat = pa.array(values.reshape(-1).view(fdt.base))
        return pa.FixedSizeListArray.from_arrays(flat, width)
    return pa.array(values.view(fdt.base))


def _owner(arr: np.ndarray) -> Any:
    """The object at the end of ``arr``'s base chain: the snapshot's shared mapped
    region for a view of a snapshot, which holds its read transaction."""
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def record_array(view: np.ndarray) -> Any:
    """A ``fixed_size_binary(itemsize)`` Arrow array whose data buffer is ``view``'s
    memory (no copy); the buffer keeps ``view``'s owner alive."""
    n = view.shape[0]
    size = view.dtype.itemsize
    if n == 0:
        return pa.array([], type=pa.binary(size))
    addr = view.__array_interface__["data"][0]
    buf = pa.foreign_buffer(addr, n * size, base=_owner(view))
    return pa.Array.from_buffers(pa.binary(size), n, [None, buf])


def token_table(runs: Iterable[tuple[int, np.ndarray]], column: Callable[[str], np.ndarray],
                columns: Sequence[str] | None,
                mapped: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """The table of ``TokenView.to_arrow`` from its zero-copy runs (or ``mapped``: the
    whole region and the runs' rows in it, ``TokenView.mapped_runs``) and its column
    gather. With ``mapped`` every chunk of ``record`` is a slice of one Arrow array over
    the region: one buffer for the table, not one per run."""
    require_pyarrow()
    cols = check_columns(columns, TOKEN_DTYPE, (RECORD,))
    sch = schema(TOKEN_DTYPE, cols)
    if mapped is not None:
        region = record_array(mapped[0])
        spans = mapped[1][:, 1:].tolist()
        lengths = [n for _row, n in spans]
        records = [region.slice(row, n) for row, n in spans]
    else:
        views = [arr for _first, arr in runs]
        lengths = [v.shape[0] for v in views]
        records = [record_array(v) for v in views]
        del views
    arrays = []
    for c in cols:
        if c == RECORD:
            arrays.append(pa.chunked_array(records, type=sch.field(c).type))
            continue
        whole = field_array(column(c), TOKEN_DTYPE, c)
        if whole.type != sch.field(c).type:  # pragma: no cover - a mismatch is a bug here
            raise AssertionError(f"{c}: {whole.type} != {sch.field(c).type}")
        pieces, off = [], 0
        for n in lengths:
            pieces.append(whole.slice(off, n))
            off += n
        if off != len(whole):
            raise InvalidArgumentError("the snapshot's presence bits and its column disagree; run check()")
        arrays.append(pa.chunked_array(pieces, type=sch.field(c).type))
    return pa.Table.from_arrays(arrays, schema=sch)


def records_table(arr: np.ndarray, columns: Sequence[str] | None) -> Any:
    """A table of a contiguous record array (connections, events: copies already), a
    column per field by default; ``record`` is the array's bytes (no further copy)."""
    require_pyarrow()
    dtype = arr.dtype
    cols = check_columns(columns, dtype, tuple(dtype.names or ()))
    sch = schema(dtype, cols)
    arrays = [record_array(arr) if c == RECORD else field_array(arr[c], dtype, c) for c in cols]
    return pa.Table.from_arrays(arrays, schema=sch)
