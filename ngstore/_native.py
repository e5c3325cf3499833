"""The one typed wrapper of the compiled core ``ngstore._ngcore`` (``csrc/``, built by cffi).

Everything else in ngstore calls C through this module: it checks at import that the
compiled module matches the sources (``ABI_VERSION``), checks dtypes, shapes and
contiguity of numpy arguments (``InvalidArgumentError``) and turns every negative C
status into ``NativeError`` naming the function, the code and its ``ng_strerror`` text.
Other wrappers (the reflex table) share the loaded module through :data:`ffi`,
:data:`lib` and :func:`check_status`.

The GIL: cffi in API mode releases the GIL around every C call, so the batch functions
here let other Python threads run. The C side never calls back into Python. Buffers passed
to C are kept alive by this module's locals for the whole call; the caller must not
mutate or unmap them concurrently (for LMDB memory: keep the read transaction open until
the call returns -- the results are copies and stay valid after it).
"""
from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .codec import DEFAULT_SHIFTS, check_shifts
from .errors import InvalidArgumentError, NativeCorruptionError, NativeError, NgStoreError
from .layout import CHECKSUM_BYTES
from .records import RAW64, TOKEN_DTYPE, TOKEN_SIZE

#: Must equal ``NG_ABI_VERSION`` in ``csrc/ngcore.h``; bump both together whenever a
#: declaration in a ``csrc/*.cdef`` or a function of ``csrc/cpython/`` changes meaning.
ABI_VERSION = 10

_FIX = "reinstall it with `pip install .` (or `pip install -e .` in a checkout); a C compiler and cffi are needed"

try:
    from . import _ngcore  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise NgStoreError(f"the compiled extension ngstore._ngcore is missing or cannot load ({exc}): {_FIX}") from exc

#: The cffi FFI object and the compiled library, for other typed wrappers.
ffi: Any = _ngcore.ffi
lib: Any = _ngcore.lib

#: C functions this wrapper needs; a stale build that lacks one is refused at import.
_REQUIRED = ("ng_abi_version", "ng_strerror", "ng_grid_hash_tokens", "ng_grid_hash_states", "ng_gather64",
             "ng_chunk_patch", "ng_crc32", "ng_wal_write_frame")


def _check_build() -> None:
    missing = [name for name in _REQUIRED if not hasattr(lib, name)]
    found = lib.ng_abi_version() if "ng_abi_version" not in missing else None
    if found != ABI_VERSION or missing:
        detail = f"ABI version {found}, expected {ABI_VERSION}" + (f"; missing {', '.join(missing)}" if missing else "")
        raise NgStoreError(f"the compiled extension ngstore._ngcore is stale ({detail}): {_FIX}")


_check_build()

try:
    from . import _fastpath
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise NgStoreError(f"the compiled extension ngstore._fastpath is missing or cannot load ({exc}): {_FIX}") from exc
if _fastpath.ABI_VERSION != ABI_VERSION:  # pragma: no cover - a stale build
    raise NgStoreError(f"the compiled extension ngstore._fastpath is stale (ABI version {_fastpath.ABI_VERSION}, "
                       f"expected {ABI_VERSION}): {_FIX}")
_fastpath.bind(*(int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
                 for name in ("ng_reflex_lookup_f32", "ng_reflex_lookup_one", "ng_wal_put_frame")))

#: Single-state lookups on one reflex table version, from any thread, through the CPython API
#: (``csrc/cpython/fastpath.c``): ``Probe(table_address, owner, hit_type).lookup(params_address,
#: state)`` answers a list or tuple of 8 numbers, or a buffer of 8 float32 or float64, with a
#: ``hit_type`` instance or None, and returns an int otherwise: a negative C status, or
#: :data:`NOT_SIMPLE` for a state of another form (the caller's general path takes it);
#: ``lookup_token(params_address, image)`` does the same for a Token's 64-byte image.
#: ``table_address`` is an ``ng_reflex_table`` whose handle and segments ``owner`` keeps
#: alive; each call's context is on the C stack. The GIL is kept unless the params have a
#: fallback radius, as for the cffi wrappers of ``ng_reflex_lookup_f32``.
Probe = _fastpath.Probe
#: ``ng_wal_put_frame`` through the CPython API, for the log's mapped append
#: (``walmap.put_frame`` documents it).
put_frame_fast: Callable[[int, int, int, bytes, int, int, int, int], int] = _fastpath.put_frame
#: ``chunk_record(chunk, slot, records_bytes)``: the 64 bytes of record ``slot`` of a token
#: chunk value (bytes), or None when the presence bit at ``records_bytes`` is clear; a
#: ValueError for a slot outside the chunk (``csrc/cpython/fastpath.c``).
chunk_record: Callable[[Any, int, int], bytes | None] = _fastpath.chunk_record
NOT_SIMPLE: int = _fastpath.NOT_SIMPLE
#: ``sizeof(ng_reflex_hit)``, the bytes of a hit the probe copies.
HIT_SIZE: int = _fastpath.HIT_SIZE

