"""_native: the compiled core against the numpy reference and a pure-Python gather model."""
from __future__ import annotations

import ctypes
import mmap
import os
import pathlib
import re
import signal
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ngstore import _native, codec
from ngstore.errors import InvalidArgumentError, NativeError, NgStoreError
from ngstore.records import CONNECTION_DTYPE, RAW64, TOKEN_DTYPE

A2_STATE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
A3_MIXED_STATE = [-0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8]


def a3_vectors() -> list[tuple[str, np.ndarray, int]]:
    """Appendix A3 as (name, raw coordinates (8, 3) int16, hash); same as test_codec's."""
    zero = np.zeros((8, 3), np.int16)
    a2, mixed, l1l8 = zero.copy(), zero.copy(), zero.copy()
    a2[:, 0] = [10, 2000, 300, 4000, 5000, 6000, 70, 8000]
    mixed[:, 0] = [-10, 2000, -300, 4000, -5000, 6000, -70, 8000]
    l1l8[0], l1l8[7] = (1000, 2000, 3000), (-1, 5, -32768)
    return [("all-zero", zero, 0x7081810500100030), ("state A2", a2, 0xB0DC1DFD4FC00037),
            ("mixed-sign state", mixed, 0xB0A39C0548001E37), ("L1 and L8", l1l8, 0xCF41965B8017FFCF)]


CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
NG_ECORRUPT = -4
NG_EINVAL = -1


def records_of(raw_coords: np.ndarray) -> np.ndarray:
    """TOKEN_DTYPE records with the given (n, 8, 3) raw coordinates and noise elsewhere."""
    n = raw_coords.shape[0]
    recs = np.zeros(n, TOKEN_DTYPE)
    recs["coordinates"] = raw_coords
    recs["id"] = np.arange(n)
    recs["flags"] = 0xFFFF
    recs["weight"] = 1.5
    recs["timestamp"] = 0xFFFFFFFF
    return recs


# -- the build ------------------------------------------------------------------


def test_abi_version_constant_equals_the_header_and_the_compiled_module():
    header = (CSRC / "ngcore.h").read_text()
    stamp = int(re.search(r"#define NG_ABI_VERSION (\d+)", header).group(1))
    assert _native.ABI_VERSION == stamp == _native.lib.ng_abi_version()


def test_slot_shift_bounds_equal_the_header():
    header = (CSRC / "ngcore.h").read_text()
    assert int(re.search(r"#define NG_MIN_SLOT_SHIFT (\d+)", header).group(1)) == _native.MIN_SLOT_SHIFT
    assert int(re.search(r"#define NG_MAX_SLOT_SHIFT (\d+)", header).group(1)) == _native.MAX_SLOT_SHIFT


def test_a_stale_build_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(_native, "ABI_VERSION", _native.ABI_VERSION + 1)
    with pytest.raises(NgStoreError, match=r"stale.*pip install"):
        _native._check_build()


def test_ffi_and_lib_are_shared_for_other_wrappers():
    assert _native.ffi.typeof("uint64_t *") is not None
    assert _native.strerror(NG_ECORRUPT) == "stored bytes are corrupt"


def test_check_status_raises_native_error_with_function_code_and_text():
    with pytest.raises(NativeError, match=r"ng_x failed with status -1: invalid argument") as info:
        _native.check_status("ng_x", NG_EINVAL)
    assert info.value.code == NG_EINVAL and info.value.function == "ng_x"
    _native.check_status("ng_x", 0)


# -- grid hash of tokens ------------------------------------------------------------


@pytest.mark.parametrize("name,raw,expected", a3_vectors(), ids=[v[0] for v in a3_vectors()])
def test_c_token_hash_reproduces_appendix_a3(name, raw, expected):
    assert _native.grid_hash_tokens(records_of(raw[None])).tolist() == [expected]


def test_c_token_hash_accepts_raw64_and_uint8_rows():
    recs = records_of(np.stack([v[1] for v in a3_vectors()]))
    expected = [v[2] for v in a3_vectors()]
    assert _native.grid_hash_tokens(recs.view(RAW64)).tolist() == expected
    assert _native.grid_hash_tokens(recs.view(np.uint8).reshape(-1, 64)).tolist() == expected


