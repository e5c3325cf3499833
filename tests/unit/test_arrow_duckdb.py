"""Arrow tables and DuckDB views of a snapshot: zero-copy where the format allows, equal to
numpy everywhere, valid as long as they are referenced (docs/analytics.md §1, §2)."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
duckdb = pytest.importorskip("duckdb")

from conftest import make_tokens  # noqa: E402

import ngstore  # noqa: E402
import ngstore.duckdb as ngduck  # noqa: E402
from ngstore import arrow as ngarrow  # noqa: E402
from ngstore.records import CONNECTION_DTYPE, EVENT_DTYPE, TOKEN_DTYPE  # noqa: E402


def _fill(store, n=5000, hole=range(1500, 1600)):
    tokens = make_tokens(np.arange(n))
    tokens["flags"] = (np.arange(n) % 7).astype(np.uint16)
    store.put_tokens(tokens)
    store.delete_tokens(np.asarray(list(hole), dtype=np.uint32))
    conns = np.zeros(3, CONNECTION_DTYPE)
    conns["token_a"], conns["token_b"], conns["connection_type"] = [1, 2, 3], [5, 6, 7], 0x50
    conns["confidence"] = [10, 20, 30]
    store.put_connections(conns)
    ev = np.zeros(4, EVENT_DTYPE)
    ev["step"] = [1, 2, 3, 4]
    ev["state"][:, 0] = [0.5, 1.5, 2.5, 3.5]
    store.write_events(ev)
    return tokens[~np.isin(tokens["id"], list(hole))]


def _span(chunk):
    """(address, bytes) of a record chunk's rows: a chunk may be a slice of a larger array."""
    buf = chunk.buffers()[1]
    return buf.address + chunk.offset * 64, buf.to_pybytes()[chunk.offset * 64:(chunk.offset + len(chunk)) * 64]


def _addresses(snap):
    return {arr.__array_interface__["data"][0]: arr.shape[0] for _f, arr in snap.tokens.chunks()}


def test_to_arrow_by_default_is_the_mapped_records_with_no_copy(store):
    expect = _fill(store)
    with store.snapshot() as snap:
        table = snap.tokens.to_arrow()
        mapped = _addresses(snap)
    assert table.schema.names == ["record"] and table.schema.field("record").type == pa.binary(64)
    assert table.num_rows == expect.shape[0]
    col = table.column("record")
    for chunk in col.chunks:  # each chunk's data is a run of the map, not a copy
        assert mapped.get(_span(chunk)[0]) == len(chunk)
    whole = b"".join(_span(c)[1] for c in col.chunks)
    assert whole == expect.tobytes()


def test_to_arrow_field_columns_equal_the_numpy_fields_and_align_with_the_records(store):
    expect = _fill(store)
    with store.snapshot() as snap:
        table = snap.tokens.to_arrow(columns=[*ngarrow.TOKEN_FIELDS, "record"])
    assert table.num_rows == expect.shape[0]
    for name in ("id", "flags", "weight", "field_radius", "field_strength", "timestamp"):
        assert np.array_equal(table.column(name).to_numpy(), expect[name]), name
    coords = np.asarray(table.column("coordinates").combine_chunks().flatten()).reshape(-1, 8, 3)
    assert np.array_equal(coords, expect["coordinates"])
    assert table.schema.field("coordinates").type == pa.list_(pa.int16(), 24)
    for batch in table.to_batches():  # one batch per run: records and fields line up
        recs = np.frombuffer(_span(batch.column(len(ngarrow.TOKEN_FIELDS)))[1], TOKEN_DTYPE)
        assert np.array_equal(recs["id"], batch.column(1).to_numpy())


def test_an_arrow_table_outlives_the_snapshot_and_the_store_and_then_lets_go(store):
    expect = _fill(store)
    snap = store.snapshot()
    table = snap.tokens.to_arrow(columns=["record", "weight"])
    region = ngarrow._owner(next(iter(snap.tokens.chunks()))[1])
    alive = weakref.ref(region)
    del region
    snap.close()
    store.close()
    gc.collect()
    assert alive() is not None  # the table holds the read transaction, so the map stays valid
    recs = np.frombuffer(b"".join(_span(c)[1] for c in table.column("record").chunks), TOKEN_DTYPE)
    assert recs.tobytes() == expect.tobytes()
    del table, recs
    gc.collect()
    assert alive() is None


def test_an_empty_store_gives_an_empty_table_with_the_schema(store):
    with store.snapshot() as snap:
        t = snap.tokens.to_arrow(columns=["id", "coordinates", "record"])
    assert t.num_rows == 0 and t.schema.names == ["id", "coordinates", "record"]


