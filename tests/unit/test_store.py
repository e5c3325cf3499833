"""Behaviour of the Store: put/get/delete, chunks, snapshots, locking, errors, quotas."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.records import TOKEN_DTYPE


def test_put_then_get_returns_the_same_bytes(store):
    toks = make_tokens([1, 2, 3, 5000])
    store.put_tokens(toks)
    got = store.get_tokens([5000, 1, 3, 2])
    assert got.data.tobytes() == toks[[3, 0, 2, 1]].tobytes()
    assert store.count() == 4


def test_get_token_of_missing_id_raises_an_error_that_is_a_key_error(store):
    store.put_tokens(make_tokens([7]))
    with pytest.raises(KeyError) as exc:
        store.get_token(8)
    assert isinstance(exc.value, ngstore.NotFoundError)
    assert "8" in str(exc.value)


def test_get_tokens_names_the_missing_ids_or_skips_them(store):
    store.put_tokens(make_tokens([1, 2]))
    with pytest.raises(ngstore.NotFoundError, match="3"):
        store.get_tokens([1, 3])
    assert store.get_tokens([1, 3, 2], missing="skip").ids.tolist() == [1, 2]


def test_put_accepts_a_token_a_token_array_and_a_list_of_tokens(store):
    t = ngstore.Token(10)
    t.weight = 0.5
    store.put_tokens(t)
    store.put_tokens(ngstore.Token.create_batch(3, start=20))
    store.put_tokens([ngstore.Token(30), ngstore.Token(31)])
    assert store.get_token(10).weight == 0.5
    assert store.count() == 1 + 3 + 2


def test_a_stored_token_is_present_even_with_all_fields_zero(store):
    z = np.zeros(1, dtype=TOKEN_DTYPE)
    z["id"] = 99
    store.put_tokens(z)
    assert 99 in store
    assert store.get_token(99).flags == 0


def test_the_full_u32_id_range_works(store):
    ids = [0, 1, 2**24, 2**31, 2**32 - 2, 2**32 - 1]
    store.put_tokens(make_tokens(ids))
    assert store.get_tokens(ids).ids.tolist() == ids
    store.delete_tokens([2**32 - 1, 0])
    assert (2**32 - 1) not in store and 0 not in store and store.count() == 4


def test_later_records_of_the_same_id_win_within_a_put(store):
    a = make_tokens([4, 4, 4])
    a["weight"] = [0.1, 0.2, 0.3]
    store.put_tokens(a)
    assert store.count() == 1
    assert store.get_token(4).weight == pytest.approx(0.3)


def test_delete_removes_tokens_and_ignores_absent_ids(store):
    store.put_tokens(make_tokens(range(100)))
    store.delete_tokens([5, 6, 1000, 5])
    assert store.count() == 98
    assert 5 not in store and 7 in store
    assert store.check().ok


def test_deleting_every_token_of_a_chunk_removes_the_chunk(store):
    store.put_tokens(make_tokens(range(10)))
    store.delete_tokens(range(10))
    with store.snapshot() as snap:
        assert list(snap.tokens.chunks()) == []
    assert store.check().ok


def test_snapshot_chunks_are_zero_copy_runs_of_present_ids(store):
    slots = store.stats()["chunk_slots"]
    ids = [*list(range(0, slots)), slots + 3, slots + 4, slots + 10]
    store.put_tokens(make_tokens(ids))
    with store.snapshot() as snap:
        runs = [(first, arr["id"].tolist()) for first, arr in snap.tokens.chunks()]
        _first, arr = next(iter(snap.tokens.chunks()))
        assert not arr.flags.writeable and not arr.flags.owndata
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    assert runs[0] == (0, list(range(slots)))
    assert runs[1:] == [(slots + 3, [slots + 3, slots + 4]), (slots + 10, [slots + 10])]


def test_snapshot_is_isolated_from_later_writes(store):
    store.put_tokens(make_tokens([1, 2, 3]))
    snap = store.snapshot()
    store.put_tokens(make_tokens([4]))
    store.delete_tokens([1])
    assert snap.tokens.count() == 3
    assert snap.tokens.ids().tolist() == [1, 2, 3]
    snap.close()
    with store.snapshot() as s2:
        assert s2.tokens.ids().tolist() == [2, 3, 4]


def test_snapshot_columns_and_iteration(store):
    toks = make_tokens([3, 1, 2])
    store.put_tokens(toks)
    with store.snapshot() as snap:
        assert snap.tokens.column("id").tolist() == [1, 2, 3]
        assert [t.id for t in snap.tokens] == [1, 2, 3]
        assert len(snap.tokens) == 3
        assert 2 in snap.tokens and 9 not in snap.tokens
        with pytest.raises(ngstore.InvalidArgumentError):
            snap.tokens.column("nope")


def test_closed_snapshot_refuses_new_reads(store):
    snap = store.snapshot()
    snap.close()
    with pytest.raises(ngstore.StoreClosedError):
        snap.tokens.count()


def test_views_stay_valid_and_unchanged_after_snapshot_and_store_close(store_path):
    s = ngstore.open(store_path)
    s.put_tokens(make_tokens(range(2000)))
    snap = s.snapshot()
    views = [arr for _f, arr in snap.tokens.chunks()]
    weights = views[0]["weight"]
    expected = weights.copy()
    snap.close()
    # Overwrite everything many times: LMDB must not reuse the pages the views see.
    for k in range(20):
        s.put_tokens(make_tokens(range(2000), weight=np.float32(k)))
    s.close()
    assert np.array_equal(weights, expected)
    assert np.array_equal(np.asarray(views[0]["id"][:5]), np.arange(5))


def test_use_after_close_raises_store_closed_error(store_path):
    s = ngstore.open(store_path)
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.put_tokens(make_tokens([1])), lambda: s.get_token(1),
                 lambda: s.snapshot(), lambda: s.count(), lambda: s.batch()):
        with pytest.raises(ngstore.StoreClosedError):
            call()


def test_reopen_keeps_everything(store_path):
    with ngstore.open(store_path) as s:
        s.put_tokens(make_tokens(range(5000)))
        s.delete_tokens([10, 11])
    with ngstore.open(store_path) as s:
        assert s.count() == 4998
        assert s.get_token(4999).id == 4999
        assert s.check().ok


def test_a_second_writer_in_the_same_process_gets_store_locked_error(store):
    with pytest.raises(ngstore.StoreLockedError):
        ngstore.open(store.path)


def test_a_read_only_handle_in_the_writer_process_sees_commits(store):
    store.put_tokens(make_tokens([1]))
    with ngstore.open(store.path, readonly=True) as ro:
        assert ro.count() == 1
        store.put_tokens(make_tokens([2]))
        assert ro.count() == 2
        assert ro.get_tokens([1, 2]).ids.tolist() == [1, 2]
        with pytest.raises(ngstore.NgStoreError):
            ro.put_tokens(make_tokens([3]))


def test_a_path_that_is_a_file_is_not_a_store(tmp_path):
    f = tmp_path / "file"
    f.write_text("hello")
    with pytest.raises(ngstore.NotAStoreError):
        ngstore.open(str(f))
    assert f.read_text() == "hello"


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ngstore.NotAStoreError):
        ngstore.open(str(d))
    assert sorted(os.listdir(d)) == ["notes.txt"]


def test_create_false_on_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(ngstore.NotAStoreError):
        ngstore.open(str(tmp_path / "missing"), create=False)
    assert not (tmp_path / "missing").exists()


def test_read_only_open_of_a_missing_store_is_an_error(tmp_path):
    with pytest.raises(ngstore.NotAStoreError):
        ngstore.open(str(tmp_path / "missing"), readonly=True)


def test_a_store_of_a_newer_format_is_refused(store_path):
    ngstore.open(store_path).close()
    marker = os.path.join(store_path, "NGSTORE")
    with open(marker, "w") as f:
        f.write("ngstore store directory\nformat 99\n")
    with pytest.raises(ngstore.FormatVersionError, match="99"):
        ngstore.open(store_path)


@pytest.mark.parametrize("bad", [
    np.zeros(3, dtype=np.float32),                      # wrong dtype
    np.zeros((2, 2), dtype=TOKEN_DTYPE),                # wrong shape
    [1, 2, 3],                                          # not tokens
    "tokens",
])
def test_bad_token_input_is_a_value_error_and_changes_nothing(store, bad):
    store.put_tokens(make_tokens([1]))
    with pytest.raises(ValueError):
        store.put_tokens(bad)
    assert store.count() == 1
    assert store.check().ok


@pytest.mark.parametrize("bad", [[-1], [2**32], [1.5], ["x"], [[1, 2], [3, 4]]])
def test_bad_ids_are_a_value_error(store, bad):
    with pytest.raises(ValueError):
        store.get_tokens(bad)
    with pytest.raises(ValueError):
        store.delete_tokens(bad)


def test_nan_weight_is_refused_and_nothing_is_written(store):
    a = make_tokens([1, 2])
    a["weight"][1] = np.nan
    with pytest.raises(ngstore.InvalidArgumentError, match="non-finite"):
        store.put_tokens(a)
    assert store.count() == 0


def test_token_quota_refuses_the_whole_batch_and_names_the_numbers(store_path):
    with ngstore.open(store_path, max_tokens=100) as s:
        s.put_tokens(make_tokens(range(90)))
        with pytest.raises(ngstore.QuotaExceededError) as exc:
            s.put_tokens(make_tokens(range(90, 120)))
        assert exc.value.quota == "max_tokens" and exc.value.limit == 100
        assert "100" in str(exc.value)
        assert s.count() == 90
        # overwriting existing ids adds nothing and is allowed at the limit
        s.put_tokens(make_tokens(range(0, 90)))
        s.put_tokens(make_tokens(range(90, 100)))
        assert s.count() == 100
        assert s.stats()["quota_exceeded_total"] == 1


def test_byte_quota_refuses_from_the_memory_threshold(store_path):
    # 80 % of 64 000 bytes = 51 200 bytes = 800 tokens (observability off: no black box to count)
    with ngstore.open(store_path, max_bytes=64_000, max_tokens=None, observability=False) as s:
        s.put_tokens(make_tokens(range(800)))
        with pytest.raises(ngstore.QuotaExceededError) as exc:
            s.put_tokens(make_tokens([800]))
        assert exc.value.quota == "max_bytes"
        assert s.count() == 800


def test_batch_commits_all_operations_together(store):
    store.put_tokens(make_tokens([1, 2]))
    with store.batch() as b:
        b.put_tokens(make_tokens([3]))
        b.delete_tokens([1])
    assert store.snapshot().tokens.ids().tolist() == [2, 3]


def test_an_exception_inside_a_batch_discards_it(store):
    with pytest.raises(RuntimeError), store.batch() as b:
        b.put_tokens(make_tokens([1]))
        raise RuntimeError("boom")
    assert store.count() == 0


def test_batch_copies_the_records_it_is_given(store):
    a = make_tokens([1])
    with store.batch() as b:
        b.put_tokens(a)
        a["weight"] = 0.75
    assert store.get_token(1).weight != pytest.approx(0.75)


@pytest.mark.parametrize("n", [1, 100, 20_000, 300_000], ids=["one", "bytes-copy", "array-copy", "direct"])
@pytest.mark.parametrize("durability", ["sync", "none"])
def test_batch_copies_the_records_it_is_given_at_every_size(store, n, durability):
    # Small batches are copied as bytes, large ones as an array; 300,000 tokens in "sync" go to
    # LMDB directly. A change to the caller's array after put_tokens never reaches the store,
    # and a non-finite weight written after it cannot slip past validation.
    a = make_tokens(range(n))
    with store.batch(durability=durability) as b:
        b.put_tokens(a)
        a["weight"] = np.nan
    assert np.all(np.isfinite(store.get_tokens([0, n - 1]).data["weight"]))
    assert store.get_tokens(range(n)).data.tobytes() == make_tokens(range(n)).tobytes()
    bad = make_tokens(range(n, 2 * n))
    bad["weight"][-1] = np.inf
    with pytest.raises(ngstore.InvalidArgumentError), store.batch(durability=durability) as b:
        b.put_tokens(bad)
    assert store.count() == n


def test_the_map_grows_by_itself(store_path):
    with ngstore.open(store_path, map_size=1 << 20) as s:
        for k in range(8):
            s.put_tokens(make_tokens(range(k * 4096, (k + 1) * 4096)))
        assert s.count() == 8 * 4096
        assert s.stats()["map_size_bytes"] > 1 << 20
        assert s.check().ok
    with ngstore.open(store_path) as s:
        assert s.count() == 8 * 4096


def test_check_finds_a_record_in_the_wrong_slot(store_path):
    import lmdb

    with ngstore.open(store_path) as s:
        s.put_tokens(make_tokens([1, 2]))
    env = lmdb.open(store_path, max_dbs=8)
    db = env.open_db(b"tokens")
    with env.begin(write=True, db=db) as txn:
        v = bytearray(txn.get((0).to_bytes(4, "big")))
        v[64 + 48] = 77  # slot 1's id field
        txn.put((0).to_bytes(4, "big"), bytes(v))
    env.close()
    with ngstore.open(store_path) as s:
        report = s.check()
    assert not report.ok and any("slot 1" in p for p in report.problems)


def test_stats_reports_counts_and_sizes(store):
    store.put_tokens(make_tokens(range(10)))
    st = store.stats()
    assert st["tokens_live"] == 10 and st["tokens_created_total"] == 10
    assert st["map_used_bytes"] > 0 and st["readers_max"] > 0
    assert st["format_version"] == ngstore.layout.FORMAT_VERSION


def test_column_reads_every_field_of_present_tokens_in_id_order(store):
    toks = make_tokens([9, 2, 5000, 7])
    store.put_tokens(toks)
    store.delete_tokens([7])
    order = np.argsort(toks["id"])
    order = order[toks["id"][order] != 7]
    with store.snapshot() as snap:
        for name in TOKEN_DTYPE.names:
            np.testing.assert_array_equal(snap.tokens.column(name), toks[name][order])


def test_column_of_a_corrupt_chunk_is_an_error_not_a_crash(store_path):
    import lmdb

    with ngstore.open(store_path) as s:
        s.put_tokens(make_tokens([1, 2]))
    env = lmdb.open(store_path, max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"tokens")) as txn:
        txn.put((0).to_bytes(4, "big"), b"short")
    env.close()
    with ngstore.open(store_path) as s, s.snapshot() as snap:
        with pytest.raises(ngstore.NgStoreError):
            snap.tokens.column("weight")
        with pytest.raises(ngstore.CorruptionError):
            list(snap.tokens.chunks())
