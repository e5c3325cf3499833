"""Online backups of a live store, and restoring them (the format: ``docs/format.md`` §9).

A backup is LMDB's compacting copy of one read transaction T of the source -- the *base*,
consistent whatever the writer does meanwhile -- plus the log records after T's applied
position A that were in the log when the backup read it (*pieces* of segment files).
Restoring lays the base down as ``data.mdb`` and the pieces as ``wal/`` segments; the first
open replays the records after A, as after a crash. An incremental backup ships only the
log bytes written since the last one.

Why not a plain copy of the files: ``data.mdb`` changes under a copy (LMDB runs without
fsync and reuses pages), so a ``cp`` of a live store is torn; LMDB's own copy walks one
read transaction instead and leaves the free pages out (a store whose writer pins
checkpoints carries many). Why the log too: the base is what LMDB holds at T; the writer
acknowledges a commit once it is in the log, before its applier has moved it into LMDB,
so the records after A are what makes the backup as new as the moment it read the log.

The races with the writer, and what answers each (``docs/format.md`` §9.2):

* the writer **rotates** segments while the backup reads them: segments are read in
  order, each as a prefix of valid frames, and a segment is kept only if it continues
  the previous one exactly; the last one is cut at its last valid frame (a frame being
  written is not yet a record);
* a **checkpoint unlinks** segments: every segment is opened before T begins and read
  through its descriptor (an unlinked file stays readable through it); a segment that
  came and went between the two listings shows as a gap in the positions, and the
  backup starts over;
* a **large sync batch skips the log** (``direct_threshold``) and is checkpointed at once:
  the full backup reads the ``checkpoint`` file before T and after the log, and starts over
  if it changed; an incremental backup continues only while the writer's stats page
  shows the same writer with the same ``direct_commits_total``, on a page published after
  the log was read -- otherwise (or when the log no longer holds the next record, or
  its history changed) it takes a full backup and says why.

Destinations are any fsspec URL (``s3://``, ``gs://``, ``memory://`` ...: needs
``ngstore[backup]``); a plain path (or ``file://``) is written through the store's file
seam (``fileio.FileIO``) and made durable (fsync of every file and directory) before the
manifest that names it.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from . import wal, waltools
from .directory import Directory
from .errors import CorruptionError, FormatVersionError, InvalidArgumentError, NgStoreError
from .fileio import DEFAULT_IO, FileIO
from .layout import CHECKPOINT_FILE, DATA_FILE, WAL_DIR
from .obs.statspage import PublishedStats, read_stats_page

if TYPE_CHECKING:
    from .snapshot import Snapshot

MANIFEST = "BACKUP.json"
FORMAT = "ngstore-backup"
VERSION = 1
#: How many times a full backup starts over when the writer checkpointed under it.
ATTEMPTS = 8
_COPY_BLOCK = 4 << 20
#: A stats page is republished every second; wait at most this long for a fresh one.
_PAGE_WAIT_S = 5.0


class _Source(Protocol):
    """What a backup needs of the source store: its directory and a snapshot."""

    @property
    def path(self) -> str: ...

    def snapshot(self) -> Snapshot: ...


def _generation_dir(gen: int) -> str:
    return f"g{gen:06d}"


def _piece_name(segment: str, offset: int) -> str:
    return f"{WAL_DIR}/{segment}.{offset:016x}"


# ------------------------------------------------------------------------------ reports
@dataclass
class BackupReport:
    """What one ``backup`` did."""

    kind: str                      # "full" or "incremental"
    reason: str                    # why a full backup was taken when an incremental was asked
    generation: int
    applied_position: int          # the base's
    end_position: int              # the backup now restores to this record
    base_bytes: int                # written by this run (0 for an incremental)
    log_bytes: int                 # log bytes written by this run
    pieces: int                    # pieces written by this run
    attempts: int                  # full: times the log was read (1 unless the writer checkpointed)
    seconds: float
    log_stop: str | None = None    # why the log copy ended before the files' ends, if not the runway

    @property
    def bytes(self) -> int:
        return self.base_bytes + self.log_bytes


@dataclass
class RestoreReport:
    """What one ``restore`` did."""

    path: str
    generation: int
    applied_position: int          # the base's
    end_position: int              # the manifest's
    bytes: int
    replayed_records: int = 0
    tokens: int | None = None
    check_ok: bool | None = None
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ destinations
class _Target:
    """A backup destination: a local directory through ``FileIO`` or an fsspec URL."""

    def __init__(self, url: str, io: FileIO) -> None:
        self.url = url
        self.io = io
        local = url[len("file://"):] if url.startswith("file://") else url
        self.local: str | None = None if "://" in local else os.path.abspath(local)
        self.fs: Any = None
        self.root: str = ""
        if self.local is None:
            try:
                import fsspec
            except ImportError:
                raise ImportError("backups to a URL need fsspec: pip install 'ngstore[backup]'") from None
            self.fs, self.root = fsspec.core.url_to_fs(url)
        else:
            self.root = self.local

    def _p(self, rel: str) -> str:
        return self.root.rstrip("/") + "/" + rel if rel else self.root

    def read(self, rel: str) -> bytes | None:
        if self.fs is None:
            try:
                return self.io.read_file(self._p(rel))
            except FileNotFoundError:
                return None
        try:
            data: bytes = self.fs.cat_file(self._p(rel))
            return data
        except FileNotFoundError:
            return None

    def makedirs(self, rel: str) -> None:
        if self.fs is None:
            self.io.makedirs(self._p(rel))
        else:
            self.fs.makedirs(self._p(rel), exist_ok=True)

    def sink(self, rel: str) -> _Sink:
        return _Sink(self, rel)

    def write_manifest(self, data: bytes) -> None:
        """Replaces the manifest whole: after this returns it is durable (local) or
        stored (remote); a crash before leaves the old one."""
        if self.fs is None:
            self.io.atomic_write(self._p(MANIFEST), data)
            return
        tmp = self._p(MANIFEST + ".tmp")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self._p(MANIFEST))

    def names(self) -> list[str]:
        if self.fs is None:
            return sorted(self.io.listdir(self.root)) if self.io.is_dir(self.root) else []
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            return []

    def remove_dir(self, rel: str) -> None:
        if self.fs is None:
            self.io.remove_tree(self._p(rel))
            self.io.fsync_dir(self.root)
        else:
            self.fs.rm(self._p(rel), recursive=True)

    def open_read(self, rel: str) -> _Reader:
        return _Reader(self, rel)


class _Sink:
    """One file being written; ``close`` makes it durable (local) and returns its size
    and XXH3-64 digest."""

    def __init__(self, target: _Target, rel: str) -> None:
        self.t = target
        self.rel = rel
        self.h = xxhash.xxh3_64()
        self.n = 0
        self.fd: int | None = None
        self.f: Any = None
        path = target._p(rel)
        if target.fs is None:
            self.fd = target.io.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        else:
            self.f = target.fs.open(path, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.h.update(data)
        self.n += len(data)
        if self.fd is not None:
            self.t.io.write(self.fd, data)
        else:
            self.f.write(data)

    def close(self) -> tuple[int, str]:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                self.t.io.fsync(fd)
            finally:
                self.t.io.close(fd)
            self.t.io.fsync_dir(os.path.dirname(self.t._p(self.rel)))
        elif self.f is not None:
            self.f.close()
            self.f = None
        return self.n, self.h.hexdigest()

    def abort(self) -> None:
        if self.fd is not None:
            self.t.io.close(self.fd)
            self.fd = None
        elif self.f is not None:
            self.f.close()
            self.f = None


class _Reader:
    def __init__(self, target: _Target, rel: str) -> None:
        self.t = target
        self.off = 0
        self.fd: int | None = None
        self.f: Any = None
        path = target._p(rel)
        if target.fs is None:
            self.fd = target.io.open(path, os.O_RDONLY)
        else:
            self.f = target.fs.open(path, "rb")

    def read(self, n: int) -> bytes:
        if self.fd is not None:
            data = self.t.io.pread(self.fd, n, self.off)
        else:
            data = self.f.read(n)
        self.off += len(data)
        return data

    def close(self) -> None:
        if self.fd is not None:
            self.t.io.close(self.fd)
            self.fd = None
        elif self.f is not None:
            self.f.close()
            self.f = None


# ------------------------------------------------------------------------------ the source log
@dataclass
class _Segment:
    name: str
    first: int
    fd: int
    data: bytes = b""
    frames: waltools.SegmentFrames | None = None


class _HeldLog:
    """The source's log segments, each opened once and held open (an unlinked segment
    stays readable through its descriptor)."""

    def __init__(self, wal_dir: str, io: FileIO) -> None:
        self.dir = wal_dir
        self.io = io
        self.segs: dict[str, _Segment] = {}

    def hold(self) -> None:
        """Opens every segment listed now that is not held yet."""
        for first, path in waltools.list_segments(self.dir, io=self.io):
            name = os.path.basename(path)
            if name in self.segs:
                continue
            try:
                fd = self.io.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # dropped by a checkpoint since the listing
            self.segs[name] = _Segment(name, first, fd)

    def read(self) -> list[_Segment]:
        """Reads every held segment (oldest first) and finds its valid frames."""
        out = sorted(self.segs.values(), key=lambda s: s.first)
        for s in out:
            s.data = self.io.pread(s.fd, self.io.file_size(s.fd), 0)
            got = waltools.scan_segment(s.data, s.first)
            s.frames = got if isinstance(got, waltools.SegmentFrames) else None
        return out

    def close(self) -> None:
        for s in self.segs.values():
            self.io.close(s.fd)
        self.segs.clear()


@dataclass
class _LogCut:
    """The run of log records chosen for a backup: whole segments, the last one cut."""

    segments: list[tuple[_Segment, int, int]]   # (segment, start offset, end offset)
    end_position: int
    stop: str | None
    gap: str | None                              # why the records after ``after`` are incomplete


def _cut(segs: list[_Segment], after: int, resume: tuple[str, int] | None = None) -> _LogCut:
    """The segments holding the records after position ``after``: continuous from
    ``after + 1``, each a prefix of valid frames, ending at the first segment whose copy
    ended before its runway (or the first that does not continue the previous one).
    ``resume=(segment, offset)`` starts that segment's piece at ``offset`` (the end of
    what an earlier backup shipped of it)."""
    chosen: list[tuple[_Segment, int, int]] = []
    expected = after + 1
    stop: str | None = None
    started = False
    for i, s in enumerate(segs):
        fr = s.frames
        nxt_first = segs[i + 1].first if i + 1 < len(segs) else None
        if not started:
            if nxt_first is not None and nxt_first <= expected:
                continue  # every record of this one is ≤ after
            if s.first > expected:
                return _LogCut([], after, None, f"the log starts at position {s.first}, after "
                                                f"{expected}: the records between are gone")
            started = True
        elif s.first != expected:
            stop = f"segment {s.name} starts at position {s.first}, not {expected}"
            break
        if fr is None:
            stop = f"segment {s.name} has no valid header yet"
            break
        last = fr.frames[-1][1] if fr.frames else fr.first - 1
        if last < expected - 1:
            # this copy ends before the previous segment's records: not a continuation
            stop = f"segment {s.name} holds positions only to {last}"
            break
        start = 0
        if resume is not None and resume[0] == s.name:
            start = resume[1]
        if fr.end > start:
            chosen.append((s, start, fr.end))
        expected = last + 1
        if fr.stop is not None:
            stop = f"segment {s.name} at offset {fr.end}: {fr.stop}"
            break
    return _LogCut(chosen, max(after, expected - 1), stop, None)


# ------------------------------------------------------------------------------ backup
def _stats_page(src: str, io: FileIO) -> PublishedStats | None:
    try:
        return read_stats_page(src, io=io)
    except ValueError:
        return None


def _writer_of(page: PublishedStats | None) -> dict[str, int] | None:
    if page is None or page.closed or not page.alive:
        return None
    return {"pid": page.pid, "opened_unix_ns": page.opened_unix_ns,
            "direct_commits_total": int(page.values.get("direct_commits_total", -1))}


def _read_checkpoint(src: str, io: FileIO) -> bytes | None:
    try:
        return io.read_file(os.path.join(src, CHECKPOINT_FILE), limit=1 << 17)
    except FileNotFoundError:
        return None


def backup(source: str | os.PathLike[str] | _Source, dest: str | os.PathLike[str], *,
           incremental: bool = False, io: FileIO = DEFAULT_IO,
           on_step: Callable[[str], None] | None = None) -> BackupReport:
    """Backs ``source`` up into ``dest`` while its writer runs.

    ``source`` is a store directory (opened read-only for the duration) or an open
    ``Store`` (read-only or the writer). ``dest`` is a directory path or an fsspec URL.
    ``incremental`` ships only the log written since the backup already in ``dest``
    (a full backup is taken when that cannot continue: ``report.reason`` says why).
    ``on_step(name)`` is called as each step starts: ``"log"``, ``"base"``, ``"pieces"``,
    ``"manifest"``. Raises ``NgStoreError`` when the writer checkpointed under every one of
    the attempts."""
    t0 = time.perf_counter()
    target = _Target(os.fspath(dest), io)
    if isinstance(source, (str, os.PathLike)):
        import ngstore

        with ngstore.open(os.fspath(source), readonly=True, io=io) as store:
            return _backup(store, target, incremental, io, on_step, t0)
    return _backup(source, target, incremental, io, on_step, t0)


def _backup(store: _Source, target: _Target, incremental: bool, io: FileIO,
            on_step: Callable[[str], None] | None, t0: float) -> BackupReport:
    step = on_step or (lambda _name: None)
    src = os.path.realpath(store.path)
    prev = read_manifest(target) if target.names() else None
    if prev is None and target.names() and MANIFEST not in target.names():
        raise InvalidArgumentError(f"{target.url} is not empty and holds no {MANIFEST}: "
                                   "give an empty or new directory, or an earlier backup")
    reason = ""
    if incremental:
        if prev is None:
            reason = "no earlier backup at the destination"
        else:
            got = _incremental(store, src, target, prev, io, step, t0)
            if isinstance(got, BackupReport):
                return got
            reason = got
    report = _full(store, src, target, prev, io, step, t0)
    report.reason = reason
    return report


def _full(store: _Source, src: str, target: _Target, prev: dict[str, Any] | None, io: FileIO,
          step: Callable[[str], None], t0: float) -> BackupReport:
    why = ""
    for attempt in range(1, ATTEMPTS + 1):
        step("log")
        page = _stats_page(src, io)         # before anything: a direct commit after it shows later
        ck0 = _read_checkpoint(src, io)
        held = _HeldLog(os.path.join(src, WAL_DIR), io)
        try:
            held.hold()
            snap = store.snapshot()
            try:
                meta = snap.meta()
                txnid = snap.txn_id()
                held.hold()
                cut = _cut(held.read(), meta.applied_position)
                if cut.gap is not None:
                    why = cut.gap
                    continue
                if _read_checkpoint(src, io) != ck0:
                    why = "the writer checkpointed while the log was read"
                    continue
                gen = (int(prev["generation"]) if prev is not None else 0) + 1
                gdir = _generation_dir(gen)
                target.makedirs(gdir + "/" + WAL_DIR)
                step("base")
                base_bytes, base_digest = _copy_base(snap, target, f"{gdir}/{DATA_FILE}", io)
            finally:
                snap.close()
            step("pieces")
            pieces = _write_pieces(target, gdir, cut)
        finally:
            held.close()
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "store_id": meta.store_id.hex(),
            "chunk_slots": meta.chunk_slots, "generation": gen,
            "base": {"file": DATA_FILE, "bytes": base_bytes, "xxh3_64": base_digest,
                     "applied_position": meta.applied_position, "source_txnid": txnid},
            "pieces": pieces, "end_position": cut.end_position, "writer": _writer_of(page),
            "history": [{"kind": "full", "unix_ns": time.time_ns(), "end_position": cut.end_position,
                         "bytes": base_bytes + sum(p["bytes"] for p in pieces)}]}
        step("manifest")
        target.write_manifest(_encode(manifest))
        for name in target.names():  # older generations: only after the manifest moved on
            if name.startswith("g") and name != gdir and name[1:].isdigit():
                target.remove_dir(name)
        return BackupReport("full", "", gen, meta.applied_position, cut.end_position, base_bytes,
                            sum(p["bytes"] for p in pieces), len(pieces), attempt,
                            time.perf_counter() - t0, cut.stop)
    raise NgStoreError(f"backup of {src}: {why} in each of {ATTEMPTS} attempts; retry when the writer "
                       "is less busy, or raise its checkpoint_bytes")


def _copy_base(snap: Snapshot, target: _Target, rel: str, io: FileIO) -> tuple[int, str]:
    """Streams LMDB's compacting copy of ``snap`` through a pipe into ``rel``."""
    r, w = io.pipe()
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            snap.copy_lmdb(w)
        except BaseException as exc:  # reported by the reading side
            failed.append(exc)
        finally:
            io.close(w)

    sink = target.sink(rel)
    th = threading.Thread(target=produce, name="ngstore-backup-copy", daemon=True)
    th.start()
    try:
        while True:
            data = io.read(r, _COPY_BLOCK)
            if not data:
                break
            sink.write(data)
    except BaseException:
        sink.abort()
        raise
    finally:
        io.close(r)
        th.join()
    if failed:
        sink.abort()
        raise failed[0]
    return sink.close()


