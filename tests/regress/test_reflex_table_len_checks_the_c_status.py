"""``len(ReflexTable)`` ignored the status of ng_reflex_info_get and reported whatever the
zeroed output struct held (0 reflexes) when the call failed. Every C status is checked
where it is returned: a failure raises NativeError naming the function."""
from __future__ import annotations

import pytest

from ngstore import reflex
from ngstore.errors import NativeError


class _FailingInfo:
    """The compiled library, except that ng_reflex_info_get fails with NG_EINVAL."""

    def __init__(self, lib: object) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> object:
        return getattr(self._lib, name)

    @staticmethod
    def ng_reflex_info_get(handle: object, out: object) -> int:
        return -1


def test_len_raises_native_error_when_info_get_fails(monkeypatch):
    t = reflex.ReflexTable.create(100)
    t.insert([0.1] * 8, b"\x01\x00\x00\x00\x02\x00\x00\x00" + bytes(56))
    monkeypatch.setattr(reflex, "lib", _FailingInfo(reflex.lib))
    with pytest.raises(NativeError, match="ng_reflex_info_get"):
        len(t)
