"""The LMDB layer: the only module of ngstore that imports ``lmdb``.

What it owns
------------
* One ``lmdb.Environment`` per store directory per process (LMDB forbids opening the
  same environment twice in a process: its POSIX locks would be released by the first
  close). A read-only open in a process that already has the store open shares the
  environment, reference-counted.
* The named databases (``docs/format.md`` §3) and translation of LMDB's exceptions into
  ngstore's (``errors``), in one place.
* Durability of the LMDB side. The environment runs with ``sync=False`` (MDB_NOSYNC):
  a commit writes its pages with ``pwrite`` and costs no fsync, and survives a process
  crash through the page cache. Durability against power loss comes from two things
  together:

  - the write-ahead log, which holds every batch applied since the last checkpoint, and
  - the **checkpoint**: ``env.sync(force=True)`` makes transaction C durable; a copy of
    C's meta page is saved (fsynced) in the ``checkpoint`` file; and a read transaction
    is kept open on C until the next checkpoint ("the pin"), so LMDB never reuses a page
    reachable from C. C's tree therefore stays intact on disk whatever later unsynced
    commits do.

  After a power loss (detected by a changed boot id, see ``recovery``) the newest meta
  page on disk may name pages that never reached the disk -- the corruption invariant 7
  of ``docs/design.md`` is about. :func:`restore_checkpoint_meta` writes the saved meta page of
  C back into both meta slots before LMDB opens the file, which rolls LMDB back to C
  exactly; the log then replays everything after C. After a mere process crash the page
  cache is intact and the newest meta is trusted (no rollback; the log replays after
  the position stored in it).

  Rejected alternatives: ``sync=True, metasync=False`` costs one fdatasync of data.mdb
  per commit *on top of* the log's, doubling small-commit latency, and makes async
  commits no faster than sync ones; ``sync=False`` without the pin and the saved meta is
  not power-loss safe on ext4.

* Map size: the environment is opened with a large virtual map (default 1 TiB; no
  disk space is used until written -- ``writemap=False``) so growth is practically never
  needed. If it is, :meth:`KV.write` grows the map, but only while no read transaction
  of this process is open: remapping under an open zero-copy view would leave it
  pointing at unmapped memory.

* Errors of LMDB's own file I/O. py-lmdb raises ``lmdb.Error`` with the errno LMDB
  returned in ``code``; an errno of the store's files (a full disk, a read-only file
  system, a permission, an I/O error) becomes the named ``errors.StorageError`` of that
  errno with data.mdb's path (:func:`lmdb_storage_error`). **A full disk often reaches
  us as EIO**: LMDB's ``mdb_page_flush`` returns the errno of a failed ``pwrite``
  (``ENOSPC`` when nothing could be written), but ``EIO`` for a *short* write -- what a
  nearly full file system does to a write larger than the space left. So an EIO from
  LMDB is reported as :class:`errors.DiskFullError` when the file system holding
  data.mdb has less than :data:`DISK_FULL_FREE_BYTES` free when the error is seen
  (``statvfs``; quotas are not seen), and as :class:`errors.StorageIOError` otherwise.
  The heuristic can be wrong both ways: a real device error on a nearly full disk is
  named a full disk, and a full disk that another process freed between the failed
  write and the check is named an I/O error. Both stop the store the same way and both
  messages say to reopen; the ``detail`` of the error says that the heuristic decided.
* LMDB's lock file is mapped shared and written through memory. A store into a hole of
  that mapping that the file system cannot back (a full disk) kills the process with
  SIGBUS, so a writer that creates lock.mdb first gives it disk blocks
  (``FileIO.allocate``), and a full disk fails the open with ``DiskFullError`` instead.
"""
from __future__ import annotations

import ctypes
import errno
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import lmdb
import numpy as np

from . import layout, pages
from .errors import CorruptionError, NgStoreError, StorageError, StoreLockedError, StoreState, storage_error
from .fileio import DEFAULT_IO, PRIVATE_MODE, FileIO, lock_mode
from .layout import ALL_DBS, DATA_FILE, DB_META, LMDB_LOCK_FILE, META_KEYS, Checkpoint, Meta

T = TypeVar("T")
A = TypeVar("A")

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; disk use follows the data
MAX_MAP_SIZE = 1 << 46

#: An EIO from LMDB is taken for a full disk when the file system has less than this free
#: (see the module essay): more than the largest single write LMDB's page flush makes in
#: practice (a group of a few MiB of dirty pages), small next to any disk in use.
DISK_FULL_FREE_BYTES = 16 << 20

#: The errnos of LMDB's file I/O that become a named StorageError.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})

#: LMDB's lock file: a header of two cache lines (the reader-table head and the writer
#: mutex, on Linux with POSIX robust mutexes), then one 64-byte slot per reader
#: (``MDB_txninfo`` in mdb.c); LMDB makes the file exactly this long when it creates it.
_LOCK_HEAD_BYTES = 192
_LOCK_SLOT_BYTES = 64


