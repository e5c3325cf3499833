"""Test doubles of the file seam (``ngstore.fileio.FileIO``) and a power-loss model.

* :class:`RecordingIO` records every state-changing call (with path, offset and bytes) so a
  test can reconstruct the directory states a power loss could leave
  (:func:`simulate_power_loss`). ``mark(label)`` inserts a marker (e.g. "batch 3 was
  acknowledged") into the same stream.
* :class:`FaultyIO` raises ``OSError(EIO)`` (or ``error=`` another errno: ``ENOSPC`` is a
  full disk) on the Nth call of a kind ("write", "fdatasync",
  "fsync", "fsync_dir", "rename", "unlink", "truncate", "allocate", "open", "mkdir"; and LMDB's
  "lmdb_commit" and "lmdb_sync", which raise what py-lmdb raises), optionally only for
  paths matching a glob, and counts calls so a test can loop N = 1, 2, … until an operation
  completes without reaching N (SQLite's fail-the-Nth-I/O test).
* :class:`NoSyncIO` skips fsyncs: for recovering thousands of simulated states quickly.

Both wrap an ``inner`` FileIO, so they compose: ``FaultyIO(..., inner=RecordingIO(root))``.
Nothing here knows about the log; the store's crash tests use the same helpers.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import random
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ngstore.fileio import DEFAULT_IO, Buffer, FileIO, KVHandle


class _Delegating(FileIO):
    """A FileIO whose primitives call ``inner``; composites stay FileIO's, built on ``self``."""

    def __init__(self, inner: FileIO = DEFAULT_IO) -> None:
        self.inner = inner

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return self.inner.open(path, flags, mode)

    def close(self, fd: int) -> None:
        self.inner.close(fd)

    def file_size(self, fd: int) -> int:
        return self.inner.file_size(fd)

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        self.inner.pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> None:
        self.inner.pwritev(fd, buffers, offset)

    def write(self, fd: int, data: Buffer) -> None:
        self.inner.write(fd, data)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return self.inner.pread(fd, n, offset)

    def truncate(self, fd: int, size: int) -> None:
        self.inner.truncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        self.inner.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self.inner.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self.inner.fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.inner.mkdir(path, mode)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.inner.is_dir(path)

    def is_file(self, path: str) -> bool:
        return self.inner.is_file(path)

    def size_of(self, path: str) -> int | None:
        return self.inner.size_of(path)

    def boot_id(self) -> str | None:
        return self.inner.boot_id()

    def allocate(self, fd: int, size: int) -> None:
        self.inner.allocate(fd, size)

    def free_bytes(self, path: str) -> int | None:
        return self.inner.free_bytes(path)

    def lmdb_commit(self, txn: Any, kv: KVHandle) -> None:
        self.inner.lmdb_commit(txn, kv)

    def lmdb_sync(self, env: Any, kv: KVHandle) -> None:
        self.inner.lmdb_sync(env, kv)


class AnotherBoot(_Delegating):
    """A FileIO on which the machine has booted again since the store was last written
    (``boot_id`` returns ``boot``): what a writer sees after a power loss or OS crash."""

    def __init__(self, boot: str | None = "a-boot-after-the-power-loss", inner: FileIO = DEFAULT_IO) -> None:
        super().__init__(inner)
        self.boot = boot

    def boot_id(self) -> str | None:
        return self.boot


class NoSyncIO(_Delegating):
    """fsync/fdatasync/fsync_dir do nothing (for tests whose crash model is simulated)."""

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass

    def maps_writes(self) -> bool:  # writes pass through unchanged
        return self.inner.maps_writes()


# ------------------------------------------------------------------------- recording --
@dataclass(frozen=True)
class Op:
    """One recorded call. ``kind``: create, write, truncate, fdatasync, fsync, fsync_dir,
    rename, unlink, mkdir or mark. ``path`` is absolute (``dst`` for rename). ``thread``
    names the thread that made the call."""
    kind: str
    path: str = ""
    offset: int = 0
    data: bytes = b""
    size: int = 0
    dst: str = ""
    label: object = None
    thread: str = field(default_factory=lambda: threading.current_thread().name)