#: Bounds of ``slot_shift`` accepted by :func:`gather64` (``NG_MIN/MAX_SLOT_SHIFT``).
MIN_SLOT_SHIFT = 3
MAX_SLOT_SHIFT = 24

_DEFAULT_SHIFTS_C = ffi.new("uint8_t[8]", list(DEFAULT_SHIFTS))


#: Below this many bytes zlib's crc32 is quicker than the cffi call into the C core's.
_CRC_NATIVE_FROM = 4096


def crc32(data: Any, value: int = 0) -> int:
    """zlib's CRC-32 of bytes-like ``data``, continuing from ``value`` (``zlib.crc32``'s
    contract): for large buffers the C core's (``ng_crc32``: carry-less multiplication on
    x86-64, ~2.5x zlib's here, the GIL released), zlib's below ``_CRC_NATIVE_FROM`` bytes."""
    n = data.nbytes if type(data) is memoryview else len(data)
    if n < _CRC_NATIVE_FROM:
        return zlib.crc32(data, value)
    return int(lib.ng_crc32(ffi.from_buffer(data), n, value))


def strerror(code: int) -> str:
    """The C core's one-line description of a status code."""
    return str(ffi.string(lib.ng_strerror(code)).decode("ascii", "replace"))


#: The status of stored bytes that fail a check (``csrc/ngcore.h``).
NG_ECORRUPT = -4
NG_ERANGE = -6


def check_status(function: str, code: int, hint: str = "") -> None:
    """Raises NativeError if ``code`` (returned by C ``function``) is not NG_OK; for
    corrupt bytes, NativeCorruptionError (a CorruptionError too)."""
    if code != 0:
        message = strerror(code) + (f" ({hint})" if hint else "")
        if code == NG_ECORRUPT:
            raise NativeCorruptionError(function, code, message)
        raise NativeError(function, code, message)


def _shifts_c(shifts: Sequence[int] | npt.ArrayLike) -> Any:
    if shifts is DEFAULT_SHIFTS:
        return _DEFAULT_SHIFTS_C
    return ffi.new("uint8_t[8]", check_shifts(shifts).tolist())


def _address(arr: np.ndarray) -> Any:
    """A ``const uint8_t *`` to ``arr``'s first element; ``arr`` must outlive its use."""
    return ffi.cast("const uint8_t *", arr.__array_interface__["data"][0])


def buffer_pointer(buf: Any) -> tuple[Any, int]:
    """``(pointer, length)`` of the bytes of ``buf`` (any buffer), as a plain pointer: no
    cffi buffer export stays behind, so ``buf`` -- which must outlive every use of the
    pointer -- is the only owner. An export of a memoryview left in a reference cycle
    (a frame an exception's traceback keeps, say) crashed the garbage collector that
    cleared both; a plain pointer cannot."""
    exported = ffi.from_buffer("uint8_t[]", buf)
    return ffi.cast("const uint8_t *", exported), len(exported)


def pointer_array(buffers: Sequence[Any]) -> tuple[Any, Any]:
    """``(const uint8_t *[], uint64_t[])``: the addresses and lengths of many buffers, as
    plain pointers (:func:`buffer_pointer`: ``buffers`` must outlive every use of them);
    ``(NULL, NULL)`` for none."""
    n = len(buffers)
    if not n:
        return ffi.NULL, ffi.NULL
    ptrs = ffi.new("const uint8_t *[]", n)
    lens = ffi.new("uint64_t[]", n)
    # one C call reads every buffer's address (a cffi export per buffer cost ~0.3 us)
    _fastpath.buffer_addresses(buffers, int(ffi.cast("uintptr_t", ptrs)), int(ffi.cast("uintptr_t", lens)), n)
    return ptrs, lens


