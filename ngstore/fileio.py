"""The file seam: every system call ngstore makes on the files of a store.

Only this module opens, writes, syncs, renames, truncates, unlinks, locks or lists store
files, makes directories, or reads the boot id; and it is where LMDB's two durability
points (a write transaction's commit, the environment's sync) are called, so that LMDB's
own I/O can be observed and failed at the same seam (LMDB's reads and page writes stay
inside LMDB, behind ``kv``). Every layer that touches files takes an ``io: FileIO``
argument (default :data:`DEFAULT_IO`), so a test can substitute a subclass that records
each call (to reconstruct what a power loss can leave) or fails the Nth one with ``EIO``
(see ``tests/walfaults.py``) -- without patching any other module.

Failures are not translated here: the layer that made the call knows what it was doing
and what state the failure leaves, and turns the ``OSError`` into a named
``errors.StorageError`` (``errors.storage_error``).

The methods are deliberately thin and fd-based: they do what ``os`` does, plus loops for
short reads/writes. OS errors pass through unwrapped, with errno and (where ``os`` gives
one) the path.

Crash consequences, in syscall terms:

* ``pwrite``/``write`` put bytes in the page cache: they survive a process crash, not a
  power loss, until ``fdatasync``/``fsync`` of that file returns.
* A new file name, an unlink or a rename is durable only after ``fsync_dir`` of its
  directory returns (invariant 5).
* ``atomic_write`` is the one composite: after it returns the file holds exactly ``data``
  durably; after a crash at any point it holds either the old content or the new one.

Permissions
-----------
Every call that creates a file or a directory takes its mode, and the result has exactly
that mode whatever the process umask (``fchmod``/``chmod`` after creation, as PostgreSQL
sets its umask from its data directory's mode): a store's privacy must not depend on the
umask of whichever process created a file, and a group that was granted access must not
lose it to a umask of 022. The defaults are private -- files 0600, directories 0700 -- so a
caller that forgets to pass the store's mode makes a file only its owner can read.
:func:`dir_mode` and :func:`lock_mode` derive the other two modes of a store from its
file mode.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

Buffer = bytes | bytearray | memoryview

#: The file mode of a store unless its application asks for another: the owner's only.
PRIVATE_MODE = 0o600


def dir_mode(file_mode: int) -> int:
    """A directory's mode for files of ``file_mode``: search (x) wherever read is granted
    (0600 -> 0700), and set-group-id when the group is granted anything (0640 -> 02750), so
    that a file created later -- a log segment, the state file at close -- belongs to the
    directory's group, not to the writer's primary group (git's shared repositories do the
    same)."""
    return file_mode | ((file_mode & 0o444) >> 2) | (stat.S_ISGID if file_mode & 0o060 else 0)


def lock_mode(file_mode: int) -> int:
    """The mode of a lock file every reader writes (LMDB's ``lock.mdb`` holds the reader
    table): write wherever read is granted (0600 -> 0600, 0640 -> 0660)."""
    return file_mode | ((file_mode & 0o444) >> 1)


#: Where Linux publishes an id that changes at every boot.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class LockBusyError(OSError):
    """A non-blocking ``flock`` found the lock held by another open file description."""


class KVHandle(Protocol):
    """What :meth:`FileIO.lmdb_commit` is told about the environment it commits to."""

    @property
    def path(self) -> str: ...

    @property
    def dbs(self) -> Mapping[bytes, Any]: ...

#: Linux accepts at most this many buffers in one pwritev.
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-Linux
    _IOV_MAX = 1024


class FileIO:
    """Thin, substitutable wrapper of the file system calls the store makes.

    Subclasses override single methods to observe or break them; composite methods
    (``atomic_write``, ``write``, ``pwritev``) are written in terms of the primitive
    ones only where a test needs to see the primitive steps.
    """

    # -- descriptors ---------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = PRIVATE_MODE) -> int:
        """``os.open`` with ``O_CLOEXEC`` added. A file it creates (``O_CREAT``) gets exactly
        ``mode``, whatever the umask; an existing file keeps its mode."""
        flags |= getattr(os, "O_CLOEXEC", 0)
        if not flags & os.O_CREAT:
            return os.open(path, flags)
        if flags & os.O_EXCL:
            fd = os.open(path, flags, mode)
            self._exact_mode(fd, mode)
            return fd
        while True:  # O_EXCL first: only a file made here is given the mode
            try:
                fd = os.open(path, flags | os.O_EXCL, mode)
            except FileExistsError:
                try:
                    return os.open(path, flags & ~os.O_CREAT)
                except FileNotFoundError:
                    continue  # removed in between: make it after all
            self._exact_mode(fd, mode)
            return fd

    def _exact_mode(self, fd: int, mode: int) -> None:
        try:
            self.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise

    def fchmod(self, fd: int, mode: int) -> None:
        """Sets the permission bits of an open file."""
        os.fchmod(fd, mode)

    def chmod(self, path: str, mode: int) -> None:
        """Sets the permission bits of ``path`` (a file or a directory)."""
        os.chmod(path, mode)

    def mode_of(self, path: str) -> int:
        """The permission bits of ``path``."""
        return os.stat(path).st_mode & 0o7777

    def close(self, fd: int) -> None:
        os.close(fd)

    def file_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    # -- data ----------------------------------------------------------------------
    def maps_writes(self) -> bool:
        """Whether the log may store its small records through a shared mapping of the
        active segment instead of calling :meth:`pwrite` (``wal.Log.append_one``): yes
        unless a subclass overrides ``pwrite`` or ``pwritev`` -- it observes or breaks
        writes, and then every write goes through it. A subclass that only passes writes
        on may say yes again."""
        cls = type(self)
        return cls.pwrite is FileIO.pwrite and cls.pwritev is FileIO.pwritev

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (loops over short writes)."""
        done = os.pwrite(fd, data, offset)
        if done == (data.nbytes if isinstance(data, memoryview) else len(data)):
            return
        view = memoryview(data).cast("B")
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)

    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> None:
        """Write the concatenation of ``buffers`` at ``offset`` with as few syscalls as
        possible (one, unless there are more than IOV_MAX buffers or a write is short).

        Avoids joining a large payload to its frame header (a copy of the whole batch)."""
        if len(buffers) == 1:
            self.pwrite(fd, buffers[0], offset)
            return
        views = [memoryview(b).cast("B") for b in buffers]
        views = [v for v in views if len(v)]
        while views:
            chunk = views[:_IOV_MAX]
            n = os.pwritev(fd, chunk, offset)
            offset += n
            while n and views:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0

    def write(self, fd: int, data: Buffer) -> None:
        """Write all of ``data`` at the descriptor's current offset."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """Read up to ``n`` bytes at ``offset``; fewer only at end of file."""
        first = os.pread(fd, n, offset)
        if len(first) == n or not first:
            return first
        parts = [first]
        got = len(first)
        while got < n:
            more = os.pread(fd, n - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def allocate(self, fd: int, size: int) -> None:
        """Makes the first ``size`` bytes of the file backed by disk blocks
        (``posix_fallocate``), extending it with zeros if it is shorter; existing bytes are
        not changed. For files the store maps and writes through memory (LMDB's lock file,
        the black-box ring, the stats page): a store into a hole of a shared mapping that
        the file system cannot back -- a full disk -- kills the process with SIGBUS, where
        this call fails with ``ENOSPC``."""
        os.posix_fallocate(fd, 0, size)

    # -- durability ----------------------------------------------------------------
    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        """fsync a directory, making creations, unlinks and renames in it durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- names ---------------------------------------------------------------------
    def rename(self, src: str, dst: str) -> None:
        """``os.replace``: atomic, replaces ``dst``. Durable after ``fsync_dir``."""
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str, mode: int = dir_mode(PRIVATE_MODE)) -> None:
        """Makes directory ``path`` with exactly ``mode``."""
        os.mkdir(path, mode)
        self.chmod(path, mode)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def size_of(self, path: str) -> int | None:
        """The size of the file at ``path``, or None when there is none."""
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    def identity(self, path: str) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the file at ``path``: which file it is, whatever its
        name; None when there is none."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def mtime(self, path: str) -> float | None:
        """The modification time of ``path`` (Unix seconds), or None when there is none."""
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def free_bytes(self, path: str) -> int | None:
        """Bytes this process may still write on the file system that holds ``path``
        (``statvfs``: the blocks available to unprivileged users, or all free blocks for
        root), or None when it cannot be told. Quotas are not counted."""
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
        return int(blocks) * int(st.f_frsize)

    def disk_usage(self, path: str) -> int:
        """Bytes allocated on disk by the files under directory ``path``."""
        total = 0
        for dp, _dn, fns in os.walk(path):
            for fn in fns:
                try:
                    total += os.stat(os.path.join(dp, fn)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def remove_tree(self, path: str) -> None:
        """Removes directory ``path`` and everything under it (scratch directories only)."""
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    def makedirs(self, path: str, mode: int = dir_mode(PRIVATE_MODE)) -> None:
        """Makes ``path`` and any missing parents (each with ``mode``), each durably: after
        every directory created, its parent is fsynced (a new directory entry is durable
        only then)."""
        path = os.path.abspath(path)
        missing = []
        p = path
        while not os.path.isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        for d in reversed(missing):
            try:
                self.mkdir(d, mode)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise
            self.fsync_dir(os.path.dirname(d))

    # -- locks ---------------------------------------------------------------------
    def lock(self, path: str, exclusive: bool, mode: int = PRIVATE_MODE) -> int:
        """Opens (creating, with ``mode``) ``path`` and takes an ``flock`` on it without
        waiting; returns the descriptor, which holds the lock until :meth:`unlock`. Raises
        :class:`LockBusyError` when another holder has it. A shared lock needs only read
        permission (``flock`` ignores the open mode): a user who may read the store but not
        write its lock file opens it read-only."""
        try:
            fd = self.open(path, os.O_RDWR | os.O_CREAT, mode)
        except PermissionError:
            if exclusive:
                raise
            fd = self.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            self.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockBusyError(exc.errno, f"{path} is locked", path) from None
            raise
        return fd

    def unlock(self, fd: int, *, close: bool = True) -> None:
        """Releases a lock taken by :meth:`lock` and closes its descriptor (unless
        ``close`` is False: unlocking again is then harmless)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            if close:
                self.close(fd)

    def probe_lock(self, path: str) -> bool:
        """True when someone holds an exclusive or shared ``flock`` on ``path`` that
        excludes ours (the file is not created when absent)."""
        try:
            fd = self.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            raise
        finally:
            self.close(fd)  # closing the only descriptor releases a lock we took
        return False

    # -- the machine -----------------------------------------------------------------
    def boot_id(self) -> str | None:
        """An id that changes at every boot of the machine, or None when it cannot be
        read (callers must then assume the worst: that the machine went down)."""
        try:
            with open(BOOT_ID_PATH, "rb") as f:
                text = f.read(128).decode("ascii", "replace").strip()
        except OSError:
            return None
        return text or None

    # -- LMDB's durability points -------------------------------------------------------
    def lmdb_commit(self, txn: Any, kv: KVHandle) -> None:
        """Commits an LMDB write transaction of ``kv`` (no fsync: see ``kv``)."""
        txn.commit()

    def lmdb_sync(self, env: Any, kv: KVHandle) -> None:
        """Makes every committed transaction of LMDB environment ``env`` durable
        (``mdb_env_sync(force)``: one fdatasync of data.mdb)."""
        env.sync(True)

    # -- composites ----------------------------------------------------------------
    def atomic_write(self, path: str, data: Buffer, mode: int = PRIVATE_MODE) -> None:
        """Replace ``path`` by a file holding exactly ``data`` with ``mode``, durably
        (invariant 5).

        tmp file in the same directory → write → fsync → rename over ``path`` → fsync the
        directory. A crash leaves the old file or the new one (and possibly a stale
        ``.tmp`` sibling, which the next call overwrites -- and gives ``mode``)."""
        tmp = path + ".tmp"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            self.fchmod(fd, mode)
            self.pwrite(fd, data, 0)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(tmp, path)
        self.fsync_dir(os.path.dirname(os.path.abspath(path)))

    def read_file(self, path: str, limit: int | None = None) -> bytes:
        """The whole content of ``path`` (reads until end of file, so files whose size is
        not known in advance -- ``/proc`` -- work too). With ``limit``, reading stops
        after that many bytes (a small file must not make the reader allocate much)."""
        fd = self.open(path, os.O_RDONLY)
        try:
            size = self.file_size(fd)
            want = size if limit is None else min(size, limit)
            data = self.pread(fd, want, 0) if want else b""
            if len(data) < want or (limit is not None and len(data) >= limit):
                return data
            parts = [data]
            got = len(data)
            while limit is None or got < limit:
                more = self.pread(fd, 1 << 16 if limit is None else min(1 << 16, limit - got), got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        finally:
            self.close(fd)

    def map_readonly(self, path: str) -> mmap.mmap | None:
        """The whole of ``path`` mapped read-only and shared (None for an empty file). Reading
        past the file's end through it faults (SIGBUS): callers bound every read by
        ``len()`` of the map, and the file must not shrink while it is mapped."""
        fd = self.open(path, os.O_RDONLY)
        try:
            size = self.file_size(fd)
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) if size else None
        finally:
            self.close(fd)

    # -- observability files (black-box ring, stats page) ------------------------------
    # Added for ngstore.obs: the ring and the stats page are memory-mapped files the writer
    # keeps open, and the stats page carries the writer's liveness lock.
    def map_file(self, fd: int, length: int) -> mmap.mmap:
        """Map the first ``length`` bytes of ``fd`` shared and writable. Stores into the
        mapping are in the page cache at once (a process crash keeps them); nothing here
        makes them durable against a power loss."""
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def flock(self, fd: int, operation: int) -> None:
        """``fcntl.flock(fd, operation)``; ``BlockingIOError`` when ``LOCK_NB`` finds it taken."""
        fcntl.flock(fd, operation)
    # -- end of the observability block -------------------------------------------------

    # -- backups (ngstore.backup) ---------------------------------------------------------
    # Added for ngstore.backup: LMDB writes its copy into a pipe that the backup reads, and
    # log segments are read through descriptors held open (an unlinked segment stays
    # readable through them).
    def pipe(self, size: int = 1 << 20) -> tuple[int, int]:
        """``(read end, write end)`` of a new pipe, its buffer raised to ``size`` bytes
        where the system allows (fewer wake-ups per byte moved)."""
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
        except OSError:
            pass
        return r, w

    def read(self, fd: int, n: int) -> bytes:
        """Up to ``n`` bytes from the descriptor's current offset (b"" at end of file)."""
        return os.read(fd, n)
    # -- end of the backup block ------------------------------------------------------------


#: The real file system.
DEFAULT_IO = FileIO()