class _Shared:
    """An environment shared by the opens of one directory in this process."""

    def __init__(self, env: lmdb.Environment, dbs: dict[bytes, Any], readonly: bool) -> None:
        self.env = env
        self.dbs = dbs
        self.readonly = readonly
        self.refs = 0
        #: The read transactions begun (``KV.begin_read``) and not ended. Held weakly: one
        #: an interrupt kept from its owner (interrupts.py) stops counting once collected
        #: (py-lmdb aborts it then), instead of refusing map growth for good.
        self.open_txns: weakref.WeakSet[lmdb.Transaction] = weakref.WeakSet()
        #: Of the open readers, those of :class:`ReadTxn` (short internal reads): map growth
        #: waits for them, where a snapshot or a view makes it fail (it may live for hours).
        self.short_readers = 0
        #: (start, length) of the memory map, found once (see KV.map_span); None: unknown.
        self.map_span: tuple[int, int] | None = None
        #: Set by a writer of this process: brings LMDB up to date with its commits.
        self.writer_barrier: Callable[[], None] | None = None
        #: Databases the open's page walk found damaged, with the first problem: reads of
        #: them raise CorruptionError instead of letting LMDB follow the damaged pages.
        self.damaged: dict[str, pages.PageProblem] = {}
        #: ``(st_dev, st_ino)`` of the data.mdb this environment maps.
        self.identity: tuple[int, int] | None = None
        #: The read transaction point reads reuse (``KV.read_one``) while a writer of this
        #: process is open; ended at each write commit, so it never shows an old state nor
        #: holds pages the writer freed. Used and replaced only under ``_registry_lock``.
        self.point_txn: lmdb.Transaction | None = None
        #: Values ``point_txn`` has read, kept for the reads after (``KV.read_one``); they
        #: point into its snapshot, so they go with it.
        self.point_values: dict[Any, Any] = {}
        #: Set in a child made by fork() (``_inherited_in_child``): the environment is the
        #: parent's, and no transaction of it may be ended here.
        self.inherited = False
        _environments.add(self)

    def drop_point_txn(self) -> None:
        """Ends the reused point-read transaction (with ``_registry_lock`` held)."""
        txn, self.point_txn = self.point_txn, None
        self.point_values = {}
        if txn is not None and not self.inherited:
            txn.abort()


_registry: dict[str, _Shared] = {}
#: Every environment of this process, open or not yet freed, and every handle of one (what
#: a fork inherits).
_environments: weakref.WeakSet[_Shared] = weakref.WeakSet()
_handles: weakref.WeakSet[KV] = weakref.WeakSet()
#: Reentrant: the last release of a read lease runs wherever the garbage collector frees a
#: zero-copy view -- possibly inside a block of this same thread that holds the lock (an
#: open walking the file allocates); it then ends its transaction and drops a reference of
#: another environment, which nothing in those blocks depends on. A plain lock deadlocked.
_registry_lock = threading.RLock()
#: Notified when a short reader ends (``ReadTxn``), for a map growth waiting under the lock.
_reader_ended = threading.Condition(_registry_lock)
#: How long a map growth waits for short internal reads (``ReadTxn``) to end.
GROW_WAIT_SECONDS = 10.0


def _inherited_in_child() -> None:
    """In a child made by fork(): every environment open at the fork is the parent's. LMDB's
    lock table is shared by the two processes, so ending a read transaction the child
    inherited frees the parent's reader slot (the pages its snapshot reads could then be
    reused under it), and py-lmdb ends every transaction of an environment it closes or
    frees. So each is marked inherited -- none of its transactions is ended here, it is
    never closed, and an open of its directory here is refused (py-lmdb refuses a second
    environment of one path in a process anyway) -- and kept alive for the child's whole
    life, through its exit. The locks are made anew: a thread of the parent may have held
    one at the fork."""
    global _registry_lock, _reader_ended
    for shared in list(_environments):
        shared.inherited = True
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(shared.env))  # never freed in this process
    for kv in list(_handles):
        kv.inherited = True
    _registry_lock = threading.RLock()
    _reader_ended = threading.Condition(_registry_lock)


os.register_at_fork(after_in_child=_inherited_in_child)


#: At most this many values are kept for point reads (``KV.read_one``) at once: token chunks
#: of 8M ids with the default 1024-slot chunks, about 2 MB of memoryview objects.
POINT_VALUES_KEPT = 8192

#: At open, before LMDB reads anything, the trees whose pages are walked (``pages``): LMDB's
#: own (free list, main) and every database of at most this many branch and leaf pages --
#: the meta database, the reflex table's, small ones -- so that damage there is a
#: CorruptionError, not an abort inside LMDB. Larger trees are walked by ``check()``.
OPEN_WALK_MAX_PAGES = 256


