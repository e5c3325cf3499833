"""``pages.verify`` took the page size from the meta page it walks without checking it
(``kv.check_data_file`` checks the size in page 0, but the newest meta page may be page 1):
a page-1 meta naming a page size of 0 made every page an empty view and the walk raised
``struct.error`` out of a writer's open. Found by the ``data_file`` fuzz target."""
from __future__ import annotations

import os
import struct

import pytest

import ngstore
from ngstore import layout, pages
from ngstore.fileio import DEFAULT_IO
from ngstore.kv import check_data_file


def _damage_newest_meta_page_size(path: str) -> None:
    data_path = os.path.join(path, layout.DATA_FILE)
    with open(data_path, "r+b") as f:
        data = bytearray(f.read())
        psize = layout.meta_page_size(bytes(data[:4096]))
        metas = [bytes(data[s * psize:(s + 1) * psize]) for s in (0, 1)]
        txn = [layout.meta_page_txnid(m) or 0 for m in metas]
        if txn[0] > txn[1]:  # make page 1 the newest: page 0's content, one transaction later
            page1 = bytearray(layout.meta_page_for_slot(metas[0], 1))
            struct.pack_into("<Q", page1, 144, txn[0] + 1)
            data[psize:2 * psize] = page1
        struct.pack_into("<I", data, psize + 40, 0)  # page 1 names a page size of 0
        f.seek(0)
        f.write(data)


def test_the_walk_reports_a_page_size_of_zero_and_the_open_refuses_it(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path) as s:
        s.put_tokens(ngstore.Token.create_batch(5))
    _damage_newest_meta_page_size(path)
    walked = check_data_file(path, DEFAULT_IO, walk=True)
    assert walked is not None and not walked.ok
    assert any("page size of 0" in p.reason and p.tree == pages.MAIN for p in walked.problems)
    with pytest.raises(ngstore.CorruptionError, match="page size of 0"):
        ngstore.open(path).close()