def _write_pieces(target: _Target, gdir: str, cut: _LogCut) -> list[dict[str, Any]]:
    out = []
    for seg, start, end in cut.segments:
        fr = seg.frames
        assert fr is not None
        inside = [f for f in fr.frames if start <= f[0] < end]
        rel = _piece_name(seg.name, start)
        sink = target.sink(f"{gdir}/{rel}")
        try:
            sink.write(memoryview(seg.data)[start:end])
        except BaseException:
            sink.abort()
            raise
        n, digest = sink.close()
        first = inside[0][1] if inside else (fr.frames[-1][1] + 1 if fr.frames else fr.first)
        last = inside[-1][1] if inside else first - 1
        last_off, last_crc = (inside[-1][0], inside[-1][2]) if inside else (-1, 0)
        out.append({"file": rel, "segment": seg.name, "offset": start, "bytes": n, "xxh3_64": digest,
                    "salt": f"{fr.salt:016x}", "first_position": first, "last_position": last,
                    "last_offset": last_off, "last_crc": last_crc})
    return out


def _incremental(store: _Source, src: str, target: _Target, prev: dict[str, Any], io: FileIO,
                 step: Callable[[str], None], t0: float) -> BackupReport | str:
    """Continues the backup in ``target``; returns why it cannot when it cannot."""
    end = int(prev["end_position"])
    with store.snapshot() as snap:
        meta = snap.meta()
    if meta.store_id.hex() != prev["store_id"]:
        return "the backup at the destination is of another store"
    writer = prev.get("writer")
    page = _stats_page(src, io)
    now = _writer_of(page)
    if writer is None or now is None:
        return "no live writer was seen by both backups, so no commit can be proven to be in the log"
    if now != writer:
        return ("the writer changed, or a large batch skipped the log (direct_commits_total "
                f"{writer['direct_commits_total']} -> {now['direct_commits_total']})")
    step("log")
    held = _HeldLog(os.path.join(src, WAL_DIR), io)
    try:
        held.hold()
        segs = held.read()
        t_read = time.time_ns()
        pieces = prev["pieces"]
        resume: tuple[str, int] | None = None
        if pieces:
            # continue the last piece's segment where it stopped, if the source still has
            # that very segment (same salt) with the same last record (same frame CRC): a
            # crash of the source can truncate a segment's unsynced tail and rewrite it
            last = pieces[-1]
            seg = next((s for s in segs if s.name == last["segment"]), None)
            if seg is not None:
                fr = seg.frames
                at, pos = int(last["last_offset"]), int(last["last_position"])
                if fr is None or f"{fr.salt:016x}" != last["salt"] or (
                        at >= 0 and not any(o == at and p == pos and c == int(last["last_crc"])
                                            for o, p, c in fr.frames)):
                    return f"the source's log no longer holds record {pos} as backed up (it was rewritten)"
                resume = (seg.name, int(last["offset"]) + int(last["bytes"]))
        cut = _cut(segs, end, resume)
        if cut.gap is not None:
            return cut.gap + " (a checkpoint dropped them)"
        shipped = {p["segment"] for p in pieces}
        if any(start == 0 and s.name in shipped for s, start, _end in cut.segments):
            return "the log to ship overlaps what the backup holds"
        fresh = _fresh_page(src, io, t_read)
        if _writer_of(fresh) != writer:
            return "the writer changed, or a large batch skipped the log, while the log was read"
        gen = int(prev["generation"])
        gdir = _generation_dir(gen)
        step("pieces")
        target.makedirs(gdir + "/" + WAL_DIR)
        new = _write_pieces(target, gdir, cut)
    finally:
        held.close()
    manifest = dict(prev)
    manifest["pieces"] = list(prev["pieces"]) + new
    manifest["end_position"] = cut.end_position
    nbytes = sum(p["bytes"] for p in new)
    manifest["history"] = [*prev.get("history", []), {"kind": "incremental", "unix_ns": time.time_ns(),
                                                      "end_position": cut.end_position, "bytes": nbytes}]
    step("manifest")
    target.write_manifest(_encode(manifest))
    return BackupReport("incremental", "", gen, int(prev["base"]["applied_position"]), cut.end_position, 0,
                        nbytes, len(new), 1, time.perf_counter() - t0, cut.stop)


