"""Metrics: cheap histograms on the hot path, a Prometheus collector read at scrape time.

Two halves, deliberately apart:

* ``Histogram`` is what the store touches while it works: ``observe`` is one ``bisect`` and
  one list increment. No prometheus_client object is on the hot path (its ``Histogram.observe``
  takes a lock and walks every bucket).
* ``StoreCollector`` is a prometheus_client custom collector. Nothing is registered lazily
  and nothing is kept in a global registry: at scrape time it calls ``store.stats()`` once,
  reads the store's ``obs`` histograms and sampler counters, and yields every family in
  ``METRICS`` (so every metric is present from the first scrape, zero or not; the original
  registered lazily and showed four of its 21 metrics until each was first touched).

Gauges mean live values: ``neurograph_tokens_active`` is the live token count (the original
set it to the lifetime created count, which never decreases).

Several stores, one registry: one collector serves them all, each series carrying a constant
``store`` label (the store's path unless named otherwise). Use ``register(registry, store)``,
which reuses the collector already on that registry, or ``StoreCollector(a, b)``.
Registering two separate ``StoreCollector`` objects on one registry is refused by
prometheus_client with ``ValueError: Duplicated timeseries`` (``describe()`` gives the names).
The alternative, letting both register and emit each family twice, would break the text
format ("all lines for a given metric must be one group"), so it was rejected.
The HTTP sidecar gives each server its own registry.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .statspage import PageHistograms, merge_published, published_labels

__all__ = [
    "BATCH_BUCKETS",
    "HISTOGRAMS",
    "LATENCY_BUCKETS",
    "METRICS",
    "ORIGINAL_CREATION_BUCKETS",
    "ORIGINAL_WAL_BUCKETS",
    "Histogram",
    "MetricSpec",
    "StoreCollector",
    "metric_names",
    "register",
]

_log = logging.getLogger("ngstore.obs")

# The original's boundaries (§8.1): creation/validation 1e-5 … 1, WAL write 1e-4 … 1. They are
# kept (dashboards written against them still work) inside a finer set that starts at 25 µs,
# because an LMDB commit without fsync and a WAL append are sub-millisecond operations.
ORIGINAL_CREATION_BUCKETS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0)
ORIGINAL_WAL_BUCKETS: tuple[float, ...] = (1e-4, 1e-3, 0.01, 0.1, 1.0)
LATENCY_BUCKETS: tuple[float, ...] = (25e-6, 50e-6, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                                      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CREATION_BUCKETS: tuple[float, ...] = tuple(sorted(set(LATENCY_BUCKETS)
                                                   | set(ORIGINAL_CREATION_BUCKETS)))
WAL_BUCKETS: tuple[float, ...] = tuple(sorted(set(LATENCY_BUCKETS) | set(ORIGINAL_WAL_BUCKETS)))
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                                    10_000, 20_000, 50_000, 100_000, 1_000_000)
# The original declared this one with the library default buckets (5 ms … 10 s) and never
# observed it; ngstore observes the time spent building a recorded OTel span, a microsecond
# quantity, so the buckets start at 1 µs.
TRACING_OVERHEAD_BUCKETS: tuple[float, ...] = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4,
                                               2.5e-4, 1e-3, 5e-3, 0.01, 0.1, 1.0)


class Histogram:
    """A fixed-bucket histogram whose ``observe`` is a bisect and a list increment.

    Buckets are upper bounds (Prometheus ``le``), ascending; an implicit ``+Inf`` bucket
    follows. ``observe`` is not atomic across threads (two concurrent observes can lose one
    increment); the store observes under its writer lock, and a scrape reading a count that
    is one behind is harmless. A lock was rejected: it would triple the cost of ``observe``.
    """

    __slots__ = ("_counts", "_sum", "buckets")

    def __init__(self, buckets: Sequence[float]) -> None:
        b = tuple(float(x) for x in buckets)
        if not b or list(b) != sorted(set(b)):
            raise ValueError(f"histogram buckets must be ascending and distinct: {buckets!r}")
        self.buckets = b
        self._counts = [0] * (len(b) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (``value`` in base units: seconds, records)."""
        self._counts[bisect_left(self.buckets, value)] += 1
        self._sum += value

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Count each of ``values``, as many ``observe`` calls would: one vectorised bucket
        search for a whole drain of pending timings."""
        v = np.asarray(values, dtype=np.float64)
        if not v.size:
            return
        found = np.bincount(np.searchsorted(self.buckets, v, side="left"), minlength=len(self._counts))
        counts = self._counts
        for i in np.flatnonzero(found).tolist():
            counts[i] += int(found[i])
        self._sum += float(v.sum())

    def snapshot(self) -> tuple[list[tuple[float, int]], int, float]:
        """``([(le, cumulative_count), …, (inf, count)], count, sum)``."""
        counts = self._counts[:]  # one C-level copy
        total = 0
        cumulative: list[tuple[float, int]] = []
        for le, c in zip((*self.buckets, float("inf")), counts, strict=True):
            total += c
            cumulative.append((le, total))
        return cumulative, total, self._sum

    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def sum(self) -> float:
        return self._sum


#: One row of :class:`CommitTimings` as the bytes its ``rows`` hold: ``(log seconds, total
#: seconds, records, puts, end, position)`` as native float64s.
pack_timing_row = struct.Struct("=6d").pack


class CommitTimings:
    """The commit path's timings, turned into histogram observations and sampled spans in
    bulk, off that path.

    A row of :data:`ROW` numbers per batch: the seconds its group spent appending to the
    log (-1.0 for all but a group's first batch: one log-write observation, one span per
    group), the seconds its group took in all, its records, what it puts (bits: ``by_bit``
    says in which histogram each bit observes the total as well), the ``perf_counter``
    at which its group ended, and its log position. The rows are one ``bytearray`` of
    native float64s: a commit adds its group's rows with one C call (``rows +=
    pack_timing_row(...)``, or the bytes of an ``array('d')`` for a group of many, so a
    drain never sees part of a group) and leaves nothing the garbage collector visits.
    :meth:`drain` takes the whole rows there are with a slice -- a copy, so no buffer is
    exported that a concurrent append could trip on -- counts them in the histograms,
    and asks the tracer's sampler which groups to record (``TraceSampler.sample_many``):
    a recorded group is a ``group_commit`` span emitted then, with the times it had.

    Measured in place, on a one-token commit of ~16 us: a tuple appended to a deque and
    drained through ``np.fromiter`` cost ~1.5 us a commit, and the sampler's decision
    asked on the commit path ~1.3 us. Then the rows were an ``array('d')`` extended with
    a tuple, which converts item by item: ~470 ns a row, against ~120 ns for one
    ``struct`` pack appended to a bytearray."""

    #: numbers per row
    ROW = 6
    #: bytes per row (float64s)
    ROW_BYTES = 8 * ROW
    #: rows the committing thread lets pile up before it drains them itself (the applier
    #: drains after every apply, so this bounds only a store whose applier falls behind)
    KEPT = 16384
    #: from this many rows a drain counts them as arrays (``Histogram.observe_many``):
    #: numpy's fixed cost, some 10 us a histogram, is more than a bisect per row below it,
    #: and the applier drains after every apply, often a handful of rows.
    BULK = 64

    __slots__ = ("_by_bit", "_commit", "_lock", "_records", "_tracer", "_wal", "_warned", "rows")

    def __init__(self, wal_write: Histogram, commit: Histogram, records: Histogram,
                 by_bit: Sequence[tuple[int, Histogram]], tracer: Callable[[], Any]) -> None:
        self.rows = bytearray()
        self._lock = threading.Lock()  # one drain at a time; the commit path only appends
        self._wal, self._commit, self._records = wal_write, commit, records
        self._by_bit = tuple(by_bit)
        self._tracer = tracer  # the tracer now, or None (tracing off)
        self._warned = False

    def drain(self) -> None:
        """Observes every row there is, emits the spans of the groups sampled, and drops
        the rows."""
        with self._lock:
            rows = self.rows
            n = len(rows) - len(rows) % self.ROW_BYTES  # an append adds whole rows: the rest is 0
            if not n:
                return
            taken = rows[:n]
            del rows[:n]
            wal, total, records, puts, end, position = np.frombuffer(taken, np.float64).reshape(-1, self.ROW).T
            if n < self.ROW_BYTES * self.BULK:
                self._observe_rows(wal.tolist(), total.tolist(), records.tolist(), puts.tolist())
            else:
                kinds = puts.astype(np.int64)
                self._wal.observe_many(wal[wal >= 0.0])
                self._records.observe_many(records)
                self._commit.observe_many(total)
                for bit, hist in self._by_bit:
                    hist.observe_many(total[(kinds & bit) != 0])
            tracer = self._tracer()
            if tracer is not None:
                try:
                    self._emit_spans(tracer, wal, total, records, end, position)
                except Exception as exc:  # a tracing backend's failure must not fail who drains (the applier)
                    if not self._warned:
                        self._warned = True
                        _log.warning("emitting commit spans failed: %r; commits go on, their spans may be "
                                     "missing (said once)", exc)

    def _observe_rows(self, wal: list[float], total: list[float], records: list[float], puts: list[float]) -> None:
        for wal_s, total_s, n, bits in zip(wal, total, records, puts, strict=True):
            if wal_s >= 0.0:
                self._wal.observe(wal_s)
            self._records.observe(n)
            self._commit.observe(total_s)
            for bit, hist in self._by_bit:
                if int(bits) & bit:
                    hist.observe(total_s)

    @staticmethod
    def _emit_spans(tracer: Any, wal: np.ndarray, total: np.ndarray, records: np.ndarray, end: np.ndarray,
                    position: np.ndarray) -> None:
        firsts = np.flatnonzero(wal >= 0.0)  # each group's first row (a drain holds whole groups)
        chosen = tracer.sampler.sample_many(total[firsts])
        if not chosen:
            return
        bounds = [*firsts.tolist(), len(wal)]
        now_ns, now_s = time.time_ns(), time.perf_counter()
        for g in chosen:
            a, b = bounds[g], bounds[g + 1]
            tracer.emit("group_commit", float(total[a]), None,
                        {"batches": b - a, "records": int(records[a:b].sum()), "last_position": int(position[b - 1])},
                        end_ns=now_ns - int((now_s - float(end[a])) * 1e9))


# ---------------------------------------------------------------------------------------------
# The metric table. One row per family; docs/observability.md renders the same table.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricSpec:
    """One exported family. ``source`` is a ``store.stats()`` key, or a function of the stats
    dict for derived values; histograms name an attribute of ``store.obs``."""

    name: str            # full exposition name (counters include ``_total``)
    kind: str            # "counter" | "gauge" | "histogram"
    help: str
    source: str | Callable[[dict[str, Any]], float]
    origin: str = "ngstore"   # "original" for the upstream 21 (+7 tracing), else "ngstore"


def _pct(num: str, den: str) -> Callable[[dict[str, Any]], float]:
    def f(s: dict[str, Any]) -> float:
        d = _num(s.get(den))
        return 100.0 * _num(s.get(num)) / d if d > 0 else 0.0
    f.__doc__ = f"100 * {num} / {den} (0 when {den} is 0)"
    return f


def _flag(key: str, invert: bool = False) -> Callable[[dict[str, Any]], float]:
    def f(s: dict[str, Any]) -> float:
        return float(bool(s.get(key)) != invert)
    f.__doc__ = f"{'not ' if invert else ''}{key} as 1/0"
    return f


def _writer_alive(stats: dict[str, Any]) -> float:
    """writer_alive from a sidecar's merged stats; in the writer itself: open for writing"""
    if "writer_alive" in stats:
        return float(bool(stats["writer_alive"]))
    return float(not stats.get("closed") and not stats.get("readonly") and "tokens_live" in stats)


