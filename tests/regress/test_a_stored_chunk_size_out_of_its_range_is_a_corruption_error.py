"""``meta/chunk_slots`` is fixed at creation to a power of two in 8..65536 (format §3.1),
but ``decode_meta`` took any u64: a damaged value made every open -- writer or read-only --
raise ``ValueError`` from ``ChunkLayout`` instead of ``CorruptionError``. Found by the
``meta_values`` and ``store_meta`` fuzz targets."""
from __future__ import annotations

import pytest

import ngstore
from ngstore import layout
from ngstore.kv import KV


@pytest.mark.parametrize("slots", [0, 9, 4, 1 << 17, (1 << 64) - 1])
def test_decode_meta_refuses_a_chunk_size_out_of_its_range(slots):
    values = {layout.M_FORMAT: layout.encode_u64(1), layout.M_CHUNK_SLOTS: layout.encode_u64(slots)}
    with pytest.raises(ngstore.CorruptionError, match="chunk_slots"):
        layout.decode_meta(values, "store")


@pytest.mark.parametrize("readonly", [False, True])
def test_opening_a_store_whose_chunk_size_is_damaged_raises_corruption_error(tmp_path, readonly):
    path = str(tmp_path / "s")
    ngstore.open(path).close()
    kv = KV(path, readonly=False)
    try:
        db = kv.dbs[layout.DB_META]
        kv.write(lambda txn: txn.put(layout.M_CHUNK_SLOTS, layout.encode_u64(9), db=db))
    finally:
        kv.close()
    with pytest.raises(ngstore.CorruptionError, match="chunk_slots"):
        ngstore.open(path, readonly=readonly).close()