def check_data_file(path: str, io: FileIO, *, walk: bool = False) -> pages.Verification | None:
    """Refuses a data.mdb shorter than the pages its meta page says are in use, before LMDB
    maps it: LMDB would read past the end of the file and the process would die of SIGBUS.
    With ``walk`` (only when no other process can write the file now), also walks the pages
    of LMDB's own trees and the small databases (:data:`OPEN_WALK_MAX_PAGES`): returns the
    walk's result (None without ``walk``), and the caller decides what damage it can open
    with. A missing or empty file is fine (LMDB creates it)."""
    data = os.path.join(path, DATA_FILE)
    # The meta pages first, then the size: a writer in another process writes a commit's
    # pages before its meta page and never shrinks the file, so the size read after a meta
    # page covers it. Read the other way round, a commit between the two reads made a
    # growing file look truncated.
    head = io.read_file(data, limit=layout.MAX_PAGE_SIZE * 2) if io.size_of(data) else b""
    size = io.size_of(data)
    if not size or not head:
        return None
    psize = layout.meta_page_size(head) if len(head) >= 44 else 0
    if not 512 <= psize <= layout.MAX_PAGE_SIZE or psize & (psize - 1):
        raise CorruptionError(f"data.mdb's first meta page names a page size of {psize}", path=data, offset=40)
    if len(head) < 2 * psize:
        raise CorruptionError(f"data.mdb is {size} bytes, shorter than its two meta pages of {psize}",
                              path=data, offset=size)
    metas = [head[slot * psize:(slot + 1) * psize] for slot in (0, 1)]
    valid = [(layout.meta_page_txnid(m), m) for m in metas]
    newest = max(((t, m) for t, m in valid if t is not None), default=None, key=lambda tm: tm[0])
    if newest is None:
        raise CorruptionError("neither meta page of data.mdb is valid", path=data, offset=0)
    need = (layout.meta_page_last_pgno(newest[1]) + 1) * psize
    if size < need:
        raise CorruptionError(f"data.mdb is truncated: {size} bytes, but its newest meta page (transaction "
                              f"{newest[0]}) uses {need}", path=data, offset=size)
    return _walk(io, data, newest[1], trees=None, max_pages=OPEN_WALK_MAX_PAGES) if walk else None


def _walk(io: FileIO, data_path: str, meta: bytes, trees: Collection[bytes] | None,
          max_pages: int | None) -> pages.Verification:
    m = io.map_readonly(data_path)
    if m is None:
        raise CorruptionError("data.mdb is empty", path=data_path, offset=0)
    view = memoryview(m)
    try:
        return pages.verify(view, meta, trees=trees, max_pages=max_pages)
    finally:
        view.release()
        try:
            m.close()
        except BufferError:  # a view of it is still referenced: the collector unmaps it
            pass


def _damage_error(p: pages.PageProblem, data_path: str, more: str = "") -> CorruptionError:
    return CorruptionError(f"LMDB page damage in {p.tree}: {p.reason}{more}", path=data_path, offset=p.offset)


#: Trees LMDB reads at every open or every transaction: damage there refuses any open.
_OPEN_CRITICAL = frozenset({pages.MAIN, DB_META.decode(), layout.DB_REFLEXES.decode()})


def _open_env(path: str, readonly: bool, map_size: int, max_readers: int, mode: int) -> lmdb.Environment:
    return lmdb.open(
        path,
        mode=mode,  # LMDB creates data.mdb and lock.mdb with it (the umask applies: see Directory.apply_mode)
        subdir=True,
        readonly=readonly,
        create=not readonly,
        map_size=map_size,
        max_dbs=len(ALL_DBS) + 2,
        max_readers=max_readers,
        sync=False,
        metasync=False,
        writemap=False,
        map_async=False,
        meminit=False,
        readahead=True,
        lock=True,
    )