C, G, H = "counter", "gauge", "histogram"
ORIG = "original"

METRICS: tuple[MetricSpec, ...] = (
    # --- the original's 21 (v0.42.0), live meanings ----------------------------------------
    MetricSpec("neurograph_tokens_created_total", C, "Tokens created (lifetime of the store).",
               "tokens_created_total", ORIG),
    MetricSpec("neurograph_connections_created_total", C, "Connections created.",
               "connections_created_total", ORIG),
    MetricSpec("neurograph_tokens_validated_total", C, "Tokens that passed Guardian validation.",
               "tokens_validated_total", ORIG),
    MetricSpec("neurograph_tokens_rejected_total", C, "Tokens rejected by Guardian validation.",
               "tokens_rejected_total", ORIG),
    MetricSpec("neurograph_connections_validated_total", C,
               "Connections that passed Guardian validation.", "connections_validated_total", ORIG),
    MetricSpec("neurograph_connections_rejected_total", C,
               "Connections rejected by Guardian validation.", "connections_rejected_total", ORIG),
    MetricSpec("neurograph_quota_exceeded_total", C, "Writes refused by a quota.",
               "quota_exceeded_total", ORIG),
    MetricSpec("neurograph_aggressive_cleanups_total", C, "Aggressive cleanups run.",
               "aggressive_cleanups_total", ORIG),
    MetricSpec("neurograph_panics_recovered_total", C,
               "Errors caught inside the store and recorded in the black box.",
               "panics_recovered_total", ORIG),
    MetricSpec("neurograph_wal_entries_written_total", C, "Log records written.",
               "wal_records_written_total", ORIG),
    MetricSpec("neurograph_wal_entries_replayed_total", C,
               "Log records replayed by recovery (since open).", "wal_records_replayed_total", ORIG),
    MetricSpec("neurograph_tokens_active", G, "Live tokens (not the lifetime created count).",
               "tokens_live", ORIG),
    MetricSpec("neurograph_connections_active", G, "Live connections.", "connections_live", ORIG),
    MetricSpec("neurograph_memory_used_bytes", G, "Bytes accounted by the Guardian.",
               "memory_used_bytes", ORIG),
    MetricSpec("neurograph_memory_usage_percent", G,
               "memory_used_bytes / memory_limit_bytes * 100 (0 with no limit).",
               _pct("memory_used_bytes", "memory_limit_bytes"), ORIG),
    MetricSpec("neurograph_intuition_queue_size", G, "Events waiting for intuition analysis.",
               "intuition_queue_size", ORIG),
    MetricSpec("neurograph_guardian_event_queue_size", G, "Guardian events waiting.",
               "guardian_event_queue_size", ORIG),
    MetricSpec("neurograph_token_creation_duration_seconds", H,
               "Time to create a batch of tokens.", "token_creation_seconds", ORIG),
    MetricSpec("neurograph_connection_creation_duration_seconds", H,
               "Time to create a batch of connections.", "connection_creation_seconds", ORIG),
    MetricSpec("neurograph_validation_duration_seconds", H, "Time to validate a batch.",
               "validation_seconds", ORIG),
    MetricSpec("neurograph_wal_write_duration_seconds", H,
               "Time to append and sync one log write (a group commit's batch).",
               "wal_write_seconds", ORIG),
    # --- the original's tracing metrics (v0.44.3) ----------------------------------------
    MetricSpec("neurograph_tracing_samples_total", C, "Sampling decisions made.",
               "tracing_total", ORIG),
    MetricSpec("neurograph_tracing_samples_recorded_total", C, "Operations recorded as spans.",
               "tracing_recorded", ORIG),
    MetricSpec("neurograph_tracing_samples_skipped_total", C, "Operations not recorded.",
               "tracing_skipped", ORIG),
    MetricSpec("neurograph_tracing_error_operations_total", C,
               "Traced operations that ended in an error.", "tracing_error_ops", ORIG),
    MetricSpec("neurograph_tracing_slow_operations_total", C,
               "Traced operations at or over the slow threshold.", "tracing_slow_ops", ORIG),
    MetricSpec("neurograph_tracing_sample_rate", G, "Current base sampling rate (0-1).",
               "tracing_sample_rate", ORIG),
    MetricSpec("neurograph_tracing_overhead_seconds", H,
               "Time spent building and ending a recorded span.", "tracing_overhead_seconds", ORIG),
    # --- operator metrics (ngstore) --------------------------------------------------------
    MetricSpec("neurograph_store_open", G, "1 while the store is open, 0 once closed.",
               _flag("closed", invert=True)),
    MetricSpec("neurograph_store_readonly", G, "1 if the store was opened read-only.",
               _flag("readonly")),
    MetricSpec("neurograph_tokens_deleted_total", C, "Tokens deleted.", "tokens_deleted_total"),
    MetricSpec("neurograph_token_limit", G, "max_tokens quota (0 = unlimited).", "token_limit"),
    MetricSpec("neurograph_token_quota_usage_percent", G,
               "tokens_live / token_limit * 100 (0 with no limit).",
               _pct("tokens_live", "token_limit")),
    MetricSpec("neurograph_memory_limit_bytes", G, "max_bytes quota (0 = unlimited).",
               "memory_limit_bytes"),
    # memory_used_bytes, part by part (docs/api.md, quotas): they add up to it
    MetricSpec("neurograph_memory_records_bytes", G,
               "Accounted bytes of stored records: 64 per token and connection, 128 per event.",
               "memory_records_bytes"),
    MetricSpec("neurograph_memory_reflex_table_bytes", G, "Memory of the reflex table.",
               "memory_reflex_table_bytes"),
    MetricSpec("neurograph_memory_overlay_bytes", G,
               "Memory of the overlay: commits in the log not yet in LMDB, and their token index.",
               "memory_overlay_bytes"),
    MetricSpec("neurograph_memory_blackbox_bytes", G, "The black box's ring.", "memory_blackbox_bytes"),
    MetricSpec("neurograph_memory_stats_page_bytes", G, "The writer's stats page.",
               "memory_stats_page_bytes"),
    MetricSpec("neurograph_memory_experience_ring_bytes", G,
               "The experience stream's ring of events (once store.experience() made it).",
               "memory_experience_ring_bytes"),
    MetricSpec("neurograph_commits_total", C, "Committed write batches.", "commits_total"),
    MetricSpec("neurograph_commit_errors_total", C, "Write batches that failed.",
               "commit_errors_total"),
    MetricSpec("neurograph_commit_duration_seconds", H,
               "Time of one commit, log write to LMDB apply.", "commit_seconds"),
    MetricSpec("neurograph_commit_batch_records", H, "Records per committed batch.",
               "batch_records"),
    MetricSpec("neurograph_map_size_bytes", G, "LMDB map size.", "map_size_bytes"),
    MetricSpec("neurograph_map_used_bytes", G, "LMDB pages in use, in bytes.", "map_used_bytes"),
    MetricSpec("neurograph_map_usage_percent", G, "map_used_bytes / map_size_bytes * 100.",
               _pct("map_used_bytes", "map_size_bytes")),
    MetricSpec("neurograph_readers_used", G, "LMDB reader slots in use.", "readers_used"),
    MetricSpec("neurograph_readers_max", G, "LMDB reader slots available.", "readers_max"),
    MetricSpec("neurograph_wal_bytes", G, "Bytes in the log segments on disk.", "wal_bytes"),
    MetricSpec("neurograph_wal_segments", G, "Log segment files on disk.", "wal_segments"),
    MetricSpec("neurograph_wal_position", G, "Position of the last written log record.",
               "wal_position"),
    MetricSpec("neurograph_wal_applied_position", G,
               "Position of the last log record applied to LMDB.", "applied_position"),
    MetricSpec("neurograph_checkpoints_total", C, "Checkpoints completed.", "checkpoints_total"),
    MetricSpec("neurograph_last_checkpoint_timestamp_seconds", G,
               "Unix time of the last checkpoint (0 = none).", "last_checkpoint_unix"),
    MetricSpec("neurograph_reflex_table_entries", G, "Live reflexes in the table.",
               "reflexes_live"),
    MetricSpec("neurograph_reflex_table_capacity", G, "Reflex table capacity (slots).",
               "reflex_capacity"),
    MetricSpec("neurograph_reflex_lookups_total", C, "Reflex lookups.", "reflex_lookups_total"),
    MetricSpec("neurograph_reflex_hits_total", C, "Reflex lookups that found a reflex.",
               "reflex_hits_total"),
    MetricSpec("neurograph_reflex_misses_total", C, "Reflex lookups that found none.",
               "reflex_misses_total"),
    MetricSpec("neurograph_reflex_collisions_total", C, "Reflex table hash collisions.",
               "reflex_collisions_total"),
    MetricSpec("neurograph_reflexes_created_total", C, "Reflexes created.",
               "reflexes_created_total"),
    MetricSpec("neurograph_reflex_evictions_total", C,
               "Reflexes pushed out of the table by a put: evicted at capacity, or the weakest of a full "
               "cell replaced (since open).", "reflex_evictions_total"),
    MetricSpec("neurograph_experience_events", G, "Events in the experience stream.",
               "events_live"),
    MetricSpec("neurograph_experience_events_written_total", C, "Experience events written.",
               "events_written_total"),
    MetricSpec("neurograph_experience_events_trimmed_total", C,
               "Experience events trimmed by retention.", "events_trimmed_total"),
    MetricSpec("neurograph_blackbox_events_recorded_total", C, "Black-box events recorded.",
               "blackbox_total_recorded"),
    MetricSpec("neurograph_blackbox_events_dropped_total", C,
               "Black-box events pushed out of the ring.", "blackbox_total_dropped"),
    # --- the writer seen from another process (the sidecar reads its stats page) -----------
    MetricSpec("neurograph_writer_alive", G,
               "1 while a live process holds the store for writing (in the writer itself: while "
               "it is open for writing).", _writer_alive),
    MetricSpec("neurograph_stats_page_age_seconds", G,
               "Seconds since the writer last published its stats page (0 in the writer).",
               "stats_age_seconds"),
)

