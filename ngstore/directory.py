"""The store directory: which directory is a store, its marker, state and checkpoint
files, its locks, and the machine's boot id (``docs/format.md`` §1, §4).

A :class:`Directory` owns the descriptors of the locks it takes and releases them in
:meth:`Directory.release`. Every call goes through the store's ``io`` (``fileio``), so
the crash and fault tests see and break each of them.

Locks (``flock``, so they die with the process that holds them):

* ``writer.lock``, exclusive, for the writer's whole life; it holds the writer's pid.
* ``readers.lock``, shared by every read-only handle for its life, exclusive only while a
  writer rolls LMDB back after a power loss (no reader may have the file mapped then).

A failed write of one of these files (a full disk, a read-only file system, ...) raises
the named ``errors.StorageError`` of its errno, with the file's path; its ``state`` says
"stopped" until the operation that called (an open, a checkpoint, a close) restates it.

Permissions: a store has one file mode (:attr:`Directory.mode`, private 0600 unless the
application asks for another); its directories get :func:`fileio.dir_mode` of it and
LMDB's ``lock.mdb``, which every reader writes, :func:`fileio.lock_mode`. The mode is kept
as the store directory's own permission bits -- no file records it, as PostgreSQL derives
its files' mode from its data directory's -- so every later open creates files the same
way. A writer that asks for another mode changes every file of the store to it
(:meth:`Directory.apply_mode`).
"""
from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import NgStoreError, NotAStoreError, StoreLockedError, StoreState, storage_error
from .fileio import PRIVATE_MODE, FileIO, LockBusyError, dir_mode, lock_mode
from .layout import (
    CHECKPOINT_FILE,
    DATA_FILE,
    LMDB_LOCK_FILE,
    MARKER_FILE,
    READERS_LOCK,
    STATE_FILE,
    WAL_DIR,
    WRITER_LOCK,
    Checkpoint,
    WriterState,
    decode_checkpoint,
    decode_marker,
    decode_state,
    encode_checkpoint,
    encode_marker,
    encode_state,
    is_own_file,
)

#: The largest marker or state file a reader will read (they are a few dozen bytes).
_SMALL_FILE_LIMIT = 4096