def test_c_token_hash_follows_strides_of_non_contiguous_views():
    recs = records_of(np.stack([v[1] for v in a3_vectors()]))
    expected = [v[2] for v in a3_vectors()]
    assert _native.grid_hash_tokens(recs[::2]).tolist() == expected[::2]
    assert _native.grid_hash_tokens(recs[::-1]).tolist() == expected[::-1]
    assert _native.grid_hash_tokens(recs.view(np.uint8).reshape(-1, 64)[1::2]).tolist() == expected[1::2]
    wide = np.zeros((4, 80), np.uint8)
    wide[:, :64] = recs.view(np.uint8).reshape(-1, 64)
    assert _native.grid_hash_tokens(wide[:, :64]).tolist() == expected


def test_c_token_hash_of_nothing_is_an_empty_array():
    out = _native.grid_hash_tokens(np.zeros(0, TOKEN_DTYPE))
    assert out.dtype == np.uint64 and out.shape == (0,)


def test_c_token_hash_works_on_read_only_memory():
    recs = records_of(np.stack([v[1] for v in a3_vectors()]))
    ro = np.frombuffer(recs.tobytes(), TOKEN_DTYPE)
    assert not ro.flags.writeable
    assert _native.grid_hash_tokens(ro).tolist() == [v[2] for v in a3_vectors()]


@pytest.mark.parametrize("bad", [np.zeros(3, np.int64), np.zeros((3, 63), np.uint8), np.zeros((2, 2), TOKEN_DTYPE)])
def test_c_token_hash_refuses_wrong_dtype_or_shape(bad):
    with pytest.raises(InvalidArgumentError):
        _native.grid_hash_tokens(bad)


def test_c_token_hash_refuses_bad_shifts_before_calling_c():
    with pytest.raises(InvalidArgumentError, match="shift"):
        _native.grid_hash_tokens(np.zeros(1, TOKEN_DTYPE), [16] * 8)


def test_c_functions_return_einval_for_a_shift_over_15():
    out = _native.ffi.new("uint64_t[1]")
    rec = _native.ffi.new("uint8_t[64]")
    shifts = _native.ffi.new("uint8_t[8]", [16] * 8)
    assert _native.lib.ng_grid_hash_tokens(rec, 1, 64, shifts, out) == NG_EINVAL
    assert _native.lib.ng_grid_hash_tokens(rec, 1, 32, _native.ffi.new("uint8_t[8]"), out) == NG_EINVAL
    assert _native.lib.ng_grid_hash_tokens(_native.ffi.NULL, 1, 64, _native.ffi.new("uint8_t[8]"), out) == NG_EINVAL


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 20), st.just(8), st.just(3))),
       st.lists(st.integers(0, 15), min_size=8, max_size=8))
def test_c_token_hash_equals_the_numpy_reference(raw, shifts):
    expected = codec.grid_hash_reference(raw, shifts)
    assert np.array_equal(_native.grid_hash_tokens(records_of(raw), shifts), expected)


# -- grid hash of states ------------------------------------------------------------


def test_c_state_hash_reproduces_appendix_a3():
    states = np.array([[0.0] * 8, A2_STATE, A3_MIXED_STATE])
    assert _native.grid_hash_states(states).tolist() == [0x7081810500100030, 0xB0DC1DFD4FC00037, 0xB0A39C0548001E37]


def test_c_state_hash_of_one_state_is_a_scalar_array():
    assert int(_native.grid_hash_states(A2_STATE)) == 0xB0DC1DFD4FC00037


def test_c_state_hash_refuses_a_state_of_nine_values():
    with pytest.raises(InvalidArgumentError):
        _native.grid_hash_states(np.zeros((2, 9)))


_f32 = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(-4.0, 4.0, width=32),
    st.sampled_from([float(np.float32(v)) for v in (np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 327.67, -327.68,
                                                    3.2767, 0.7, -0.00015)]),
)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 10), st.just(8)), elements=_f32),
       st.lists(st.integers(0, 15), min_size=8, max_size=8))
def test_c_state_hash_equals_reference_of_encode_state(states, shifts):
    expected = codec.grid_hash_reference(codec.state_coordinates(states), shifts)
    assert np.array_equal(_native.grid_hash_states(states, shifts), expected)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 10), st.just(8)),
                  elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_c_state_hash_of_float64_states_goes_through_float32_like_the_reference(states):
    expected = codec.grid_hash_reference(codec.state_coordinates(states))
    assert np.array_equal(_native.grid_hash_states(states), expected)


# -- gather ----------------------------------------------------------------------------------


