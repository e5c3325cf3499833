"""gather64 handed C the address of whatever uint32 array ``np.ascontiguousarray`` returned,
which may be unaligned (a view at an odd offset of a byte buffer); C reads ``ids`` through a
``uint32_t *``, so that was undefined behaviour. The wrapper now passes aligned arrays."""
from __future__ import annotations

import numpy as np

from ngstore import _native


class _Spy:
    def __init__(self, lib: object) -> None:
        self._lib = lib
        self.addresses: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._lib, name)

    def ng_gather64(self, ids, n, keys, *rest):  # type: ignore[no-untyped-def]
        ffi = _native.ffi
        for p in (ids, keys):
            if p != ffi.NULL:
                self.addresses.append(int(ffi.cast("uintptr_t", p)))
        return self._lib.ng_gather64(ids, n, keys, *rest)


def test_unaligned_ids_and_keys_are_realigned_before_the_call(monkeypatch):
    shift = 3
    chunk = np.zeros(_native.chunk_value_size(shift), np.uint8)
    chunk[8 * 64] = 0xFF
    chunk[64 * 5] = 7  # record of id 5 starts with byte 7
    raw = np.zeros(4 * 4 + 1, np.uint8)
    raw[1:] = np.array([5, 1, 9, 5], np.uint32).view(np.uint8)
    ids = np.frombuffer(raw.data, np.uint32, count=4, offset=1)
    keys = np.frombuffer(np.zeros(5, np.uint8).data, np.uint32, count=1, offset=1)  # chunk key 0
    assert not ids.flags.aligned and not keys.flags.aligned
    spy = _Spy(_native.lib)
    monkeypatch.setattr(_native, "lib", spy)
    out, found = _native.gather64(ids, keys, [chunk], shift)
    assert found.tolist() == [True, True, False, True]
    assert out.view(np.uint8).reshape(-1, 64)[0, 0] == 7
    assert spy.addresses and all(a % 4 == 0 for a in spy.addresses)
