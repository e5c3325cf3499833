"""ng_reflex_create checked ``capacity * 4 > slots * 3`` in 64-bit arithmetic: a capacity of
2^62 multiplies to 0, passed, and the table then believed it could hold 2^62 reflexes in
16 slots (eviction never started; the table filled and every insert failed). The check
must hold for every capacity, overflow or not."""
from __future__ import annotations

from ngstore import _native

ffi, lib = _native.ffi, _native.lib
NG_ERANGE = -6


def _create(capacity: int) -> int:
    seg = ffi.new("uint8_t[]", 16 * 96)
    out = ffi.new("ng_reflex_table **")
    rc = lib.ng_reflex_create(capacity, ffi.new("uint8_t[8]", [4, 4, 5, 6, 6, 6, 8, 8]), 16, 1,
                              ffi.new("uint8_t *[]", [seg]), ffi.new("size_t[]", [16 * 96]), out)
    if rc == 0:
        lib.ng_reflex_free(out[0])
    return int(rc)


def test_capacities_whose_products_overflow_are_refused():
    assert _create(12) == 0
    for capacity in (13, 1 << 62, (1 << 62) + 1, 1 << 63, (1 << 64) - 1):
        assert _create(capacity) == NG_ERANGE, hex(capacity)