class RecordingIO(_Delegating):
    """Records every successful state-changing call under ``root`` (all calls if None).

    The files under ``root`` when it is created are the durable baseline
    :func:`simulate_power_loss` starts from."""

    def __init__(self, root: str | None = None, inner: FileIO = DEFAULT_IO) -> None:
        super().__init__(inner)
        self.root = os.path.abspath(root) if root else None
        self.ops: list[Op] = []
        self._paths: dict[int, str] = {}
        self.baseline: dict[str, bytes] = {}
        if self.root and os.path.isdir(self.root):
            for dp, _dn, fns in os.walk(self.root):
                for fn in fns:
                    p = os.path.join(dp, fn)
                    with open(p, "rb") as f:
                        self.baseline[p] = f.read()

    def _mine(self, path: str) -> bool:
        return self.root is None or path == self.root or path.startswith(self.root + os.sep)

    def _rec(self, op: Op) -> None:
        if self._mine(op.path):
            self.ops.append(op)

    def mark(self, label: object) -> None:
        self.ops.append(Op("mark", label=label))

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        path = os.path.abspath(path)
        existed = os.path.exists(path)
        fd = self.inner.open(path, flags, mode)
        self._paths[fd] = path
        if flags & os.O_CREAT and not existed:
            self._rec(Op("create", path))
        elif flags & os.O_TRUNC and existed:
            self._rec(Op("truncate", path, size=0))
        return fd

    def close(self, fd: int) -> None:
        # Forgotten before the close: once closed, another thread's open may get the same
        # number, and forgetting it after would drop that file's path.
        self._paths.pop(fd, None)
        self.inner.close(fd)

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        self.inner.pwrite(fd, data, offset)
        self._rec(Op("write", self._paths[fd], offset, bytes(data)))

    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> None:
        self.inner.pwritev(fd, buffers, offset)
        self._rec(Op("write", self._paths[fd], offset, b"".join(bytes(b) for b in buffers)))

    def write(self, fd: int, data: Buffer) -> None:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.inner.write(fd, data)
        self._rec(Op("write", self._paths[fd], offset, bytes(data)))

    def truncate(self, fd: int, size: int) -> None:
        self.inner.truncate(fd, size)
        self._rec(Op("truncate", self._paths[fd], size=size))

    def fdatasync(self, fd: int) -> None:
        self.inner.fdatasync(fd)
        self._rec(Op("fdatasync", self._paths[fd]))

    def fsync(self, fd: int) -> None:
        self.inner.fsync(fd)
        self._rec(Op("fsync", self._paths[fd]))

    def fsync_dir(self, path: str) -> None:
        self.inner.fsync_dir(path)
        self._rec(Op("fsync_dir", os.path.abspath(path)))

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)
        self._rec(Op("rename", os.path.abspath(src), dst=os.path.abspath(dst)))

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)
        self._rec(Op("unlink", os.path.abspath(path)))

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.inner.mkdir(path, mode)
        self._rec(Op("mkdir", os.path.abspath(path)))


