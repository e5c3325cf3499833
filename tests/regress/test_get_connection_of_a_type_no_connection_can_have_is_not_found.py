"""get_connection(a, b, t) with a ``t`` no connection can have (a fraction, a string, past
255) raised "ValueError: Unknown format code 'x'" while wording its NotFoundError: the
message formatted the type with ``:#x``. It is a NotFoundError (a KeyError) that names
the type as given."""
from __future__ import annotations

import numpy as np
import pytest

import ngstore
from ngstore.connections import new_connections


def test_get_connection_of_a_type_no_connection_can_have_is_not_found(tmp_path):
    with ngstore.open(str(tmp_path / "s")) as s:
        s.put_connections(new_connections(np.array([1], np.uint32), np.array([2], np.uint32), 0x10))
        for t, shown in ((16.5, "16.5"), ("0x10", "'0x10'"), (256, "256"), (-16, "-16")):
            with pytest.raises(KeyError, match=f"no connection 1-2 of type {shown}"):
                s.get_connection(1, 2, t)
        with pytest.raises(KeyError, match="of type 0x11"):
            s.get_connection(1, 2, 0x11)
        assert s.get_connection(1, 2, 16.0).connection_type == 0x10  # a float equal to the type
