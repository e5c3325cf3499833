"""Store format versions (docs/format.md, top): a writer upgrades a version-1 store before
it logs anything, marker first; read-only handles read version-1 stores as they are; a
version-1 ngstore then refuses the store instead of meeting op kinds it cannot read."""
from __future__ import annotations

import os

import lmdb
import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore import layout
from ngstore.errors import FormatVersionError

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None)


def _as_version_1(path: str) -> None:
    """Makes ``path`` look as version 1 of ngstore left it: marker and meta say 1."""
    with open(os.path.join(path, layout.MARKER_FILE), "wb") as f:
        f.write(layout.encode_marker(1))
    env = lmdb.open(path, max_dbs=32)
    with env.begin(write=True, db=env.open_db(layout.DB_META)) as txn:
        txn.put(layout.M_FORMAT, layout.encode_u64(1))
    env.close()


def _marker_version(path: str) -> int:
    with open(os.path.join(path, layout.MARKER_FILE), "rb") as f:
        return layout.decode_marker(f.read(), path)


def test_a_writer_upgrades_a_version_1_store_and_a_reader_does_not(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(100)))
    _as_version_1(path)
    with ngstore.open(path, readonly=True, **OPEN) as r:
        assert r.stats()["format_version"] == 1
        assert len(r.get_tokens(np.arange(100))) == 100
    assert _marker_version(path) == 1
    with ngstore.open(path, **OPEN) as w:
        assert w.stats()["format_version"] == layout.FORMAT_VERSION == 2
        assert _marker_version(path) == 2
        w.put_tokens(make_tokens(np.arange(100, 110)))
    with ngstore.open(path, readonly=True, **OPEN) as r:
        assert r.stats()["format_version"] == 2
        assert len(r.get_tokens(np.arange(110))) == 110
        assert r.check().ok


def test_an_upgraded_store_is_refused_by_a_version_1_reader(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    ngstore.open(path, **OPEN).close()
    monkeypatch.setattr(layout, "FORMAT_VERSION", 1)  # what version 1 of the code checks
    with open(os.path.join(path, layout.MARKER_FILE), "rb") as f:
        marker = f.read()
    with pytest.raises(FormatVersionError, match="store format 2"):
        layout.decode_marker(marker, path)
