"""Similarity queries against brute force: knn, within, box, the Z-order step, the index's
format rules and its fallback; bad input is refused with InvalidArgumentError."""
from __future__ import annotations

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ngstore
from ngstore import similarity
from ngstore.errors import InvalidArgumentError
from ngstore.layout import DB_META, DB_SPATIAL, M_SPATIAL, SPATIAL_PAGE_MAX
from ngstore.records import TOKEN_DTYPE


def tokens(ids, coords) -> np.ndarray:
    a = np.zeros(len(ids), TOKEN_DTYPE)
    a["id"] = ids
    a["flags"] = 1
    a["coordinates"] = np.asarray(coords).reshape(len(ids), 8, 3)
    return a


def brute_knn(arr, q, k, dims, metric):
    """The contract of knn, in numpy: the distances as the C side computes them."""
    x = arr["coordinates"].reshape(-1, 24)[:, dims].astype(np.int64)
    qv = np.asarray(q, dtype=np.int64).reshape(24)[dims]
    if metric == "l2":
        d = ((x - qv) ** 2).sum(1).astype(np.float64)
    else:
        dot = (x * qv).sum(1).astype(np.float64)
        xn, qn = (x * x).sum(1).astype(np.float64), float((qv * qv).sum())
        den = np.sqrt(qn) * np.sqrt(xn)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(den > 0, 1.0 - dot / den, np.where((qn == 0) & (xn == 0), 0.0, 1.0))
        d = np.clip(d, 0.0, 2.0)
    order = np.lexsort((arr["id"], d))[:k]
    return arr["id"][order], d[order]


@pytest.fixture
def filled(store_path):
    rng = np.random.default_rng(7)
    n = 3000
    ids = rng.choice(50_000, n, replace=False)
    coords = rng.integers(-2000, 2000, size=(n, 24))
    coords[:300] = coords[300:600]  # equal coordinates: ties
    coords[600:650] = 0
    s = ngstore.open(store_path, chunk_slots=64)
    s.put_tokens(tokens(ids, coords))
    yield s, s.snapshot().tokens.to_array()
    s.close()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("layers", [None, 0, [1, 6], [0, 2, 3, 4, 5, 6, 7]])
def test_knn_is_exact_with_ties_to_the_smaller_id(filled, metric, layers):
    s, arr = filled
    rng = np.random.default_rng(1)
    q = np.concatenate([rng.integers(-2000, 2000, size=(6, 24)), arr["coordinates"][:3].reshape(3, 24),
                        np.zeros((1, 24), np.int64)])
    dims = similarity.coordinate_dims(layers)
    with s.snapshot() as snap:
        got = snap.tokens.knn(q, 25, layers=layers, metric=metric)
    assert got.ids.shape == (q.shape[0], 25) and got.ids.dtype == np.uint32
    for i in range(q.shape[0]):
        ids, d = brute_knn(arr, q[i], 25, dims, metric)
        assert np.array_equal(got.ids[i], ids)
        assert np.array_equal(got.distances[i], d)


def test_knn_of_one_query_gives_flat_arrays_and_k_beyond_the_count_gives_all(filled):
    s, arr = filled
    with s.snapshot() as snap:
        one = snap.tokens.knn(arr["coordinates"][5], 4)
        assert one.ids.shape == (4,) and one.ids[0] == arr["id"][5] and one.distances[0] == 0
        every = snap.tokens.knn(arr[:2], 10**6)
        assert every.ids.shape == (2, arr.size)
        token = s.get_token(int(arr["id"][7]))
        assert snap.tokens.knn(token, 1).ids[0] == arr["id"][7]


def test_cosine_puts_zero_vectors_at_one_from_everything_but_zero(filled):
    s, arr = filled
    zero_ids = np.sort(arr["id"][~arr["coordinates"].reshape(-1, 24).any(axis=1)])
    assert zero_ids.size == 50
    with s.snapshot() as snap:
        got = snap.tokens.knn(np.zeros(24, np.int16), 60, metric="cosine")
    assert np.array_equal(got.ids[:50], zero_ids) and np.all(got.distances[:50] == 0)
    assert np.all(got.distances[50:] == 1.0)