def _fresh_page(src: str, io: FileIO, after_ns: int) -> PublishedStats | None:
    """The writer's stats page once it has been published after ``after_ns``."""
    deadline = time.monotonic() + _PAGE_WAIT_S
    while True:
        page = _stats_page(src, io)
        if page is None or page.published_unix_ns > after_ns or not page.alive:
            return page
        if time.monotonic() > deadline:
            return None
        time.sleep(min(0.05, max(0.001, page.interval_s / 10)))


def _encode(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


# ------------------------------------------------------------------------------ reading a backup
def read_manifest(target: str | _Target, io: FileIO = DEFAULT_IO) -> dict[str, Any] | None:
    """The manifest of the backup at ``target`` (a path or URL); None if there is none."""
    t = target if isinstance(target, _Target) else _Target(target, io)
    data = t.read(MANIFEST)
    if data is None:
        return None
    try:
        m = json.loads(data)
    except ValueError as exc:
        raise CorruptionError(f"{t.url}/{MANIFEST} is not JSON: {exc}") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CorruptionError(f"{t.url}/{MANIFEST} is not an ngstore backup manifest")
    if not isinstance(m.get("version"), int) or m["version"] > VERSION:
        raise FormatVersionError(f"{t.url}: backup format version {m.get('version')}; this ngstore reads "
                                 f"version {VERSION} -- upgrade ngstore")
    return m


def _check_manifest(m: dict[str, Any], url: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rule 2 and 3 of format.md §9.1; returns the pieces grouped by segment, in order."""
    def bad(why: str) -> CorruptionError:
        return CorruptionError(f"{url}/{MANIFEST}: {why}")

    try:
        applied, end = int(m["base"]["applied_position"]), int(m["end_position"])
        groups: list[tuple[str, list[dict[str, Any]]]] = []
        expected: int | None = None
        for p in m["pieces"]:
            if not groups or groups[-1][0] != p["segment"]:
                if any(g == p["segment"] for g, _ in groups):
                    raise bad(f"pieces of segment {p['segment']} are not together")
                if int(p["offset"]) != 0:
                    raise bad(f"the first piece of segment {p['segment']} starts at {p['offset']}, not 0")
                groups.append((p["segment"], []))
            else:
                prior = groups[-1][1][-1]
                if int(p["offset"]) != int(prior["offset"]) + int(prior["bytes"]):
                    raise bad(f"a gap in segment {p['segment']} at offset {p['offset']}")
            first, last = int(p["first_position"]), int(p["last_position"])
            if expected is None:
                if first > applied + 1:
                    raise bad(f"the log starts at position {first}, after the base's {applied}")
            elif first != expected:
                raise bad(f"positions jump from {expected - 1} to {first} at {p['file']}")
            expected = last + 1
            groups[-1][1].append(p)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"missing or malformed field ({exc!r})") from exc
    have = (expected - 1) if expected is not None else applied
    if end < applied or (end > applied and have < end):
        raise bad(f"end position {end} is not covered (base {applied}, log to {have})")
    return groups


def restore(backup_url: str | os.PathLike[str], path: str | os.PathLike[str], *, io: FileIO = DEFAULT_IO,
            replay: bool = True, on_step: Callable[[str], None] | None = None) -> RestoreReport:
    """Makes a store in ``path`` (a new or empty directory) from the backup at
    ``backup_url``. Every file is checked against its digest before the store's marker
    is written. With ``replay`` the store is then opened once for writing -- which
    replays the log after the base, checkpoints and closes -- and checked; without it
    the first ``ngstore.open`` does the replay."""
    step = on_step or (lambda _name: None)
    t = _Target(os.fspath(backup_url), io)
    m = read_manifest(t)
    if m is None:
        raise NgStoreError(f"{t.url} holds no {MANIFEST}: it is not an ngstore backup")
    groups = _check_manifest(m, t.url)
    dest = os.path.abspath(os.fspath(path))
    if io.exists(dest) and (not io.is_dir(dest) or io.listdir(dest)):
        raise InvalidArgumentError(f"{dest} exists and is not an empty directory; restore into a new one")
    gdir = _generation_dir(int(m["generation"]))
    io.makedirs(os.path.join(dest, WAL_DIR))
    report = RestoreReport(dest, int(m["generation"]), int(m["base"]["applied_position"]),
                           int(m["end_position"]), 0)
    step("base")
    report.bytes += _fetch(t, f"{gdir}/{m['base']['file']}", [m["base"]], os.path.join(dest, DATA_FILE), io)
    step("log")
    for segment, pieces in groups:
        if not _is_segment_name(segment):
            raise CorruptionError(f"{t.url}/{MANIFEST}: {segment!r} is not a log segment name")
        report.bytes += _fetch(t, None, pieces, os.path.join(dest, WAL_DIR, segment), io, gdir)
    io.fsync_dir(os.path.join(dest, WAL_DIR))
    io.fsync_dir(dest)
    Directory(dest, io).write_marker()
    if not replay:
        return report
    step("replay")
    import ngstore

    with ngstore.open(dest, create=False, io=io) as s:
        report.replayed_records = s.recovery.replayed_records
        applied = int(s.stats()["applied_position"])
        chk = s.check()
        report.tokens = s.count()
    report.check_ok = chk.ok and applied == report.end_position
    if applied != report.end_position:
        report.problems.append(f"the store replayed to position {applied}, the backup ends at "
                               f"{report.end_position}")
    report.problems.extend(str(p) for p in getattr(chk, "problems", []))
    return report


def _is_segment_name(name: str) -> bool:
    try:
        return wal.segment_name(int(name[:16], 16)) == name
    except ValueError:
        return False


def _fetch(t: _Target, rel: str | None, parts: Sequence[dict[str, Any]], out_path: str, io: FileIO,
           gdir: str = "") -> int:
    """Concatenates ``parts`` (files of the backup) into ``out_path``, checking each one's
    size and digest, then fsyncs it."""
    fd = io.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    total = 0
    try:
        for p in parts:
            name = rel if rel is not None else f"{gdir}/{p['file']}"
            h = xxhash.xxh3_64()
            n = 0
            try:
                r = t.open_read(name)
            except FileNotFoundError:
                raise CorruptionError(f"{t.url}: {name} is missing") from None
            try:
                while True:
                    data = r.read(_COPY_BLOCK)
                    if not data:
                        break
                    h.update(data)
                    io.write(fd, data)
                    n += len(data)
            finally:
                r.close()
            if n != int(p["bytes"]) or h.hexdigest() != p["xxh3_64"]:
                raise CorruptionError(f"{t.url}: {name} is damaged ({n} bytes, digest {h.hexdigest()}; "
                                      f"the manifest says {p['bytes']} bytes, digest {p['xxh3_64']})")
            total += n
        io.fsync(fd)
    finally:
        io.close(fd)
    return total


__all__ = ["MANIFEST", "BackupReport", "RestoreReport", "backup", "read_manifest", "restore"]