class KV:
    """A store's LMDB environment and named databases.

    ``readonly`` opens never write. A writable KV must be created by the one writer
    (the store holds the writer lock before creating it).
    """

    def __init__(self, path: str, *, readonly: bool, map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = 126, io: FileIO = DEFAULT_IO, walk: bool | None = None,
                 mode: int = PRIVATE_MODE, verify: str = "off") -> None:
        """``walk``: verify LMDB's own trees and the small databases before LMDB reads them
        (:func:`check_data_file`); only valid while no other process writes the file. By
        default a writer does (it holds the writer lock) and a read-only handle does not.
        ``mode``: the store's file mode, given to LMDB for the files it creates.
        ``verify``: which reads check value checksums (``layout.VERIFY_MODES``, §3.0)."""
        if verify not in layout.VERIFY_MODES:
            raise ValueError(f"verify must be one of {layout.VERIFY_MODES}, got {verify!r}")
        #: reads (gets, gathers, scans, record copies) verify the values they use
        self.verify_reads = verify != "off"
        #: the writer's reads of values it is about to rewrite verify them too
        self.verify_writes = verify == "always"
        self.path = os.path.realpath(path)
        #: LMDB's data file (named in every error about it; joined once: reads name it)
        self.data_path = os.path.join(self.path, DATA_FILE)
        self.readonly = readonly
        self.io = io
        self._pin: lmdb.Transaction | None = None
        #: Called (with no transaction open) before the map is remapped larger; the writer
        #: sets it to a checkpoint so that the pin can move to the current transaction.
        self.before_grow: Callable[[], None] | None = None
        with _registry_lock:
            shared = _registry.get(self.path)
            if shared is not None and shared.inherited:
                raise StoreLockedError(
                    f"{self.path} was open in the process this one was forked from, at the fork: its LMDB "
                    "environment can neither be used nor opened again here (LMDB's rule across fork(); py-lmdb "
                    "refuses a second open). Open the store in a process started with the 'spawn' or "
                    "'forkserver' method, or in one forked before the store was opened")
            if shared is not None and shared.identity != io.identity(self.data_path):
                # The directory was removed and made again (a store re-created at the same
                # path) while something of the old store still holds its environment: that
                # environment maps a file that is gone. Never hand it to the new store; it
                # closes when its last holder lets go.
                del _registry[self.path]
                shared = None
            if shared is None:
                walked = check_data_file(self.path, io, walk=not readonly if walk is None else walk)
                damaged: dict[str, pages.PageProblem] = {}
                for p in walked.problems if walked is not None else ():
                    damaged.setdefault(p.tree, p)
                fatal = [p for name, p in damaged.items() if name in _OPEN_CRITICAL or not readonly]
                if fatal:
                    raise _damage_error(fatal[0], self.data_path,
                                        "; `ngstore check PATH` lists the damage: restore the store from a backup"
                                        if not readonly else "")
                if not readonly:
                    _back_lock_file(self.path, max_readers, io, mode)
                try:
                    env = _open_env(self.path, readonly, map_size, max_readers, mode)
                except lmdb.Error as exc:
                    raise (lmdb_storage_error(exc, "opening the LMDB environment", os.path.join(
                        self.path, DATA_FILE), io, StoreState.NOT_OPENED)
                        or translate(exc, f"opening the LMDB environment in {self.path}")) from exc
                dbs: dict[bytes, Any] = {}
                try:
                    # py-lmdb opens (and keeps) the handles in its own transaction. A missing
                    # database is None here even for a writer: creating it is a commit, which
                    # must wait until the writer has protected its checkpoint
                    # (create_missing_dbs).
                    for name in ALL_DBS:
                        try:
                            dbs[name] = env.open_db(name, create=False)
                        except lmdb.NotFoundError:
                            dbs[name] = None
                except lmdb.Error as exc:
                    env.close()
                    raise translate(exc, f"opening the databases of {self.path}") from exc
                shared = _Shared(env, dbs, readonly)
                shared.damaged = damaged
                shared.identity = io.identity(self.data_path)
                _registry[self.path] = shared
            elif not readonly and shared.readonly:
                raise StoreLockedError(
                    f"{self.path} is already open read-only in this process; close that handle "
                    "before opening it for writing")
            shared.refs += 1
        self._shared = shared
        #: Set in a child made by fork() (``_inherited_in_child``): nothing of this handle
        #: may be used here, and no transaction of it is ended.
        self.inherited = False
        self._released = False  # close() ran
        _handles.add(self)
        self.env: lmdb.Environment = shared.env
        self.dbs: dict[bytes, Any] = shared.dbs

    def create_missing_dbs(self) -> list[bytes]:
        """Creates the databases this store does not have yet (all of them in a new store;
        those added by a later version of ngstore in an older one), in one commit; returns
        their names. A writer calls it once it may commit: after protecting its checkpoint
        (``Applier.protect_checkpoint``), never before."""
        missing = [name for name in ALL_DBS if self.dbs.get(name) is None]
        if not missing or self._shared.readonly:
            return []
        handles = self.write(lambda txn: {name: self.env.open_db(name, txn=txn, create=True) for name in missing})
        self.dbs.update(handles)
        return missing

    # -- transactions -------------------------------------------------------------

    def begin_read(self) -> lmdb.Transaction:
        """A read transaction yielding buffers (memoryviews into the map).

        The buffers are valid only until :meth:`end_read`; callers tie the lifetime of
        every view to it (see :class:`ReadLease` and ``snapshot``). Every read
        transaction of ngstore begins here: map growth counts them (it must not remap
        under one) and LMDB's errors are translated.
        """
        with _registry_lock:  # begun and counted at once: map growth checks the count under it
            try:
                txn = self.env.begin(write=False, buffers=True)
            except lmdb.MapResizedError:
                # Another process grew the map; adopt the new size (no txn of ours is open
                # on this path, or LMDB would not have let us get here).
                try:
                    self._shared.map_span = None
                    self.env.set_mapsize(0)
                    txn = self.env.begin(write=False, buffers=True)
                except lmdb.Error as exc:
                    raise translate(exc, "beginning a read transaction") from exc
            except lmdb.Error as exc:
                raise translate(exc, "beginning a read transaction") from exc
            self._shared.open_txns.add(txn)
            self._shared.refs += 1  # the environment outlives its handles while a txn is open
        return txn

    def read_one(self, fn: Callable[[lmdb.Transaction, dict[Any, Any], A], T], arg: A) -> T:
        """``fn(txn, values, arg)`` in a read transaction that sees every commit made so
        far, for one short read whose result is a copy (no view of the map may escape
        ``fn``): the point-read path. ``values`` is a dict ``fn`` may keep values of ``txn``
        in, by any key, for later calls: it lives as long as ``txn``.

        The registry lock is held across the read, so neither map growth nor the last close
        of the environment (both take it) can come between the transaction's beginning and
        its end. While a writer of this process is open, every commit to this environment
        is one of its own (``write``), and each ends the transaction point reads share: so
        that transaction, and the values read in it, are reused from one read to the next
        (py-lmdb has no ``mdb_txn_renew``, and beginning a transaction and getting a value
        each cost about what the rest of the read does). The shared transaction is never
        counted as an open reader (``_grow`` ends it first) and never outlives the next
        commit, so it pins no page a later checkpoint frees. Without a writer here, each
        read begins a transaction of its own: another process may commit at any time.
        LMDB errors are translated. One ``arg``, not ``*args``: forwarding an argument tuple
        costs ~200 ns, a fifth of a point read."""
        shared = self._shared
        with _registry_lock:
            txn = shared.point_txn
            reuse = shared.writer_barrier is not None
            values = shared.point_values
            if txn is None:
                try:
                    txn = self.env.begin(write=False, buffers=True)
                except lmdb.MapResizedError:
                    txn = None  # another process grew the map: begin_read adopts its size
                except lmdb.Error as exc:
                    raise translate(exc, "beginning a read transaction") from exc
                if reuse:
                    shared.point_txn = txn
                else:
                    values = {}
            elif len(values) >= POINT_VALUES_KEPT:
                values.clear()
            if txn is not None:
                try:
                    return fn(txn, values, arg)
                except lmdb.Error as exc:
                    raise translate(exc, f"reading {self.path}") from exc
                finally:
                    if not reuse:
                        txn.abort()
        txn = self.begin_read()
        try:
            return fn(txn, {}, arg)
        except lmdb.Error as exc:
            raise translate(exc, f"reading {self.path}") from exc
        finally:
            self.end_read(txn)

    def end_read(self, txn: lmdb.Transaction) -> None:
        if self.inherited:  # the parent's transaction (``_inherited_in_child``)
            return
        try:
            txn.abort()
        finally:
            self._unref(txn)

    def translated(self, exc: BaseException, doing: str = "reading") -> BaseException:
        """``exc`` as ngstore raises it: an LMDB error translated, anything else as is."""
        return translate(exc, f"{doing} {self.path}") if isinstance(exc, lmdb.Error) else exc

    def db(self, name: bytes) -> Any:
        """The handle of database ``name`` for a read; CorruptionError when the open found
        its pages damaged (LMDB must not walk them)."""
        damaged = self._shared.damaged
        problem = damaged.get(name.decode()) if damaged else None  # a point read pays nothing
        if problem is not None:
            raise _damage_error(problem, self.data_path,
                                f"; the {name.decode()} database cannot be read")
        return self.dbs[name]

    def verify_pages(self) -> pages.Verification:
        """Walks every B-tree of the snapshot of a read transaction held for the walk
        (``pages.verify``): LMDB reuses none of its pages meanwhile, whatever a writer
        commits. Done by ``check()`` before it lets LMDB read the large databases."""
        data = self.data_path
        for _attempt in range(16):
            txn = self.begin_read()
            try:
                head = self.io.read_file(data, limit=2 * layout.MAX_PAGE_SIZE)
                chosen = pages.choose_meta(head, txnid=txn.id())
                if chosen is not None:
                    return _walk(self.io, data, chosen[1], trees=None, max_pages=None)
                # two commits since the transaction began overwrote its meta page: again
            finally:
                self.end_read(txn)
        raise NgStoreError(f"{self.path}: the writer commits too fast to catch a snapshot's meta page")

    def read_meta(self, txn: lmdb.Transaction) -> Meta:
        """The store's ``meta`` as of ``txn`` (``layout.decode_meta`` rules; the values
        verified as the ``verify`` mode says: ``"off"`` opens a store whose meta is damaged,
        for ``check()`` to report it)."""
        db = self.dbs[DB_META]
        if db is None:
            from .errors import NotAStoreError

            raise NotAStoreError(f"{self.path}: the LMDB file has no ngstore meta database")
        try:
            raw = {k: txn.get(k, db=db) for k in META_KEYS}
        except lmdb.Error as exc:
            raise translate(exc, f"reading the meta database of {self.path}") from exc
        values = {k: None if v is None else self.record(DB_META, k, v, layout.meta_region_bytes(k))
                  for k, v in raw.items()}
        return layout.decode_meta(values, self.path)

    # -- values and their checksums (format.md §3.0) ---------------------------------

    def record(self, db: bytes, key: bytes, value: Any, region_bytes: int, *, verify: bool | None = None,
               writing: bool = False) -> Any:
        """The record region of ``value`` (read under ``key`` of database ``db``), its
        checksum verified as the store's ``verify`` mode says for a read (``writing``:
        for a read of a value the writer is about to rewrite), or as ``verify`` says.
        CorruptionError names the database, key, data.mdb and the value's offset in it."""
        if verify is None:
            verify = self.verify_writes if writing else self.verify_reads
        return layout.unseal(db, key, value, region_bytes, verify=verify,
                                 path=self.data_path, locate=self.value_offset)

    def value_offset(self, value: Any) -> int | None:
        """The offset in data.mdb of the first byte of ``value`` (a buffer a read
        transaction returned), or None when it is not in the map (a value the current write
        transaction made dirty lives in LMDB's heap until the commit)."""
        if not isinstance(value, memoryview) or not len(value):
            return None
        address = int(np.frombuffer(value, dtype=np.uint8).ctypes.data)
        span = self.map_span(address)
        return None if span is None else address - span[0]  # LMDB maps data.mdb from offset 0

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Runs ``fn(txn)`` in one write transaction and commits it (no fsync).

        ``fn`` must be re-runnable: if the map fills, the transaction is aborted, the map
        grown, and ``fn`` runs again from scratch. An exception from ``fn`` aborts the
        transaction and nothing of it is visible.
        """
        if self.readonly:
            raise NgStoreError("this store handle is read-only")
        while True:
            try:
                txn = self.env.begin(write=True, buffers=True)
            except lmdb.Error as exc:
                raise translate(exc, "beginning a write transaction") from exc
            try:
                result = fn(txn)
                try:
                    self.io.lmdb_commit(txn, self)
                finally:
                    # Point reads must see this commit: end the transaction they reuse. Until
                    # then they read the state before it, as a read begun a moment earlier
                    # would; the writer's pending writes stay in its overlay past this point.
                    with _registry_lock:
                        self._shared.drop_point_txn()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
            except lmdb.Error as exc:
                txn.abort()
                named = lmdb_storage_error(exc, "writing LMDB's data file", self.data_path, self.io)
                if named is not None:
                    raise named from exc
                raise NgStoreError(f"LMDB write in {self.path} failed ({exc}); if the batch reached "
                                   "the write-ahead log it is applied, whole, when the store is "
                                   "reopened; no more writes are taken: close the store and open it "
                                   "again to recover") from exc
            except BaseException:
                txn.abort()
                raise

    def _grow(self) -> None:
        size = int(self.env.info()["map_size"])
        with _registry_lock:
            busy = self._readers_after_short_ones()
        if busy:
            raise self._busy_growing(size, busy)
        if size * 2 > MAX_MAP_SIZE:
            raise NgStoreError(f"the LMDB map of {self.path} reached its maximum size {size}")
        # The pin must stay on the checkpointed transaction, and remapping needs it
        # closed: so checkpoint now (the writer's hook), then remap and pin afresh.
        if self.before_grow is not None:
            self.before_grow()
        # Checked again, and remapped, under the lock every read transaction of this process
        # begins under: a reader that began during the checkpoint above must not have the
        # map moved under it, and none can begin until the remap is done.
        with _registry_lock:
            busy = self._readers_after_short_ones()
            if busy:
                raise self._busy_growing(size, busy)
            self._shared.drop_point_txn()  # no point read is under way: the lock is held
            self.unpin()
            self._shared.map_span = None
            self.env.set_mapsize(size * 2)
            self.pin()

    def _readers_after_short_ones(self) -> int:
        """With ``_registry_lock`` held: the open readers once the short internal ones
        (``ReadTxn``: a statistics read, a check section, ``store.outcome``) have ended,
        waited for up to :data:`GROW_WAIT_SECONDS` while they are the only ones; a snapshot
        or a view is not waited for."""
        shared = self._shared
        deadline = time.monotonic() + GROW_WAIT_SECONDS
        collected = False
        while True:
            open_readers = len(shared.open_txns)
            if open_readers and open_readers == shared.short_readers:
                left = deadline - time.monotonic()
                if left > 0 and _reader_ended.wait(left):
                    continue
            if open_readers > shared.short_readers and not collected:
                gc.collect()  # once: transactions an interrupt left unowned (see _Shared)
                collected = True
                continue
            return open_readers

    def _busy_growing(self, size: int, busy: int) -> NgStoreError:
        return NgStoreError(f"the LMDB map of {self.path} is full at {size} bytes and cannot grow while "
                            f"{busy} snapshot(s) of this process are open; close them and retry")

    def set_writer_barrier(self, barrier: Callable[[], None] | None) -> None:
        """A writer in this process registers how to bring LMDB up to date with its
        commits (None when it closes): read-only handles of the same process then see its
        commits at once, as readers in other processes do once the applier ran."""
        with _registry_lock:
            self._shared.writer_barrier = barrier
            self._shared.drop_point_txn()  # reused only while a writer of this process is open

    def catch_up_with_writer(self) -> None:
        """Runs the registered writer barrier, if a writer of this process has one."""
        barrier = self._shared.writer_barrier
        if barrier is not None:
            barrier()

    # -- the memory map -------------------------------------------------------------

    def map_span(self, address: int) -> tuple[int, int] | None:
        """``(start, length)`` of the readable part of the memory map that contains
        ``address`` (the address of a value returned by a read transaction), or None when
        it cannot be told (then each zero-copy view must be bounded to its own value).

        The map is found in ``/proc/self/maps`` once per mapping; its readable length is
        the file's extent in use, ``(last_pgno + 1) * page_size`` read now: every page a
        transaction begun before this call can reach lies below it, and data.mdb never
        shrinks while it is mapped (LMDB does not truncate it, nor does recovery). Reading
        past the file's end would fault (SIGBUS); anything below it is mapped file data.
        """
        with _registry_lock:
            span = self._shared.map_span
        if span is None or not span[0] <= address < span[0] + span[1]:
            span = self._find_mapping(address)
            if span is None:
                return None
            with _registry_lock:
                self._shared.map_span = span
        info = self.env.info()
        extent = (int(info["last_pgno"]) + 1) * self.page_size()
        start, length = span
        if not start <= address < start + min(length, extent):
            return None
        return start, min(length, extent)

    def _find_mapping(self, address: int) -> tuple[int, int] | None:
        try:
            text = self.io.read_file("/proc/self/maps").decode("ascii", "replace")
        except OSError:
            return None
        data_path = self.data_path
        for line in text.splitlines():
            parts = line.split(None, 5)
            if len(parts) < 6 or os.path.realpath(parts[5].strip()) != data_path:
                continue
            lo, _, hi = parts[0].partition("-")
            start, end = int(lo, 16), int(hi, 16)
            if start <= address < end:
                return start, end - start
        return None

    # -- durability -----------------------------------------------------------------

    def sync(self) -> None:
        """Makes every committed transaction durable (one fdatasync of data.mdb)."""
        try:
            self.io.lmdb_sync(self.env, self)
        except lmdb.Error as exc:
            named = lmdb_storage_error(exc, "syncing LMDB's data file", self.data_path, self.io)
            if named is not None:
                raise named from exc
            raise NgStoreError(f"fdatasync of {self.path}/data.mdb failed ({exc}); what it covered "
                               "is safe in the write-ahead log, but no more writes are taken: close "
                               "the store and open it again to recover") from exc

    def last_txnid(self) -> int:
        return int(self.env.info()["last_txnid"])

    def last_pgno(self) -> int:
        return int(self.env.info()["last_pgno"])

    def page_size(self) -> int:
        return int(self.env.stat()["psize"])

    def read_meta_page(self, txnid: int) -> bytes:
        """The meta page bytes of committed transaction ``txnid`` (must be current)."""
        ps = self.page_size()
        data_path = self.data_path
        fd = self.io.open(data_path, os.O_RDONLY)
        try:
            for slot in (txnid & 1, (txnid & 1) ^ 1):
                page = self.io.pread(fd, ps, slot * ps)
                if len(page) == ps and layout.meta_page_txnid(page) == txnid:
                    return page
        finally:
            self.io.close(fd)
        raise CorruptionError(f"no meta page carries transaction {txnid}", path=data_path)

    def pin(self) -> None:
        """Keeps the current committed state's pages from reuse until :meth:`unpin`."""
        self.unpin()
        try:
            self._pin = self.env.begin(write=False)
        except lmdb.Error as exc:
            raise translate(exc, "pinning the checkpoint") from exc

    def unpin(self) -> None:
        if self._pin is not None:
            if not self.inherited:
                self._pin.abort()
            self._pin = None

    # -- copies (backups) ---------------------------------------------------------------

    def copy_to_fd(self, fd: int, txn: lmdb.Transaction, *, compact: bool = True) -> None:
        """Writes a copy of the environment as of read transaction ``txn`` to descriptor
        ``fd`` (``mdb_env_copyfd2``; with ``compact`` free pages are left out and pages
        renumbered, and the copy's meta says transaction 1). The copy is consistent
        whatever the writer does meanwhile: it is one read transaction. ``fd`` may be a
        pipe. Nothing is synced: the caller makes the destination durable.

        Refused (CorruptionError) when the open found damaged pages in any tree: LMDB's copy
        walks every tree, and LMDB must not follow damaged pages (it may read past the file
        or abort); a copy of damage is no backup anyway."""
        if self._shared.damaged:
            first = next(iter(self._shared.damaged.values()))
            raise _damage_error(first, self.data_path,
                                "; a copy would read the damaged pages: back up from an undamaged store")
        try:
            self.env.copyfd(fd, compact=compact, txn=txn)
        except lmdb.Error as exc:
            raise translate(exc, f"copying the LMDB environment of {self.path}") from exc

    # -- information ------------------------------------------------------------------

    def info(self) -> dict[str, int]:
        info = self.env.info()
        stat = self.env.stat()
        return {
            "map_size_bytes": int(info["map_size"]),
            "map_used_bytes": int((info["last_pgno"] + 1) * stat["psize"]),
            "readers_used": int(info["num_readers"]),
            "readers_max": int(info["max_readers"]),
            "last_txnid": int(info["last_txnid"]),
            "page_size": int(stat["psize"]),
        }

    def close(self) -> None:
        """Releases this handle. The environment (its memory map) closes when the last
        handle is closed AND the last read transaction has ended, so a view that keeps
        its transaction alive never sees unmapped memory. Idempotent."""
        self.unpin()
        if not self._released:
            self._released = True  # before: an interrupt may leave the handle held, never freed twice
            self._unref()

    def _unref(self, txn: lmdb.Transaction | None = None) -> None:
        if self.inherited:  # the parent's: never closed here
            return
        with _registry_lock:
            shared = self._shared
            if txn is not None:  # an ended read transaction
                shared.open_txns.discard(txn)
            shared.refs -= 1
            if shared.refs == 0:
                if _registry.get(self.path) is shared:
                    del _registry[self.path]
                shared.drop_point_txn()
                shared.env.close()


