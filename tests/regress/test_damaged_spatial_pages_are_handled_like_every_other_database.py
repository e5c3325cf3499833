"""The spatial index is a named database like the others, so its damaged pages must be
treated as main treats theirs (docs/format.md §3.4): not critical for a read-only open,
CorruptionError for whatever reads it (never LMDB following the page), a finding of
``check()`` with the spatial section skipped, and refused by a writer. A backup of such a
store must refuse too: LMDB's compacting copy walks every tree."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import make_tokens
from lmdbpages import F_BIGDATA, leaf_pages, page_size

import ngstore
from ngstore import backup

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30)


def _damaged_spatial_store(path: str) -> None:
    # No connections: the only 9-byte keys are the spatial index's pages (layer u8, K u64),
    # and 4,000 tokens make pages of a few hundred 10-byte entries (overflow values).
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(4000)))
    data_path = os.path.join(path, "data.mdb")
    with open(data_path, "rb") as f:
        data = f.read()
    leaves = leaf_pages(data, key_size=9, node_flags=F_BIGDATA)
    assert leaves
    with open(data_path, "r+b") as f:  # the flags of one leaf: "not a leaf" to LMDB
        f.seek(leaves[0] * page_size(data) + 10)
        f.write(b"\x00\x00")


def test_a_damaged_spatial_page_is_a_finding_and_an_error_never_a_crash(tmp_path):
    path = str(tmp_path / "s")
    _damaged_spatial_store(path)
    with ngstore.open(path, readonly=True, **OPEN) as s:  # not critical at a read-only open
        assert s.count() == 4000
        with s.snapshot() as snap:
            with pytest.raises(ngstore.CorruptionError, match="spatial"):
                snap.tokens.within((0, 0, 0), 100, layer=0)
            assert snap.tokens.knn(np.zeros(24, np.int16), 3).ids.size == 3  # knn reads the chunks
        report = s.check()
    assert not report.ok
    assert any(f.where and f.where.startswith("spatial") for f in report.findings), report
    assert "spatial" in report.facts["not_read_for_damaged_pages"], report
    assert report.facts["tokens_present"] == 4000, report  # the other sections ran
    with pytest.raises(ngstore.CorruptionError, match="LMDB page damage in spatial"):
        ngstore.open(path, **OPEN)  # a writer must not write into a damaged tree


def test_a_backup_of_a_store_with_damaged_pages_is_refused(tmp_path):
    path = str(tmp_path / "s")
    _damaged_spatial_store(path)
    with pytest.raises(ngstore.CorruptionError, match="spatial"):
        backup.backup(path, str(tmp_path / "b"))