# -------------------------------------------------------------------- fault injection --
class FaultyIO(_Delegating):
    """Raises ``OSError(EIO)`` on the Nth call of each kind in ``fail_on``.

    ``fail_on={"fdatasync": 3}`` fails the third fdatasync (counting only paths whose
    basename or full path matches ``path_glob`` when given). ``"write"`` counts pwrite,
    pwritev and write. With ``partial_write=True`` a failing write first writes half of its
    bytes (a short write that then errors). ``counts`` holds the calls seen per kind;
    ``fired`` the (kind, path) of each injected failure."""

    KINDS = ("open", "write", "truncate", "allocate", "fdatasync", "fsync", "fsync_dir", "rename", "unlink",
             "mkdir", "lmdb_commit", "lmdb_sync")

    def __init__(self, fail_on: dict[str, int] | None = None, *, path_glob: str | None = None,
                 partial_write: bool = False, error: int = errno.EIO, inner: FileIO = DEFAULT_IO) -> None:
        super().__init__(inner)
        unknown = set(fail_on or {}) - set(self.KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {self.KINDS}")
        self.fail_on = dict(fail_on or {})
        self.path_glob = path_glob
        self.partial_write = partial_write
        self.error = error
        self.counts: Counter[str] = Counter()
        self.fired: list[tuple[str, str]] = []
        self._paths: dict[int, str] = {}

    def _check(self, kind: str, path: str) -> bool:
        """Counts the call; True if it must fail."""
        if self.path_glob is not None and not (fnmatch.fnmatch(os.path.basename(path), self.path_glob)
                                               or fnmatch.fnmatch(path, self.path_glob)):
            return False
        self.counts[kind] += 1
        return self.fail_on.get(kind) == self.counts[kind]

    def _fail(self, kind: str, path: str) -> None:
        self.fired.append((kind, path))
        name = errno.errorcode.get(self.error, str(self.error))
        raise OSError(self.error, f"injected {name} on {kind} #{self.counts[kind]}: {os.strerror(self.error)}", path)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self._check("open", path):
            self._fail("open", path)
        fd = self.inner.open(path, flags, mode)
        self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        # Forgotten before the close: once closed, another thread's open may get the same
        # number, and forgetting it after would drop that file's path.
        self._paths.pop(fd, None)
        self.inner.close(fd)

    def _write(self, fd: int, data: bytes, offset: int | None) -> None:
        path = self._paths.get(fd, "")
        if self._check("write", path):
            if self.partial_write and len(data) > 1:
                half = data[: len(data) // 2]
                if offset is None:
                    self.inner.write(fd, half)
                else:
                    self.inner.pwrite(fd, half, offset)
            self._fail("write", path)
        if offset is None:
            self.inner.write(fd, data)
        else:
            self.inner.pwrite(fd, data, offset)

    def pwrite(self, fd: int, data: Buffer, offset: int) -> None:
        self._write(fd, bytes(data), offset)

    def pwritev(self, fd: int, buffers: Sequence[Buffer], offset: int) -> None:
        path = self._paths.get(fd, "")
        if self.partial_write or self.fail_on.get("write") is not None:
            self._write(fd, b"".join(bytes(b) for b in buffers), offset)
        else:
            self._check("write", path)
            self.inner.pwritev(fd, buffers, offset)

    def write(self, fd: int, data: Buffer) -> None:
        self._write(fd, bytes(data), None)

    def _fd_op(self, kind: str, fd: int, call) -> None:  # type: ignore[no-untyped-def]
        path = self._paths.get(fd, "")
        if self._check(kind, path):
            self._fail(kind, path)
        call()

    def truncate(self, fd: int, size: int) -> None:
        self._fd_op("truncate", fd, lambda: self.inner.truncate(fd, size))

    def allocate(self, fd: int, size: int) -> None:
        self._fd_op("allocate", fd, lambda: self.inner.allocate(fd, size))

    def fdatasync(self, fd: int) -> None:
        self._fd_op("fdatasync", fd, lambda: self.inner.fdatasync(fd))

    def fsync(self, fd: int) -> None:
        self._fd_op("fsync", fd, lambda: self.inner.fsync(fd))

    def fsync_dir(self, path: str) -> None:
        if self._check("fsync_dir", path):
            self._fail("fsync_dir", path)
        self.inner.fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        if self._check("rename", src):
            self._fail("rename", src)
        self.inner.rename(src, dst)

    # LMDB's durability points fail as py-lmdb fails them: with an ``lmdb.Error`` carrying
    # the C function in ``what`` and the errno in ``code`` (a failed mdb_txn_commit leaves
    # nothing committed).
    def _lmdb_error(self, what: str) -> Exception:
        import lmdb

        exc = lmdb.Error(f"{what}: {os.strerror(self.error)} (injected)")
        exc.what = what  # type: ignore[attr-defined]
        exc.code = self.error  # type: ignore[attr-defined]
        return exc

    def lmdb_commit(self, txn: Any, kv: KVHandle) -> None:
        path = os.path.join(kv.path, "data.mdb")
        if self._check("lmdb_commit", path):
            txn.abort()
            self.fired.append(("lmdb_commit", path))
            raise self._lmdb_error("mdb_txn_commit")
        self.inner.lmdb_commit(txn, kv)

    def lmdb_sync(self, env: Any, kv: KVHandle) -> None:
        path = os.path.join(kv.path, "data.mdb")
        if self._check("lmdb_sync", path):
            self.fired.append(("lmdb_sync", path))
            raise self._lmdb_error("mdb_env_sync")
        self.inner.lmdb_sync(env, kv)

    def unlink(self, path: str) -> None:
        if self._check("unlink", path):
            self._fail("unlink", path)
        self.inner.unlink(path)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        if self._check("mkdir", path):
            self._fail("mkdir", path)
        self.inner.mkdir(path, mode)


# ------------------------------------------------------------------ power-loss model --
@dataclass
class CrashState:
    """A directory state a power loss could leave: absolute path → content."""
    files: dict[str, bytes]
    cut: int                    # number of recorded operations issued before the loss
    marks: list[object]         # labels of the marks recorded before the cut
    description: str

    def materialize(self, old_root: str, new_root: str) -> None:
        """Writes the state under ``new_root`` (paths re-rooted from ``old_root``)."""
        os.makedirs(new_root, exist_ok=True)
        for p, data in self.files.items():
            q = os.path.join(new_root, os.path.relpath(p, old_root))
            os.makedirs(os.path.dirname(q), exist_ok=True)
            with open(q, "wb") as f:
                f.write(data)


@dataclass
class _Inode:
    durable: bytearray
    pending: list[Op] = field(default_factory=list)


def _apply(content: bytearray, op: Op, keep: int | None = None, fill: bytes | None = None) -> None:
    """Applies a write/truncate; ``keep`` bytes of a write land, the rest is ``fill`` (same
    length) or absent."""
    if op.kind == "truncate":
        if op.size <= len(content):
            del content[op.size:]
        else:
            content.extend(bytes(op.size - len(content)))
        return
    data = op.data if keep is None else op.data[:keep] + (fill or b"")
    end = op.offset + len(data)
    if op.offset > len(content):
        content.extend(bytes(op.offset - len(content)))
    content[op.offset:end] = data


def simulate_power_loss(rec: RecordingIO, *, torn_points: Sequence[int] = (1, 8, 39, 41, -1),
                        seed: int = 0, cuts: Sequence[int] | None = None,
                        dedupe: bool = True) -> Iterator[CrashState]:
    """Yields distinct directory states a power loss after each prefix of ``rec.ops`` can
    leave, deduplicated by content (and marks) unless ``dedupe=False``.

    Model (POSIX + what ext4 really does, pessimistically): data written to a file since
    its last fsync/fdatasync may be lost, kept, kept partly (torn at each of
    ``torn_points``; -1 = one byte short), with the lost part of a torn or skipped write
    reading as nothing (file shorter), zeros or garbage, and writes may land out of order
    (all but one of them). Name operations (create, rename, unlink) since the directory's
    last fsync may be undone. Marks record what had been acknowledged at each cut.
    """
    rng = random.Random(seed)
    ops = rec.ops
    seen: set[bytes] = set()
    order = {id(o): i for i, o in enumerate(ops)}
    cut_list = range(len(ops) + 1) if cuts is None else cuts
    for k in cut_list:
        inodes: dict[int, _Inode] = {}
        names: dict[str, int] = {}
        durable_names: dict[str, int] = {}
        dir_pending: list[Op] = []
        pending_inode: dict[Op, int] = {}
        for i, (p, data) in enumerate(sorted(rec.baseline.items())):
            inodes[i] = _Inode(bytearray(data))
            names[p] = durable_names[p] = i
        marks: list[object] = []
        for op in ops[:k]:
            if op.kind == "mark":
                marks.append(op.label)
            elif op.kind == "create":
                ino = len(inodes)
                inodes[ino] = _Inode(bytearray())
                names[op.path] = ino
                dir_pending.append(op)
                pending_inode[op] = ino
            elif op.kind == "rename":
                pending_inode[op] = names[op.path]
                names[op.dst] = names.pop(op.path)
                dir_pending.append(op)
            elif op.kind == "unlink":
                names.pop(op.path, None)
                dir_pending.append(op)
            elif op.kind in ("write", "truncate"):
                inodes[names[op.path]].pending.append(op)
            elif op.kind in ("fsync", "fdatasync"):
                node = inodes[names[op.path]]
                for w in node.pending:
                    _apply(node.durable, w)
                node.pending.clear()
            elif op.kind == "fsync_dir":
                rest = []
                for d in dir_pending:
                    if os.path.dirname(d.path) == op.path:
                        _apply_name(durable_names, d, pending_inode)
                    else:
                        rest.append(d)
                dir_pending = rest
        name_variants = [("names-durable", durable_names)]
        if dir_pending:
            all_names = dict(durable_names)
            for d in dir_pending:
                _apply_name(all_names, d, pending_inode)
            name_variants.append(("names-all", all_names))
        pend = [(ino, w) for ino, node in inodes.items() for w in node.pending]
        pend.sort(key=lambda t: order[id(t[1])])
        n = len(pend)

        def build(nm: dict[str, int], plan: dict[int, tuple]) -> dict[str, bytes]:
            out = {}
            for path, ino in nm.items():
                c = bytearray(inodes[ino].durable)
                for j, (i2, w) in enumerate(pend):
                    if i2 != ino:
                        continue
                    act = plan.get(j, ("keep",))
                    if act[0] == "keep":
                        _apply(c, w)
                    elif act[0] == "torn":
                        _apply(c, w, keep=act[1], fill=act[2])
                    elif act[0] == "fill":  # the write's range got other bytes
                        _apply(c, w, keep=0, fill=act[1])
                out[path] = bytes(c)
            return out

        variants: list[tuple[str, dict[str, int], dict[int, tuple]]] = []
        for nname, nm in name_variants:
            variants.append((f"{nname}, no pending writes", nm, dict.fromkeys(range(n), ("drop",))))
            variants.append((f"{nname}, all pending writes", nm, {}))
        nm = name_variants[-1][1]
        for j in range(n):
            later = dict.fromkeys(range(j + 1, n), ("drop",))
            variants.append((f"first {j} pending writes", nm, {**later, j: ("drop",)}))
            w = pend[j][1]
            if w.kind == "write" and len(w.data) > 1:
                for t in torn_points:
                    t = len(w.data) - 1 if t == -1 else t
                    if not 0 < t < len(w.data):
                        continue
                    rest = len(w.data) - t
                    for fname, fill in (("short", None), ("zeros", bytes(rest)),
                                        ("garbage", rng.randbytes(rest))):
                        variants.append((f"write {j} torn at {t} ({fname})", nm,
                                         {**later, j: ("torn", t, fill)}))
                if n > 1:  # reordered: every other pending write landed, this one did not
                    variants.append((f"all but write {j}", nm, {j: ("drop",)}))
                    variants.append((f"all but write {j} (zeros)", nm, {j: ("fill", bytes(len(w.data)))}))
                    variants.append((f"all but write {j} (garbage)", nm,
                                     {j: ("fill", rng.randbytes(len(w.data)))}))
        for desc, nm, plan in variants:
            files = build(nm, plan)
            h = hashlib.sha256()
            for p in sorted(files):
                h.update(p.encode() + b"\0" + hashlib.sha256(files[p]).digest())
            h.update(repr(marks).encode())
            key = h.digest()
            if dedupe and key in seen:
                continue
            seen.add(key)
            yield CrashState(files, k, list(marks), f"cut {k}: {desc}")


def _apply_name(names: dict[str, int], op: Op, pending_inode: dict[Op, int]) -> None:
    if op.kind == "create":
        names[op.path] = pending_inode[op]
    elif op.kind == "rename":
        ino = names.pop(op.path, pending_inode.get(op))
        if ino is not None:
            names[op.dst] = ino
    elif op.kind == "unlink":
        names.pop(op.path, None)


def mapped_paths(directory: str) -> set[str]:
    """The files of ``directory`` this process maps now (/proc/self/maps): whether the log
    stores its records through a mapping."""
    d = os.path.realpath(directory)
    with open("/proc/self/maps") as f:
        fields = [line.split(maxsplit=5) for line in f]
    return {x[5].strip() for x in fields if len(x) == 6 and x[5].startswith(d)}