def _record_rows(records: Any) -> tuple[np.ndarray, int]:
    """Returns (rows, stride): a 1-D array of 64-byte rows and its positive byte stride.

    Accepts TOKEN_DTYPE or RAW64 arrays (0-d or 1-d, any strides) and (n, 64) uint8
    arrays; objects with ``__array__`` (TokenArray, Token) work too. Rows with a stride
    the C side cannot walk (zero, negative, < 64) are copied to a contiguous array.
    """
    arr = np.asarray(records)
    if arr.dtype == TOKEN_DTYPE or arr.dtype == RAW64:
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise InvalidArgumentError(f"token records must be a 1-D array, got shape {arr.shape}")
    elif arr.dtype == np.uint8:
        if arr.ndim != 2 or arr.shape[1] != TOKEN_SIZE:
            raise InvalidArgumentError(f"raw token rows must have shape (n, {TOKEN_SIZE}), got {arr.shape}")
        if arr.strides[1] != 1:
            arr = np.ascontiguousarray(arr)
    else:
        raise InvalidArgumentError(
            f"token records must be a TOKEN_DTYPE, RAW64 or (n, 64) uint8 array, got dtype {arr.dtype}")
    stride = arr.strides[0] if arr.shape[0] > 1 else TOKEN_SIZE
    if stride < TOKEN_SIZE:
        arr = np.ascontiguousarray(arr)
        stride = TOKEN_SIZE
    return arr, int(stride)


def grid_hash_tokens(records: Any, shifts: Sequence[int] | npt.ArrayLike = DEFAULT_SHIFTS) -> np.ndarray:
    """Grid hash of each token record, in C; bit-identical to ``codec.grid_hash_reference``.

    ``records``: a TOKEN_DTYPE array, a RAW64 array or an (n, 64) uint8 array, contiguous
    or strided (the stride is passed to C, nothing is copied unless the stride is zero or
    negative). ``shifts``: 8 ints in 0..15. Returns a new ``uint64`` array of length n.
    """
    rows, stride = _record_rows(records)
    sh = _shifts_c(shifts)
    n = rows.shape[0]
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    rc = lib.ng_grid_hash_tokens(_address(rows), n, stride, sh, ffi.from_buffer("uint64_t[]", out))
    check_status("ng_grid_hash_tokens", rc)
    return out


def grid_hash_states(states: npt.ArrayLike, shifts: Sequence[int] | npt.ArrayLike = DEFAULT_SHIFTS) -> np.ndarray:
    """Grid hash of 8-float states, shape ``(..., 8)`` -> ``uint64`` of shape ``(...)``, in C.

    Each state is converted to float32 and mapped to the X axes like
    ``codec.encode_state`` (float32 multiply, truncate, saturate, NaN -> 0; Y = Z = 0);
    the result is bit-identical to ``grid_hash_reference(state_coordinates(states))``.
    """
    arr = np.asarray(states)
    if arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"states must be real numbers, got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != 8:
        raise InvalidArgumentError(f"states must have shape (..., 8), got {arr.shape}")
    with np.errstate(over="ignore"):  # beyond float32 becomes +-inf, which saturates
        flat = np.ascontiguousarray(arr.reshape(-1, 8), dtype=np.float32)
    sh = _shifts_c(shifts)
    n = flat.shape[0]
    out = np.empty(n, dtype=np.uint64)
    if n:
        rc = lib.ng_grid_hash_states(ffi.from_buffer("float[]", flat), n, sh, ffi.from_buffer("uint64_t[]", out))
        check_status("ng_grid_hash_states", rc)
    return out.reshape(arr.shape[:-1])