def test_an_empty_store_answers_with_no_neighbours(store):
    with store.snapshot() as snap:
        assert snap.tokens.knn(np.zeros(24, np.int16), 3).ids.shape == (0,)
        assert snap.tokens.knn(np.zeros((4, 8, 3), np.int16), 3).ids.shape == (4, 0)
        assert snap.tokens.within([0, 0, 0], 100, layer=2).size == 0
        assert snap.tokens.box([0, 0, 0], [1, 1, 1], layer=2).size == 0


@pytest.mark.parametrize("call", [
    lambda t: t.knn(np.zeros(24, np.float64), 3),
    lambda t: t.knn(np.zeros(23, np.int16), 3),
    lambda t: t.knn(np.full(24, 40000), 3),
    lambda t: t.knn(np.zeros(24, np.int16), 0),
    lambda t: t.knn(np.zeros(24, np.int16), True),
    lambda t: t.knn(np.zeros(24, np.int16), 3, metric="l1"),
    lambda t: t.knn(np.zeros(24, np.int16), 3, layers=[8]),
    lambda t: t.knn(np.zeros(24, np.int16), 3, layers=[1, 1]),
    lambda t: t.knn(np.zeros(24, np.int16), 3, layers=[]),
    lambda t: t.within([0, 0, 0], -1, layer=0),
    lambda t: t.within([0, 0, 0], float("nan"), layer=0),
    lambda t: t.within([0.5, 0, 0], 3, layer=0),
    lambda t: t.within([0, 0], 3, layer=0),
    lambda t: t.within([0, 0, 0], 3, layer=8),
    lambda t: t.box([1, 0, 0], [0, 5, 5], layer=1),
    lambda t: t.box([0, 0, 0], [40000, 5, 5], layer=1),
])
def test_bad_arguments_are_refused_clearly(store, call):
    with store.snapshot() as snap, pytest.raises(InvalidArgumentError):
        call(snap.tokens)


def brute_box(arr, layer, lo, hi, center=None, r=None):
    c = arr["coordinates"][:, layer, :].astype(np.int64)
    m = np.all((c >= lo) & (c <= hi), axis=1)
    if center is not None:
        m &= ((c - center) ** 2).sum(1) <= r * r
    return np.sort(arr["id"][m])


@pytest.mark.parametrize("index", [True, False])
def test_within_and_box_match_brute_force_with_and_without_the_index(store_path, index):
    rng = np.random.default_rng(3)
    n = 6000
    coords = rng.integers(-32768, 32768, size=(n, 24))
    coords[:2000] = rng.integers(-300, 300, size=(2000, 24))  # a dense cluster: pages split
    coords[2000:2600] = 0
    with ngstore.open(store_path, chunk_slots=64, spatial_index=index) as s:
        s.put_tokens(tokens(rng.choice(10**6, n, replace=False), coords))
        with s.snapshot() as snap:
            assert snap.tokens.spatial_layers == (tuple(range(8)) if index else ())
            arr = snap.tokens.to_array()
            for layer in range(8):
                for _ in range(10):
                    lo = rng.integers(-32768, 32767, 3)
                    hi = np.minimum(lo + rng.integers(0, 40000, 3), 32767)
                    assert np.array_equal(snap.tokens.box(lo, hi, layer=layer), brute_box(arr, layer, lo, hi))
                    c = rng.integers(-400, 400, 3)
                    r = float(rng.choice([0, 1, 150.5, 3000, 1e6]))
                    lo_b, hi_b = np.maximum(np.ceil(c - r), -32768), np.minimum(np.floor(c + r), 32767)
                    assert np.array_equal(snap.tokens.within(c, r, layer=layer),
                                          brute_box(arr, layer, lo_b, hi_b, c, r))
        assert s.check().ok


def test_the_index_follows_moves_and_deletes_and_survives_reopen(store_path):
    rng = np.random.default_rng(5)
    s = ngstore.open(store_path, chunk_slots=16)
    try:
        for step in range(12):
            n = int(rng.integers(1, 1500))
            coords = rng.integers(-200, 200, size=(n, 24)) * int(rng.choice([1, 150]))
            s.put_tokens(tokens(rng.integers(0, 4000, n), coords))
            s.delete_tokens(rng.integers(0, 4000, int(rng.integers(0, 800))))
            if step % 4 == 3:
                s.close()
                s = ngstore.open(store_path)
        report = s.check()
        assert report.ok, str(report)
        assert report.facts["spatial_entries"] == 8 * s.count()
        with s.snapshot() as snap:
            arr = snap.tokens.to_array()
            for layer in range(8):
                assert np.array_equal(snap.tokens.box([-32768] * 3, [32767] * 3, layer=layer), np.sort(arr["id"]))
    finally:
        s.close()