#: histogram family → (``store.obs`` attribute, buckets)
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "commit_seconds": ("commit_seconds", LATENCY_BUCKETS),
    "wal_write_seconds": ("wal_write_seconds", WAL_BUCKETS),
    "batch_records": ("batch_records", BATCH_BUCKETS),
    "validation_seconds": ("validation_seconds", CREATION_BUCKETS),
    "token_creation_seconds": ("token_creation_seconds", CREATION_BUCKETS),
    "connection_creation_seconds": ("connection_creation_seconds", CREATION_BUCKETS),
    "tracing_overhead_seconds": ("tracing_overhead_seconds", TRACING_OVERHEAD_BUCKETS),
}


def metric_names() -> list[str]:
    """Every exposition family name the collector yields."""
    return [m.name for m in METRICS]


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _store_name(store: Any) -> str:
    path = getattr(store, "path", None)
    if path is None:
        try:
            path = store.stats().get("path")
        except Exception:
            path = None
    return str(path) if path is not None else f"store-{id(store):x}"


class StoreCollector:
    """A prometheus_client collector for one or more stores.

    ``StoreCollector(store, name=None)``; ``add(store, name=None)`` for more. Each series gets
    the constant label ``store=<name>`` (default: the store's path) unless ``labeled=False``,
    which gives the original's unlabeled series and allows a single store only.
    Stores are held weakly: a collected store disappears from the output.
    """

    def __init__(self, *stores: Any, name: str | None = None, labeled: bool = True) -> None:
        self._labeled = labeled
        self._lock = threading.Lock()
        self._stores: list[tuple[weakref.ref[Any] | Callable[[], Any], str]] = []
        for s in stores:
            self.add(s, name=name if len(stores) == 1 else None)

    def add(self, store: Any, name: str | None = None) -> None:
        """Add a store; its ``name`` (label value) must be unique in this collector."""
        label = name if name is not None else _store_name(store)
        with self._lock:
            if not self._labeled and self._stores:
                raise ValueError("an unlabeled StoreCollector exposes exactly one store")
            if any(n == label for _, n in self._stores):
                raise ValueError(f"a store named {label!r} is already in this collector")
            try:
                ref: Any = weakref.ref(store)
            except TypeError:  # objects without weakref support are held strongly
                def ref(s: Any = store) -> Any:
                    return s
            self._stores.append((ref, label))

    def remove(self, store: Any) -> None:
        with self._lock:
            self._stores = [(r, n) for r, n in self._stores if r() is not store]

    def describe(self) -> list[Any]:
        """Families without samples, so a registry can refuse a second collector."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        out: list[Any] = []
        for m in METRICS:
            base = m.name[:-len("_total")] if m.kind == C else m.name
            cls = {C: CounterMetricFamily, G: GaugeMetricFamily, H: HistogramMetricFamily}[m.kind]
            out.append(cls(base, m.help))
        return out

    def collect(self) -> Iterator[Any]:
        """Build every family from one ``stats()`` call per store."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        with self._lock:
            stores = [(r(), n) for r, n in self._stores]
        rows: list[tuple[list[str], dict[str, Any], Any, dict[str, str]]] = []
        for store, label in stores:
            if store is None:
                continue
            try:
                stats = dict(store.stats())
            except Exception as exc:  # a closed/broken store must not break the other stores
                _log.warning("stats() failed for store %s: %s", label, exc)
                stats = {"closed": True}
            obs = getattr(store, "obs", None)
            stats.update(obs_values(obs))
            extra = _extra_labels(store)
            if _is_plain_reader(store, stats):
                # a read-only Store: the writer's counters, histograms and limits come from
                # its stats page, as in the sidecar (docs/observability.md §3)
                page = _read_page(str(stats["path"]))
                stats = merge_published(stats, page)
                if page is not None:
                    obs = PageHistograms(page)
                extra = published_labels(page)
            rows.append(([label] if self._labeled else [], stats, obs, extra))
        extra_names = sorted({k for *_x, e in rows for k in e})
        labels = (["store"] if self._labeled else []) + extra_names
        rows2 = [(lv + [e.get(k, "") for k in extra_names], stats, obs) for lv, stats, obs, e in rows]
        for m in METRICS:
            if m.kind == H:
                hfam = HistogramMetricFamily(m.name, m.help, labels=labels)
                attr = HISTOGRAMS[str(m.source)][0]
                for lv, _stats, obs in rows2:
                    h = getattr(obs, attr, None) if obs is not None else None
                    if h is not None and callable(getattr(h, "snapshot", None)):
                        cum, _count, total = h.snapshot()
                    else:
                        cum, total = [(float("inf"), 0)], 0.0
                    hfam.add_metric(lv, [(_le(le), float(c)) for le, c in cum], total)
                yield hfam
                continue
            if m.kind == C:
                fam: Any = CounterMetricFamily(m.name, m.help, labels=labels)
            else:
                fam = GaugeMetricFamily(m.name, m.help, labels=labels)
            for lv, stats, _obs in rows2:
                value = m.source(stats) if callable(m.source) else _num(stats.get(m.source))
                fam.add_metric(lv, value)
            yield fam


