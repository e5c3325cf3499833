"""LMDB's pages, verified without LMDB.

LMDB trusts its file: a damaged page makes it follow a wrong page number, read a value past
its page or past the end of the file (``SIGBUS``), or stop the process on an assertion
(``SIGABRT``) -- a damaged ``data.mdb`` can kill the application instead of raising. This
module walks the B-trees of one snapshot of ``data.mdb`` itself, from a meta page down,
and checks every rule LMDB relies on before LMDB is let near them:

* every page number is inside the file (``2 <= pgno <= last_pgno``), every page's header
  names its own number, and no page is reached twice (no cycles, no shared pages);
* a branch page holds at least two nodes (one for a root), a page's node offsets lie
  between its ``upper`` bound and its end, and every node (header, key, inline data) fits
  in its page;
* the pages of one level are all branch pages above the tree's depth and leaf pages at
  it, as ``md_depth`` says;
* a value kept on overflow pages points at an overflow page whose page count covers the
  value, inside the file;
* leaf node flags are those ngstore's databases can have (no duplicates), keys are at
  most 511 bytes and in order within each page;
* each tree's page and entry counts equal its record's (``MDB_db``), and the named
  databases' records in the main tree are well formed;
* the free list names only pages inside the file that no tree uses.

What it does not know is what the values mean: that is ``check``'s job, once the pages
are known to be safe to read. The layout is LMDB 0.9's on a 64-bit machine (``mdb.c``:
``MDB_page``, ``MDB_node``, ``MDB_db``, ``MDB_meta``); docs/format.md §3.4 summarises it.
"""
from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from .layout import meta_page_last_pgno, meta_page_size, meta_page_txnid

PAGE_HEADER = struct.Struct("<QHHHH")     # pgno, pad, flags, lower, upper (or u32 page count)
PAGE_HEADER_SIZE = 16
NODE_HEADER_SIZE = 8                      # lo u16, hi u16, flags u16, ksize u16
DB_RECORD = struct.Struct("<IHHQQQQQ")    # pad, flags, depth, branch, leaf, overflow, entries, root
DB_RECORD_SIZE = 48

P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_DIRTY, P_LEAF2, P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
P_INVALID = (1 << 64) - 1
MAX_KEY_SIZE = 511
FREE_DB_OFFSET = 40                       # the two MDB_db records in a meta page
MAIN_DB_OFFSET = 88
_META_PSIZE_AT = 40                       # where a meta page keeps the page size (in the free DB's record)
FREE = "(free list)"
MAIN = "(main)"
#: Database flags ngstore's databases may carry (none: plain sorted keys, one value each).
_ALLOWED_DB_FLAGS = 0


@dataclass(frozen=True)
class PageProblem:
    """One rule a page breaks: the tree it belongs to, its page number, the byte offset in
    ``data.mdb`` where the fault is, and why."""

    reason: str
    tree: str
    pgno: int | None = None
    offset: int | None = None


@dataclass
class Tree:
    """What the walk found of one B-tree."""

    name: str
    depth: int = 0
    branch_pages: int = 0
    leaf_pages: int = 0
    overflow_pages: int = 0
    entries: int = 0
    #: False when the walk stopped at damage (its counts are then partial).
    complete: bool = True
    walked: bool = True


@dataclass
class Verification:
    """The result of :func:`verify`: ``ok`` when no rule is broken."""

    txnid: int
    page_size: int
    last_pgno: int
    trees: dict[str, Tree] = field(default_factory=dict)
    problems: list[PageProblem] = field(default_factory=list)
    #: pages named by the free list
    free_pages: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def damaged(self) -> set[str]:
        """Names of the trees with a problem (``FREE``/``MAIN`` for LMDB's own)."""
        return {p.tree for p in self.problems}


