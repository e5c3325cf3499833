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

Slow path: ``analyze()`` learns reflexes from the experience stream and -- unlike the
original, where this was never wired -- consolidates what it finds through the
auto-consolidation gate (confidence >= 192, evidence >= 10, not a Hypothesis, Guardian
``validate_reflex``). ``start()`` runs it every ``analysis_interval_secs`` in a daemon
thread. Two rules, chosen by ``IntuitionConfig(learning=...)``:

* ``"accumulate"`` (default): a cycle folds every event written since the last cycle into
  running reward moments per (bin, action) (``ngstore.learning``; in a store they are
  persisted and replayed, committed in the same batch as the reflexes they produce), then
  runs the original's pair rules (min_samples, min_reward_delta, Welch t, confidence =
  min(t/3, 1), min_confidence) on all the evidence so far. Each bin with a significant
  pattern gets one reflex: the better action with the highest mean reward. It is filed
  under the bin's **key state** (``analysis.bin_key_states``), and a state whose own cell
  gives no answer is looked up again at its bin's key -- so a learned reflex answers every
  state of its bin, not only those in the grid cell of the bin's mean state. A bin's
  reflex is written when it is new, when its best action changes, or when its confidence
  changes; at most ``max_proposals_per_cycle`` writes per cycle, new bins first.
* ``"sample"``: the original analysis, kept for comparison: one sample of ``batch_size``
  events per cycle (``sampling_strategy``), nothing carried over, each accepted pattern
  consolidated at its bin's mean state.
