"""Many stores as one dataset: ShardSet routing, and dask over 4 stores on a LocalCluster of
2 worker processes (docs/analytics.md §3). Results are compared with numpy over the same
records, exactly (the weights are small integers, so every float sum is exact)."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from conftest import make_tokens  # noqa: E402

import ngstore  # noqa: E402
import ngstore.dask as ngdask  # noqa: E402
from ngstore.shards import BLOCK_IDS, ShardSet, route_ids  # noqa: E402

N = 120_000


def _records(n=N):
    t = make_tokens(np.arange(n) * 3)  # ids 0, 3, 6, ...: partial chunks and many blocks
    t["weight"] = (np.arange(n) % 17).astype(np.float32)
    t["flags"] = (np.arange(n) % 6).astype(np.uint16)
    return t


def _write(tmp_path, route, **kw):
    paths = [str(tmp_path / f"{route}-{k}") for k in range(4)]
    recs = _records()
    with ShardSet(paths, route, **kw) as sh:
        sh.put_tokens(recs)
        counts = [s.count() for s in sh.stores]
    return paths, recs, counts


# -- ShardSet ---------------------------------------------------------------------------------------


def test_hash_routing_keeps_blocks_whole_and_spreads_them(tmp_path):
    ids = np.arange(0, 64 * BLOCK_IDS, 997, dtype=np.uint32)
    where = route_ids(ids, 4, "hash")
    blocks = ids >> 16
    for b in np.unique(blocks):
        assert np.unique(where[blocks == b]).size == 1
    assert set(np.bincount(where, minlength=4).tolist()) and np.bincount(where).min() > 0


def test_range_routing_follows_the_bounds_and_refuses_bad_ones():
    b = [BLOCK_IDS, 4 * BLOCK_IDS, 10 * BLOCK_IDS]
    ids = np.array([0, BLOCK_IDS - 1, BLOCK_IDS, 4 * BLOCK_IDS, 2**32 - 1], np.uint32)
    assert route_ids(ids, 4, "range", b).tolist() == [0, 0, 1, 2, 3]
    for bad in ([1, 2, 3], [BLOCK_IDS, BLOCK_IDS, 2 * BLOCK_IDS], [BLOCK_IDS]):
        with pytest.raises(ngstore.InvalidArgumentError):
            route_ids(ids, 4, "range", bad)
    with pytest.raises(ngstore.InvalidArgumentError):
        route_ids(ids, 4, "modulo")


def test_a_shardset_puts_gets_and_deletes_each_token_in_its_store(tmp_path):
    paths, recs, counts = _write(tmp_path, "hash")
    assert sum(counts) == N and min(counts) > 0
    with ShardSet(paths, "hash") as sh:
        ids = recs["id"][::101]
        assert sh.get_tokens(ids).tobytes() == recs[::101].tobytes()
        sh.delete_tokens(ids[:10])
        assert sh.count() == N - 10
        assert sh.get_tokens(ids, missing="skip").shape[0] == ids.size - 10
        with pytest.raises(ngstore.NotFoundError):
            sh.get_tokens(ids[:1])
        for k, s in enumerate(sh.stores):  # every stored id is routed to where it is
            with s.snapshot() as snap:
                assert (sh.shard_of(snap.tokens.ids()) == k).all()


def test_a_shardset_refuses_stores_of_different_chunk_sizes(tmp_path):
    ngstore.open(str(tmp_path / "a"), chunk_slots=512).close()
    ngstore.open(str(tmp_path / "b"), chunk_slots=1024).close()
    with pytest.raises(ngstore.InvalidArgumentError, match="chunk_slots"):
        ShardSet([str(tmp_path / "a"), str(tmp_path / "b")])


# -- dask -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.parametrize("route", ["hash", "range"])
def test_dask_over_four_stores_equals_numpy_with_known_divisions(tmp_path, client, route):
    kw = {"bounds": [BLOCK_IDS, 2 * BLOCK_IDS, 4 * BLOCK_IDS]} if route == "range" else {}
    paths, recs, counts = _write(tmp_path, route, **kw)
    ddf = ngdask.read_tokens(paths, ["weight", "flags", "x0"], partition_tokens=10_000)
    assert ddf.known_divisions and list(ddf.divisions) == sorted(ddf.divisions)
    w = recs["weight"].astype(np.float64)
    assert ddf.weight.sum().compute() == w.sum()
    got = ddf.groupby("flags").weight.agg(["sum", "count"]).compute().sort_index()
    assert got["count"].tolist() == np.bincount(recs["flags"]).tolist()
    assert got["sum"].tolist() == np.bincount(recs["flags"], weights=w).tolist()
    whole = ddf.compute()
    assert np.array_equal(whole.index.to_numpy(), recs["id"])  # in id order across the stores
    assert np.array_equal(whole["x0"].to_numpy(), recs["coordinates"][:, 0, 0])
    lo, hi = int(recs["id"][5000]), int(recs["id"][5100])
    assert np.array_equal(ddf.loc[lo:hi].compute().index.to_numpy(), recs["id"][5000:5101])
    # no worker holds a copy of a whole store: each task materialises one partition
    sizes = ddf.map_partitions(len).compute().tolist()
    assert sum(sizes) == N and max(sizes) < min(counts)


def test_a_dask_array_of_coordinates_equals_the_decoded_numpy_coordinates(tmp_path, client):
    paths, recs, _counts = _write(tmp_path, "hash")
    arr = ngdask.read_tokens_array(paths, partition_tokens=10_000)
    assert arr.shape == (N, 8, 3) and arr.dtype == np.float32
    want = ngstore.codec.decode(recs["coordinates"]).astype(np.float32)
    assert np.array_equal(arr.compute(), want)
    raw = ngdask.read_tokens_array(paths, decoded=False, partition_tokens=10_000)
    want_z7 = int(recs["coordinates"][:, 7, 2].astype(np.int64).sum())
    assert int(raw[:, 7, 2].astype(np.int64).sum().compute()) == want_z7


def _die_once(df, flag):
    if not os.path.exists(flag):
        with open(flag, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-compute
    return df


def test_a_worker_killed_mid_compute_is_replaced_and_the_result_is_right(tmp_path, client):
    paths, recs, _counts = _write(tmp_path, "hash")
    flag = str(tmp_path / "died")
    ddf = ngdask.read_tokens(paths, ["weight"], partition_tokens=10_000)
    total = ddf.map_partitions(_die_once, flag, meta=ddf._meta).weight.sum().compute()
    assert os.path.exists(flag)
    assert total == recs["weight"].astype(np.float64).sum()


def test_stores_whose_chunks_overlap_read_with_unknown_divisions(tmp_path, client):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    recs = _records(5000)
    with ngstore.open(a) as s:
        s.put_tokens(recs[::2])
    with ngstore.open(b) as s:
        s.put_tokens(recs[1::2])
    ddf = ngdask.read_tokens([a, b], ["weight"])
    assert not ddf.known_divisions
    assert ddf.weight.sum().compute() == recs["weight"].astype(np.float64).sum()
    assert sorted(ddf.compute().index.tolist()) == recs["id"].tolist()