class ReadLease:
    """A read transaction shared by several owners; it ends when the last one releases it.

    A snapshot and every zero-copy view of it hold the lease of the snapshot's transaction
    (``acquire``/``release``), as does a reflex table attached over LMDB values: LMDB
    memory is valid only while its transaction lives, so the transaction must outlive
    every object that points into it.
    """

    __slots__ = ("_lock", "_refs", "kv", "txn")

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        self.txn: lmdb.Transaction | None = kv.begin_read()
        self._refs = 1
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self._refs <= 0:
                raise NgStoreError("a released read lease cannot be acquired again")
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            txn, self.txn = self.txn, None
            # py-lmdb frees the reader slot only when the transaction object is freed: an
            # aborted transaction still referenced keeps its slot (and would exhaust
            # max_readers), so no reference may remain after this.
            if txn is not None:
                self.kv.end_read(txn)


class ReadTxn:
    """``with ReadTxn(kv) as txn:`` a read transaction for one short internal read (no
    view of its memory may escape the block). An LMDB error raised inside the block
    leaves it translated (:func:`translate`), like every other LMDB error."""

    __slots__ = ("_doing", "_kv", "_txn")

    def __init__(self, kv: KV, doing: str = "reading") -> None:
        self._kv = kv
        self._doing = doing
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> lmdb.Transaction:
        kv = self._kv
        try:
            with _registry_lock:  # begun and counted short at once (map growth reads both)
                txn = kv.begin_read()
                self._txn = txn  # no call between: an interrupt finds both done or neither
                kv._shared.short_readers += 1
        except BaseException:
            self.__exit__(None, None, None)  # an interrupt after the begin: end it
            raise
        return txn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            kv = self._kv
            with _registry_lock:
                try:
                    kv.end_read(txn)
                finally:
                    kv._shared.short_readers -= 1
                    _reader_ended.notify_all()
        if isinstance(exc, lmdb.Error):
            raise translate(exc, f"{self._doing} {self._kv.path}") from exc


