"""IntuitionEngine: the reflex fast path and the slow path that learns reflexes.

Two kinds of engine share this class:

* ``IntuitionEngine.with_defaults()`` / ``IntuitionEngine.create(config, capacity,
  channel_size)`` -- in memory, exactly as the original README shows: ``capacity`` and
  ``channel_size`` size the engine's ExperienceStream (the original's meaning), the
  reflex table has ``config.reflex_capacity`` slots' worth of reflexes.
* ``store.intuition(config)`` -- the engine of a store: its reflexes are the store's
  persistent reflex table (looked up zero-copy on the LMDB map), its experience is the
  store's ExperienceStream, and consolidation writes through a normal store batch, so a
  learned reflex is durable and survives any crash whole.

Fast path: ``try_fast_path(state)`` finds the state's grid cell in the C table in one
call; a reflex of the cell is eligible with confidence >= 150 (a Hypothesis >= 200) and
answered when the similarity of the query and the state it was learned at (the original
``token_similarity``) is > 0.85 -- the original's rules, with the real similarity in place
of its ``confidence/255`` placeholder (docs/format.md §7.7), all thresholds configurable.
With ``IntuitionConfig(nearest_fallback=r)`` a state whose cell gives no answer is answered
by the nearest eligible reflex within ``r`` grid cells. ``try_fast_path_batch(states)``
does many states in one C call (the GIL is released). Neither ever blocks on the slow
path: lookups run on a table version that consolidation replaces atomically.

Slow path: ``analyze()`` samples ``batch_size`` events, finds patterns (binning, Welch t
confidence; ``ngstore.analysis``) and -- unlike the original, where this was never
wired -- turns each accepted pattern into a reflex through the auto-consolidation gate
(confidence >= 192, evidence >= 10, not a Hypothesis, Guardian ``validate_reflex``).
``start()`` runs it every ``analysis_interval_secs`` in a daemon thread.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from .analysis import Pattern, analyze_stream, pattern_to_connection
from .config import IntuitionConfig
from .connections import as_connection_array
from .errors import InvalidArgumentError, NgStoreError
from .experience import ExperienceStream
from .inputs import state_coords
from .records import CONNECTION_DTYPE, Mutability
from .reflex import LookupParams, ReflexHit, ReflexTable, _as_states
from .validation import check_reflex

if TYPE_CHECKING:
    from .batch import Batch
    from .obs import Observability


class ReflexStore(Protocol):
    """What a store engine needs from its store (``Store`` provides it)."""

    @property
    def obs(self) -> Observability | None: ...

    def reflex_table(self) -> ReflexTable | None: ...

    def reflex_stats(self) -> dict[str, Any]: ...

    def batch(self, durability: str | None = None) -> Batch: ...

    def experience(self, channel_size: int = 1000) -> ExperienceStream: ...


class FastPathBatch(NamedTuple):
    """Results of :meth:`IntuitionEngine.try_fast_path_batch` (arrays, one row per state)."""

    found: np.ndarray        #: bool: a reflex answered
    action: np.ndarray       #: float32 (n, 8): its decoded target_vector (zeros if none)
    similarity: np.ndarray   #: float32: of the state and the reflex's source state (0 if none)
    confidence: np.ndarray   #: uint8
    connections: np.ndarray | None  #: CONNECTION_DTYPE records (zeros if none)
    fallback: np.ndarray     #: bool: answered by the nearest fallback, not the state's own cell
    distance: np.ndarray     #: float32: grid cells from the state to the source state


@dataclass
class AnalysisReport:
    """What one ``analyze()`` cycle did."""

    events_sampled: int
    patterns: list[Pattern]
    consolidated: int
    rejected: list[tuple[Pattern, str]] = field(default_factory=list)
    seconds: float = 0.0


class _MemoryReflexes:
    def __init__(self, capacity: int, shifts: Any) -> None:
        self.table_ = ReflexTable.create(capacity, shifts)
        self.lock = threading.Lock()
        self.created = 0

    def table(self) -> ReflexTable | None:
        return self.table_

    def put(self, states: Any, connections: np.ndarray) -> None:
        coords = state_coords(states)
        with self.lock:  # writes are serialised; lookups do not wait for this
            self.table_.insert_batch(coords, np.ascontiguousarray(connections))
            self.created += len(connections)

    def stats(self) -> dict[str, Any]:
        return self.table_.stats()


class _StoreReflexes:
    def __init__(self, store: ReflexStore) -> None:
        self.store = store

    def table(self) -> ReflexTable | None:
        return self.store.reflex_table()

    def put(self, states: Any, connections: np.ndarray) -> None:
        with self.store.batch() as b:
            b.put_reflexes(states, connections)

    def stats(self) -> dict[str, Any]:
        s = self.store.reflex_stats()
        t = self.table()
        return {"fast_path_hits": s["reflex_hits_total"], "misses": s["reflex_misses_total"],
                "lookups": s["reflex_lookups_total"], "collisions": s["reflex_collisions_total"],
                "answers": s["reflex_answers_total"], "live": s["reflexes_live"],
                "avg_candidates_per_lookup": t.stats()["avg_candidates_per_lookup"] if t else 0.0,
                "created": s["reflexes_created_total"]}


class IntuitionEngine:
    """The reflex system. Make one with :meth:`with_defaults`, :meth:`create` or
    ``store.intuition()``."""

    def __init__(self, config: IntuitionConfig, stream: ExperienceStream, reflexes: Any,
                 store: ReflexStore | None = None) -> None:
        self._config = config
        self._stream = stream
        self._reflexes = reflexes
        self._store = store
        self._slow_uses = 0
        self._slow_ns_avg = 0.0
        self._promoted = 0
        self._failed = 0
        self._created_here = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._analysis_lock = threading.Lock()
        self.last_report: AnalysisReport | None = None
        #: events written before the last analysis cycle started (intuition_queue_size)
        self._analyzed_through = 0
        self.last_error: BaseException | None = None
        # The fast path's state, prepared once: the thresholds as C parameters, and the
        # table itself when it never changes (an in-memory engine's table is one object,
        # which grows in place; a store's is a new version after each reflex commit).
        self._fast_enabled = config.enable_fast_path
        self._params = LookupParams(config.fast_path_min_confidence, config.hypothesis_threshold,
                                    config.similarity_threshold, config.nearest_fallback)
        self._fixed_table: ReflexTable | None = (reflexes.table_ if isinstance(reflexes, _MemoryReflexes)
                                                 else None)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def with_defaults() -> IntuitionEngine:
        """An in-memory engine with every default (the original's one-line API)."""
        return IntuitionEngine.create()

    @staticmethod
    def create(config: IntuitionConfig | None = None, capacity: int | None = None,
               channel_size: int | None = None) -> IntuitionEngine:
        """An in-memory engine. ``capacity``/``channel_size`` size its ExperienceStream
        (defaults 10 000 and 1 000, as in the original)."""
        if config is not None and not isinstance(config, IntuitionConfig):
            raise InvalidArgumentError(f"config must be an IntuitionConfig, got {type(config).__name__}")
        cfg = config or IntuitionConfig()
        stream = ExperienceStream(capacity=10_000 if capacity is None else capacity,
                                  channel_size=1000 if channel_size is None else channel_size)
        return IntuitionEngine(cfg, stream, _MemoryReflexes(cfg.reflex_capacity, cfg.shifts))

    @staticmethod
    def for_store(store: ReflexStore, config: IntuitionConfig | None = None) -> IntuitionEngine:
        """The engine of a store: its reflexes and experience are the store's (use
        ``store.intuition()``, which keeps one engine per handle)."""
        cfg = config or IntuitionConfig()
        return IntuitionEngine(cfg, store.experience(), _StoreReflexes(store), store=store)

    # ------------------------------------------------------------------ properties

    @property
    def analyzed_through(self) -> int:
        """Events written before the last analysis cycle started (what it could see)."""
        return self._analyzed_through

    @property
    def config(self) -> IntuitionConfig:
        return self._config

    @property
    def experience(self) -> ExperienceStream:
        """The stream the slow path learns from (write events here)."""
        return self._stream

    @property
    def table(self) -> ReflexTable | None:
        """The current reflex table version (None before the first reflex of a store)."""
        table: ReflexTable | None = self._reflexes.table()
        return table

    # ------------------------------------------------------------------ fast path

    def try_fast_path(self, state: Any) -> ReflexHit | None:
        """The best eligible reflex for ``state`` (8 floats, a Token, or raw (8, 3) int16
        coordinates): a :class:`~ngstore.reflex.ReflexHit` (``connection``, ``action``,
        ``similarity``, ``distance``, ``fallback``), or None.

        Lean on purpose: for a list or tuple of 8 floats it is one C call and, on a hit, one
        112-byte copy. A state that is not one state raises InvalidArgumentError, whether or
        not the table holds reflexes."""
        table = self._fixed_table
        if table is None:
            table = self._reflexes.table()
        if table is None or not self._fast_enabled:
            _check_one_state(state)
            return None
        return table.lookup_with(self._params, state)

    def try_fast_path_batch(self, states: Any, *, with_connections: bool = True) -> FastPathBatch:
        """The fast path for many states in one C call: (n, 8) floats, a TokenArray, a
        TOKEN_DTYPE array, or (n, 8, 3) int16 coordinates."""
        from .tokens import TokenArray

        if isinstance(states, TokenArray):
            states = states.data
        table = self._fixed_table
        if table is None:
            table = self._reflexes.table()
        if not self._fast_enabled or table is None:
            kind, arr, _ = _as_states(states)
            n = arr.nbytes // {0: 32, 1: 64, 2: 48}[kind]
            zeros = np.zeros(n, np.float32)
            return FastPathBatch(np.zeros(n, bool), np.zeros((n, 8), np.float32), zeros, np.zeros(n, np.uint8),
                                 np.zeros(n, CONNECTION_DTYPE) if with_connections else None, np.zeros(n, bool),
                                 zeros.copy())
        r = table.lookup_batch(states, params=self._params, with_connections=with_connections)
        return FastPathBatch(r.found, r.action, r.similarity, r.confidence, r.connections, r.fallback, r.distance)

    @staticmethod
    def _fast_path_ns(table_stats: dict[str, Any]) -> float:
        """Mean time of a fast-path lookup, per state, measured in C (every batch call and
        one single lookup in 64; a clock read costs as much as a lookup)."""
        return float(table_stats.get("avg_lookup_ns", 0.0))

    # ------------------------------------------------------------------ consolidation

    def consolidate_reflex(self, state: Any, connection: Any) -> None:
        """Stores ``connection`` as a reflex for ``state`` (no gate beyond validation)."""
        conns = as_connection_array(connection)
        self._reflexes.put(state, np.ascontiguousarray(conns))
        self._created_here += len(conns)

    def auto_consolidation_problem(self, connection: Any) -> str | None:
        """Why ``connection`` fails the auto-consolidation gate, or None if it passes."""
        rec = as_connection_array(connection)[0]
        c = self._config
        if int(rec["confidence"]) < c.consolidation_min_confidence:
            return f"confidence {int(rec['confidence'])} < {c.consolidation_min_confidence}"
        if int(rec["evidence_count"]) < c.consolidation_min_evidence:
            return f"evidence {int(rec['evidence_count'])} < {c.consolidation_min_evidence}"
        if int(rec["mutability"]) > Mutability.LEARNABLE:
            return "a Hypothesis is never auto-consolidated"
        problems = check_reflex(rec)
        if problems:
            return "validate_reflex: " + "; ".join(f"{f}: {m}" for f, m, _v in problems)
        return None

    def try_auto_consolidate(self, state: Any, connection: Any) -> bool:
        """Consolidates only through the original's gate (confidence >= 192, evidence >= 10,
        not a Hypothesis, Guardian validate_reflex). Returns whether it did."""
        if self.auto_consolidation_problem(connection) is not None:
            self._failed += 1
            return False
        self.consolidate_reflex(state, connection)
        self._promoted += 1
        return True

    # ------------------------------------------------------------------ slow path

    def analyze(self, rng: Any = None) -> AnalysisReport:
        """One analysis cycle: sample, find patterns, consolidate the accepted ones as
        reflexes (all in one batch for a store engine)."""
        obs = self._store.obs if self._store is not None else None
        with self._analysis_lock:
            if obs is not None:
                with obs.span("analysis") as span:
                    report = self._analyze(rng)
                    span.set("patterns", len(report.patterns))
                    span.set("consolidated", report.consolidated)
                obs.event("analysis", patterns=len(report.patterns), consolidated=report.consolidated,
                          rejected=len(report.rejected), seconds=round(report.seconds, 6))
            else:
                report = self._analyze(rng)
        self.last_report = report
        return report

    def _analyze(self, rng: Any) -> AnalysisReport:
        t0 = time.perf_counter()
        self._analyzed_through = self._stream.total_written
        patterns = analyze_stream(self._stream, self._config, rng=rng)
        states, conns, rejected = [], [], []
        for p in patterns:
            rec = pattern_to_connection(p).record
            why = self.auto_consolidation_problem(rec)
            if why is not None:
                rejected.append((p, why))
                continue
            states.append(np.asarray(p.representative_state, dtype=np.float32))
            conns.append(rec)
        if conns:
            self._reflexes.put(np.stack(states), np.concatenate([np.asarray(c).reshape(1) for c in conns]))
            self._created_here += len(conns)
            self._promoted += len(conns)
        self._failed += len(rejected)
        dt = time.perf_counter() - t0
        self._slow_uses += 1
        ns = dt * 1e9
        self._slow_ns_avg = ns if self._slow_ns_avg == 0 else (self._slow_ns_avg + ns) / 2
        sampled = min(self._config.batch_size, self._stream.size())
        return AnalysisReport(sampled, patterns, len(conns), rejected, dt)

    def start(self) -> None:
        """Runs ``analyze()`` every ``analysis_interval_secs`` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ngstore-intuition", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._config.analysis_interval_secs):
            try:
                self.analyze()
            except NgStoreError as exc:  # e.g. a quota refusal: keep running, remember it
                self.last_error = exc
            except BaseException as exc:  # pragma: no cover - reported, then the loop stops
                self.last_error = exc
                raise

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Every field of the original IntuitionStats, all measured (see docs/api.md)."""
        table = self._reflexes.table()
        ts = table.stats() if table is not None else {}
        if isinstance(self._reflexes, _StoreReflexes):
            st = self._reflexes.stats()
            hits, misses, lookups = st["fast_path_hits"], st["misses"], st["lookups"]
            collisions = st["collisions"]
            created = st["created"]
        else:
            hits, misses, lookups = ts.get("hits", 0), ts.get("misses", 0), ts.get("lookups", 0)
            collisions = ts.get("collisions", 0)
            created = self._reflexes.created
        hyp = learn = 0
        if table is not None and len(table):
            mut = table.entries()["connection"]["mutability"]
            hyp = int(np.count_nonzero(mut == Mutability.HYPOTHESIS))
            learn = int(np.count_nonzero(mut == Mutability.LEARNABLE))
        fast = self._fast_path_ns(ts)
        return {
            "reflexes_created": int(created),
            "total_reflexes": len(table) if table is not None else 0,
            "fast_path_hits": int(hits),
            "avg_fast_path_time_ns": round(fast),
            "fast_path_misses": int(misses),
            "fast_path_lookups": int(lookups),
            "fast_path_hit_rate": hits / lookups if lookups else 0.0,
            "fast_path_exact_answers": int(ts.get("exact_answers", 0)),
            "fast_path_fallback_answers": int(ts.get("fallback_answers", 0)),
            "hash_collisions": int(collisions),
            "avg_candidates_per_lookup": float(ts.get("avg_candidates_per_lookup", 0.0)),
            "slow_path_uses": self._slow_uses,
            "avg_slow_path_time_ns": round(self._slow_ns_avg),
            "speedup_ratio": self._slow_ns_avg / fast if fast else 0.0,
            "associative_memory_size": len(table) if table is not None else 0,
            "hypothesis_count": hyp,
            "learnable_count": learn,
            "reflexes_promoted": self._promoted,
            "reflexes_failed": self._failed,
            "current_shift_default": int(self._config.shifts[3]),
            "shift_adjustments": 0,  # adaptive shift tuning is not run (the original never ran it)
            "reflex_capacity": table.capacity if table is not None else self._config.reflex_capacity,
        }

    def __repr__(self) -> str:
        s = self.stats()
        return f"IntuitionEngine(reflexes={s['total_reflexes']}, fast_path_hits={s['fast_path_hits']})"


def _check_one_state(state: Any) -> None:
    """Raises InvalidArgumentError unless ``state`` is one state (as a lookup would)."""
    if (type(state) is list or type(state) is tuple) and len(state) == 8 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in state):
        return
    _, _, single = _as_states(state)
    if not single:
        raise InvalidArgumentError("try_fast_path takes one state; use try_fast_path_batch for many")
