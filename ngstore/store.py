"""The Store: one directory on disk, one writer process, any number of readers.

This module is the facade. It opens a store (``recovery.open_writer`` for a writer,
``recovery.open_reader`` for a reader), wires the layers together and delegates:

* writes: :meth:`Store.batch` makes a ``batch.Batch`` whose commit is the writer's
  (``commit.Writer``: group commit, durability modes, the log, the overlay); the
  ``applier.Applier`` moves committed batches into LMDB in groups;
* reads: :meth:`Store.snapshot` makes a ``snapshot.Snapshot`` (one LMDB read
  transaction, zero-copy views). Through the writer's handle every read sees every
  commit that returned before it: a token read looks in the overlay first; every other
  read first lets the applier bring LMDB up to date (a barrier);
* the engines: ``store.intuition()`` and ``store.experience()`` reach the store only
  through its public methods (``reflex_table``, ``reflex_stats``, ``batch``, ...);
* information: ``stats()``, ``ready_checks()``, ``check()``.

What each durability mode loses in a crash is documented in ``commit`` (and
``docs/api.md``); how long a zero-copy view stays valid, in ``snapshot``.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import forks, reflex_store
from .batch import Batch, CommitResult, ValidationCounters, check_durability, reflex_resize_op, token_put_op
from .check import CheckReport, check_store
from .commit import STATS_COUNTERS, Writer
from .config import IntuitionConfig
from .connections import Connection, ConnectionArray
from .directory import Directory
from .errors import InvalidArgumentError, NgStoreError, NotFoundError
from .experience import ExperienceStream
from .experience_store import StoreExperienceStream
from .graph import Hops, Path
from .guardian import Guardian, Usage
from .inputs import ids_array
from .intuition import IntuitionEngine
from .kv import KV, ReadTxn
from .layout import DB_LEARN, FORMAT_VERSION, ChunkLayout, Counters, Meta
from .learning import LearnedStatistics, read_statistics
from .ops import Op
from .options import Options
from .outcomes import Outcome, key_digest, key_op, keyed, outcome_in
from .records import MAX_TOKEN_ID
from .recovery import RecoveryInfo, open_reader, open_writer
from .reflex import Current, ReflexTable
from .snapshot import Snapshot, pair_connection, pair_reader, token_reader
from .tokens import Token, TokenArray, token_of_image

if TYPE_CHECKING:
    from .obs import Observability
    from .obs.http import MetricsServer
    from .obs.metrics import StoreCollector

__all__ = ["Options", "Store", "open"]


def open(path: str | os.PathLike[str], options: Options | None = None, **overrides: Any) -> Store:
    """Opens (or creates) the store in directory ``path``.

    ``options`` is an :class:`Options` (every field documented there); keyword arguments
    override its fields: ``ngstore.open(path, durability="async", max_tokens=None)``.
    An unknown keyword raises ``TypeError``.
    """
    opts = options if options is not None else Options()
    if overrides:
        opts = replace(opts, **overrides)
    return Store(os.fspath(path), opts)


class Store:
    """An open store. Use :func:`ngstore.open` to make one; close it (or use ``with``)."""

    def __init__(self, path: str, options: Options) -> None:
        self.options = options
        self.path = os.path.realpath(path)
        self.readonly = options.readonly
        self.durability = options.durability
        self._directory = Directory(self.path, options.io, options.mode)
        self._guardian = Guardian(options.max_tokens, options.max_bytes, options.memory_threshold)
        self._validation = ValidationCounters()
        self._closed = False
        self._closing = False
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._writer: Writer | None = None
        self._reader_reflexes = Current()  # read-only handles: the table they attached
        self._experience: StoreExperienceStream | None = None
        self._intuition: IntuitionEngine | None = None
        self.recovery = RecoveryInfo()
        self._obs: Observability | None = None
        if options.observability:
            from .obs import Observability

            self._obs = Observability(self.path, blackbox_capacity=options.blackbox_capacity,
                                      tracing=options.tracing, sample_rate=options.sample_rate, io=options.io)
        try:
            self._kv, meta = self._open()
        except BaseException as exc:
            if self._obs is not None:
                self._obs.event("error", op="open", error=repr(exc))
                self._obs.close()
            raise
        self._layout = ChunkLayout(meta.chunk_slots)
        self._read_token, self._read_pair = token_reader(self._kv, self._layout), pair_reader(self._kv)
        self._meta = meta
        self._announce_open(meta)
        forks.opened(self)

    def _open(self) -> tuple[KV, Meta]:
        if self.readonly:
            kv, meta, self._reader_reflexes.table = open_reader(self._directory, self.options)
            return kv, meta
        span = self._obs.span("recovery") if self._obs is not None else None
        if span is None:
            kv, writer, self.recovery = open_writer(self._directory, self.options, self._guardian, None)
        else:
            with span:
                kv, writer, self.recovery = open_writer(self._directory, self.options, self._guardian, self._obs)
                span.set("replayed_records", self.recovery.replayed_records)
        self._writer = writer
        with ReadTxn(kv) as txn:
            return kv, kv.read_meta(txn)

    def _announce_open(self, meta: Meta) -> None:
        obs = self._obs
        if obs is None:
            return
        obs.event("open", readonly=self.readonly, applied_position=meta.applied_position,
                  tokens=meta.counters.tokens_live)
        self.recovery.announce(obs, self.path)
        if not self.readonly:
            # the black box moves into blackbox.ring; stats.page starts being published
            obs.start_writer(self._safe_stats, io=self.options.io, mode=self._directory.mode)
        if self.options.crash_handlers and not self.readonly:
            obs.install_crash_handlers(self._safe_stats)
        for name, nbytes in obs.memory_parts().items():
            self._guardian.reserve(name, nbytes)  # fixed allocations: counted from now on

    # ------------------------------------------------------------------ guards

    def _check_open(self) -> None:
        if self._closed:
            raise forks.closed_error(self.path, self._owner)

    def _inherited(self) -> None:  # in a child made by fork() (``forks``): refuse all, release nothing
        self._lock, self._closing, self._closed = threading.Lock(), True, True

    def _live_writer(self) -> Writer:
        self._check_open()
        if self._writer is None:
            raise NgStoreError(f"the store {self.path} was opened read-only")
        return self._writer

    def _counters(self, tolerate_failure: bool = False) -> Counters:
        """The live counters, of every commit so far (read-only: as LMDB has them now).
        After the writer failed, ``tolerate_failure`` gives LMDB's counters instead of
        raising (what stats and metrics show)."""
        if self._writer is not None:
            try:
                self._writer.barrier()
            except NgStoreError:
                if not tolerate_failure:
                    raise
            return self._writer.applier.counters
        self._kv.catch_up_with_writer()
        return self._reread_meta().counters

    def _reread_meta(self) -> Meta:
        with ReadTxn(self._kv) as txn:
            self._meta = self._kv.read_meta(txn)
        return self._meta

    # ------------------------------------------------------------------ writing

    def batch(self, durability: str | None = None, *, key: bytes | str | None = None) -> Batch:
        """A new batch (``with store.batch() as b:`` commits on success); ``key``: see :meth:`outcome`."""
        writer = self._live_writer()
        writer.check_commit()
        return Batch(self._commit, check_durability(self.durability if durability is None else durability),
                     self._validation, self._obs, writer.submit, key_op(key, self.options.remember_keys))

    def _commit(self, ops: list[Op], durability: str) -> CommitResult:
        return self._live_writer().commit(ops, durability)

    def _write(self, fill: Callable[[Batch], None], durability: str | None, key: bytes | str | None) -> CommitResult:
        b = self.batch(durability, key=key)
        fill(b)
        return CommitResult(b.commit(), b.first_event, b.already_committed)

    def put_tokens(self, tokens: Any, *, durability: str | None = None, key: bytes | str | None = None) -> int:
        """Stores tokens (a TokenArray, a Token-dtype array, a Token, or a list of Tokens).

        Atomic; a later record with the same id wins. Returns the commit's log position."""
        writer = self._live_writer()
        d = self.durability if durability is None else check_durability(durability)
        op = token_put_op(tokens, self._validation, self._obs, copy=False)
        ops = [op] if op is not None else []
        if key is not None:
            ops = keyed(ops, key, self.options.remember_keys)
        return writer.commit(ops, d).position

    def delete_tokens(self, ids: Any, *, durability: str | None = None, key: bytes | str | None = None) -> int:
        """Deletes tokens by id (absent ids are ignored). Atomic."""
        return self._write(lambda b: b.delete_tokens(ids), durability, key).position

    def put_connections(self, connections: Any, *, durability: str | None = None,
                        key: bytes | str | None = None) -> int:
        """Stores connections keyed by (token_a, token_b, connection_type); atomic."""
        return self._write(lambda b: b.put_connections(connections, copy=False), durability, key).position

    def delete_connections(self, keys: Any, *, durability: str | None = None, key: bytes | str | None = None) -> int:
        """Deletes connections by key: connections, or (a, b, type) triples."""
        return self._write(lambda b: b.delete_connections(keys), durability, key).position

    def write_events(self, events: Any, *, durability: str | None = None, key: bytes | str | None = None) -> int:
        """Appends experience events (an EVENT_DTYPE array, an Event, or a dict of fields); returns
        the first one's sequence number. Retention keeps the newest ``event_capacity`` events."""
        first = self._write(lambda b: b.append_events(events), durability, key).first_event
        return self._counters().events_next_seq if first is None else first  # none: where the next one goes

    def outcome(self, key: bytes | str) -> Outcome:
        """Whether the batch of idempotency key ``key`` committed (docs/api.md, Known outcomes)."""
        self._check_open()
        if self._writer is not None:
            return self._writer.outcome(key_digest(key))
        self._kv.catch_up_with_writer()
        return outcome_in(self._kv, key_digest(key), sees_everything=False)

    def flush(self) -> None:
        """Makes every batch committed so far durable (one fdatasync of the log)."""
        self._live_writer().flush()

    def checkpoint(self) -> None:
        """Makes LMDB durable, then drops the log segments it covers.

        Readers are never blocked; writers wait for the duration (one fdatasync of the
        LMDB file plus a small atomic file write)."""
        self._live_writer().checkpoint()

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> Snapshot:
        """A consistent read view of the store (one LMDB read transaction) that includes
        every commit that returned before it was taken."""
        self._current(connections_only=False)
        return Snapshot(self._kv, self._layout, self.path)

    def _current(self, connections_only: bool) -> None:
        """Brings LMDB up to every commit that returned before (a reader: up to what the
        writer published), or with ``connections_only`` every one that wrote connections:
        what a read of connections alone needs, before its own read transaction."""
        self._check_open()
        if self._writer is None:
            self._kv.catch_up_with_writer()
        elif connections_only:
            self._writer.connection_barrier()
        else:
            self._writer.barrier()

    def _connections_snapshot(self) -> Snapshot:
        self._current(connections_only=True)
        return Snapshot(self._kv, self._layout, self.path)

    def count(self) -> int:
        """Number of tokens present."""
        self._check_open()
        return self._counters().tokens_live

    def __len__(self) -> int:
        return self.count()

    def contains(self, token_id: int) -> bool:
        return self._token_record(token_id) is not None

    def __contains__(self, token_id: object) -> bool:
        try:
            return self.contains(token_id)  # type: ignore[arg-type]
        except InvalidArgumentError:
            return False

    def get_token(self, token_id: int) -> Token:
        """The stored token ``token_id`` (a copy), or NotFoundError (a KeyError).

        One LMDB get and 64 bytes copied, in a read transaction shared with the point reads
        before it while no commit came between (docs/design.md): the batch API is for many."""
        raw = self._token_record(token_id)
        if raw is None:
            raise NotFoundError(f"no token with id {token_id} in {self.path}")
        return token_of_image(raw)

    def _token_record(self, token_id: int) -> bytes | None:
        """The 64 bytes of token ``token_id`` as this handle sees them, None if absent."""
        if self._closed:
            raise forks.closed_error(self.path, self._owner)
        if type(token_id) is not int or not 0 <= token_id <= MAX_TOKEN_ID:
            token_id = int(ids_array([token_id])[0])
        w = self._writer
        if w is not None:
            hit, record = w.pending_token(token_id)
            if hit:
                return record
        else:
            self._kv.catch_up_with_writer()
        return self._kv.read_one(self._read_token, token_id)

    def get_tokens(self, ids: Any, *, missing: str = "raise") -> TokenArray:
        """Tokens for ``ids`` in the given order, as a TokenArray (a copy).

        ``missing="raise"`` raises NotFoundError naming the absent ids; ``"skip"`` leaves
        them out."""
        with self.snapshot() as snap:
            return snap.tokens.get(ids, missing=missing)

    def get_connection(self, a: int, b: int, connection_type: int | None = None) -> Connection:
        """The connection (a, b[, type]) as a Connection copy; NotFoundError if absent.

        Without ``connection_type`` the pair must hold exactly one connection. A point
        read: the shared read transaction of ``get_token``, no snapshot."""
        self._current(connections_only=True)  # connections are read from LMDB
        return pair_connection(self._kv, self._read_pair, a, b, connection_type)

    def get_connections(self, keys: Any, *, missing: str = "raise") -> ConnectionArray:
        """Connections for ``keys`` -- (a, b, type) triples, or connections whose key to
        use -- in order, as a ConnectionArray (copies). One read transaction.

        ``missing="raise"`` raises NotFoundError naming absent keys; ``"skip"`` leaves
        them out."""
        with self._connections_snapshot() as snap:
            return snap.connections.get(keys, missing=missing)

    def connections_between(self, a: int, b: int) -> ConnectionArray:
        """Every connection joining tokens a and b (any order), as a ConnectionArray."""
        with self._connections_snapshot() as snap:
            return snap.connections.between(a, b)

    def neighbors(self, token_id: int, direction: str = "both") -> ConnectionArray:
        """Connections of ``token_id`` as a ConnectionArray (copies).

        ``"out"``: where it is ``token_a``; ``"in"``: where it is ``token_b``;
        ``"both"``: the union (a self-connection appears once)."""
        with self._connections_snapshot() as snap:
            return snap.connections.neighbors(token_id, direction)

    def k_hop(self, ids: Any, k: int, **options: Any) -> Hops:
        """``snapshot().connections.k_hop``: the tokens within ``k`` connections of ``ids``."""
        with self._connections_snapshot() as snap:
            return snap.connections.k_hop(ids, k, **options)

    def shortest_path(self, a: int, b: int, **options: Any) -> Path | None:
        """``snapshot().connections.shortest_path``: the cheapest path from ``a`` to ``b``."""
        with self._connections_snapshot() as snap:
            return snap.connections.shortest_path(a, b, **options)

    def count_connections(self) -> int:
        self._check_open()
        return self._counters().connections_live

    # ------------------------------------------------------------------ the engines

    @property
    def event_capacity(self) -> int:
        """How many experience events the store retains."""
        return self._meta.event_capacity

    def experience(self, channel_size: int = 1000) -> ExperienceStream:
        """The store's ExperienceStream: the newest events, loaded from the store, and
        kept current with every commit. Writing to it commits through the store."""
        self._check_open()
        with self._lock:
            if self._experience is None:
                if self._writer is not None:
                    self._writer.barrier()  # the stream loads from LMDB, then follows commits
                stream = StoreExperienceStream(self, channel_size=channel_size)
                self._guardian.reserve("experience_ring", stream.memory_bytes)
                if self._writer is not None:
                    self._writer.add_listener(stream.on_committed)
                    self._writer.applier.add_listener(stream.on_applied)
                self._experience = stream
            return self._experience

    def intuition(self, config: IntuitionConfig | None = None) -> IntuitionEngine:
        """The store's IntuitionEngine: persistent reflexes, the store's experience.

        One engine per store handle; a later call with a different ``config`` replaces
        the engine's configuration (the reflexes are the store's either way)."""
        self._check_open()
        if config is not None and not isinstance(config, IntuitionConfig):
            raise InvalidArgumentError(f"config must be an IntuitionConfig, got {type(config).__name__}")
        if self._intuition is None or (config is not None and config != self._intuition.config):
            if self._intuition is not None:
                self._intuition.stop()
            self._intuition = IntuitionEngine.for_store(self, config)
        return self._intuition

    def reflex_table(self) -> ReflexTable | None:
        """The current reflex table (an immutable version; None before the first reflex)."""
        self._check_open()
        if self._writer is not None:
            return self._writer.applier.reflex_table
        return self._reader_reflexes.table

    def reflex_current(self) -> Current:
        """What names the current reflex table, for a lookup path that reads it per call
        without a call (the engine's fast path); its table is None once the store closed."""
        self._check_open()
        return self._writer.applier.current if self._writer is not None else self._reader_reflexes

    def refresh(self) -> None:
        """Read-only handles: look up reflexes in the newest committed table (the writer
        process sees its own commits at once)."""
        self._check_open()
        if self._writer is None:
            self._reader_reflexes.table = reflex_store.attach(self._kv)

    def learning_statistics(self, bins_per_dim: int = 4, *, groups: bool = True) -> LearnedStatistics:
        """The learning statistics of one binning, as committed (``groups=False``: the fold
        cursor only). See ``ngstore.learning`` and docs/format.md §3.3."""
        self._check_open()
        if self._writer is not None:
            self._writer.barrier()
        else:
            self._kv.catch_up_with_writer()
        with ReadTxn(self._kv) as txn:
            return read_statistics(txn, self._kv.db(DB_LEARN), bins_per_dim, groups=groups, region=self._kv.record)

    def resize_reflexes(self, capacity: int, *, durability: str | None = None,
                        key: bytes | str | None = None) -> int:
        """Sets the reflex table's capacity as one logged batch (REFLEX_RESIZE, format.md §5):
        crash-safe and replayed like any other. No reflex is lost (below the live count it
        raises InvalidArgumentError); memory follows the reflexes, not the capacity."""
        writer = self._live_writer()  # reflex commits are applied before they return: the table is current
        table = writer.applier.reflex_table
        op = reflex_resize_op(capacity, len(table) if table is not None else 0)
        d = self.durability if durability is None else check_durability(durability)
        return writer.commit(keyed([op], key, self.options.remember_keys), d).position

    def reflex_stats(self) -> dict[str, Any]:
        """Live size and lookup counters of the reflex table."""
        table = self.reflex_table()
        capacity = self._meta.reflex_capacity
        if self._writer is not None:
            a = self._writer.applier
            c, created, capacity = a.reflex_counters(), a.reflexes_created_total, a.reflex_capacity
        else:
            c, created = reflex_store.counters(table), 0
        return reflex_store.stats(table, c, created, capacity)

    # ------------------------------------------------------------------ information

    def _usage(self) -> Usage:
        if self._writer is not None:
            return self._writer.usage()
        c = self._counters()
        table = self.reflex_table()
        return Usage(tokens=c.tokens_live, connections=c.connections_live, events=c.events_live,
                     reflex_bytes=table.memory_bytes if table is not None else 0, reserved=self._guardian.reserved)

    def stats(self) -> dict[str, Any]:
        """Live counters and sizes (what metrics and ``ngstore info`` show)."""
        out: dict[str, Any] = {"path": self.path, "readonly": self.readonly, "closed": self._closed}
        if self._closed:
            return out
        w = self._writer
        c = self._counters(tolerate_failure=True)
        out.update(w.stats_counters if w is not None else dict.fromkeys(STATS_COUNTERS, 0))
        out["checkpoints_total"] = w.applier.checkpoints_total if w is not None else 0
        if w is not None:
            w.observe_pending()
            out["overlay_bytes"] = w.overlay.bytes
            out["overlay_entries"] = w.overlay.entries
            out["apply_groups_total"] = w.applier.groups_applied_total
        out.update(vars(self._validation))
        out.update(c.stats())
        out["event_capacity"] = self._meta.event_capacity
        out.update(self.reflex_stats())
        eng = self._intuition
        out["intuition_queue_size"] = max(0, c.events_next_seq - eng.analyzed_through) if eng is not None else 0
        out["guardian_event_queue_size"] = 0  # no queue: Guardian events go to the black box at once
        out["applied_position"] = w.applier.applied_position if w is not None else self._meta.applied_position
        out.update(self._guardian.stats(self._usage()))
        out["write_failed"] = w is not None and w.failed is not None
        if w is not None:
            out["last_checkpoint_unix"] = w.applier.last_checkpoint_unix
        out.update(self._kv.info())
        if w is not None:
            out["wal_bytes"] = w.log.size_bytes
            out["wal_segments"] = w.log.segment_count
            out["wal_position"] = w.log.last_position
        out["chunk_slots"] = self._layout.slots
        out["format_version"] = FORMAT_VERSION if w is not None else self._meta.format_version
        return out

    def _safe_stats(self) -> dict[str, Any]:
        try:
            return self.stats()
        except Exception as exc:  # a crash dump must not fail on a half-closed store
            return {"path": self.path, "error": repr(exc)}

    @property
    def obs(self) -> Observability | None:
        """The store's Observability (black box, histograms, spans); None when opened
        with ``observability=False``."""
        return self._obs

    def metrics_collector(self, name: str | None = None) -> StoreCollector:
        """A prometheus_client collector of this store's metrics, to register on the
        registry you choose: ``registry.register(store.metrics_collector())``."""
        from .obs.metrics import StoreCollector

        return StoreCollector(self, name=name)

    def serve_metrics(self, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        """Starts the HTTP sidecar (``/metrics``, ``/health``, ``/ready``) in a daemon
        thread; returns the server (``.url``, ``.port``, ``.close()``)."""
        from .obs.http import serve

        return serve(self, host=host, port=port)

    def ready_checks(self) -> dict[str, tuple[bool, str]]:
        """The real readiness checks of ``/ready``."""
        checks: dict[str, tuple[bool, str]] = {}
        checks["store_open"] = (not self._closed, "open" if not self._closed else "closed")
        if self._closed:
            return checks
        if self._writer is not None:
            failed = self._writer.failed
            checks["log_writable"] = (failed is None, "ok" if failed is None else f"I/O error: {failed!r}")
        info = self._kv.info()
        frac = info["map_used_bytes"] / max(1, info["map_size_bytes"])
        checks["map_not_full"] = (frac < 0.9, f"{frac:.1%} of the map used")
        q = self._guardian.fraction_used(self._usage())
        checks["quotas_below_threshold"] = (q < 0.8, f"{q:.1%} of the nearest quota")
        return checks

    def check(self) -> CheckReport:
        """Verifies internal consistency; returns a report (``report.ok``)."""
        self._check_open()
        w = self._writer
        if w is not None:
            w.barrier()
        applied = w.applier.applied_position if w is not None else self._reread_meta().applied_position
        return check_store(self._kv, self._layout, self._directory, applied,
                           w.log.last_position if w is not None else None)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Checkpoints (writer), releases locks. Views already handed out stay valid."""
        ended = mine = False  # each step below may run again: a close an interrupt stopped goes on
        try:
            with self._lock:
                if self._closing:
                    return
                self._closing = mine = True
            try:
                if self._intuition is not None:
                    self._intuition.stop()
                if self._writer is not None:
                    self._writer.close()
            finally:
                if self._writer is not None:
                    self._writer.close()  # again if interrupted: its threads stop before the KV closes
                if self._obs is not None and not self._closed:
                    self._obs.publish_stats()  # the stats page's last values, while stats() answers
                self._closed = True
                forks.closed(self)
                # The reader's own hold on its reflex table (and with it the read lease and the
                # environment); a table handed out keeps its own lease.
                self._reader_reflexes.table = None
                if self._obs is not None:
                    self._obs.event("close")
                    self._obs.close()
                try:
                    self._kv.close()
                finally:
                    self._directory.release()
            ended = True
        finally:
            if mine and not ended:  # interrupted (interrupts.py): the next close() finishes it
                self._closing = False

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "writable")
        return f"<ngstore.Store {self.path!r} {state}>"