def restore_checkpoint_meta(store_path: str, ckpt: Checkpoint, io: FileIO) -> None:
    """Rolls data.mdb back to the checkpointed transaction (before LMDB opens it).

    Writes the saved meta page into both meta slots (page 0 and page 1, each with its
    own page number) and fsyncs. Safe only because the checkpointed tree was pinned
    while the writer lived (see the module essay) and no process has the file open.
    """
    data_path = os.path.join(store_path, DATA_FILE)
    fd = io.open(data_path, os.O_RDWR)
    try:
        for slot in (0, 1):
            io.pwrite(fd, layout.meta_page_for_slot(ckpt.meta_page, slot), slot * ckpt.page_size)
        io.fsync(fd)
    finally:
        io.close(fd)


def _back_lock_file(path: str, max_readers: int, io: FileIO, mode: int) -> None:
    """Gives LMDB's lock file disk blocks before LMDB maps it (see the module essay): a
    new (or empty) one is made as long as LMDB would make it; an existing one keeps its
    length (a live reader of another process may have mapped it: its reader table must
    not change under it) and only its holes are filled. A file made here gets the store's
    lock mode (``fileio.lock_mode`` of ``mode``: every reader writes it)."""
    lock = os.path.join(path, LMDB_LOCK_FILE)
    try:
        fd = io.open(lock, os.O_RDWR | os.O_CREAT, lock_mode(mode))
        try:
            size = io.file_size(fd) or _LOCK_HEAD_BYTES + (max_readers - 1) * _LOCK_SLOT_BYTES
            io.allocate(fd, size)
        finally:
            io.close(fd)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:  # a file system without fallocate: LMDB as before
            return
        raise storage_error(exc, "giving LMDB's lock file its disk blocks", StoreState.NOT_OPENED,
                            path=lock) from exc


