"""The checkpoint: making LMDB durable, then dropping the log it covers (``docs/format.md`` §4.1).

LMDB runs without fsync (see ``kv``); the log is what makes a commit durable. A
checkpoint moves durability from the log to LMDB, in this order:

1. fdatasync the log (invariant 1: a record is durable before LMDB can be made durable
   with its effects);
2. ``mdb_env_sync(force)``: LMDB's current transaction C becomes durable;
3. write the ``checkpoint`` file atomically: C's id, its meta page and the applied log
   position (after a power loss, recovery writes that meta page back: see ``recovery``);
4. pin C: a read transaction stays open on C until the next checkpoint, so LMDB never
   reuses a page reachable from C and C's tree stays intact whatever later unsynced
   commits do;
5. unlink the log segments whose records are all at or below the applied position.

Readers are never blocked: only the writer's commits wait, for one fdatasync of
data.mdb plus a small atomic file write.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .directory import Directory
from .kv import KV
from .layout import Checkpoint
from .wal import Log

if TYPE_CHECKING:
    from .obs import Observability


class Checkpointer:
    """Writes checkpoints of one writer's KV and log, and says when the next one is due."""

    def __init__(self, directory: Directory, kv: KV, log: Log, obs: Observability | None) -> None:
        self._directory = directory
        self._kv = kv
        self._log = log
        self._obs = obs
        self.count = 0
        self.last_unix = time.time()
        self._pgno_at_last = kv.last_pgno()
        self._page_size = kv.page_size()
        self._appended_at_last = log.appended_bytes

    def write(self, applied_position: int, *, pin: bool, final: bool = False, drop_log: bool = True) -> None:
        """Checkpoints LMDB's current transaction, which holds ``applied_position``.

        ``pin=False`` leaves the old pin in place (the caller re-pins after remapping);
        ``final`` (closing: every record is applied and durable) also seals the active
        log segment so that no record is kept. ``drop_log=False`` leaves the log segments
        it covers on disk: the caller deletes them later (``Log.drop_through``)."""
        if self._obs is None:
            self._write(applied_position, pin, final, drop_log)
            return
        with self._obs.span("checkpoint"):
            self._write(applied_position, pin, final, drop_log)
        self._obs.event("checkpoint", applied_position=applied_position, wal_segments=self._log.segment_count)

    def _write(self, applied_position: int, pin: bool, final: bool, drop_log: bool) -> None:
        kv, log = self._kv, self._log
        log.sync()
        kv.sync()
        txnid = kv.last_txnid()
        self._directory.write_checkpoint(
            Checkpoint(kv.page_size(), txnid, applied_position, kv.read_meta_page(txnid)))
        if pin:
            kv.pin()
        self._pgno_at_last = kv.last_pgno()
        self._page_size = kv.page_size()
        self._appended_at_last = log.appended_bytes
        if final:
            log.rotate()
        if drop_log:
            log.drop_through(applied_position)
        self.count += 1
        self.last_unix = time.time()

    def due(self, bytes_threshold: int, interval: float) -> bool:
        """True when ``bytes_threshold`` bytes were appended to the log since the last
        checkpoint (replay after a crash stays bounded), LMDB's file grew by as much, or
        ``interval`` seconds have passed. (The applier also counts the bytes it writes into
        LMDB: the pin keeps LMDB from reusing the pages later commits free, so updates grow
        the file until the next checkpoint.) The log's total size is not a trigger: its
        active segment is never dropped, so a large one would make every apply checkpoint."""
        grown = (self._kv.last_pgno() - self._pgno_at_last) * self._page_size
        return (self._log.appended_bytes - self._appended_at_last >= bytes_threshold
                or grown >= bytes_threshold or time.time() - self.last_unix >= interval)