class _Dense:
    """Which tree uses each page, for a walk of the whole file (one byte per page)."""

    def __init__(self, last_pgno: int) -> None:
        self.owner = np.full(last_pgno + 1, -1, dtype=np.int8)

    def claim(self, pgno: int, count: int, idx: int) -> tuple[int, int] | None:
        span = self.owner[pgno:pgno + count]
        used = np.flatnonzero(span >= 0)
        if used.size:
            return pgno + int(used[0]), int(span[used[0]])
        span[:] = idx
        return None


class _Sparse:
    """The same for a walk of a few small trees: the claimed runs, sorted."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.runs: list[tuple[int, int, int]] = []  # start, end (exclusive), tree

    def claim(self, pgno: int, count: int, idx: int) -> tuple[int, int] | None:
        end = pgno + count
        i = bisect.bisect_right(self.starts, pgno)
        for j in (i - 1, i):
            if 0 <= j < len(self.runs):
                s, e, owner = self.runs[j]
                if s < end and pgno < e:
                    return max(s, pgno), owner
        self.starts.insert(i, pgno)
        self.runs.insert(i, (pgno, end, idx))
        return None


class _Walk:
    def __init__(self, buf: memoryview, psize: int, last_pgno: int, dense: bool) -> None:
        self.buf = buf
        self.psize = psize
        self.last = last_pgno
        self.claims: _Dense | _Sparse = _Dense(last_pgno) if dense else _Sparse()
        self.names: list[str] = []
        self.problems: list[PageProblem] = []

    def complete(self) -> bool:
        return not self.problems

    def problem(self, tree: str, reason: str, pgno: int | None, within: int | None = 0) -> None:
        offset = None if pgno is None or within is None else pgno * self.psize + within
        self.problems.append(PageProblem(reason, tree, pgno, offset))

    def claim(self, tree: str, idx: int, pgno: int, count: int = 1) -> bool:
        """Marks pages ``pgno..pgno+count-1`` as used by tree ``idx``; False (with a
        problem) if one lies outside the file or is used already."""
        if pgno < 2 or pgno + count - 1 > self.last:
            self.problem(tree, f"page {pgno}" + (f" (+{count - 1})" if count > 1 else "")
                         + f" is outside the file's {self.last + 1} pages", None)
            return False
        other = self.claims.claim(pgno, count, idx)
        if other is not None:
            at, owner = other
            self.problem(tree, f"page {at} is reached twice (already used by {self.names[owner]})", at)
            return False
        return True

    def page(self, pgno: int) -> memoryview:
        return self.buf[pgno * self.psize:(pgno + 1) * self.psize]

    def tree(self, name: str, record: tuple[int, ...], on_leaf: Callable[[memoryview, int, int], None] | None
             ) -> Tree:
        """Walks the tree of ``record`` (an unpacked ``MDB_db``), level by level."""
        _pad, flags, depth, branch, leaf, overflow, entries, root = record
        idx = len(self.names)
        self.names.append(name)
        t = Tree(name, depth)
        if flags & ~_ALLOWED_DB_FLAGS & 0xFFFF and name not in (FREE, MAIN):
            self.problem(name, f"database flags {flags:#x} that ngstore never sets", None)
            t.complete = False
            return t
        if root == P_INVALID:
            if depth or branch or leaf or overflow or entries:
                self.problem(name, f"an empty tree with depth {depth} and {entries} entries", None)
                t.complete = False
            return t
        if not 1 <= depth <= 32:
            self.problem(name, f"a tree depth of {depth}", None)
            t.complete = False
            return t
        level = [root]
        for lvl in range(1, depth + 1):
            is_leaf_level = lvl == depth
            below: list[int] = []
            for pgno in level:
                if not self.claim(name, idx, pgno):
                    t.complete = False
                    continue
                if not self._page(name, idx, t, pgno, is_leaf_level, lvl == 1, below, on_leaf):
                    t.complete = False
            level = below
        if t.complete and (t.branch_pages, t.leaf_pages, t.overflow_pages, t.entries) != \
                (branch, leaf, overflow, entries):
            self.problem(name, f"the tree's record counts {branch} branch, {leaf} leaf, {overflow} overflow "
                               f"pages and {entries} entries, but it holds {t.branch_pages}, {t.leaf_pages}, "
                               f"{t.overflow_pages} and {t.entries}", None)
        return t

    def _page(self, name: str, idx: int, t: Tree, pgno: int, leaf_level: bool, root: bool,
              below: list[int], on_leaf: Callable[[memoryview, int, int], None] | None) -> bool:
        page = self.page(pgno)
        no, _pad, flags, lower, upper = PAGE_HEADER.unpack_from(page, 0)
        if no != pgno:
            self.problem(name, f"page {pgno}'s header names page {no}", pgno, 0)
            return False
        want = P_LEAF if leaf_level else P_BRANCH
        if flags & ~P_DIRTY != want:
            self.problem(name, f"page {pgno} has flags {flags:#x}; a {'leaf' if leaf_level else 'branch'} "
                               "page was expected at this depth", pgno, 10)
            return False
        psize = self.psize
        if not PAGE_HEADER_SIZE <= lower <= upper <= psize or lower & 1:
            self.problem(name, f"page {pgno} has lower {lower} and upper {upper}", pgno, 12)
            return False
        n = (lower - PAGE_HEADER_SIZE) // 2
        if n < (1 if leaf_level or root else 2):
            self.problem(name, f"{'leaf' if leaf_level else 'branch'} page {pgno} holds {n} node(s)", pgno, 12)
            return False
        offs = np.frombuffer(page, dtype="<u2", count=n, offset=PAGE_HEADER_SIZE).astype(np.int64)
        bad = (offs < upper) | (offs > psize - NODE_HEADER_SIZE) | (offs & 1).astype(bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self.problem(name, f"node {i} of page {pgno} is at offset {int(offs[i])}, outside "
                               f"[{upper}, {psize - NODE_HEADER_SIZE}]", pgno, PAGE_HEADER_SIZE + 2 * i)
            return False
        raw = np.frombuffer(page, dtype=np.uint8)
        heads = raw[offs[:, None] + np.arange(NODE_HEADER_SIZE)].copy().view("<u2")  # (n, 4)
        lo, hi, nflags, ksize = (heads[:, k].astype(np.int64) for k in range(4))
        if (ksize > MAX_KEY_SIZE).any():
            i = int(np.flatnonzero(ksize > MAX_KEY_SIZE)[0])
            self.problem(name, f"node {i} of page {pgno} has a {int(ksize[i])}-byte key", pgno, int(offs[i]) + 6)
            return False
        if leaf_level:
            t.leaf_pages += 1
            dsize = lo | (hi << 16)
            big = (nflags & F_BIGDATA).astype(bool)
            allowed = F_BIGDATA | (F_SUBDATA if name == MAIN else 0)
            wrong = (nflags & ~allowed) != 0
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                self.problem(name, f"leaf node {i} of page {pgno} has flags {int(nflags[i]):#x}", pgno,
                             int(offs[i]) + 4)
                return False
            inline_end = offs + NODE_HEADER_SIZE + ksize + np.where(big, 8, dsize)
            over = inline_end > psize
            if over.any():
                i = int(np.flatnonzero(over)[0])
                self.problem(name, f"leaf node {i} of page {pgno} runs past the page's end", pgno, int(offs[i]))
                return False
            if not self._ordered(name, page, pgno, offs, ksize):
                return False
            t.entries += n
            for i in np.flatnonzero(big).tolist():
                opg = int.from_bytes(page[int(offs[i]) + NODE_HEADER_SIZE + int(ksize[i]):][:8], "little")
                if not self._overflow(name, idx, t, opg, int(dsize[i]), pgno, int(offs[i])):
                    return False
            if on_leaf is not None:
                on_leaf(page, pgno, n)
        else:
            t.branch_pages += 1
            if int(ksize[0]) != 0 and not root:
                pass  # LMDB stores the first key of a branch page empty, but does not rely on it
            children = lo | (hi << 16) | (nflags << 32)
            if not self._ordered(name, page, pgno, offs[1:], ksize[1:]):
                return False
            below.extend(int(c) for c in children)
        return True

    def _ordered(self, name: str, page: memoryview, pgno: int, offs: np.ndarray, ksize: np.ndarray) -> bool:
        """Keys strictly ascending within the page: bytewise (LMDB's default order), or as
        native integers in the free list (MDB_INTEGERKEY, keyed by transaction id)."""
        prev: bytes | None = None
        integer = name == FREE
        for i, (o, k) in enumerate(zip(offs.tolist(), ksize.tolist(), strict=True)):
            raw = page[o + NODE_HEADER_SIZE:o + NODE_HEADER_SIZE + k]
            key = bytes(raw)[::-1] if integer else bytes(raw)  # reversed little-endian sorts as the integer
            if prev is not None and not prev < key:
                self.problem(name, f"keys out of order in page {pgno} (node {i})", pgno, o + NODE_HEADER_SIZE)
                return False
            prev = key
        return True

    def _overflow(self, name: str, idx: int, t: Tree, opg: int, dsize: int, pgno: int, node_off: int) -> bool:
        need = (PAGE_HEADER_SIZE - 1 + dsize) // self.psize + 1
        if opg < 2 or opg > self.last:
            self.problem(name, f"a value in page {pgno} points at overflow page {opg}, outside the file",
                         pgno, node_off)
            return False
        no, _pad, flags, _lower, _upper = PAGE_HEADER.unpack_from(self.page(opg), 0)
        count = int.from_bytes(self.page(opg)[12:16], "little")
        if no != opg or flags & ~P_DIRTY != P_OVERFLOW:
            self.problem(name, f"overflow page {opg} has header page {no}, flags {flags:#x}", opg, 0)
            return False
        if count < need:
            self.problem(name, f"overflow page {opg} spans {count} pages but its {dsize}-byte value needs {need}",
                         opg, 12)
            return False
        if not self.claim(name, idx, opg, count):
            return False
        t.overflow_pages += count
        return True


def choose_meta(head: bytes, txnid: int | None = None) -> tuple[int, bytes] | None:
    """``(slot, meta page)``: the meta page of transaction ``txnid``, or the newest valid
    one when ``txnid`` is None; None when there is none. ``head`` holds pages 0 and 1."""
    psize = meta_page_size(head) if len(head) >= 48 else 0
    if not 512 <= psize <= 65536 or psize & (psize - 1) or len(head) < 2 * psize:
        return None
    best: tuple[int, int, bytes] | None = None
    for slot in (0, 1):
        page = head[slot * psize:(slot + 1) * psize]
        t = meta_page_txnid(page)
        if t is None:
            continue
        if txnid is not None:
            if t == txnid:
                return slot, page
            continue
        if best is None or t > best[0]:
            best = (t, slot, page)
    return None if best is None else (best[1], best[2])


def verify(buf: memoryview, meta: bytes, *, trees: Collection[bytes] | None = None,
           max_pages: int | None = None) -> Verification:
    """Walks the snapshot of ``meta`` (one of the two meta pages) in ``buf`` (data.mdb,
    mapped). ``trees`` limits the named databases walked (all when None); ``max_pages``
    skips a named database whose record claims more pages (``Tree.walked`` False). The
    free list and the main tree are always walked."""
    psize = meta_page_size(meta)
    last = meta_page_last_pgno(meta)
    txnid = meta_page_txnid(meta) or 0
    v = Verification(txnid=txnid, page_size=psize, last_pgno=last)
    if not 512 <= psize <= 65536 or psize & (psize - 1):  # the other meta page's size was checked, not this one's
        v.problems.append(PageProblem(f"the meta page names a page size of {psize}", MAIN, None, _META_PSIZE_AT))
        return v
    if (last + 1) * psize > len(buf):
        v.problems.append(PageProblem(f"the meta page names {last + 1} pages but the file holds "
                                      f"{len(buf) // psize}", MAIN, None, len(buf)))
        return v
    everything = trees is None and max_pages is None
    w = _Walk(buf, psize, last, dense=everything)
    free_ids: list[np.ndarray] = []

    def on_free_leaf(page: memoryview, pgno: int, n: int) -> None:
        for i in range(n):
            off = int.from_bytes(page[PAGE_HEADER_SIZE + 2 * i:PAGE_HEADER_SIZE + 2 * i + 2], "little")
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, off)
            dsize = lo | (hi << 16)
            start = off + NODE_HEADER_SIZE + ksize
            if nflags & F_BIGDATA:
                opg = int.from_bytes(page[start:start + 8], "little")
                data = w.buf[opg * psize + PAGE_HEADER_SIZE:opg * psize + PAGE_HEADER_SIZE + dsize]
            else:
                data = page[start:start + dsize]
            if dsize < 8 or dsize % 8:
                w.problem(FREE, f"a free list entry of {dsize} bytes", pgno, off)
                continue
            ids = np.frombuffer(data, dtype="<u8")
            if int(ids[0]) != ids.size - 1:
                w.problem(FREE, f"a free list entry counts {int(ids[0])} pages but holds {ids.size - 1}", pgno, off)
                continue
            free_ids.append(ids[1:])

    free_rec = DB_RECORD.unpack_from(meta, FREE_DB_OFFSET)
    v.trees[FREE] = w.tree(FREE, free_rec, on_free_leaf)
    records: dict[bytes, tuple[int, ...]] = {}

    def on_main_leaf(page: memoryview, pgno: int, n: int) -> None:
        for i in range(n):
            off = int.from_bytes(page[PAGE_HEADER_SIZE + 2 * i:PAGE_HEADER_SIZE + 2 * i + 2], "little")
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, off)
            key = bytes(page[off + NODE_HEADER_SIZE:off + NODE_HEADER_SIZE + ksize])
            if not nflags & F_SUBDATA:
                continue  # a plain key of the main database: ngstore keeps none, LMDB does not care
            if (lo | (hi << 16)) != DB_RECORD_SIZE:
                w.problem(MAIN, f"the record of database {key!r} is {lo | (hi << 16)} bytes", pgno, off)
                continue
            records[key] = DB_RECORD.unpack_from(page, off + NODE_HEADER_SIZE + ksize)

    main_rec = DB_RECORD.unpack_from(meta, MAIN_DB_OFFSET)
    v.trees[MAIN] = w.tree(MAIN, main_rec, on_main_leaf)
    for key, rec in records.items():
        name = key.decode("ascii", "replace")
        if trees is not None and key not in trees:
            continue
        if max_pages is not None and rec[3] + rec[4] > max_pages:
            v.trees[name] = Tree(name, walked=False)
            continue
        v.trees[name] = w.tree(name, rec, None)
    if free_ids:
        ids = np.concatenate(free_ids)
        v.free_pages = int(ids.size)
        outside = (ids < 2) | (ids > last)
        if outside.any():
            w.problem(FREE, f"the free list names page {int(ids[outside][0])}, outside the file", None)
        inside = ids[~outside].astype(np.int64)
        if everything and isinstance(w.claims, _Dense):  # only then does "unused" mean "free"
            owner = w.claims.owner
            used = owner[inside] >= 0  # in use by a tree (the free list's own pages included)
            if used.any():
                p = int(inside[used][0])
                w.problem(FREE, f"page {p} is on the free list and in use by {w.names[int(owner[p])]}", p)
            elif np.unique(inside).size != inside.size:
                w.problem(FREE, "the free list names a page twice", None)
    if everything and w.complete():
        used_pages = sum(t.branch_pages + t.leaf_pages + t.overflow_pages for t in v.trees.values())
        lost = last + 1 - 2 - used_pages - v.free_pages
        if lost:
            w.problem(FREE, f"{abs(lost)} page(s) are {'neither in use nor free' if lost > 0 else 'counted twice'} "
                            f"({used_pages} in use, {v.free_pages} free, {last + 1} in the file)", None)
    v.problems.extend(w.problems)
    return v