def make_chunk(slot_shift: int, records: np.ndarray, present: np.ndarray) -> bytes:
    """A chunk value per the format: S records then an LSB-first presence bitmap."""
    bitmap = np.packbits(present.astype(np.uint8), bitorder="little")
    return records.tobytes() + bitmap.tobytes()


def model_gather(ids, chunks: dict[int, tuple[np.ndarray, np.ndarray]], slot_shift: int):
    """Pure-Python gather: (list of 64-byte rows, list of found flags)."""
    rows, found = [], []
    for i in ids:
        key, slot = i >> slot_shift, i & ((1 << slot_shift) - 1)
        if key in chunks and chunks[key][1][slot]:
            rows.append(chunks[key][0][slot].tobytes())
            found.append(True)
        else:
            rows.append(bytes(64))
            found.append(False)
    return rows, found


@st.composite
def chunk_sets(draw):
    slot_shift = draw(st.integers(3, 6))
    slots = 1 << slot_shift
    max_key = 0xFFFFFFFF >> slot_shift
    keys = draw(st.sets(st.one_of(st.sampled_from([0, 1, max_key - 1, max_key]), st.integers(0, max_key)),
                        max_size=6))
    chunks = {}
    for key in sorted(keys):
        raw = draw(hnp.arrays(np.uint8, (slots, 64)))
        present = draw(hnp.arrays(np.bool_, (slots,)))
        chunks[key] = (raw.view(RAW64)[:, 0], present)
    candidates = [k << slot_shift | s for k in chunks for s in range(slots)]
    id_strategy = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 0xFFFFFFFF]),
                            *([st.sampled_from(candidates)] if candidates else []))
    ids = draw(st.lists(id_strategy, max_size=40))
    return slot_shift, chunks, ids


@settings(max_examples=200, deadline=None)
@given(chunk_sets())
def test_gather_equals_the_python_model(case):
    slot_shift, chunks, ids = case
    keys = sorted(chunks)
    buffers = [make_chunk(slot_shift, *chunks[k]) for k in keys]
    out, found = _native.gather64(np.array(ids, np.uint32), keys, buffers, slot_shift)
    rows, model_found = model_gather(ids, chunks, slot_shift)
    assert out.dtype == RAW64 and found.dtype == np.bool_
    assert found.tolist() == model_found
    assert [r.tobytes() for r in out] == rows


def test_gather_returns_token_dtype_when_asked():
    recs = np.zeros(8, TOKEN_DTYPE)
    recs["id"] = np.arange(8) + 8
    value = make_chunk(3, recs, np.ones(8, bool))
    out, found = _native.gather64([9, 15, 16], [1], [memoryview(value)], 3, dtype=TOKEN_DTYPE)
    assert out.dtype == TOKEN_DTYPE
    assert out["id"].tolist() == [9, 15, 0] and found.tolist() == [True, True, False]


def test_gather_of_a_clear_presence_bit_is_absent_and_zeroed_even_if_bytes_are_set():
    recs = np.full(8, 0xAB, np.uint8).repeat(64).view(RAW64)
    present = np.zeros(8, bool)
    present[2] = True
    out, found = _native.gather64([1, 2], [0], [make_chunk(3, recs, present)], 3)
    assert found.tolist() == [False, True]
    assert out[0].tobytes() == bytes(64) and out[1].tobytes() == b"\xab" * 64


def test_gather_accepts_numpy_and_bytearray_buffers():
    recs = np.zeros(16, TOKEN_DTYPE)
    recs["id"] = np.arange(16)
    value = np.frombuffer(make_chunk(4, recs, np.ones(16, bool)), np.uint8)
    for buf in (value, bytearray(value.tobytes()), memoryview(value.tobytes())):
        out, found = _native.gather64([5], [0], [buf], 4, dtype=TOKEN_DTYPE)
        assert out["id"].tolist() == [5] and found.all()


def test_gather_with_a_chunk_of_the_wrong_length_raises_native_error():
    good = make_chunk(3, np.zeros(8, RAW64), np.ones(8, bool))
    for bad in (good[:-1], good + b"\0", b""):
        with pytest.raises(NativeError, match=r"corrupt.*exactly 513") as info:
            _native.gather64([0], [0], [bad], 3)
        assert info.value.code == NG_ECORRUPT


def test_gather_checks_every_chunk_even_one_no_id_needs():
    good = make_chunk(3, np.zeros(8, RAW64), np.ones(8, bool))
    with pytest.raises(NativeError):
        _native.gather64([0], [0, 5], [good, good[:100]], 3)


