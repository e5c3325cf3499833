"""The single-state lookup through the CPython API (``_native.Probe``, csrc/cpython/fastpath.c).

It must answer exactly what the C core answers through cffi, build a ReflexHit that is an
ordinary bytes value (its hash included), leave every state it does not take to the
general path, and leak nothing."""
from __future__ import annotations

import gc
import sys
import threading

import numpy as np
import pytest

from ngstore import _native
from ngstore.errors import InvalidArgumentError, StoreClosedError
from ngstore.records import CONNECTION_DTYPE
from ngstore.reflex import DEFAULT_PARAMS, LookupParams, ReflexHit, ReflexTable, ffi, lib


def table_of(n: int, seed: int = 3) -> tuple[ReflexTable, np.ndarray]:
    rng = np.random.default_rng(seed)
    states = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    conns = np.zeros(n, CONNECTION_DTYPE)
    conns["token_a"] = np.arange(n)
    conns["connection_type"] = 0x50
    conns["mutability"] = 1
    conns["confidence"] = rng.integers(100, 256, n)  # some below 150: known, not answered
    conns["target_vector"] = rng.integers(-32768, 32767, (n, 8))
    t = ReflexTable.create(n)
    t.insert_batch(states, conns)
    return t, states


def by_cffi(t: ReflexTable, params: LookupParams, state: list[float]) -> bytes | None:
    """The C core's answer through the cffi wrapper, with a context of its own."""
    ctx = ffi.new("ng_reflex_ctx *")
    ctx.table = t._v.handle  # type: ignore[union-attr]
    r = int(lib.ng_reflex_lookup_f32(ctx, params._c, *state))
    assert r >= 0
    return bytes(ffi.buffer(ffi.addressof(ctx, "out"), 112)) if r & 1 else None


@pytest.mark.parametrize("params", [DEFAULT_PARAMS, LookupParams(nearest_fallback=1.5),
                                    LookupParams(min_confidence=0, similarity_threshold=0.5)])
def test_the_probe_answers_a_list_or_a_tuple_as_the_cffi_call_does(params: LookupParams) -> None:
    t, states = table_of(400)
    rng = np.random.default_rng(11)
    near = states[:100] + rng.normal(0, 0.02, (100, 8)).astype(np.float32)  # same cell or a neighbour's
    far = rng.uniform(-1, 1, (100, 8)).astype(np.float32)
    answered = 0
    for q in np.concatenate([states[:200], near, far]).astype(np.float64):
        state = q.tolist()
        want = by_cffi(t, params, state)
        for form in (state, tuple(state), [np.float64(x) for x in state]):
            got = t.lookup_with(params, form)
            assert (got is None) == (want is None)
            if got is not None:
                assert type(got) is ReflexHit and bytes(got) == want
        answered += want is not None
    assert 100 < answered < 300  # the states cover hits, misses and ineligible reflexes


def test_the_probe_answers_float_rows_and_tokens_as_the_cffi_call_does() -> None:
    from ngstore import Token

    t, states = table_of(300)
    rng = np.random.default_rng(5)
    params = LookupParams(min_confidence=0, nearest_fallback=1.0)
    queries = np.concatenate([states[:100], rng.uniform(-1, 1, (50, 8))]).astype(np.float64)
    wide = np.zeros((len(queries), 16))
    wide[:, ::2] = queries
    answered = 0
    for i, q in enumerate(queries):
        want = by_cffi(t, params, q.tolist())  # float64 values, rounded to float32 by the call
        f32 = q.astype(np.float32)
        forms = [q, f32, wide[i, ::2], memoryview(f32), q.astype(">f8"), q.astype(np.float16).astype(np.float64)]
        for form in forms[:5]:  # a big-endian row is not native: the general path answers it
            got = t.lookup_with(params, form)
            assert bytes(got) == want if want is not None else got is None
        f16 = forms[5]
        assert bytes(t.lookup_with(params, f16) or b"") == bytes(by_cffi(t, params, f16.tolist()) or b"")
        tok = Token.from_state(i + 1, f32)
        ctx = ffi.new("ng_reflex_ctx *")
        ctx.table = t._v.handle  # type: ignore[union-attr]
        r = int(lib.ng_reflex_lookup_one(ctx, params._c, 1, ffi.from_buffer(tok.to_bytes())))
        by_token = t.lookup_with(params, tok)
        assert (by_token is None) == (not r & 1)
        if by_token is not None:
            assert bytes(by_token) == bytes(ffi.buffer(ffi.addressof(ctx, "out"), 112))
            answered += 1
    assert 100 <= answered < 150


def test_a_hit_built_by_the_probe_is_an_ordinary_bytes_value() -> None:
    t, states = table_of(50)
    params = LookupParams(min_confidence=0)
    hit = t.lookup_with(params, states[7].tolist())
    assert hit is not None and len(hit) == _native.HIT_SIZE == 112
    plain = bytes(hit)
    assert hit == plain and hash(hit) == hash(plain)  # its hash is computed, not a zero left by the allocation
    assert {plain: "x"}[hit] == "x" and hit in {plain}
    assert hit.record == 7 and hit.similarity == 1.0 and hit.distance == 0.0 and not hit.fallback
    assert hit.connection["token_a"] == 7
    connection, action, similarity = hit
    assert similarity == 1.0 and action.shape == (8,) and connection.tobytes() == plain[48:]
    assert hit + b"" == plain and plain[:4] == hit[:4]