def test_unknown_or_repeated_columns_are_refused(store):
    with store.snapshot() as snap:
        for bad in (["nope"], ["id", "id"], "id"):
            with pytest.raises(ngstore.InvalidArgumentError):
                snap.tokens.to_arrow(columns=bad)


def test_connection_and_event_tables_are_copies_equal_to_their_arrays(store):
    _fill(store)
    with store.snapshot() as snap:
        conns, evs = snap.connections.to_array(), snap.events.since(0)[1]
        ct, et = snap.connections.to_arrow(), snap.events.to_arrow()
        rec = snap.connections.to_arrow(columns=["record"])
    assert ct.schema.names == list(CONNECTION_DTYPE.names)
    assert np.array_equal(ct.column("confidence").to_numpy(), conns["confidence"])
    assert rec.column("record").chunk(0).buffers()[1].to_pybytes() == conns.tobytes()
    assert et.num_rows == 4 and et.schema.field("state").type == pa.list_(pa.float32(), 8)
    assert np.array_equal(np.asarray(et.column("state").combine_chunks().flatten()).reshape(-1, 8),
                          evs["state"])


# -- DuckDB ------------------------------------------------------------------------------------------


def _numpy_groupby(a):
    flags = a["flags"].astype(np.int64)
    counts = np.bincount(flags)
    sums = np.bincount(flags, weights=a["weight"].astype(np.float64))
    return {f: (sums[f] / counts[f], int(counts[f])) for f in np.flatnonzero(counts)}


def test_duckdb_tokens_scan_the_map_in_place_and_aggregate_like_numpy(store):
    expect = _fill(store)
    with store.snapshot() as snap:
        con = duckdb.connect()
        assert ngduck.register_tokens(con, snap) is True  # the strided, zero-copy path
    rows = con.sql("SELECT flags, avg(weight), count(*) FROM tokens GROUP BY flags").fetchall()
    want = _numpy_groupby(expect)
    assert {f: c for f, _a, c in rows} == {f: c for f, (_a, c) in want.items()}
    for f, avg, _c in rows:
        assert avg == pytest.approx(want[f][0], rel=1e-12)
    got = con.sql("SELECT id, x0, z7, field_radius FROM tokens ORDER BY id").fetchnumpy()
    assert np.array_equal(got["id"], expect["id"])
    assert np.array_equal(got["x0"], expect["coordinates"][:, 0, 0])
    assert np.array_equal(got["z7"], expect["coordinates"][:, 7, 2])
    assert np.array_equal(got["field_radius"], expect["field_radius"])


def test_duckdb_falls_back_to_a_copy_for_chunks_inside_lmdb_pages(tmp_path):
    with ngstore.open(str(tmp_path / "s"), chunk_slots=8) as s:
        expect = _fill(s, n=300, hole=range(10, 13))
        with s.snapshot() as snap:
            con = duckdb.connect()
            zero_copy = ngduck.register_tokens(con, snap)
    assert zero_copy is False
    got = con.sql("SELECT id, weight FROM tokens ORDER BY id").fetchnumpy()
    assert np.array_equal(got["id"], expect["id"]) and np.array_equal(got["weight"], expect["weight"])


def test_duckdb_connect_sees_its_snapshot_and_all_three_tables(store):
    expect = _fill(store)
    con = ngduck.connect(store)
    store.put_tokens(make_tokens([10**6]))  # committed after connect: not seen
    assert con.execute("SELECT count(*) FROM tokens").fetchone() == (expect.shape[0],)
    assert con.execute("SELECT sum(confidence) FROM connections").fetchone() == (60,)
    assert con.execute("SELECT sum(step), sum(state[1]) FROM events").fetchone() == (10, 8.0)
    store.close()
    assert con.execute("SELECT max(id) FROM tokens").fetchone() == (int(expect["id"].max()),)
    con.close()


def test_duckdb_with_copied_columns_answers_the_same(store):
    expect = _fill(store)
    with store.snapshot() as snap:
        con = duckdb.connect()
        assert ngduck.register_tokens(con, snap, copy=True) is False
    zero = ngduck.connect(store)
    q = "SELECT flags, avg(weight), count(*), sum(x0), min(z7) FROM tokens GROUP BY flags ORDER BY flags"
    assert con.sql(q).fetchall() == zero.sql(q).fetchall()
    got = con.sql("SELECT id FROM tokens ORDER BY id").fetchnumpy()["id"]
    assert np.array_equal(got, expect["id"])
