"""Finding LMDB pages in a data.mdb, for tests that damage them (format of LMDB 0.9, 64-bit).

A page starts with ``pgno u64, pad u16, flags u16, lower u16, upper u16``; a leaf page's
pointer array (u16 offsets of its nodes) follows the 16-byte header up to ``lower``; a node
is ``lo u16, hi u16, flags u16, ksize u16, key, data`` (for ``F_BIGDATA`` the data is the
u64 page number of the value's first overflow page)."""
from __future__ import annotations

import struct

P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
F_BIGDATA = 0x01
PAGE_HEADER = struct.Struct("<QHHHH")


def page_size(data: bytes) -> int:
    return int(struct.unpack_from("<I", data, 40)[0])


def leaf_pages(data: bytes, key_size: int, node_flags: int | None = None) -> list[int]:
    """Page numbers of the leaf pages whose every node has a ``key_size``-byte key (and
    the given node flags): the leaves of one kind of database."""
    ps = page_size(data)
    out = []
    for pgno in range(2, len(data) // ps):
        base = pgno * ps
        no, _pad, flags, lower, upper = PAGE_HEADER.unpack_from(data, base)
        if no != pgno or flags & ~0x10 != P_LEAF or not 16 < lower <= upper <= ps:
            continue
        nodes = [struct.unpack_from("<H", data, base + 16 + 2 * i)[0] for i in range((lower - 16) // 2)]
        ok = bool(nodes)
        for off in nodes:
            if not upper <= off < ps - 8:
                ok = False
                break
            _lo, _hi, nflags, ksize = struct.unpack_from("<HHHH", data, base + off)
            if ksize != key_size or (node_flags is not None and nflags != node_flags):
                ok = False
                break
        if ok:
            out.append(pgno)
    return out