"""
from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from .analysis import (
    Pattern,
    analyze_stream,
    bin_key_states,
    dominant_per_bin,
    find_patterns_in_statistics,
    fold_events,
    pattern_to_connection,
    reflex_token_a,
    state_bins,
)
from .codec import DEFAULT_SHIFTS, decode_state
from .config import IntuitionConfig
from .connections import as_connection_array, encode_action
from .errors import InvalidArgumentError, NgStoreError, NotFoundError
from .experience import ExperienceStream
from .inputs import state_coords
from .interrupts import Signal
from .layout import LEARN_MOMENTS_DTYPE
from .learning import LearnedStatistics, make_fold, merge_folds
from .records import CONNECTION_DTYPE, TOKEN_DTYPE, Mutability
from .reflex import (
    ANSWERED,
    KIND_COORDS,
    KIND_F32,
    Current,
    LookupParams,
    LookupResult,
    ReflexHit,
    ReflexTable,
    _as_states,
)
from .tokens import Token, TokenArray
from .validation import check_reflex

if TYPE_CHECKING:
    from .batch import Batch
    from .obs import Observability


class ReflexStore(Protocol):
    """What a store engine needs from its store (``Store`` provides it)."""

    @property
    def obs(self) -> Observability | None: ...

    def reflex_table(self) -> ReflexTable | None: ...

    def reflex_current(self) -> Current: ...

    def reflex_stats(self) -> dict[str, Any]: ...

    def batch(self, durability: str | None = None) -> Batch: ...

    def experience(self, channel_size: int = 1000) -> ExperienceStream: ...

    def learning_statistics(self, bins_per_dim: int = 4, *, groups: bool = True) -> LearnedStatistics: ...


class FastPathBatch(NamedTuple):
    """Results of :meth:`IntuitionEngine.try_fast_path_batch` (arrays, one row per state)."""

    found: np.ndarray        #: bool: a reflex answered
    action: np.ndarray       #: float32 (n, 8): its decoded target_vector (zeros if none)
    similarity: np.ndarray   #: float32: of the state and the reflex's source state (0 if none)
    confidence: np.ndarray   #: uint8
    connections: np.ndarray | None  #: CONNECTION_DTYPE records (zeros if none)
    fallback: np.ndarray     #: bool: answered by the nearest fallback, not the state's own cell
    distance: np.ndarray     #: float32: grid cells from the state to the source state
    by_bin: np.ndarray | None = None  #: bool: answered by the learned reflex of the state's bin


@dataclass
class AnalysisReport:
    """What one ``analyze()`` cycle did.

    ``events_sampled``: the events the cycle looked at (``"sample"``: the sample drawn;
    ``"accumulate"``: the events folded into the statistics). ``patterns``: the patterns
    accepted (``"accumulate"``: every significant pattern of all the evidence so far, best
    first). ``consolidated``: reflexes written; ``created``: of them, reflexes for bins that
    had none (``"accumulate"``). ``groups``: (bin, action) groups in the statistics.
    ``retracted``: learned reflexes deleted because their bin has no dominant action any
    more."""

    events_sampled: int
    patterns: list[Pattern]
    consolidated: int
    rejected: list[tuple[Pattern, str]] = field(default_factory=list)
    seconds: float = 0.0
    created: int = 0
    groups: int = 0
    learning: str = "sample"
    retracted: int = 0


#: Reads a bin key's cell whatever its reflex's confidence (analysis compares it itself).
_PROBE = LookupParams(0, 0, 0.0)
#: A cycle reads the events it folds in chunks of this many (at most ~32 MiB at a time).
FOLD_CHUNK = 1 << 18


class _MemoryReflexes:
    def __init__(self, capacity: int, shifts: Any) -> None:
        self.table_ = ReflexTable.create(capacity, shifts)
        self.current = Current(self.table_)  # one object, grown in place: never replaced
        self.lock = threading.Lock()
        self.created = 0

    def table(self) -> ReflexTable | None:
        return self.table_

    def put(self, states: Any, connections: np.ndarray) -> None:
        coords = state_coords(states)
        with self.lock:  # writes are serialised; lookups do not wait for this
            outcomes = self.table_.insert_batch(coords, np.ascontiguousarray(connections))
            self.created += int(np.count_nonzero(outcomes != 2))  # upserts are not creations

    def delete(self, states: Any, connections: np.ndarray) -> None:
        coords = state_coords(states)
        with self.lock:
            for state, conn in zip(coords, connections, strict=True):
                try:
                    self.table_.delete(state, conn)
                except NotFoundError:
                    pass

    def stats(self) -> dict[str, Any]:
        return self.table_.stats()


class _StoreReflexes:
    def __init__(self, store: ReflexStore) -> None:
        self.store = store
        self.current = store.reflex_current()  # the applier's (or a reader's): a new version after a reflex commit

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


@dataclass
class _Cycle:
    """What an accumulating cycle writes: reflexes (at their bins' key states) and learned
    reflexes to retract (their key states and identities)."""

    states: np.ndarray
    connections: np.ndarray
    retract_states: np.ndarray
    retract: np.ndarray
    created: int = 0
    rejected: list[tuple[Pattern, str]] = field(default_factory=list)
    written: list[Pattern] = field(default_factory=list)


class _MemoryLearning:
    """The statistics of an in-memory engine: one LearnedStatistics per binning."""

    def __init__(self) -> None:
        self.held: dict[int, LearnedStatistics] = {}

    def statistics(self, bins_per_dim: int) -> LearnedStatistics:
        return self.held.get(bins_per_dim) or LearnedStatistics(bins_per_dim)

    def cursor_only(self, bins_per_dim: int) -> LearnedStatistics:
        return self.statistics(bins_per_dim)

    def commit(self, reflexes: Any, after: LearnedStatistics | None, fold: np.ndarray | None,
               cycle: _Cycle) -> None:
        if len(cycle.retract):
            reflexes.delete(cycle.retract_states, cycle.retract)
        if len(cycle.connections):
            reflexes.put(cycle.states, cycle.connections)
        if after is not None:
            self.held[after.bins_per_dim] = after


class _StoreLearning:
    """The statistics of a store engine: the store's, mirrored in memory between cycles
    (the mirror is the same function of the same folds, so it equals what LMDB holds; it
    is reloaded whenever the store's cursor says otherwise)."""

    def __init__(self, store: ReflexStore) -> None:
        self.store = store
        self.held: dict[int, LearnedStatistics] = {}

    def statistics(self, bins_per_dim: int) -> LearnedStatistics:
        mirror = self.held.get(bins_per_dim)
        stored = self.store.learning_statistics(bins_per_dim, groups=False)
        if mirror is None or mirror.cursor != stored.cursor:
            mirror = self.store.learning_statistics(bins_per_dim)
            self.held[bins_per_dim] = mirror
        return mirror

    def cursor_only(self, bins_per_dim: int) -> LearnedStatistics:
        return self.held.get(bins_per_dim) or self.store.learning_statistics(bins_per_dim, groups=False)

    def commit(self, reflexes: Any, after: LearnedStatistics | None, fold: np.ndarray | None,
               cycle: _Cycle) -> None:
        """The reflexes and the fold that produced them, in one batch."""
        with self.store.batch() as b:
            if len(cycle.retract):
                b.delete_reflexes(cycle.retract_states, cycle.retract)
            if len(cycle.connections):
                b.put_reflexes(cycle.states, cycle.connections)
            if fold is not None:
                b.update_learning(fold)
        if after is not None:
            self.held[after.bins_per_dim] = after


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
        self._stop = Signal()  # set by stop(), from a thread an interrupt may stop (interrupts.py)
        self._analysis_lock = threading.Lock()
        self.last_report: AnalysisReport | None = None
        #: events written before the last analysis cycle started (intuition_queue_size)
        self._analyzed_through = 0
        self.last_error: BaseException | None = None
        # The fast path's state, prepared once: the thresholds as C parameters, and what
        # names the table to use (read once per lookup: an in-memory engine's table is one
        # object, which grows in place; a store's is a new version after each reflex
        # commit, None once the store closed). With the fast path off it names none.
        self._params = LookupParams(config.fast_path_min_confidence, config.hypothesis_threshold,
                                    config.similarity_threshold, config.nearest_fallback)
        self._current: Current = reflexes.current if config.enable_fast_path else Current()
        # Learning: the statistics (the store's, or in memory), and whether a miss is looked
        # up again at its bin's key (only once this binning has learned: a store or an
        # engine that never learned pays nothing on a miss).
        self._learning: _MemoryLearning | _StoreLearning = (
            _StoreLearning(store) if store is not None else _MemoryLearning())
        self._bins = config.state_bins_per_dim
        self._bin_lookups = config.learning == "accumulate" and store is not None and \
            store.learning_statistics(self._bins, groups=False).learned
        self._key_params = LookupParams(config.fast_path_min_confidence, config.hypothesis_threshold,
                                        config.similarity_threshold)
        # Table lookups the engine made for itself (bin keys), taken out of the fast-path
        # counters in stats(): lookups, hits, misses, answers; and the answers by bin.
        self._probe_lock = threading.Lock()
        self._probes = [0, 0, 0, 0]
        self._bin_answers = 0
        self._retracted = 0

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

    def learned_statistics(self) -> LearnedStatistics:
        """The evidence the slow path has accumulated, for this engine's binning
        (``state_bins_per_dim``): a store's as committed, an in-memory engine's own."""
        if self._store is not None:
            return self._store.learning_statistics(self._bins)
        return self._learning.statistics(self._bins)

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
        table = self._current.table
        if table is None:  # no reflex yet, the fast path off, or the store closed
            self._reflexes.table()  # raises StoreClosedError once the store is closed
            _check_one_state(state)
            return None
        probe = table.probe  # what lookup_with calls first, without its frame
        r = probe.lookup(self._params.address, state) if probe is not None else 0
        if type(r) is int and type(state) is Token and probe is not None:  # its 64 bytes as they are
            r = probe.lookup_token(self._params.address, state.to_bytes())
        hit: ReflexHit | None = r if type(r) is not int else table.lookup_with(  # type: ignore[assignment]
            self._params, state)  # another form of state, an error, or the table closed since
        if hit is None and self._bin_lookups:
            return self._bin_hit(table, state)
        return hit

    def _bin_hit(self, table: ReflexTable, state: Any) -> ReflexHit | None:
        """The learned reflex of ``state``'s bin, looked up at the bin's key (a miss of the
        state's own cell). Its similarity and distance are the key's: 1 and 0."""
        kind, arr, single = _as_states(state)
        if not single:
            raise InvalidArgumentError("try_fast_path takes one state; use try_fast_path_batch for many")
        r, _bins, valid = self._by_bin(table, kind, arr)
        if not valid[0]:
            return None
        head = struct.pack("<ffII", float(r.similarity[0]), float(r.distance[0]), ANSWERED, int(r.record[0]))
        assert r.connections is not None
        return ReflexHit(head + r.action[0].tobytes() + r.connections[0].tobytes())

    def _by_bin(self, table: ReflexTable, kind: int, arr: np.ndarray) -> tuple[LookupResult, np.ndarray, np.ndarray]:
        """Looks states up at their bins' keys: ``(result, bins, valid)``, where ``valid``
        marks answers by the reflex learned for that very bin (a key cell that another
        reflex won is no answer)."""
        bins = state_bins(_float_states(kind, arr), self._bins)
        keys = bin_key_states(bins, self._bins, table.shifts)
        r = table.lookup_batch(keys, params=self._key_params)
        assert r.connections is not None
        valid = r.found & (r.connections["token_a"] == reflex_token_a(bins))
        self._note_probes(r, valid)
        return r, bins, valid

    def _note_probes(self, r: LookupResult, answers: np.ndarray) -> None:
        """Counts table lookups the engine made for itself; ``answers``: those that answer a
        caller's state (they stay counted as answers)."""
        n, known = len(r.found), int(np.count_nonzero(r.known))
        with self._probe_lock:
            p = self._probes
            p[0] += n
            p[1] += known
            p[2] += n - known
            p[3] += int(np.count_nonzero(r.found)) - int(np.count_nonzero(answers))
            self._bin_answers += int(np.count_nonzero(answers))

    def try_fast_path_batch(self, states: Any, *, with_connections: bool = True) -> FastPathBatch:
        """The fast path for many states in one C call: (n, 8) floats, a TokenArray, a
        TOKEN_DTYPE array, or (n, 8, 3) int16 coordinates."""
        if isinstance(states, TokenArray):
            states = states.data
        table = self._current.table
        if table is None:
            self._reflexes.table()  # raises StoreClosedError once the store is closed
            kind, arr, _ = _as_states(states)
            n = arr.nbytes // {0: 32, 1: 64, 2: 48}[kind]
            zeros = np.zeros(n, np.float32)
            return FastPathBatch(np.zeros(n, bool), np.zeros((n, 8), np.float32), zeros, np.zeros(n, np.uint8),
                                 np.zeros(n, CONNECTION_DTYPE) if with_connections else None, np.zeros(n, bool),
                                 zeros.copy(), np.zeros(n, bool))
        r = table.lookup_batch(states, params=self._params, with_connections=with_connections)
        by_bin = np.zeros(len(r.found), bool)
        if self._bin_lookups and not r.found.all():
            kind, arr, _ = _as_states(states)
            miss = np.flatnonzero(~r.found)
            rows = arr.reshape(len(r.found), -1)[miss]
            k, _bins, valid = self._by_bin(table, kind, rows)
            at = miss[valid]
            by_bin[at] = True
            r.found[at] = True
            r.action[at] = k.action[valid]
            r.similarity[at] = k.similarity[valid]
            r.confidence[at] = k.confidence[valid]
            r.distance[at] = k.distance[valid]
            if r.connections is not None and k.connections is not None:
                r.connections[at] = k.connections[valid]
        return FastPathBatch(r.found, r.action, r.similarity, r.confidence, r.connections, r.fallback, r.distance,
                             by_bin)

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
        """One analysis cycle (``IntuitionConfig.learning``): fold the new events into the
        statistics and consolidate what all the evidence shows (``"accumulate"``), or sample,
        find patterns and consolidate them (``"sample"``). A store engine commits the
        cycle's reflexes and its fold in one batch."""
        obs = self._store.obs if self._store is not None else None
        run = self._accumulate if self._config.learning == "accumulate" else self._sample
        with self._analysis_lock:
            if obs is not None:
                with obs.span("analysis") as span:
                    report = run(rng)
                    span.set("patterns", len(report.patterns))
                    span.set("consolidated", report.consolidated)
                obs.event("analysis", patterns=len(report.patterns), consolidated=report.consolidated,
                          rejected=len(report.rejected), seconds=round(report.seconds, 6))
            else:
                report = run(rng)
        self.last_report = report
        return report

    def _timed(self, t0: float) -> float:
        dt = time.perf_counter() - t0
        self._slow_uses += 1
        ns = dt * 1e9
        self._slow_ns_avg = ns if self._slow_ns_avg == 0 else (self._slow_ns_avg + ns) / 2
        return dt

    def _sample(self, rng: Any) -> AnalysisReport:
        """The original's cycle: one sample, no memory of earlier cycles."""
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
        sampled = min(self._config.batch_size, self._stream.size())
        return AnalysisReport(sampled, patterns, len(conns), rejected, self._timed(t0))

    def _accumulate(self, _rng: Any) -> AnalysisReport:
        """Fold, find patterns in all the evidence, write the reflexes that changed."""
        t0 = time.perf_counter()
        cfg = self._config
        stats = self._learning.statistics(self._bins)
        self._analyzed_through = self._stream.total_written
        fold, seen = self._fold(stats.cursor.next_seq)
        after = stats.applied(fold)[0] if fold is not None else None
        current = after if after is not None else stats
        patterns = find_patterns_in_statistics(current, cfg, limit="confident")
        cycle = self._decide(current, dominant_per_bin(patterns, current, cfg))
        if fold is not None or len(cycle.connections) or len(cycle.retract):
            self._learning.commit(self._reflexes, after, fold, cycle)
        self._promoted += len(cycle.connections)
        self._failed += len(cycle.rejected)
        self._retracted += len(cycle.retract)
        if current.learned:
            self._bin_lookups = True
        return AnalysisReport(seen, patterns, len(cycle.connections), cycle.rejected, self._timed(t0), cycle.created,
                              len(current), "accumulate", len(cycle.retract))

    def _fold(self, cursor: int) -> tuple[np.ndarray | None, int]:
        """The fold of the events written since ``cursor`` (None: nothing new) and how many
        events it read. Events the stream no longer holds are skipped (the fold starts
        later; the store counts them as missed)."""
        end = self._stream.total_written
        begin = max(cursor, self._stream.first_seq)
        if end <= cursor:
            return None, 0
        fold: np.ndarray | None = None
        start = s = begin
        while s < end:
            e = min(end, s + FOLD_CHUNK)
            rows = self._stream.query_range(s, e)
            got = e - len(rows)
            if got != s:  # trimmed while we read: everything before `got` is missed
                fold, start = None, got
            part = fold_events(rows, self._bins, got, e)
            fold = part if fold is None else merge_folds(fold, part)
            s = e
        if fold is None:  # every event since the cursor was trimmed before this cycle
            fold = make_fold(self._bins, end, end, np.zeros(0, np.uint64), np.zeros(0, np.uint16),
                             np.zeros(0, LEARN_MOMENTS_DTYPE))
        return fold, end - start

    def _decide(self, stats: LearnedStatistics, dominant: list[Pattern]) -> _Cycle:
        """What this cycle writes.

        A dominant bin's reflex is written when the table holds none for it (new), when the
        action it answers is no longer the dominant one (its target vector is nearer another
        action's mean), or when its confidence changed -- in that order of priority, then by
        score; at most ``max_proposals_per_cycle``. A candidate that fails the
        auto-consolidation gate is rejected (and counted) instead. A learned reflex whose bin
        has no dominant action any more is retracted (a wrong answer is worse than none).
        Vectorised over the bins: Python work is spent only on the candidates."""
        cfg = self._config
        table = self._reflexes.table()
        shifts = table.shifts if table is not None else DEFAULT_SHIFTS  # a store's first table has these
        bins = np.unique(stats.bins)  # every bin with evidence: its learned reflex, if any, is checked
        where = {b: i for i, b in enumerate(bins.tolist())}
        dom = np.array([where[p.bin] for p in dominant], np.int64)
        mine = np.zeros(len(bins), bool)
        stored = np.zeros(len(bins), CONNECTION_DTYPE)
        keys = bin_key_states(bins, self._bins, shifts)
        if table is not None and len(table) and len(bins):
            r = table.lookup_batch(keys, params=_PROBE)
            assert r.connections is not None
            self._note_probes(r, np.zeros(len(bins), bool))
            mine = r.found & (r.connections["token_a"] == reflex_token_a(bins))
            stored = r.connections
        is_dominant = np.zeros(len(bins), bool)
        is_dominant[dom] = True
        gone = np.flatnonzero(mine & ~is_dominant)
        cycle = _Cycle(np.zeros((0, 8, 3), np.int16), np.zeros(0, CONNECTION_DTYPE), keys[gone], stored[gone])
        if not dominant:
            return cycle
        conf = np.array([p.confidence for p in dominant])
        raw_conf = np.clip(np.floor(255.0 * conf + 0.5), 0, 255).astype(np.int64)  # pattern_to_connection's
        kind = np.zeros(len(dominant), np.int64)  # 0 new, 1 action changed, 2 confidence changed, 3 nothing
        have = mine[dom]
        if have.any():
            same = _answers_actions(stats, bins[dom], np.array([p.better_action for p in dominant]),
                                    stored["target_vector"][dom])
            kind[have] = np.where(~same[have], 1, np.where(stored["confidence"][dom][have] != raw_conf[have], 2, 3))
        evidence = np.minimum([p.n_better for p in dominant], 0xFFFF)
        weak = (raw_conf < cfg.consolidation_min_confidence) | (evidence < cfg.consolidation_min_evidence)
        for i in np.flatnonzero((kind < 3) & weak).tolist():
            rec = pattern_to_connection(dominant[i]).record
            cycle.rejected.append((dominant[i], self.auto_consolidation_problem(rec) or ""))
        cand = np.flatnonzero((kind < 3) & ~weak)
        score = np.array([p.score for p in dominant])
        cand = cand[np.lexsort((bins[dom][cand], -score[cand], kind[cand]))]
        chosen: list[int] = []
        recs = []
        for i in cand.tolist():
            if len(chosen) >= cfg.max_proposals_per_cycle:
                break
            rec = pattern_to_connection(dominant[i]).record
            why = self.auto_consolidation_problem(rec)
            if why is not None:
                cycle.rejected.append((dominant[i], why))
                continue
            chosen.append(i)
            recs.append(rec)
        if chosen:
            cycle.states = keys[dom[chosen]]
            cycle.connections = np.concatenate(recs)
            cycle.written = [dominant[i] for i in chosen]
            cycle.created = int(np.count_nonzero(kind[chosen] == 0))
        return cycle

    def start(self) -> None:
        """Runs ``analyze()`` every ``analysis_interval_secs`` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        stop = self._stop = Signal()
        self._thread = threading.Thread(target=self._loop, args=(stop,), name="ngstore-intuition", daemon=True)
        self._thread.start()

    def _loop(self, stop: Signal) -> None:
        while not stop.wait(self._config.analysis_interval_secs):
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
        with self._probe_lock:  # the engine's own lookups at bin keys are not the caller's
            (p_lookups, p_hits, p_misses, p_answers), bin_answers = list(self._probes), self._bin_answers
        lookups, hits, misses = max(0, lookups - p_lookups), max(0, hits - p_hits), max(0, misses - p_misses)
        exact = max(0, int(ts.get("exact_answers", 0)) - p_answers - bin_answers)
        hyp = learn = 0
        if table is not None and len(table):
            mut = table.entries()["connection"]["mutability"]
            hyp = int(np.count_nonzero(mut == Mutability.HYPOTHESIS))
            learn = int(np.count_nonzero(mut == Mutability.LEARNABLE))
        fast = self._fast_path_ns(ts)
        cursor = self._learning.cursor_only(self._bins).cursor
        return {
            "reflexes_created": int(created),
            "total_reflexes": len(table) if table is not None else 0,
            "fast_path_hits": int(hits),
            "avg_fast_path_time_ns": round(fast),
            "fast_path_misses": int(misses),
            "fast_path_lookups": int(lookups),
            "fast_path_hit_rate": hits / lookups if lookups else 0.0,
            "fast_path_exact_answers": exact,
            "fast_path_fallback_answers": int(ts.get("fallback_answers", 0)),
            "fast_path_bin_answers": bin_answers,
            "learning": self._config.learning,
            "learned_events": cursor.events_counted,
            "learned_events_missed": cursor.events_missed,
            "learning_folds": cursor.folds,
            "learned_reflexes_retracted": self._retracted,
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


def _float_states(kind: int, arr: np.ndarray) -> np.ndarray:
    """The 8-float states (n, 8) of normalised states (``reflex._as_states``): floats as
    they are; tokens and raw coordinates decoded from their X axes."""
    if kind == KIND_F32:
        return arr.reshape(-1, 8)
    if kind == KIND_COORDS:
        x = arr.reshape(-1, 8, 3)[:, :, 0]
    else:
        x = np.frombuffer(np.ascontiguousarray(arr).tobytes(), TOKEN_DTYPE)["coordinates"][:, :, 0]
    return decode_state(x)


def _answers_actions(stats: LearnedStatistics, bins: np.ndarray, actions: np.ndarray,
                     targets: np.ndarray) -> np.ndarray:
    """Whether each stored target vector (``targets[i]``, raw i16) still answers action
    ``actions[i]`` of bin ``bins[i]``: it is at least as near (in raw units, L1) the encoded
    mean action of that action as of any other action seen in the bin. (Two actions with the
    same mean vector answer alike.)"""
    lo = np.searchsorted(stats.bins, bins, side="left")
    hi = np.searchsorted(stats.bins, bins, side="right")
    sizes = hi - lo
    out = np.zeros(len(bins), bool)
    if not sizes.sum():
        return out
    row = np.repeat(np.arange(len(bins)), sizes)
    group = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes) + np.repeat(lo, sizes)
    enc = encode_action(stats.moments["action_mean"][group]).astype(np.int64)
    d = np.abs(enc - targets[row].astype(np.int64)).sum(axis=1)
    has = sizes > 0
    nearest = np.full(len(bins), np.iinfo(np.int64).max)
    np.minimum.at(nearest, row, d)
    own = np.full(len(bins), np.iinfo(np.int64).max)
    is_own = stats.actions[group] == actions[row]
    np.minimum.at(own, row[is_own], d[is_own])
    out[has] = own[has] <= nearest[has]
    return out
