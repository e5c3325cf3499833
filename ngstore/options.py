"""The options of ``ngstore.open``: one frozen, validated, documented dataclass."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .batch import DURABILITY_MODES
from .errors import InvalidArgumentError
from .fileio import DEFAULT_IO, FileIO
from .guardian import DEFAULT_MAX_BYTES, DEFAULT_MAX_TOKENS, DEFAULT_MEMORY_THRESHOLD
from .kv import DEFAULT_MAP_SIZE
from .layout import DEFAULT_CHUNK_SLOTS, DEFAULT_EVENT_CAPACITY, DEFAULT_REFLEX_CAPACITY, VERIFY_MODES, ChunkLayout
from .outcomes import DEFAULT_REMEMBER_KEYS, check_remember_keys
from .wal import DEFAULT_SEGMENT_BYTES

RECOVERY_MODES = ("strict", "tolerate-tail", "salvage")
REFLEX_EVICTION = ("evict", "refuse")
#: The default ``max_apply_lag`` (seconds): see ``Options.max_apply_lag``.
DEFAULT_APPLY_LAG = 1.0


@dataclass(frozen=True)
class Options:
    """How a store is opened. Every field has the default ``ngstore.open`` uses."""

    #: Open for reading only: never writes, may run in any number of processes beside
    #: the writer, and sees every batch the writer has applied.
    readonly: bool = False
    #: Make a new store when the path does not exist or is an empty directory.
    create: bool = True
    #: The default durability of every commit: ``"sync"`` (durable on return),
    #: ``"async"`` (durable within ``flush_interval``) or ``"none"`` (durable at the next
    #: sync point). See ``docs/api.md`` for what a crash can do in each mode.
    durability: str = "sync"
    #: What to do with a damaged log at open: ``"tolerate-tail"`` truncates a torn last
    #: record and refuses mid-log corruption; ``"strict"`` refuses any damage;
    #: ``"salvage"`` skips damaged records and reports them.
    recovery: str = "tolerate-tail"
    #: Which reads verify the checksum every stored value carries (``docs/format.md`` §3.0):
    #: ``"off"`` -- lengths only; ``"read"`` -- each value a read uses (a get's chunk, each
    #: chunk of a scan as it is reached, each connection or event copied), raising
    #: CorruptionError on a mismatch; ``"always"`` -- also what the writer reads to rewrite.
    #: ``check()`` verifies every value whatever this says. A choice of this handle. The
    #: default is ``"off"`` because ``"read"`` costs more than the 5 % of a scan issue 13
    #: allowed a default (about 1.6x a view scan, 2.5x a column scan: docs/performance.md).
    verify: str = "off"
    #: Guardian quotas: the most tokens, the most accounted bytes (None: unlimited), and
    #: the fraction of ``max_bytes`` from which writes are refused.
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    max_bytes: int | None = DEFAULT_MAX_BYTES
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    #: Tokens per LMDB value (a power of two, 8..65536); fixed at creation.
    chunk_slots: int = DEFAULT_CHUNK_SLOTS
    #: Experience events retained (older ones are trimmed); fixed at creation.
    event_capacity: int = DEFAULT_EVENT_CAPACITY
    #: Reflexes the table holds; set at creation, changed by ``store.resize_reflexes(n)``.
    reflex_capacity: int = DEFAULT_REFLEX_CAPACITY
    #: What a reflex put does to a full table (or a cell holding 4 reflexes already):
    #: ``"evict"`` pushes the weakest out (counted in ``reflex_evictions_total``, logged
    #: once per batch); ``"refuse"`` raises QuotaExceededError before anything of the batch
    #: is written. A policy of this handle, not of the store: each open chooses.
    reflex_eviction: str = "evict"
    #: Known outcomes (``store.outcome(key)``): how many idempotency keys the store
    #: remembers, the newest; a keyed batch beyond them forgets the oldest (format.md
    #: §3.6). 0 turns keys off: a keyed batch then raises InvalidArgumentError. Each keyed
    #: batch logs the window it was committed under, so a later open with another value
    #: changes what later batches keep, never what replay decides.
    remember_keys: int = DEFAULT_REMEMBER_KEYS
    #: Keep the spatial index of token coordinates (``snapshot.tokens.within`` / ``box``;
    #: docs/format.md §3.5) for all 8 layers; fixed at creation. Off by default: its upkeep
    #: costs every token write (about 10x a bulk ingest, tens of times a small commit, and
    #: 80 bytes of index per token; docs/performance.md). Without it those queries scan
    #: every token (same answers, in O(n)).
    spatial_index: bool = False
    #: LMDB's virtual map size (address space, not disk) and its reader slots.
    map_size: int = DEFAULT_MAP_SIZE
    max_readers: int = 126
    #: ``async`` commits are fdatasync'ed within this many seconds.
    flush_interval: float = 0.010
    #: Commits reach LMDB (where snapshots of other processes see them) in groups, at
    #: the latest when the oldest pending one is this many seconds old...
    apply_interval: float = 0.050
    #: ...and a commit waits for the applier while the oldest commit not yet in LMDB is
    #: older than this many seconds, so that LMDB is never older than that plus one apply,
    #: however hard the store is written (None: 1 s, or twice ``apply_interval`` if that
    #: is longer; ``math.inf``: no bound; at least ``apply_interval``). Lower bounds cost
    #: sustained small commits throughput (docs/api.md)...
    max_apply_lag: float | None = None
    #: ...and the overlay of commits not yet in LMDB holds at most this many bytes of
    #: batches (a commit waits for the applier beyond it); a quarter of it starts an apply.
    overlay_bytes: int = 64 << 20
    #: A checkpoint runs when the log or LMDB's file has grown by this many bytes since
    #: the last one, or after ``checkpoint_interval`` seconds.
    checkpoint_bytes: int = 64 << 20
    checkpoint_interval: float = 300.0
    #: ``sync`` batches of this many bytes and more go straight to LMDB, made durable by
    #: a checkpoint, instead of through the log.
    direct_threshold: int = 16 << 20
    #: The size at which the log starts a new segment file.
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    #: The file seam every file operation goes through (tests pass recording or failing ones).
    io: FileIO = field(default=DEFAULT_IO, compare=False)
    #: Show a progress bar while the log is replayed (the CLI sets it).
    progress: bool = False
    #: Observability (``docs/observability.md``): False turns off the black box,
    #: histograms and spans. ``tracing``: None = on if OpenTelemetry is installed and
    #: ``NGSTORE_TRACING`` is not ``off``; ``sample_rate`` is the base sampling rate.
    observability: bool = True
    tracing: Any = None
    sample_rate: float = 0.01
    blackbox_capacity: int = 1000
    #: A writer dumps its black box on an unhandled exception or a fatal signal.
    crash_handlers: bool = True
    #: The permission bits of the store's files (``docs/operations.md`` §7). None: a new
    #: store is private (0o600: files the owner's only; directories 0o700) and an existing
    #: one keeps its own. ``mode=0o640`` shares it read-only with the owner's group
    #: (directories 0o750; LMDB's lock file, which readers write, 0o660). A writer that
    #: passes a mode changes every file of an existing store to it.
    mode: int | None = None

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise InvalidArgumentError(f"durability must be one of {DURABILITY_MODES}, got {self.durability!r}")
        if self.reflex_eviction not in REFLEX_EVICTION:
            raise InvalidArgumentError(
                f"reflex_eviction must be one of {REFLEX_EVICTION}, got {self.reflex_eviction!r}")
        if self.verify not in VERIFY_MODES:
            raise InvalidArgumentError(f"verify must be one of {VERIFY_MODES}, got {self.verify!r}")
        if self.recovery not in RECOVERY_MODES:
            raise InvalidArgumentError(f"recovery must be one of {RECOVERY_MODES}, got {self.recovery!r}")
        for name in ("flush_interval", "apply_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidArgumentError(f"{name} must be > 0 seconds, got {value!r}")
        lag = self.max_apply_lag
        if lag is not None and (isinstance(lag, bool) or not isinstance(lag, (int, float))
                                or not lag >= self.apply_interval):
            raise InvalidArgumentError(f"max_apply_lag must be None or at least apply_interval "
                                       f"({self.apply_interval!r} s), got {lag!r}")
        try:
            ChunkLayout(self.chunk_slots)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        for name in ("event_capacity", "reflex_capacity", "max_readers", "map_size", "segment_bytes",
                     "overlay_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
        check_remember_keys(self.remember_keys)
        if self.mode is not None and (isinstance(self.mode, bool) or not isinstance(self.mode, int)
                                      or self.mode & ~0o666 or self.mode & 0o600 != 0o600):
            raise InvalidArgumentError(
                f"mode must be file permission bits with at least 0o600 and no execute bits (directories get "
                f"search where read is granted), got {self.mode!r}")
        if not isinstance(self.spatial_index, bool):
            raise InvalidArgumentError(f"spatial_index must be a bool, got {self.spatial_index!r}")
        if not isinstance(self.io, FileIO):
            raise InvalidArgumentError(f"io must be a FileIO, got {type(self.io).__name__}")

    @property
    def apply_lag_bound(self) -> float:
        """``max_apply_lag``, its default resolved: seconds."""
        if self.max_apply_lag is None:
            return max(DEFAULT_APPLY_LAG, 2.0 * self.apply_interval)
        return float(self.max_apply_lag)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