def test_states_the_probe_does_not_take_are_answered_or_refused_by_the_general_path() -> None:
    t, states = table_of(50)
    params = LookupParams(min_confidence=0)
    s = states[3].tolist()
    assert t.lookup_with(params, [np.float32(x) for x in s]).record == 3  # type: ignore[union-attr]
    assert t.lookup_with(params, states[3]).record == 3  # type: ignore[union-attr]  # a float32 row
    assert t.lookup_with(params, [1] * 8) == t.lookup_with(params, [1.0] * 8)  # ints are numbers
    for bad in (s[:7], [*s, 0.0], ["a"] * 8, [None] * 8, [10**400, *s[1:]], [s]):
        with pytest.raises(InvalidArgumentError):
            t.lookup_with(params, bad)


def test_a_closed_table_refuses_a_probe_lookup() -> None:
    t, states = table_of(10)
    t.lookup_with(DEFAULT_PARAMS, states[0].tolist())
    t.close()
    with pytest.raises(StoreClosedError):
        t.lookup_with(DEFAULT_PARAMS, states[0].tolist())


@pytest.mark.parametrize("params", [LookupParams(min_confidence=0),
                                    LookupParams(min_confidence=0, nearest_fallback=1.5)])
def test_threads_share_one_probe_and_get_the_same_answers(params: LookupParams) -> None:
    # With a fallback radius the probe releases the GIL, so the threads' C calls overlap:
    # a context shared between them would hand one thread another's answer.
    t, states = table_of(300)
    rng = np.random.default_rng(5)
    queries = [s.tolist() for s in np.concatenate([states, states + rng.normal(0, 0.02, states.shape)])]
    want = [bytes(t.lookup_with(params, q) or b"") for q in queries]
    probe = t.probe
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(offset, offset + 3000):
            k = i % len(queries)
            got = t.lookup_with(params, queries[k])
            if bytes(got or b"") != want[k]:
                errors.append(f"query {k}")

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert t.probe is probe  # one for every thread


def test_a_probe_keeps_its_table_version_alive_after_growth_and_close() -> None:
    states = np.random.default_rng(8).uniform(-1, 1, (3000, 8)).astype(np.float32)
    conns = np.zeros(3000, CONNECTION_DTYPE)
    conns["token_a"] = np.arange(3000)
    t = ReflexTable.create(10_000)
    t.insert_batch(states[:20], conns[:20])
    params = LookupParams(min_confidence=0)
    old = t.probe
    want = bytes(old.lookup(params.address, states[4].tolist()))
    t.insert_batch(states[20:], conns[20:])  # grows: a new version
    assert t.probe is not old
    t.close()
    assert t.probe is None
    gc.collect()
    for _ in range(3):  # the old version's memory is still the probe's to read
        assert bytes(old.lookup(params.address, states[4].tolist())) == want


def test_hits_and_misses_leak_no_references() -> None:
    t, states = table_of(100)
    params = LookupParams(min_confidence=0)
    hit_state, miss_state = states[1].tolist(), [5.0] * 8
    for _ in range(100):  # caches
        t.lookup_with(params, hit_state)
    gc.collect()
    before = (sys.getrefcount(ReflexHit), sys.getrefcount(hit_state[0]), sys.getrefcount(None))
    for _ in range(20_000):
        t.lookup_with(params, hit_state)
        t.lookup_with(params, miss_state)
    gc.collect()
    after = (sys.getrefcount(ReflexHit), sys.getrefcount(hit_state[0]), sys.getrefcount(None))
    assert after[:2] == before[:2]
    assert abs(after[2] - before[2]) < 1000  # None is shared; a leak of one per miss would be 20,000


def test_a_probe_refuses_a_result_type_it_cannot_build_and_bad_arguments() -> None:
    t, _states = table_of(10)
    v = t._v
    assert v is not None
    addr = int(ffi.cast("uintptr_t", v.handle))

    class WithDict(bytes):
        pass

    for bad in (WithDict, str, int):
        with pytest.raises(TypeError):
            _native.Probe(addr, v, bad)
    with pytest.raises(ValueError):
        _native.Probe(0, v, ReflexHit)
    probe = _native.Probe(addr, v, ReflexHit)
    with pytest.raises(TypeError):
        probe.lookup(DEFAULT_PARAMS.address)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        probe.lookup(0, [0.0] * 8)
    assert probe.lookup(DEFAULT_PARAMS.address, "not a state") == _native.NOT_SIMPLE
    assert probe.lookup(DEFAULT_PARAMS.address, b"\0" * 32) == _native.NOT_SIMPLE  # bytes are no float row
    assert probe.lookup(DEFAULT_PARAMS.address, np.zeros((1, 8), np.float32)) == _native.NOT_SIMPLE
    assert probe.lookup(DEFAULT_PARAMS.address, np.zeros(8, np.int32)) == _native.NOT_SIMPLE
    with pytest.raises(ValueError, match="64 bytes"):
        probe.lookup_token(DEFAULT_PARAMS.address, b"\0" * 63)
    with pytest.raises(TypeError):
        probe.lookup_token(DEFAULT_PARAMS.address, "not bytes")  # type: ignore[arg-type]