def _guarded_page() -> tuple[mmap.mmap, int]:
    """An anonymous 2-page mapping whose second page is PROT_NONE; returns (map, page size)."""
    page = mmap.PAGESIZE
    m = mmap.mmap(-1, 2 * page)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(addr + page, page, 0) != 0:  # PROT_NONE
        pytest.skip("mprotect unavailable")
    return m, page


def test_gather_never_reads_past_a_chunk_value_that_ends_at_a_guard_page():
    m, page = _guarded_page()
    good = make_chunk(3, (np.arange(512) % 251).astype(np.uint8).view(RAW64), np.ones(8, bool))
    m[page - len(good):page] = good
    view = memoryview(m)[page - len(good):page]
    out, found = _native.gather64(np.arange(8), [0], [view], 3)  # the last slot's bit is the last byte
    assert found.all() and out.view(np.uint8).tobytes() == good[:512]
    short = memoryview(m)[page - len(good) + 1:page]  # one byte short, still ending at the guard
    with pytest.raises(NativeError):
        _native.gather64(np.arange(8), [0], [short], 3)
    view.release()
    short.release()


def test_gather_refuses_unsorted_or_duplicate_chunk_keys():
    good = make_chunk(3, np.zeros(8, RAW64), np.ones(8, bool))
    for keys in ([2, 1], [1, 1]):
        with pytest.raises(InvalidArgumentError, match="ascending"):
            _native.gather64([0], keys, [good, good], 3)


def test_c_gather_returns_einval_for_unsorted_keys_without_the_python_check():
    ffi, lib = _native.ffi, _native.lib
    good = make_chunk(3, np.zeros(8, RAW64), np.ones(8, bool))
    bufs = [ffi.from_buffer("uint8_t[]", good)] * 2
    out, found = ffi.new("uint8_t[64]"), ffi.new("uint8_t[1]", [7])
    rc = lib.ng_gather64(ffi.new("uint32_t[1]", [0]), 1, ffi.new("uint32_t[2]", [2, 1]),
                         ffi.new("const uint8_t *[]", bufs), ffi.new("uint64_t[2]", [513, 513]), 2, 3, out, found)
    assert rc == NG_EINVAL and found[0] == 7  # nothing written on error


@pytest.mark.parametrize("kwargs,match", [
    ({"ids": [-1]}, "ids"),
    ({"ids": [2**32]}, "ids"),
    ({"ids": [[1]]}, "ids"),
    ({"ids": [0.5]}, "ids"),
    ({"slot_shift": 2}, "slot_shift"),
    ({"slot_shift": 25}, "slot_shift"),
    ({"chunk_keys": [0, 1]}, "chunk"),
    ({"dtype": np.uint8}, "dtype"),
])
def test_gather_refuses_bad_arguments(kwargs, match):
    args = {"ids": [0], "chunk_keys": [0], "chunk_buffers": [make_chunk(3, np.zeros(8, RAW64), np.ones(8, bool))],
            "slot_shift": 3}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=match):
        _native.gather64(**args)


def test_gather_of_no_ids_and_no_chunks_is_empty():
    out, found = _native.gather64(np.zeros(0, np.uint32), np.zeros(0, np.uint32), [], 10)
    assert out.shape == (0,) and found.shape == (0,)
    out, found = _native.gather64([1, 2], [], [], 10)
    assert not found.any() and out.view(np.uint8).sum() == 0


def test_gather_uses_whole_u32_range_at_the_largest_slot_shift_keys():
    slot_shift = 3
    max_key = 0xFFFFFFFF >> slot_shift
    recs = np.zeros(8, TOKEN_DTYPE)
    recs["id"] = 0xFFFFFFF8 + np.arange(8)
    value = make_chunk(slot_shift, recs, np.ones(8, bool))
    out, found = _native.gather64([0xFFFFFFFF, 0xFFFFFFF8, 0], [max_key], [value], slot_shift, dtype=TOKEN_DTYPE)
    assert out["id"].tolist() == [0xFFFFFFFF, 0xFFFFFFF8, 0] and found.tolist() == [True, True, False]