# -- errors ----------------------------------------------------------------------------

def lmdb_errno(exc: lmdb.Error) -> int | None:
    """The errno py-lmdb carries in ``code`` (LMDB's own codes are negative), or None."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) and code > 0 else None


def lmdb_storage_error(exc: lmdb.Error, doing: str, path: str, io: FileIO,
                       state: StoreState = StoreState.STOPPED) -> StorageError | None:
    """``exc`` as the named StorageError of its errno, or None when it carries none of
    the store's file errors. An EIO is a full disk when the file system holding ``path``
    has less than :data:`DISK_FULL_FREE_BYTES` free (the module essay says why and how
    this can be wrong)."""
    code = lmdb_errno(exc)
    if code not in _STORAGE_ERRNOS:
        return None
    what = getattr(exc, "what", None) or str(exc).partition(":")[0]
    detail = f"LMDB's {what}"
    errno_ = None
    if code == errno.EIO:
        free = io.free_bytes(os.path.dirname(path) or ".")
        if free is not None and free < DISK_FULL_FREE_BYTES:
            errno_ = errno.ENOSPC
            detail = (f"LMDB's {what} reported EIO, which is how it reports a short write; the file "
                      f"system has {free} bytes free, so this is taken for a full disk")
        else:
            detail = (f"LMDB's {what} reported EIO" + (f" with {free} bytes free on the file system"
                                                       if free is not None else ""))
    return storage_error(OSError(code, os.strerror(code)), doing, state, path=path, errno_=errno_,
                         detail=detail)


def translate(exc: lmdb.Error, doing: str) -> NgStoreError:
    """One place that turns LMDB's exceptions into ngstore's, with a hint. (Errors of
    LMDB's file I/O, where a file is known, go through :func:`lmdb_storage_error` first.)"""
    if isinstance(exc, lmdb.ReadersFullError):
        return NgStoreError(f"{doing}: all LMDB reader slots are in use ({exc}); close snapshots "
                            "or open the store with a larger max_readers=")
    if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
                        lmdb.BadValsizeError)):
        return CorruptionError(f"{doing}: LMDB reports {type(exc).__name__}: {exc}")
    if isinstance(exc, lmdb.VersionMismatchError):
        return NgStoreError(f"{doing}: the LMDB file was written by an incompatible LMDB version: {exc}")
    if isinstance(exc, lmdb.LockError):
        return StoreLockedError(f"{doing}: {exc}")
    return NgStoreError(f"{doing}: LMDB error {type(exc).__name__}: {exc}")
