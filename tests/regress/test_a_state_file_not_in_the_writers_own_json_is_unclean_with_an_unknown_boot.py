"""``decode_state`` (format §4.2) took the ``state`` file's values as Python truthiness and
casts: ``{"clean": "no"}`` read as clean -- an open of a store whose writer had died would
skip recovery -- a ``pid`` of ``1e999`` raised ``OverflowError`` out of every open, JSON
nested past the interpreter's stack raised ``RecursionError``, and a numeric ``boot_id``
came back as an int typed ``str``. Anything that is not the writer's own JSON is now an
unclean state with an unknown boot, as documented. Found by the ``state_file`` fuzz target."""
from __future__ import annotations

import pytest

from ngstore import layout


@pytest.mark.parametrize("data", [
    b'{"clean": "no", "boot_id": "b", "pid": 1}', b'{"clean": 1, "boot_id": "b", "pid": 1}',
    b'{"clean": [0], "boot_id": "b", "pid": 1}', b'{"clean": true, "boot_id": "b", "pid": 1e999}',
    b'{"clean": true, "boot_id": 22204, "pid": 1}', b'{"clean": true, "boot_id": "b", "pid": "7"}',
    b'{"clean": true, "boot_id": "b", "pid": true}', b"[" * 100_000, b'["clean", true]', b"\xff\xfe",
])
def test_a_state_file_that_is_not_the_writers_json_is_unclean_with_an_unknown_boot(data):
    assert layout.decode_state(data) == layout.WriterState(clean=False, boot_id=None)


@pytest.mark.parametrize("clean", [True, False])
def test_the_writers_own_state_file_reads_back(clean):
    st = layout.WriterState(clean=clean, boot_id="0b1d", pid=42)
    assert layout.decode_state(layout.encode_state(st)) == st