def test_chunk_patch_copies_the_old_region_then_writes_rows_into_their_slots():
    shift, slots = 4, 16
    region_bytes = slots * 64 + slots // 8
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, region_bytes + 8, dtype=np.uint8).tobytes()
    rows = rng.integers(0, 256, (3, 64), dtype=np.uint8)
    ids = np.array([16 * 5 + 2, 16 * 5 + 9, 16 * 5 + 2], dtype=np.uint32)  # slot 2 twice: the last wins
    out = bytearray(region_bytes + 8)
    old_bits = np.frombuffer(old, np.uint8, slots // 8, slots * 64)
    newly = sum(1 for s in (2, 9) if not (old_bits[s // 8] >> (s % 8)) & 1)
    assert _native.chunk_patch(out, shift, rows, ids, memoryview(old)[:region_bytes]) == newly
    want = bytearray(old[:region_bytes]) + bytes(8)
    want[2 * 64:3 * 64] = rows[2].tobytes()
    want[9 * 64:10 * 64] = rows[1].tobytes()
    want[slots * 64] |= 1 << 2
    want[slots * 64 + 1] |= 1 << 1
    assert out == want
    fresh = bytearray(region_bytes)
    assert _native.chunk_patch(fresh, shift, rows, ids) == 2  # no source: from zeros


def test_chunk_patch_refuses_bad_arguments_without_writing():
    rows = np.zeros((2, 64), np.uint8)
    ids = np.zeros(2, np.uint32)
    buf = bytearray(b"\x01" * (16 * 64 + 2))
    with pytest.raises(InvalidArgumentError):
        _native.chunk_patch(buf, 4, rows[:, :32], ids)
    with pytest.raises(InvalidArgumentError):
        _native.chunk_patch(buf, 4, rows, ids.astype(np.int64))
    with pytest.raises(NativeError):
        _native.chunk_patch(buf[:-1], 4, rows, ids)
    with pytest.raises(NativeError):
        _native.chunk_patch(buf, 4, rows, ids, bytes(10))
    assert buf == bytearray(b"\x01" * (16 * 64 + 2))


# -- column gather: one thread or two ---------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.integers(3, 6), st.lists(st.tuples(st.integers(0, 255), st.floats(0, 1)), min_size=1, max_size=9),
       st.integers(0, 60), st.sampled_from([1, 2, 4, 8, 3]))
def test_a_gather_split_between_two_threads_gives_the_one_thread_result(shift, chunk_specs, offset, size):
    slots = 1 << shift
    rng = np.random.default_rng(len(chunk_specs) * 131 + shift)
    bufs = []
    for seed, density in chunk_specs:
        recs = np.random.default_rng(seed).integers(0, 256, (slots, 64), dtype=np.uint8).view(RAW64)[:, 0]
        bufs.append(make_chunk(shift, recs, rng.random(slots) < density))
    offset = min(offset, 64 - size)
    dt = np.dtype((np.void, size))
    one = _native.gather_column(bufs, shift, offset, dt, len(bufs) << shift, parallel=False)
    two = _native.gather_column(bufs, shift, offset, dt, len(bufs) << shift, parallel=True)
    assert two.tobytes() == one.tobytes() and two.shape == one.shape
    if one.size:  # one row short: refused, whichever half runs out of room
        for parallel in (False, True):
            with pytest.raises(NativeError):
                _native.gather_column(bufs, shift, offset, dt, one.size - 1, parallel=parallel)


def test_a_split_gather_refuses_a_bad_chunk_in_either_half():
    recs = np.zeros(8, RAW64)
    good = make_chunk(3, recs, np.ones(8, bool))
    for bad_at in (0, 3):
        bufs = [good] * 4
        bufs[bad_at] = good[:-1]
        with pytest.raises(NativeError):
            _native.gather_column(bufs, 3, 0, np.dtype("u4"), 32, parallel=True)


def test_a_forked_child_gathers_in_parallel_with_its_own_helper(tmp_path):
    # The helper thread does not survive a fork; the child must make its own, not wait on it.
    recs = np.zeros(8, RAW64)
    bufs = [make_chunk(3, recs, np.ones(8, bool))] * 4
    _native.gather_column(bufs, 3, 0, np.dtype("u4"), 32, parallel=True)  # the parent's helper exists
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = _native.gather_column(bufs, 3, 0, np.dtype("u4"), 32, parallel=True).size == 32
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's parallel gather hung")


def _waiter_ran_during(calls, seconds: float) -> bool:
    """Whether a thread that wants the GIL got it while ``calls()`` ran for ``seconds`` (or,
    for a call that releases it, until it did). With a switch interval far longer than the
    test, a thread waiting for the GIL gets it only when the running thread releases it."""
    import sys
    import threading

    old = sys.getswitchinterval()
    ran: list[int] = []
    go = threading.Event()
    waiter = threading.Thread(target=lambda: (go.wait(), ran.append(1)))
    waiter.start()
    sys.setswitchinterval(1000.0)
    try:
        go.set()  # the waiter wakes and waits for the GIL from now on
        end = time.perf_counter() + seconds
        while not ran and time.perf_counter() < end:
            calls()
        return bool(ran)
    finally:
        sys.setswitchinterval(old)
        waiter.join(10)


def test_the_short_calls_keep_the_gil_and_the_others_release_it():
    from ngstore.reflex import LookupParams, ReflexTable
    from ngstore.walmap import put_frame

    lib, ffi = _native.lib, _native.ffi
    t = ReflexTable.create(10)
    c = np.zeros(1, CONNECTION_DTYPE)[0]
    c["confidence"] = 230
    t.insert(A2_STATE, c)
    exact, near = LookupParams(), LookupParams(nearest_fallback=1.0)
    assert t.lookup_with(exact, A2_STATE) is not None and t.lookup_with(near, A2_STATE) is not None
    buf, payload = ffi.new("uint8_t[]", 4096), b"x" * 100
    base = int(ffi.cast("uintptr_t", buf))

    def kept() -> None:
        for _ in range(100):
            t.lookup_with(exact, A2_STATE)
            t.lookup_with(exact, np.array(A2_STATE, np.float32))
            assert put_frame(base, 4096, 0, payload, 1, 1, 0, 1) == 0

    # the kept calls: 0.2 s of them, and the waiting thread never ran
    assert not _waiter_ran_during(kept, 0.2)
    # the harness sees a release: an empty call, and a lookup with a fallback radius
    assert _waiter_ran_during(lib.ng_abi_version, 10.0)
    assert _waiter_ran_during(lambda: t.lookup_with(near, A2_STATE), 10.0)


# -- CRC-32 ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 9000), start=st.integers(0, 15), seed=st.integers(0, 2**32 - 1),
       fill=st.integers(0, 2**32 - 1))
def test_the_c_crc32_is_zlibs_at_every_length_alignment_and_starting_value(n, start, seed, fill):
    # lengths from 0 to past the carry-less path's 64-byte minimum and the wrapper's 4 KiB
    # switch, at every offset from a 16-byte boundary, continuing from any CRC
    data = np.random.default_rng(fill).integers(0, 256, start + n, dtype=np.uint8).tobytes()
    view = memoryview(data)[start:]
    want = zlib.crc32(view, seed)
    assert _native.lib.ng_crc32(_native.ffi.from_buffer(view), view.nbytes, seed) == want
    assert _native.crc32(view, seed) == want and _native.crc32(bytes(view), seed) == want


def test_the_c_crc32_of_a_large_buffer_in_pieces_is_the_crc_of_the_whole():
    data = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    crc = 0
    for a, b in ((0, 100), (100, 70_001), (70_001, 1 << 20), (1 << 20, len(data))):
        crc = _native.crc32(data[a:b], crc)
    assert crc == zlib.crc32(data)


def test_pointer_array_gives_each_buffers_address_and_length_in_one_call() -> None:
    ffi = _native.ffi
    arr = np.arange(40, dtype=np.uint8)
    bufs: list[object] = [b"abc", bytearray(b"defgh"), memoryview(b"0123456789")[2:7], arr, arr[10:30], b""]
    ptrs, lens = _native.pointer_array(bufs)
    for i, b in enumerate(bufs):
        want = ffi.from_buffer("uint8_t[]", b)
        assert int(lens[i]) == len(want)
        assert int(ffi.cast("uintptr_t", ptrs[i])) == int(ffi.cast("uintptr_t", want)) or len(want) == 0
        assert bytes(ffi.buffer(ptrs[i], int(lens[i]))) == bytes(want)
    assert _native.pointer_array([]) == (ffi.NULL, ffi.NULL)
    with pytest.raises((BufferError, ValueError)):
        _native.pointer_array([b"ok", arr[::2]])  # not contiguous: no address to give
    with pytest.raises(TypeError):
        _native.pointer_array([b"ok", 3])  # type: ignore[list-item]
    p, n = ffi.new("const uint8_t *[]", 2), ffi.new("uint64_t[]", 2)
    with pytest.raises(ValueError, match="number of buffers"):  # n must match: the arrays are n long
        _native._fastpath.buffer_addresses([b"a"], int(ffi.cast("uintptr_t", p)), int(ffi.cast("uintptr_t", n)), 2)
