"""The record layouts of records.py against the reference (DESIGN §3, reference §1-§4)."""
from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from ngstore import records
from ngstore.records import (
    CONNECTION_DTYPE,
    EVENT_DTYPE,
    RAW64,
    SCALE_FACTORS,
    TOKEN_DTYPE,
    EntityType,
    TokenFlags,
    create_id,
    id_domain,
    id_entity_type,
    local_id,
)

# The legacy pure-Python token of the original packs exactly this (reference §1.1).
TOKEN_STRUCT = struct.Struct("<24hIHf2BI")


def test_record_sizes_are_64_64_and_128_bytes():
    assert TOKEN_DTYPE.itemsize == 64
    assert CONNECTION_DTYPE.itemsize == 64
    assert EVENT_DTYPE.itemsize == 128
    assert RAW64.itemsize == 64


def test_token_field_offsets_match_the_packed_original():
    offsets = {name: TOKEN_DTYPE.fields[name][1] for name in TOKEN_DTYPE.names}
    assert offsets == {"coordinates": 0, "id": 48, "flags": 52, "weight": 54,
                       "field_radius": 58, "field_strength": 59, "timestamp": 60}


def test_token_dtype_is_little_endian_whatever_the_host():
    for name in TOKEN_DTYPE.names:
        base = TOKEN_DTYPE.fields[name][0].base
        assert base.byteorder in ("<", "|", "=") and (base.byteorder != "=" or np.little_endian)


def test_token_image_equals_the_legacy_struct_format():
    rng = np.random.default_rng(1)
    a = np.zeros(1, TOKEN_DTYPE)
    coords = rng.integers(-32768, 32768, size=(8, 3), dtype=np.int16)
    a["coordinates"] = coords
    a["id"], a["flags"], a["weight"] = 0xDEADBEEF, 0x1501, -1.5
    a["field_radius"], a["field_strength"], a["timestamp"] = 200, 17, 1_700_000_000
    packed = TOKEN_STRUCT.pack(*coords.ravel().tolist(), 0xDEADBEEF, 0x1501, -1.5, 200, 17, 1_700_000_000)
    assert a.tobytes() == packed


def test_coordinate_layer_l_axis_a_sits_at_byte_6l_plus_2a():
    for layer in range(8):
        for axis in range(3):
            a = np.zeros(1, TOKEN_DTYPE)
            a["coordinates"][0, layer, axis] = 0x0102
            raw = a.tobytes()
            assert raw[6 * layer + 2 * axis: 6 * layer + 2 * axis + 2] == b"\x02\x01"


def test_connection_target_vector_at_48_and_event_sequence_at_124():
    assert CONNECTION_DTYPE.fields["target_vector"][1] == 48
    assert CONNECTION_DTYPE.fields["token_a"][1] == 0 and CONNECTION_DTYPE.fields["source_id"][1] == 44
    assert EVENT_DTYPE.fields["state"][1] == 40 and EVENT_DTYPE.fields["action"][1] == 72
    assert EVENT_DTYPE.fields["sequence"][1] == 124


def test_scale_factors_are_the_originals():
    assert SCALE_FACTORS == (100, 10000, 1000, 10000, 10000, 10000, 100, 10000)


def test_flag_bits_are_the_originals():
    assert TokenFlags.ACTIVE == 0x1 and TokenFlags.LOCKED == 0x80
    assert TokenFlags.USER1 == 0x1000 and TokenFlags.USER4 == 0x8000
    assert records.ENTITY_TYPE_MASK == 0x0F00 and records.ENTITY_TYPE_SHIFT == 8
    assert EntityType.CONCEPT == 5 and EntityType.RESERVED == 15 and len(EntityType) == 16


def test_create_id_packs_domain_entity_and_local_and_accessors_unpack():
    tid = create_id(0x123456, entity=5, domain=9)
    assert tid == 0x95123456
    assert local_id(tid) == 0x123456 and id_entity_type(tid) == 5 and id_domain(tid) == 9


def test_create_id_masks_local_to_24_bits():
    assert create_id(0x1FFFFFF) == 0xFFFFFF


@pytest.mark.parametrize("entity,domain", [(16, 0), (0, 16), (-1, 0)])
def test_create_id_refuses_entity_or_domain_outside_a_nibble(entity, domain):
    with pytest.raises(ValueError):
        create_id(1, entity, domain)


def test_max_token_id_is_u32_max():
    assert records.MAX_TOKEN_ID == 2**32 - 1


# -- record timestamps: the cached current second -------------------------------------------------


def test_new_second_is_int_of_now_masked_to_u32_and_becomes_current():
    saved = records.CURRENT_SECOND[0]
    try:
        assert records.new_second(1_700_000_000.25) == (1_700_000_000.0, 1_700_000_001.0, 1_700_000_000)
        assert records.CURRENT_SECOND[0] == (1_700_000_000.0, 1_700_000_001.0, 1_700_000_000)
        assert records.new_second(2.0**32 + 5.5)[2] == 5  # the original's `as u32` wraps in 2106
        start, end, _ = records.new_second(-0.5)  # before 1970: never cached, still int(now)
        assert not start <= -0.5 < end
    finally:
        records.CURRENT_SECOND[0] = saved


def test_unix_seconds_follows_the_clock_across_a_cached_second(monkeypatch):
    clock = iter([1000.2, 1000.9, 1001.0, 999.5])  # within, within, next second, backwards
    monkeypatch.setattr(records.time, "time", lambda: next(clock))
    saved = records.CURRENT_SECOND[0]
    records.CURRENT_SECOND[0] = (0.0, 0.0, 0)
    try:
        assert [records.unix_seconds() for _ in range(4)] == [1000, 1000, 1001, 999]
    finally:
        records.CURRENT_SECOND[0] = saved


def test_token_and_connection_stamp_the_current_second():
    from ngstore import Connection, Token

    before = int(time.time())
    stamps = [Token(1).timestamp, Connection(1, 2).created_at, Connection(1, 2).last_update]
    after = int(time.time())
    assert all(before <= s <= after for s in stamps)