@contextmanager
def _named(doing: str, path: str, state: StoreState = StoreState.STOPPED) -> Iterator[None]:
    """Raises an ``OSError`` of the block as the named StorageError of its errno."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, NgStoreError):
            raise
        raise storage_error(exc, doing, state, path=path) from exc


#: The directories holding a lock in this process, weakly: a child made by fork() lets go
#: of its descriptors of them (``Directory.forget_locks``).
_locking: weakref.WeakSet[Directory] = weakref.WeakSet()


def _inherited_in_child() -> None:
    for d in list(_locking):
        d.forget_locks()


os.register_at_fork(after_in_child=_inherited_in_child)


class Directory:
    """One store directory, as seen by one handle."""

    def __init__(self, path: str, io: FileIO, mode: int | None = None) -> None:
        self.path = os.path.realpath(path)
        self.io = io
        self._writer_fd: int | None = None
        self._readers_fd: int | None = None
        self._requested = mode
        #: The file mode of the store: what was asked for, else (settled by ``inspect``) the
        #: store's own, read from its directory's bits; private for a new store.
        self.mode = PRIVATE_MODE if mode is None else mode
        #: True once ``inspect`` found that a writer asked for another mode than the store's.
        self.mode_changes = False

    @property
    def lock_mode(self) -> int:
        return lock_mode(self.mode)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def wal_dir(self) -> str:
        return self.file(WAL_DIR)

    # -- what is here --------------------------------------------------------------

    def inspect(self, *, create: bool, readonly: bool) -> bool:
        """Checks that the path is a store (or may become one); returns True when a new
        store must be created here. Makes the directory when it does not exist and
        ``create`` is set."""
        p = self.path
        if self.io.exists(p) and not self.io.is_dir(p):
            raise NotAStoreError(f"{p} is a file, not a store directory")
        if not self.io.exists(p):
            if not create or readonly:
                raise NotAStoreError(f"{p} does not exist (pass create=True to make a new store)")
            with _named("creating the store directory", p, StoreState.NOT_CREATED):
                self.io.makedirs(p, dir_mode(self.mode))
            return True
        names = set(self.io.listdir(p))
        if MARKER_FILE in names:
            decode_marker(self._read_small(MARKER_FILE), p)
            stored = self.io.mode_of(p) & 0o666
            if self._requested is None or readonly:
                self.mode = stored
            else:
                self.mode_changes = stored != self._requested
            return False
        foreign = sorted(n for n in names if not is_own_file(n))
        if foreign:
            raise NotAStoreError(f"{p} is a directory that is not an ngstore store "
                                 f"(it holds {foreign[:5]})")
        if not create or readonly:
            raise NotAStoreError(f"{p} is not an ngstore store (no {MARKER_FILE} file)")
        return True  # empty, or an interrupted creation of ours: (re)create

    def _read_small(self, name: str) -> bytes:
        try:
            return self.io.read_file(self.file(name), limit=_SMALL_FILE_LIMIT)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ELOOP):
                raise NotAStoreError(f"{self.path}: cannot read {name}: {exc}") from exc
            # a permission, an I/O error: the file is there, the store is not opened
            raise storage_error(exc, f"reading the {name} file", StoreState.NOT_OPENED,
                                path=self.file(name)) from exc

    def remove_leftovers(self) -> None:
        """Before a (re)creation: removes what an interrupted earlier creation left (the
        LMDB files, the checkpoint and state files, the log's segments)."""
        with _named("removing what an interrupted creation left in", self.path):
            for name in (DATA_FILE, LMDB_LOCK_FILE, CHECKPOINT_FILE, STATE_FILE):
                p = self.file(name)
                if self.io.exists(p):
                    self.io.unlink(p)
            wal = self.wal_dir
            if self.io.is_dir(wal):
                for name in self.io.listdir(wal):
                    self.io.unlink(os.path.join(wal, name))

    def write_marker(self) -> None:
        """The last step of a creation: from now on the directory is a store."""
        with _named("writing the store marker", self.file(MARKER_FILE)):
            self.io.atomic_write(self.file(MARKER_FILE), encode_marker(), self.mode)

    def apply_mode(self) -> None:
        """Gives the store directory, ``wal/`` and every file in them the store's modes (at
        creation, once LMDB made its files, and when a writer asks for another mode). The
        writer holds its lock: no file is being created meanwhile."""
        io = self.io
        for d in (self.path, self.wal_dir):
            if not io.is_dir(d):
                continue
            for name in io.listdir(d):
                f = os.path.join(d, name)
                if io.is_file(f):
                    io.chmod(f, self.lock_mode if name == LMDB_LOCK_FILE and d == self.path else self.mode)
            io.chmod(d, dir_mode(self.mode))

    # -- the state file and the boot id ----------------------------------------------

    def boot_id(self) -> str | None:
        return self.io.boot_id()

    def read_state(self) -> WriterState:
        p = self.file(STATE_FILE)
        try:
            data: bytes | None = self.io.read_file(p, limit=_SMALL_FILE_LIMIT)
        except FileNotFoundError:
            data = None
        except OSError:
            data = b""  # unreadable: decode_state treats it as unclean, unknown boot
        return decode_state(data)

    def write_state(self, clean: bool) -> None:
        with _named("writing the state file", self.file(STATE_FILE)):
            self.io.atomic_write(self.file(STATE_FILE),
                                 encode_state(WriterState(clean=clean, boot_id=self.boot_id(), pid=os.getpid())),
                                 self.mode)

    def went_down_since(self, state: WriterState) -> bool:
        """True when ``state`` was written by a writer that did not close, and the machine
        may have gone down since (a power loss or OS crash, not only a process crash): on
        another boot, or when either boot id is unknown -- assume the worst. (Rolling LMDB
        back to the checkpoint is also correct after a mere process crash, only slower.)"""
        if state.clean:
            return False
        now = self.boot_id()
        return state.boot_id is None or now is None or state.boot_id != now

    def check_readable(self, state: WriterState) -> None:
        """Raises unless a read-only handle may read the store now.

        A writer that did not close, is gone, and may have lost its page cache (another
        boot, or a boot id that cannot be told) left LMDB possibly damaged: it needs
        recovery first. A live writer whose state names another boot is recovering now
        (readers must not take the rolled-back state for the current one). When boot ids
        cannot be read at all, a live writer is trusted: what a reader sees is then at
        worst the checkpoint recovery rolled back to, which is consistent."""
        if state.clean:
            return
        if self.live_writer_pid() is None:
            if self.went_down_since(state):
                raise NgStoreError(
                    f"{self.path} was being written when the system went down (or its boot cannot be "
                    "told); it needs recovery before it can be read: open it once for writing, or run "
                    "`ngstore recover PATH`")
            return
        now = self.boot_id()
        if state.boot_id is not None and now is not None and state.boot_id != now:
            raise StoreLockedError(f"{self.path}: a writer is recovering this store after a system crash; "
                                   "retry in a moment")

    # -- the checkpoint file -----------------------------------------------------------

    def read_checkpoint(self) -> Checkpoint | None:
        """The checkpoint file's content, None if there is none; CorruptionError if damaged."""
        p = self.file(CHECKPOINT_FILE)
        try:
            data = self.io.read_file(p, limit=1 << 17)
        except FileNotFoundError:
            return None
        return decode_checkpoint(data, p)

    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        with _named("writing the checkpoint file", self.file(CHECKPOINT_FILE)):
            self.io.atomic_write(self.file(CHECKPOINT_FILE), encode_checkpoint(ckpt), self.mode)

    # -- locks -------------------------------------------------------------------------

    def lock_writer(self) -> None:
        """Takes the writer lock (StoreLockedError if another handle has it), records this
        process's pid in it, and makes ``readers.lock`` if it is missing, so that a reader
        who may not create files in the directory (another user) can still take its
        shared lock."""
        try:
            fd = self.io.lock(self.file(WRITER_LOCK), exclusive=True, mode=self.mode)
        except LockBusyError:
            raise StoreLockedError(
                f"{self.path}: another writer (this process or another) has the store open; "
                "open it with readonly=True, or close the other handle") from None
        except OSError as exc:  # creating writer.lock: a read-only file system, a permission
            raise storage_error(exc, "taking the writer lock", StoreState.STOPPED,
                                path=self.file(WRITER_LOCK)) from exc
        self._writer_fd = fd
        _locking.add(self)
        with _named("writing the writer lock file", self.file(WRITER_LOCK)):
            self.io.truncate(fd, 0)
            self.io.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        readers = self.file(READERS_LOCK)
        if not self.io.exists(readers):
            with _named("creating the readers lock file", readers):
                self.io.close(self.io.open(readers, os.O_RDONLY | os.O_CREAT, self.mode))

    def lock_reader(self) -> None:
        """A read-only handle's shared lock on ``readers.lock`` (StoreLockedError while a
        writer rolls LMDB back). On a read-only file system no lock can be taken, and
        none is needed: nothing can write there either."""
        try:
            self._readers_fd = self.io.lock(self.file(READERS_LOCK), exclusive=False, mode=self.mode)
            _locking.add(self)
        except LockBusyError:
            raise StoreLockedError(f"{self.path}: a writer is recovering this store; retry in a moment") from None
        except (PermissionError, FileNotFoundError):  # may neither write nor create it
            self._readers_fd = None
        except OSError as exc:
            if exc.errno != getattr(os, "EROFS", 30):
                raise
            self._readers_fd = None

    @contextmanager
    def readers_excluded(self) -> Iterator[None]:
        """Holds ``readers.lock`` exclusively: no read-only handle is open meanwhile."""
        try:
            fd = self.io.lock(self.file(READERS_LOCK), exclusive=True, mode=self.mode)
        except LockBusyError:
            raise StoreLockedError(f"{self.path}: recovery after a system crash needs every "
                                   "read-only handle closed") from None
        try:
            yield
        finally:
            self.io.unlock(fd)

    def live_writer_pid(self) -> str | None:
        """The pid written in ``writer.lock`` when a live process holds it, else None."""
        p = self.file(WRITER_LOCK)
        if not self.io.probe_lock(p):
            return None
        try:
            return self.io.read_file(p, limit=64).decode("ascii", "replace").strip() or "?"
        except OSError:
            return "?"

    def forget_locks(self) -> None:
        """In a child made by fork(): the locks are the parent's (a ``flock`` belongs to the
        open file, which both processes share, so unlocking here would unlock the parent).
        Closes this process's descriptors of them without unlocking: the locks stay the
        parent's, and end with it even while the child lives on."""
        for attr in ("_writer_fd", "_readers_fd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                try:
                    self.io.close(fd)
                except OSError:  # pragma: no cover - closing a descriptor we own
                    pass

    def release(self) -> None:
        """Releases every lock this handle holds. Safe to run again after an interrupt
        stopped it (interrupts.py): a descriptor is unlocked (again, harmlessly) before it
        is forgotten, and forgotten before it is closed -- at worst one stays open, unlocked."""
        errors: list[BaseException] = []
        for attr in ("_writer_fd", "_readers_fd"):
            fd = getattr(self, attr)
            if fd is None:
                continue
            try:
                self.io.unlock(fd, close=False)
            except OSError as exc:  # pragma: no cover - unlocking a descriptor we own
                errors.append(exc)
            setattr(self, attr, None)
            try:
                self.io.close(fd)
            except OSError as exc:  # pragma: no cover - closing a descriptor we own
                errors.append(exc)
        if errors:
            raise NgStoreError(f"{self.path}: releasing the store's locks failed: {errors[0]!r}") from errors[0]
