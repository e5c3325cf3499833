"""Opening a store for writing: creation, power-loss rollback, log recovery and replay
(and, in :func:`open_reader`, for reading).

:func:`open_writer` is the one way a :class:`commit.Writer` comes to exist. In order:

1. the directory is checked (``directory.Directory.inspect``) and the writer lock taken;
2. a **new store** is created: leftovers of an interrupted creation removed, the state
   file marked unclean, LMDB's ``meta`` initialised, the log opened, a first checkpoint
   written -- and only then the ``NGSTORE`` marker, so a crash before it leaves a
   directory that is created again;
3. an **existing store**: if the state file says the last writer did not close and the
   machine has booted since (``docs/format.md`` §4.2), LMDB's newest meta page may name
   pages that never reached the disk, so both meta pages are overwritten with the
   checkpoint's (``kv.restore_checkpoint_meta``; readers are excluded meanwhile) --
   LMDB is then exactly at the checkpoint, whose pages the pin kept intact. After a mere
   process crash the page cache survived and LMDB's newest state is trusted;
4. the log is opened and repaired (``wal.Log.open``: torn tail vs corruption, per the
   recovery mode), the current LMDB state protected by a checkpoint (or re-pinned), and
   every record after LMDB's applied position replayed through the same apply as live
   commits, in groups, each group's pages written back while the next is applied
   (:class:`_Writeback`); a checkpoint follows a replay;
5. after a rollback the state file keeps the old boot id until the replay and its
   checkpoint are done, so readers never see the rolled-back state as current, and a
   crash during recovery simply rolls back to the same checkpoint again.

An open that fails on the store's files (a full disk, a read-only file system, ...)
raises the named ``errors.StorageError`` of the errno, restated "not created" (a new
store: the marker is written last, so the next open creates it again) or "not opened"
(an existing store: nothing acknowledged was dropped -- the log is dropped only after a
checkpoint covers it -- and the next open recovers it as after a crash).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import reflex_store, wal
from .applier import Applier, ApplierOptions
from .apply import Entry
from .commit import Writer, WriterOptions
from .directory import Directory
from .errors import CorruptionError, NgStoreError, StorageError, StoreState, storage_error
from .guardian import Guardian
from .kv import KV, ReadTxn, restore_checkpoint_meta
from .layout import ALL_LAYERS, DB_META, FORMAT_VERSION, M_FORMAT, Meta, encode_u64, initial_meta, seal_meta
from .ops import decode_ops
from .options import Options
from .overlay import Overlay

if TYPE_CHECKING:
    from .obs import Observability
    from .reflex import ReflexTable

#: Replay applies at most this many records, or this many payload bytes, per transaction.
REPLAY_GROUP_RECORDS = 4096
REPLAY_GROUP_BYTES = 8 << 20


@dataclass
class RecoveryInfo:
    """What opening the store had to do; ``store.recovery`` after open."""

    power_loss_rollback: bool = False
    rolled_back_to_txn: int | None = None
    replayed_records: int = 0
    replayed_from: int = 0
    replayed_to: int = 0
    log_report: wal.RecoveryReport | None = None
    #: why the checkpoint file could not be used (a new one was written), if it was damaged
    checkpoint_problem: str | None = None

    def announce(self, obs: Observability, path: str) -> None:
        """Tells the black box and the log what the open had to do (nothing after a clean
        close, nor for a read-only handle)."""
        report = self.log_report
        if self.checkpoint_problem is not None:
            obs.event("checkpoint_damaged", problem=self.checkpoint_problem)
            obs.logger.warning("%s: the checkpoint file was damaged (%s); a new checkpoint replaced it",
                               path, self.checkpoint_problem)
        if self.power_loss_rollback or self.replayed_records or (report is not None and not report.clean):
            torn = report.torn_tail if report is not None else None
            obs.event("recovery", rollback_to_txn=self.rolled_back_to_txn, replayed=self.replayed_records,
                      replayed_to=self.replayed_to, torn_tail_bytes=torn.bytes_dropped if torn else 0,
                      skipped=len(report.skipped) if report is not None else 0)
            obs.logger.warning("recovered %s: %d record(s) replayed%s", path, self.replayed_records,
                               "; LMDB rolled back to the checkpoint" if self.power_loss_rollback else "")


def open_reader(directory: Directory, opts: Options) -> tuple[KV, Meta, ReflexTable | None]:
    """Opens the store in ``directory`` read-only: its KV, its meta and its reflex table
    (attached, None when it has none). On failure what it opened is closed again and the
    reader lock released."""
    directory.inspect(create=False, readonly=True)
    directory.lock_reader()
    try:
        directory.check_readable(directory.read_state())
        kv = KV(directory.path, readonly=True, map_size=opts.map_size, max_readers=opts.max_readers, io=opts.io,
                walk=directory.live_writer_pid() is None, mode=directory.mode, verify=opts.verify)
        try:
            with ReadTxn(kv) as txn:
                meta = kv.read_meta(txn)
            return kv, meta, reflex_store.attach(kv)
        except BaseException:
            kv.close()
            raise
    except BaseException:
        directory.release()
        raise


def open_writer(directory: Directory, opts: Options, guardian: Guardian,
                obs: Observability | None) -> tuple[KV, Writer, RecoveryInfo]:
    """Opens (creating, recovering) the store in ``directory`` for writing. On failure
    everything it opened is closed again and the writer lock released."""
    info = RecoveryInfo()
    kv: KV | None = None
    log: wal.Log | None = None
    applier: Applier | None = None
    new: bool | None = None  # None until the directory was inspected
    try:
        new = directory.inspect(create=opts.create, readonly=False)
        directory.lock_writer()
        if new:
            directory.remove_leftovers()
            directory.write_state(clean=False)
            kv = _open_kv(directory, opts)
            kv.create_missing_dbs()
            directory.apply_mode()  # LMDB's files exist now; the umask may have narrowed them
            meta_db = kv.dbs[DB_META]
            entries = initial_meta(opts.chunk_slots, opts.event_capacity, opts.reflex_capacity,
                                   ALL_LAYERS if opts.spatial_index else 0)
            kv.write(lambda txn: [txn.put(k, v, db=meta_db) for k, v in entries])
            log, applier = _applier(directory, kv, opts, obs, info, "tolerate-tail")
            applier.checkpoint_now()
            directory.write_marker()
        else:
            if directory.mode_changes:
                directory.apply_mode()
            went_down = directory.went_down_since(directory.read_state())
            if went_down:
                _rollback_to_checkpoint(directory, opts, info)
            else:
                directory.write_state(clean=False)
            kv = _open_kv(directory, opts)
            log, applier = _applier(directory, kv, opts, obs, info, opts.recovery)
            try:
                applier.protect_checkpoint(directory)
            except CorruptionError as exc:
                # Only a rollback (above) needs the old checkpoint; here LMDB's newest state is
                # trusted, and a new checkpoint of it replaces the damaged file.
                info.checkpoint_problem = str(exc)
                applier.checkpoint_now()
            # Databases a newer ngstore added are created only now: on top of a checkpoint,
            # so their commit cannot reuse a page the checkpoint still needs.
            kv.create_missing_dbs()
            _upgrade_format(directory, kv)
            replay(applier, log, info, progress=opts.progress)
            if info.replayed_records:
                applier.checkpoint_now(drop_log=False)
            if went_down:
                directory.write_state(clean=False)
        writer = Writer(directory, kv, log, applier, applier.overlay, guardian,
                        WriterOptions(opts.flush_interval, opts.direct_threshold,
                                      reflex_eviction=opts.reflex_eviction, remember_keys=opts.remember_keys), obs)
        writer.note_replayed(info.replayed_records)
        applier.start()
        kv.set_writer_barrier(writer.barrier)
        return kv, writer, info
    except BaseException as exc:
        if applier is not None:
            applier.close(final=False)
        if log is not None:
            log.close()
        if kv is not None:
            kv.close()
        directory.release()
        # before the directory was inspected, the error says which it was (Directory.inspect)
        state = StoreState.NOT_OPENED if not new else StoreState.NOT_CREATED
        if isinstance(exc, StorageError):
            raise exc.restate(state if new is not None else exc.state) from exc.__cause__
        if isinstance(exc, OSError) and not isinstance(exc, NgStoreError):
            raise storage_error(exc, "opening the store: working on", state,
                                path=exc.filename or directory.path) from exc
        raise


def _upgrade_format(directory: Directory, kv: KV) -> None:
    """Marks an older store as of this format (docs/format.md §1): the marker first -- the
    gate older versions check, so none of them opens it once this writer may log what they
    cannot read -- then meta. One way: no older ngstore opens the store again."""
    with ReadTxn(kv) as txn:
        version = kv.read_meta(txn).format_version
    if version >= FORMAT_VERSION:
        return
    directory.write_marker()
    meta_db = kv.dbs[DB_META]
    kv.write(lambda txn: txn.put(M_FORMAT, seal_meta(M_FORMAT, encode_u64(FORMAT_VERSION)), db=meta_db))


def _open_kv(directory: Directory, opts: Options) -> KV:
    return KV(directory.path, readonly=False, map_size=opts.map_size, max_readers=opts.max_readers,
              io=opts.io, mode=directory.mode, verify=opts.verify)


def _applier(directory: Directory, kv: KV, opts: Options, obs: Observability | None, info: RecoveryInfo,
             recovery: str) -> tuple[wal.Log, Applier]:
    with ReadTxn(kv) as txn:
        meta = kv.read_meta(txn)
    reflexes = reflex_store.attach(kv)
    log, report = wal.Log.open(directory.wal_dir, io=opts.io, segment_bytes=opts.segment_bytes,
                               recovery=recovery, start_after=meta.applied_position, mode=directory.mode)
    info.log_report = report
    try:
        overlay = Overlay(opts.overlay_bytes, opts.apply_lag_bound)
        return log, Applier(directory, kv, log, meta, reflexes, overlay,
                            ApplierOptions(opts.apply_interval, max(1, opts.overlay_bytes // 4),
                                           opts.checkpoint_bytes, opts.checkpoint_interval), obs)
    except BaseException:
        log.close()
        raise


def _rollback_to_checkpoint(directory: Directory, opts: Options, info: RecoveryInfo) -> None:
    """After a power loss / OS crash: LMDB back to the checkpoint (see the module docstring)."""
    with directory.readers_excluded():
        ckpt = directory.read_checkpoint()
        if ckpt is None:
            raise CorruptionError("the store was being written when the system went down, and its "
                                  "checkpoint file is missing: LMDB cannot be rolled back safely",
                                  path=directory.path)
        restore_checkpoint_meta(directory.path, ckpt, opts.io)
        info.power_loss_rollback = True
        info.rolled_back_to_txn = ckpt.txnid


class _Writeback:
    """Writes back to disk what a replay has applied to data.mdb so far, in a thread of its
    own while the replay goes on, so that the checkpoint after it finds little left to
    write: the apply is CPU work and the write-back disk work, and one after the other
    they took ~385 ms of a 103 MB replay here, overlapped ~335.

    Only an early fdatasync of data.mdb: nothing it makes durable is relied on before the
    checkpoint, and a power loss meanwhile rolls LMDB back to the checkpoint as before
    (the rollback writes the checkpoint's meta page over both). A failure is raised by the
    next :meth:`kick` or by :meth:`finish`, as the open's StorageError."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def kick(self) -> None:
        """Starts a write-back of everything applied so far, unless one is running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._check()
        if self._fd is None:
            self._fd = self._kv.io.open(self._kv.data_path, os.O_RDONLY)
        self._thread = threading.Thread(target=self._run, args=(self._fd,), name="ngstore-replay-writeback",
                                        daemon=True)
        self._thread.start()

    def _run(self, fd: int) -> None:
        try:
            self._kv.io.fdatasync(fd)
        except OSError as exc:
            self._error = exc

    def finish(self) -> None:
        """Waits for the write-back running, closes the file; raises what failed."""
        try:
            if self._thread is not None:
                self._thread.join()
            self._check()
        finally:
            fd, self._fd = self._fd, None
            if fd is not None:
                self._kv.io.close(fd)

    def _check(self) -> None:
        if self._error is not None:
            raise storage_error(self._error, "writing back the replayed data.mdb", StoreState.NOT_OPENED,
                                path=self._kv.data_path)


def replay(applier: Applier, log: wal.Log, info: RecoveryInfo, *, progress: bool = False) -> None:
    """Applies every log record after LMDB's applied position, in order, in groups (in the
    calling thread: the applier's thread is not running yet), writing back each group's
    pages while the next is applied (:class:`_Writeback`)."""
    writeback = _Writeback(applier.kv)
    try:
        _replay(applier, log, info, writeback, progress)
    except BaseException:
        try:
            writeback.finish()
        except NgStoreError:
            pass  # the replay's own error says more
        raise
    writeback.finish()


def _replay(applier: Applier, log: wal.Log, info: RecoveryInfo, writeback: _Writeback, progress: bool) -> None:
    start = applier.applied_position
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="replaying log", unit="rec", total=max(0, log.last_position - start))
    advance: Callable[[int], Any] = bar.update if bar is not None else (lambda _n: None)
    group: list[Entry] = []
    size = 0
    n = 0
    for rec in log.iter_records(start, copy=False):  # the apply copies the records it writes
        advance(1)
        if rec.position <= start:
            continue
        group.append((rec.position, decode_ops(rec.payload, f"log record {rec.position}")))
        size += len(rec.payload)
        n += 1
        if size >= REPLAY_GROUP_BYTES or len(group) >= REPLAY_GROUP_RECORDS:
            applier.apply_now(group)
            writeback.kick()
            group, size = [], 0
    if group:
        applier.apply_now(group)
    if bar is not None:
        bar.close()
    info.replayed_records = n
    info.replayed_from = start
    info.replayed_to = applier.applied_position