def _as_u32(values: npt.ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{what} must be a 1-D array of uint32, got shape {arr.shape}")
    if arr.dtype != np.uint32:
        if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and arr.size == 0):
            raise InvalidArgumentError(f"{what} must be integers in 0..2**32-1, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFF_FFFF):
            raise InvalidArgumentError(f"{what} must be in 0..2**32-1, got values in {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint32)
    # ALIGNED too: C reads these through uint32_t *, and a view at an odd offset of a
    # byte buffer is contiguous but not aligned (ascontiguousarray would pass it through).
    return np.require(arr, np.uint32, ["C", "A"])


def chunk_value_size(slot_shift: int) -> int:
    """Exact length of a token chunk value with ``2**slot_shift`` slots (records + bitmap)."""
    slots = 1 << slot_shift
    return slots * TOKEN_SIZE + slots // 8


def gather64(
    ids: npt.ArrayLike,
    chunk_keys: npt.ArrayLike,
    chunk_buffers: Sequence[Any],
    slot_shift: int,
    *,
    dtype: np.dtype = RAW64,
) -> tuple[np.ndarray, np.ndarray]:
    """Gathers the 64-byte records of ``ids`` from token chunk values, in one C call.

    ``chunk_keys``: strictly ascending uint32 chunk keys (``id >> slot_shift``);
    ``chunk_buffers[k]``: the value of ``chunk_keys[k]``, any buffer object (bytes,
    memoryview from LMDB, numpy array); its length must be exactly
    ``chunk_value_size(slot_shift)`` (the record region), or that plus the 8-byte
    checksum trailer (docs/format.md §3.0; not verified here: ``kv.KV.record`` does). The layout is in
    ``csrc/ngcore.h`` / docs/format.md.

    Returns ``(out, found)``: ``out`` a new array of ``len(ids)`` records of ``dtype``
    (RAW64 by default, or TOKEN_DTYPE), ``found`` a bool array; rows of absent ids
    (chunk missing or presence bit clear) are all-zero with ``found`` False. The outputs
    are copies: they stay valid after the buffers are released.

    Raises InvalidArgumentError for bad arguments and NativeError (code NG_ECORRUPT)
    when a chunk value has the wrong length; no byte outside a buffer is ever read.
    """
    if isinstance(slot_shift, bool) or not isinstance(slot_shift, (int, np.integer)) \
            or not MIN_SLOT_SHIFT <= slot_shift <= MAX_SLOT_SHIFT:
        raise InvalidArgumentError(
            f"slot_shift must be an int in {MIN_SLOT_SHIFT}..{MAX_SLOT_SHIFT}, got {slot_shift!r}")
    dt = np.dtype(dtype)
    if dt != RAW64 and dt != TOKEN_DTYPE:
        raise InvalidArgumentError(f"dtype must be RAW64 or TOKEN_DTYPE, got {dt}")
    id_arr = _as_u32(ids, "ids")
    keys = _as_u32(chunk_keys, "chunk_keys")
    nchunks = keys.shape[0]
    if len(chunk_buffers) != nchunks:
        raise InvalidArgumentError(f"got {nchunks} chunk keys but {len(chunk_buffers)} chunk buffers")
    if nchunks > 1 and bool(np.any(keys[1:] <= keys[:-1])):
        raise InvalidArgumentError("chunk_keys must be strictly ascending")
    n = id_arr.shape[0]
    out = np.empty(n, dtype=dt)
    found = np.empty(n, dtype=np.bool_)
    # chunk_buffers (referenced by the caller until this returns) own the memory
    ptrs, lens = pointer_array(chunk_buffers)
    if n == 0 and nchunks == 0:
        return out, found
    rc = lib.ng_gather64(
        ffi.from_buffer("uint32_t[]", id_arr) if n else ffi.NULL, n,
        ffi.from_buffer("uint32_t[]", keys) if nchunks else ffi.NULL, ptrs, lens, nchunks, slot_shift,
        ffi.from_buffer("uint8_t[]", out, require_writable=True) if n else ffi.NULL,
        ffi.from_buffer("uint8_t[]", found, require_writable=True) if n else ffi.NULL,
    )
    if rc != 0:
        want = chunk_value_size(int(slot_shift))
        bad = [int(keys[k]) for k in range(nchunks) if int(lens[k]) not in (want, want + CHECKSUM_BYTES)]
        hint = (f"chunk key {bad[0]} has {int(lens[keys.tolist().index(bad[0])])} bytes, "
                f"a chunk of {1 << int(slot_shift)} slots must have exactly {want} "
                f"(or {want + CHECKSUM_BYTES} with its checksum)") if bad else ""
        check_status("ng_gather64", rc, hint)
    return out, found


#: A column gather of at least this many chunks is split between the calling thread and
#: a helper (both run C without the GIL): one thread's loop is bound by the latency of
#: the map's 4 KiB pages, two keep twice the misses in flight. Measured on 2 cores, 977
#: chunks: 2.36 -> 1.64 ns/token; below ~100 chunks the hand-off costs more than it saves.
PARALLEL_GATHER_CHUNKS = 128

_scan_helper: Any = None  # a ThreadPoolExecutor of one thread, made at the first parallel gather
_scan_helper_lock = threading.Lock()


def _forget_helper() -> None:  # a forked child has no helper thread: it makes its own
    global _scan_helper, _scan_helper_lock
    _scan_helper, _scan_helper_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helper)


def _helper() -> Any:
    global _scan_helper
    with _scan_helper_lock:
        if _scan_helper is None:
            from concurrent.futures import ThreadPoolExecutor

            _scan_helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ngstore-scan")
        return _scan_helper


def gather_column(chunk_buffers: Sequence[Any], slot_shift: int, field_offset: int,
                  field_dtype: np.dtype, capacity: int, *, parallel: bool | None = None) -> np.ndarray:
    """One field of every present record of the given token chunk values, in order.

    ``chunk_buffers`` are whole chunk values (docs/format.md §3.2), read in place (zero
    copy, GIL released); the result is a new array of ``field_dtype`` (at most
    ``capacity`` rows, allocated up front; more present records than that is NG_ERANGE, so
    pass the chunks' slots). A chunk of the wrong length raises NativeError before anything
    is read from it. ``parallel`` (None: when there are at least
    :data:`PARALLEL_GATHER_CHUNKS` chunks and more than one CPU) splits the chunks between
    this thread and a helper thread; the result is the same."""
    dt = np.dtype(field_dtype)
    if not isinstance(slot_shift, int) or not MIN_SLOT_SHIFT <= slot_shift <= MAX_SLOT_SHIFT:
        raise InvalidArgumentError(f"slot_shift must be an int in {MIN_SLOT_SHIFT}..{MAX_SLOT_SHIFT}")
    if field_offset < 0 or field_offset + dt.itemsize > 64:
        raise InvalidArgumentError("the field must lie inside the 64-byte record")
    out = np.empty(max(int(capacity), 0), dtype=dt)
    nchunks = len(chunk_buffers)
    if nchunks == 0:
        return out[:0]
    ptrs, lens = pointer_array(chunk_buffers)
    if parallel is None:
        parallel = nchunks >= PARALLEL_GATHER_CHUNKS and (os.cpu_count() or 1) > 1
    out_c = ffi.from_buffer("uint8_t[]", out.view(np.uint8), require_writable=True) if out.size else ffi.NULL
    hint = ("a chunk value has the wrong length, or the counter of present tokens is lower than the chunks' "
            "presence bits")
    half = nchunks // 2 if parallel and nchunks > 1 else nchunks
    n_first = ffi.new("size_t *")
    n_second = ffi.new("size_t *")
    later = None
    cap_first = out.shape[0]
    if half < nchunks:
        # the second half's records go after the first half's: count those first (bitmaps only)
        check_status("ng_count_present", lib.ng_count_present(ptrs, lens, half, slot_shift, n_first), hint)
        first = cap_first = int(n_first[0])
        if first > out.shape[0]:
            check_status("ng_gather_column", NG_ERANGE, hint)
        later = _helper().submit(lib.ng_gather_column, ptrs + half, lens + half, nchunks - half, slot_shift,
                                 field_offset, dt.itemsize, out_c + first * dt.itemsize if out.size else ffi.NULL,
                                 out.shape[0] - first, n_second)
    try:
        rc = lib.ng_gather_column(ptrs, lens, half, slot_shift, field_offset, dt.itemsize, out_c, cap_first, n_first)
    finally:
        rc2 = later.result() if later is not None else 0  # never leave the helper writing into out
    check_status("ng_gather_column", rc, hint)
    check_status("ng_gather_column", rc2, hint)
    n = int(n_first[0]) + (int(n_second[0]) if later is not None else 0)
    return out[:n].copy() if 2 * n < out.shape[0] else out[:n]  # let a mostly unused buffer go


def chunk_patch(region: bytearray, slot_shift: int, rows: np.ndarray, ids: np.ndarray, src: Any = None) -> int:
    """Builds a chunk's new record region in ``region`` (a writable buffer of at least the
    record region): the old region copied from ``src`` (a buffer, e.g. the stored value;
    None: all zero), then ``rows`` (n x 64 uint8, C-contiguous), row i into slot
    ``ids[i]`` of the chunk (uint32; only the slot bits count), presence bits set; returns
    how many bits were newly set. One C call, without the GIL, for what the applier did
    with a copy and five numpy calls a chunk."""
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 64 or not rows.flags.c_contiguous \
            or ids.dtype != np.uint32 or ids.shape != (rows.shape[0],) or not ids.flags.c_contiguous:
        raise InvalidArgumentError(f"chunk_patch takes (n, 64) uint8 rows and n uint32 ids, got {rows.dtype} "
                                   f"{rows.shape} and {ids.dtype} {ids.shape}")
    rc = lib.ng_chunk_patch(ffi.from_buffer("uint8_t[]", region, require_writable=True), len(region),
                            ffi.NULL if src is None else ffi.from_buffer("uint8_t[]", src),
                            0 if src is None else len(src), slot_shift,
                            ffi.from_buffer("uint8_t[]", rows), ffi.from_buffer("uint32_t[]", ids), rows.shape[0])
    if rc < 0:
        check_status("ng_chunk_patch", rc, f"slot_shift {slot_shift}, a region of {len(region)} bytes, "
                     f"a source of {0 if src is None else len(src)}")
    return int(rc)
