"""``read_stats_page`` turned each histogram count of ``stats.page`` into an int with no
check: a page whose CRC matched but whose count was +inf raised ``OverflowError`` (not the
documented ``ValueError``) out of ``ngstore info`` and the sidecar, and a negative count
was published as is. Found by the ``stats_page`` fuzz target."""
from __future__ import annotations

import math
import os
import struct
import zlib

import pytest

import ngstore
from ngstore.obs import statspage


def _fix_crc(page: bytearray) -> None:
    count = struct.unpack_from("<I", page, 16)[0]
    end = statspage.HEAD_BYTES + count * statspage.ENTRY_BYTES
    crc = zlib.crc32(page[statspage.HEAD_BYTES:end], zlib.crc32(page[32:60], zlib.crc32(page[:24])))
    struct.pack_into("<I", page, 60, crc)


@pytest.mark.parametrize("kind", [statspage.KIND_BUCKET, statspage.KIND_COUNT])
@pytest.mark.parametrize("count", [math.inf, -math.inf, math.nan, -1.0])
def test_a_histogram_count_that_is_not_a_count_makes_the_page_unreadable(tmp_path, kind, count):
    path = str(tmp_path / "s")
    with ngstore.open(path) as s:
        s.put_tokens(ngstore.Token.create_batch(3))
    page_path = os.path.join(path, statspage.PAGE_FILE)
    with open(page_path, "rb") as f:
        page = bytearray(f.read())
    n = struct.unpack_from("<I", page, 16)[0]
    offs = [statspage.HEAD_BYTES + i * statspage.ENTRY_BYTES for i in range(n)]
    off = next(o for o in offs if page[o + 40] == kind)
    struct.pack_into("<d", page, off + 56, count)
    _fix_crc(page)
    with open(page_path, "wb") as f:
        f.write(page)
    with pytest.raises(ValueError, match=r"histogram .* count"):
        statspage.read_stats_page(path, attempts=1)