def _le(le: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.001``, ``1.0``)."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(le))  # type: ignore[no-untyped-call]


def _is_plain_reader(store: Any, stats: dict[str, Any]) -> bool:
    return bool(stats.get("readonly")) and not stats.get("closed") and \
        not callable(getattr(store, "metric_labels", None)) and isinstance(stats.get("path"), str)


def _read_page(path: str) -> Any:
    from .statspage import read_stats_page

    try:
        return read_stats_page(path)
    except (OSError, ValueError) as exc:
        _log.debug("no stats page for %s: %s", path, exc)
        return None


def _extra_labels(store: Any) -> dict[str, str]:
    """Labels a store object asks for (the sidecar's view: ``writer_pid``, ``writer_alive``)."""
    fn = getattr(store, "metric_labels", None)
    if not callable(fn):
        return {}
    try:
        return {str(k): str(v) for k, v in dict(fn()).items()}
    except Exception:
        return {}


def obs_values(obs: Any) -> dict[str, Any]:
    """Sampler counters and black-box counters of an ``Observability`` (zeros without one)."""
    out: dict[str, Any] = {}
    if obs is None:
        return out
    sampler = getattr(obs, "sampler", None)
    if sampler is not None:
        c = sampler.counters()
        out.update(tracing_total=c["total"], tracing_recorded=c["recorded"],
                   tracing_skipped=c["skipped"], tracing_error_ops=c["error_operations"],
                   tracing_slow_ops=c["slow_operations"],
                   tracing_sample_rate=sampler.config.base_rate)
    bb = getattr(obs, "blackbox", None)
    if bb is not None:
        s = bb.stats()
        out.update(blackbox_total_recorded=s["total_recorded"],
                   blackbox_total_dropped=s["total_dropped"])
    return out


_registered: weakref.WeakKeyDictionary[Any, StoreCollector] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


def register(registry: Any, store: Any, name: str | None = None) -> StoreCollector:
    """Expose ``store`` on ``registry``, sharing one collector among all stores registered on
    that registry through this function (so two stores never collide). Returns the collector."""
    with _registered_lock:
        coll = _registered.get(registry)
        if coll is None:
            coll = StoreCollector(store, name=name)
            registry.register(coll)
            _registered[registry] = coll
        else:
            coll.add(store, name=name)
    return coll