def test_check_reports_an_index_that_disagrees_with_the_tokens(store_path):
    with ngstore.open(store_path) as s:
        s.put_tokens(tokens(np.arange(1000), np.arange(24000).reshape(1000, 24) % 5000))
    env = lmdb.open(store_path, max_dbs=10)
    with env.begin(write=True) as txn:
        db = env.open_db(DB_SPATIAL, txn=txn)
        key, value = next(iter(txn.cursor(db=db)))
        assert len(value) <= SPATIAL_PAGE_MAX * 10
        txn.put(key, bytes(value)[10:] if len(value) > 10 else b"\0" * 9, db=db)
    env.close()
    with ngstore.open(store_path) as s:
        report = s.check()
    assert not report.ok and any("spatial index" in p for p in report.problems)


def test_a_store_made_before_the_index_opens_and_answers_by_scanning(store_path):
    with ngstore.open(store_path) as s:
        s.put_tokens(tokens(np.arange(100), np.arange(2400).reshape(100, 24)))
    env = lmdb.open(store_path, max_dbs=10)  # remove what the older format did not have
    with env.begin(write=True) as txn:
        txn.delete(M_SPATIAL, db=env.open_db(DB_META, txn=txn))
        txn.drop(env.open_db(DB_SPATIAL, txn=txn), delete=True)
    env.close()
    with ngstore.open(store_path) as s:
        with s.snapshot() as snap:
            assert snap.tokens.spatial_layers == ()
            assert snap.tokens.box([0, 0, 0], [100, 100, 100], layer=0).tolist() == [0, 1, 2, 3, 4]
        s.put_tokens(tokens([500], np.ones((1, 24))))
        assert s.check().ok
    with ngstore.open(store_path, readonly=True) as r, r.snapshot() as snap:
        assert snap.tokens.within([1, 1, 1], 0, layer=3).tolist() == [500]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(*[st.integers(0, 15)] * 3), st.tuples(*[st.integers(0, 15)] * 3), st.integers(0, 4095))
def test_the_zorder_step_finds_the_next_code_inside_the_box(a, b, z):
    lo = [min(x, y) for x, y in zip(a, b, strict=True)]
    hi = [max(x, y) for x, y in zip(a, b, strict=True)]
    zbox = similarity.ZBox(lo, hi)

    def inside(code):
        c = [sum(((code >> (3 * i + d)) & 1) << i for i in range(10)) for d in range(3)]
        return all(lo[d] <= c[d] <= hi[d] for d in range(3))

    want = next((c for c in range(z, 4096) if inside(c)), None)  # cells < 16: codes < 4096
    assert zbox.next_inside(z) == want


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_knn_matches_brute_force_on_random_stores(tmp_path_factory, data):
    n = data.draw(st.integers(0, 300))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    span = data.draw(st.sampled_from([3, 100, 32768]))
    ids = rng.choice(10**6, n, replace=False)
    coords = rng.integers(-span, span, size=(n, 24))
    k = data.draw(st.integers(1, 20))
    layers = data.draw(st.one_of(st.none(), st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True)))
    metric = data.draw(st.sampled_from(["l2", "cosine"]))
    path = str(tmp_path_factory.mktemp("knn") / "s")
    with ngstore.open(path, chunk_slots=8, observability=False) as s:
        if n:
            s.put_tokens(tokens(ids, coords))
        with s.snapshot() as snap:
            arr = snap.tokens.to_array()
            q = rng.integers(-span, span, size=(3, 24))
            got = snap.tokens.knn(q, k, layers=layers, metric=metric)
    for i in range(3):
        want_ids, want_d = brute_knn(arr, q[i], k, similarity.coordinate_dims(layers), metric)
        assert np.array_equal(got.ids[i], want_ids) and np.array_equal(got.distances[i], want_d)
