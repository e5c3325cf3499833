"""The slow-path analysis cycle as pure functions over an event array.

This is the original ``IntuitionEngine`` analysis (``find_patterns_in_batch``), vectorised;
the engine that samples the stream on a timer and consolidates the results is built on top
of it (``analyze_stream`` is the sample-then-analyse step).

Algorithm (the original's, §3.4 of the reference)
------------------------------------------------
1. **Bin the states.** Per dimension of ``state[8]``: ``n = clamp((v + 1)/2, 0, 0.999)``,
   ``digit = floor(n * B)`` (B = ``state_bins_per_dim``), and the bin is the base-B number
   with dimension 0 as the most significant digit (4**8 = 65 536 bins by default). The
   arithmetic is float32, as in the original; a NaN coordinate gives digit 0 (Rust's
   ``NaN as u64``).
2. **Group** the total reward (sum of the four reward slots) by ``(bin, event_type)``:
   ``event_type`` is the "action", as in the original.
3. For every bin, **compare every pair** of action groups that both have at least
   ``min_samples`` rewards. Skip the pair when ``|mean_a - mean_b| < min_reward_delta``.
   Otherwise ``t = |Δmean| / sqrt(var_a/n_a + var_b/n_b)`` with the sample variance (n - 1)
   and ``confidence = min(t/3, 1)``.
4. **Sort** by ``confidence × delta`` descending (ties: bin, then better action, then worse
   action ascending — the original's order among ties is HashMap order, i.e. arbitrary).
5. **Keep** the patterns with ``confidence >= min_confidence``, at most
   ``max_proposals_per_cycle`` of them.

The zero-variance quirk
-----------------------
When both groups have variance 0 the standard error is 0 and the original returns
confidence **0** — so two perfectly separated actions (every reward of A is 5.0, every
reward of B is 1.0) are never proposed; the original's own ``test_pattern_detection`` runs
into exactly this. ``IntuitionConfig.zero_variance_confidence`` keeps the original by
default (0.0); setting it to 1.0 treats a perfect separation (delta >= min_reward_delta, no
spread at all) as certain. ``Pattern.t`` is ``inf`` in that case.

What is added to a pattern
--------------------------
Besides the original's fields, a ``Pattern`` carries the mean state of its bin
(``representative_state``: all events of the bin, every action) and the mean ``action``
vector of the better action's events (``better_action_vector``), so that a pattern can
become a reflex whose ``target_vector`` is that action (``pattern_to_connection``).

Differences in arithmetic: statistics are computed in float64 (the original sums in f32), so
a t-statistic can differ in the last float32 digits. Events whose total reward is not finite
are ignored (in the original a NaN reward makes the group's mean NaN and the comparison
silently false).

Cost: a lexsort, a few ``reduceat``/boolean passes — O(n log n) for n events, no Python loop
over events, groups or pairs (one loop over the pair distance within a bin, bounded by the
number of distinct actions in a bin).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .codec import check_shifts, encode_state
from .config import IntuitionConfig
from .connections import Connection, encode_action
from .errors import InvalidArgumentError
from .experience import ExperienceStream, total_reward
from .learning import LearnedStatistics, group_moments, make_fold
from .records import (
    ASSOCIATED_WITH,
    CONNECTION_DTYPE,
    EVENT_DTYPE,
    LAYERS,
    ConnectionFlags,
    EntityType,
    Mutability,
    create_id,
)

__all__ = [
    "GENERATED_SOURCE_ID",
    "REFLEX_ID_DOMAIN",
    "REFLEX_PULL_STRENGTH",
    "Pattern",
    "analyze_stream",
    "bin_digits",
    "bin_key_states",
    "bin_numbers",
    "digits_of_bins",
    "dominant_per_bin",
    "find_patterns",
    "find_patterns_in_statistics",
    "fold_events",
    "pattern_to_connection",
    "patterns_to_connections",
    "reflex_token_a",
    "reflex_token_ids",
    "state_bins",
]

#: Domain nibble of the token ids given to generated reflexes (``reflex_token_ids``).
REFLEX_ID_DOMAIN = 0xF
#: pull_strength of a generated reflex: inside (0, 100] (reflex rule) and [0, 1] (CDNA default).
REFLEX_PULL_STRENGTH = 1.0
#: source_id of generated connections (the original's proposals use 1).
GENERATED_SOURCE_ID = 1

_F32 = np.float32


@dataclass(frozen=True, eq=False)
class Pattern:
    """One "action A beats action B in state bin S" finding.

    ``better_action``/``worse_action`` are event types. ``delta = mean_better - mean_worse``
    (>= 0), ``t`` the Welch t-statistic (``inf`` when both variances are 0), ``confidence`` in
    [0, 1]. ``representative_state`` (8,) is the mean state of all events in the bin;
    ``better_action_vector`` (8,) the mean ``action`` of the better action's events.
    """

    bin: int
    better_action: int
    worse_action: int
    mean_better: float
    mean_worse: float
    delta: float
    t: float
    confidence: float
    n_better: int
    n_worse: int
    representative_state: np.ndarray
    better_action_vector: np.ndarray

    @property
    def sample_count(self) -> int:
        """n_better + n_worse (the original's ``sample_count``)."""
        return self.n_better + self.n_worse

    @property
    def score(self) -> float:
        """confidence × delta, the sort key."""
        return self.confidence * self.delta

    def __repr__(self) -> str:
        return (f"Pattern(bin={self.bin}, better={self.better_action:#06x}, worse={self.worse_action:#06x}, "
                f"delta={self.delta:.3g}, confidence={self.confidence:.3f}, n={self.n_better}+{self.n_worse})")


def state_bins(states: Any, bins_per_dim: int = 4) -> np.ndarray:
    """The bin number of each state, shape (n,) uint64; ``states`` is (n, 8) (or (8,) -> (1,)).

    See the module docstring for the formula. ``bins_per_dim`` is 1..256 (B**8 must fit u64).
    """
    return bin_numbers(bin_digits(states, bins_per_dim), bins_per_dim)


def _check_bins_per_dim(bins_per_dim: Any) -> int:
    if isinstance(bins_per_dim, bool) or not isinstance(bins_per_dim, (int, np.integer)) \
            or not 1 <= bins_per_dim <= 256:
        raise InvalidArgumentError(f"bins_per_dim must be an integer in 1..256, got {bins_per_dim!r}")
    return int(bins_per_dim)


def bin_digits(states: Any, bins_per_dim: int = 4) -> np.ndarray:
    """The per-dimension digits (n, 8) uint64 of each state's bin (``state_bins``, step 1)."""
    b = _check_bins_per_dim(bins_per_dim)
    s = np.asarray(states)
    if s.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"states must be real numbers, got dtype {s.dtype}")
    s = np.atleast_2d(s.astype(_F32))
    if s.ndim != 2 or s.shape[1] != LAYERS:
        raise InvalidArgumentError(f"states must have shape (n, {LAYERS}), got {np.shape(states)}")
    with np.errstate(invalid="ignore", over="ignore"):
        norm = np.clip((s + _F32(1.0)) / _F32(2.0), _F32(0.0), _F32(0.999))
        digits = np.floor(norm * _F32(b))
    out: np.ndarray = np.where(np.isnan(digits), 0, digits).astype(np.uint64)
    return out


def bin_numbers(digits: np.ndarray, bins_per_dim: int) -> np.ndarray:
    """Digits (n, 8) -> bin numbers (n,) uint64, dimension 0 most significant."""
    out = np.zeros(len(digits), dtype=np.uint64)
    base = np.uint64(bins_per_dim)
    for d in range(LAYERS):
        out = out * base + digits[:, d].astype(np.uint64)
    return out


def digits_of_bins(bins: Any, bins_per_dim: int) -> np.ndarray:
    """Inverse of :func:`bin_numbers`: bin numbers (n,) -> digits (n, 8) uint64."""
    v = np.asarray(bins, dtype=np.uint64).reshape(-1).copy()
    base = np.uint64(_check_bins_per_dim(bins_per_dim))
    out = np.zeros((len(v), LAYERS), np.uint64)
    for d in range(LAYERS - 1, -1, -1):
        out[:, d] = v % base
        v //= base
    return out


def bin_key_states(bins: Any, bins_per_dim: int, shifts: Any) -> np.ndarray:
    """The key state (n, 8, 3) int16 of each bin, where the engine files the reflex it
    learns for that bin (docs/format.md §3.3): X = the bin's centre, encoded; Y = the digit
    + 1, in grid cells of the layer (never 0, so no 8-float state shares a key's cell);
    Z = 0. Every state of a bin maps to the same key, whatever its grid cell."""
    b = _check_bins_per_dim(bins_per_dim)
    digits = digits_of_bins(bins, b)
    sh = check_shifts(shifts).astype(np.int64)
    centre = ((2.0 * digits.astype(np.float64) + 1.0) / b - 1.0).astype(_F32)
    out = np.zeros((len(digits), LAYERS, 3), np.int16)
    out[:, :, 0] = encode_state(centre)
    cells = np.int64(0x7FFF) >> sh  # positive cells of each layer
    d = digits.astype(np.int64)
    y = ((d % np.maximum(cells, 1)) + 1) << sh
    out[:, :, 1] = np.where(cells > 0, y, -32768).astype(np.int16)
    return out


def find_patterns(events: np.ndarray, config: IntuitionConfig | None = None, *,
                  limit: bool = True) -> list[Pattern]:
    """Patterns in ``events`` (an EVENT_DTYPE array), best first; see the module docstring.

    Uses ``config.state_bins_per_dim``, ``min_samples``, ``min_reward_delta``,
    ``zero_variance_confidence`` and, when ``limit`` is true, ``min_confidence`` and
    ``max_proposals_per_cycle``. ``limit=False`` returns every pattern that passed the
    sample-count and delta cut-offs, sorted. The input is not modified.
    """
    config = config or IntuitionConfig()
    events, rewards = _finite_rewards(events)
    if len(events) == 0:
        return []

    # -- groups by (bin, action) --------------------------------------------------------
    bins = state_bins(events["state"], config.state_bins_per_dim)
    actions = events["event_type"]
    order = np.lexsort((actions, bins))
    sb, sa, sr = bins[order], actions[order], rewards[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (sb[1:] != sb[:-1]) | (sa[1:] != sa[:-1])
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.append(starts, len(order)))
    g_of_row = np.cumsum(new_group) - 1
    means = np.add.reduceat(sr, starts) / counts
    dev = sr - means[g_of_row]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(counts > 1, np.add.reduceat(dev * dev, starts) / (counts - 1), 0.0)
    g_bin, g_action = sb[starts], sa[starts]

    pairs = _pairs(g_bin, g_action, counts, means, var, config, *_limits(config, limit))
    if pairs is None:
        return []

    # -- means of the state per bin and of the action per group (only what is needed) -----
    sel_best = pairs.gbest[pairs.order]
    act_means = _group_means(events["action"][order], starts, counts, sel_best)
    bin_start = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    bin_count = np.diff(np.append(bin_start, len(order)))
    bin_idx = np.searchsorted(sb[bin_start], g_bin[sel_best])
    state_means = _group_means(events["state"][order], bin_start, bin_count, bin_idx)
    return _patterns(g_bin, g_action, counts, means, pairs, state_means, act_means)


class _Pairs(NamedTuple):
    gbest: np.ndarray
    gworst: np.ndarray
    delta: np.ndarray
    t: np.ndarray
    conf: np.ndarray
    order: np.ndarray  # the pairs kept, best first


def _limits(config: IntuitionConfig, limit: bool) -> tuple[float | None, int | None]:
    return (config.min_confidence, config.max_proposals_per_cycle) if limit else (None, None)


def _pairs(g_bin: np.ndarray, g_action: np.ndarray, counts: np.ndarray, means: np.ndarray, var: np.ndarray,
           config: IntuitionConfig, min_confidence: float | None, max_pairs: int | None) -> _Pairs | None:
    """Steps 3-5 of the module docstring over groups sorted by (bin, action): every pair
    of eligible groups of a bin, Welch t, confidence, sorted; then those with confidence >=
    ``min_confidence``, the first ``max_pairs`` of them (None: no such limit)."""
    elig = np.flatnonzero(counts >= config.min_samples)  # still sorted by (bin, action)
    e_bin = g_bin[elig]
    pa_parts, pb_parts = [], []
    d = 1
    while d < len(elig):
        i = np.flatnonzero(e_bin[:-d] == e_bin[d:])
        if len(i) == 0:  # runs are contiguous: no pair at distance d means none further
            break
        pa_parts.append(elig[i])
        pb_parts.append(elig[i + d])
        d += 1
    if not pa_parts:
        return None
    ga = np.concatenate(pa_parts)
    gb = np.concatenate(pb_parts)
    ma, mb = means[ga], means[gb]
    delta = np.abs(ma - mb)
    keep = delta >= config.min_reward_delta
    ga, gb, ma, mb, delta = ga[keep], gb[keep], ma[keep], mb[keep], delta[keep]
    if len(ga) == 0:
        return None
    se = np.sqrt(var[ga] / counts[ga] + var[gb] / counts[gb])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, delta / se, np.inf)
    conf = np.where(se > 0, np.minimum(t / 3.0, 1.0), config.zero_variance_confidence)
    a_better = ma > mb  # the original: mean_a > mean_b ? a : b
    gbest = np.where(a_better, ga, gb)
    gworst = np.where(a_better, gb, ga)
    score = conf * delta
    order_p = np.lexsort((g_action[gworst], g_action[gbest], g_bin[gbest], -score))
    if min_confidence is not None:
        order_p = order_p[conf[order_p] >= min_confidence]
    if max_pairs is not None:
        order_p = order_p[:max_pairs]
    if len(order_p) == 0:
        return None
    return _Pairs(gbest, gworst, delta, t, conf, order_p)


def _patterns(g_bin: np.ndarray, g_action: np.ndarray, counts: np.ndarray, means: np.ndarray, pairs: _Pairs,
              state_means: np.ndarray, act_means: np.ndarray) -> list[Pattern]:
    """The Pattern of each pair kept (``state_means``/``act_means``: one row per kept pair)."""
    gbest, gworst, delta, t, conf, order_p = pairs
    out = []
    for k, p in enumerate(order_p):
        gB, gW = int(gbest[p]), int(gworst[p])
        out.append(Pattern(
            bin=int(g_bin[gB]), better_action=int(g_action[gB]), worse_action=int(g_action[gW]),
            mean_better=float(means[gB]), mean_worse=float(means[gW]), delta=float(delta[p]),
            t=float(t[p]), confidence=float(conf[p]), n_better=int(counts[gB]), n_worse=int(counts[gW]),
            representative_state=state_means[k], better_action_vector=act_means[k]))
    return out


def _group_means(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Mean of rows ``starts[w] : starts[w]+counts[w]`` of ``values`` for each w in ``which``, float64."""
    uniq, inv = np.unique(which, return_inverse=True)
    lens = counts[uniq]
    # Gather only the rows of the selected groups, then one reduceat over them.
    idx = np.repeat(starts[uniq] - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
    sums = np.add.reduceat(values[idx].astype(np.float64), np.r_[0, np.cumsum(lens)[:-1]], axis=0)
    means: np.ndarray = (sums / lens[:, None])[inv]
    return means


def analyze_stream(stream: ExperienceStream, config: IntuitionConfig | None = None, rng: Any = None,
                   *, limit: bool = True) -> list[Pattern]:
    """One analysis step: sample ``config.batch_size`` events with ``config.sampling_strategy``
    from ``stream`` and run ``find_patterns`` on them."""
    config = config or IntuitionConfig()
    batch = stream.sample_batch(config.batch_size, config.sampling_strategy, rng)
    return find_patterns(batch, config, limit=limit)


# --------------------------------------------------------------------------------------
# Accumulated evidence (``learning``): folds of events, patterns of the statistics
# --------------------------------------------------------------------------------------

def _finite_rewards(events: Any) -> tuple[np.ndarray, np.ndarray]:
    """``events`` (checked to be an EVENT_DTYPE array, flattened) without those whose total
    reward is not finite, and their total rewards as float64."""
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE:
        raise InvalidArgumentError("events must be an EVENT_DTYPE numpy array")
    events = events.reshape(-1)
    rewards = total_reward(events).astype(np.float64)
    finite = np.isfinite(rewards)
    if not finite.all():
        events, rewards = events[finite], rewards[finite]
    return events, rewards


def fold_events(events: np.ndarray, bins_per_dim: int, first_seq: int, end_seq: int) -> np.ndarray:
    """The fold (LEARN_UPDATE items, format.md §5.1) of ``events``, the events with sequence
    numbers ``first_seq .. end_seq - 1``: partial moments per (bin, action), events with a
    non-finite total reward left out (as ``find_patterns`` does)."""
    events, rewards = _finite_rewards(events)
    bins = state_bins(events["state"], bins_per_dim)
    g_bins, g_actions, moments = group_moments(bins, events["event_type"], rewards, events["action"],
                                               events["state"])
    return make_fold(bins_per_dim, first_seq, end_seq, g_bins, g_actions, moments)


def find_patterns_in_statistics(stats: LearnedStatistics, config: IntuitionConfig | None = None, *,
                                limit: bool | str = True) -> list[Pattern]:
    """``find_patterns`` over accumulated statistics instead of one event sample: the same
    pairs, Welch t, confidence, sort and limits, on every group's count, mean and sample
    variance (m2 / (n - 1)). ``representative_state`` is the mean state of the bin's events
    (every action), ``better_action_vector`` the mean action of the better group.

    ``limit``: True (``min_confidence`` and ``max_proposals_per_cycle``, as
    ``find_patterns``), False (neither), or ``"confident"`` (``min_confidence`` only: every
    significant pattern, what the engine consolidates from)."""
    config = config or IntuitionConfig()
    if stats.bins_per_dim != config.state_bins_per_dim:
        raise InvalidArgumentError(f"statistics of B={stats.bins_per_dim} analysed with "
                                   f"state_bins_per_dim={config.state_bins_per_dim}")
    m = stats.moments
    if len(m) == 0:
        return []
    counts = m["count"].astype(np.int64)
    lim = (config.min_confidence, None) if limit == "confident" else _limits(config, bool(limit))
    pairs = _pairs(stats.bins, stats.actions, counts, m["mean"], stats.variance(), config, *lim)
    if pairs is None:
        return []
    sel_best = pairs.gbest[pairs.order]
    act_means = m["action_mean"][sel_best]
    # the bin's mean state: its groups' state means weighted by their counts
    bin_start = np.flatnonzero(np.r_[True, stats.bins[1:] != stats.bins[:-1]])
    weighted = m["state_mean"] * counts[:, None].astype(np.float64)
    bin_sums = np.add.reduceat(weighted, bin_start, axis=0)
    bin_counts = np.add.reduceat(counts, bin_start).astype(np.float64)
    bin_idx = np.searchsorted(stats.bins[bin_start], stats.bins[sel_best])
    state_means = bin_sums[bin_idx] / bin_counts[bin_idx, None]
    return _patterns(stats.bins, stats.actions, counts, m["mean"], pairs, state_means, act_means)


def dominant_per_bin(patterns: list[Pattern], stats: LearnedStatistics,
                     config: IntuitionConfig | None = None) -> list[Pattern]:
    """The bins where one action is **dominant** -- it wins a pattern against every other
    action of the bin with at least ``min_samples`` events -- with, for each, its weakest
    win (lowest confidence, then smallest delta): the evidence a reflex for the bin rests
    on. Best score first (then bin).

    A reflex is one answer for every state of its bin, so it is consolidated only when the
    evidence singles out one action there. A bin where two actions both beat the rest but
    not each other (two clusters with different best actions in one bin, or an action
    about as good as the best) has no dominant action, and no reflex."""
    config = config or IntuitionConfig()
    if not patterns:
        return []
    eligible = stats.moments["count"] >= config.min_samples
    ub, per_bin = np.unique(stats.bins[eligible], return_counts=True)
    n_eligible = dict(zip(ub.tolist(), per_bin.tolist(), strict=True))
    wins: dict[tuple[int, int], list[Pattern]] = {}
    for p in patterns:
        wins.setdefault((p.bin, p.better_action), []).append(p)
    out = []
    for (b, _a), ps in wins.items():
        if len(ps) == n_eligible.get(b, 0) - 1:
            out.append(min(ps, key=lambda p: (p.confidence, p.delta, p.worse_action)))
    return sorted(out, key=lambda p: (-p.score, p.bin))


# --------------------------------------------------------------------------------------
# Consolidation: pattern -> reflex connection
# --------------------------------------------------------------------------------------

def _fold23(v: int) -> int:
    while v >> 23:
        v = (v & 0x7F_FFFF) ^ (v >> 23)
    return v


def reflex_token_ids(state_bin: int) -> tuple[int, int]:
    """(token_a, token_b) of the reflex generated for a state bin.

    The fast path keys reflexes by the grid hash of the state, not by token ids, so these ids
    only need to be stable, valid (non-zero, a < b) and recognisable: ``token_a`` =
    ``create_id(2·k, EntityType.STATE, domain 0xF)`` and ``token_b = token_a + 1``, where k is
    the bin folded to 23 bits (identity for bins < 2**23, i.e. for every bin when
    ``state_bins_per_dim`` <= 7, so ids are unique per bin there; beyond that two bins may
    share ids). Domain 0xF is reserved for generated reflexes; no token record is implied.
    """
    if isinstance(state_bin, bool) or not isinstance(state_bin, (int, np.integer)) or state_bin < 0:
        raise InvalidArgumentError(f"state_bin must be a non-negative integer, got {state_bin!r}")
    a = create_id(_fold23(int(state_bin)) << 1, int(EntityType.STATE), REFLEX_ID_DOMAIN)
    return a, a + 1


def reflex_token_a(bins: Any) -> np.ndarray:
    """``reflex_token_ids(bin)[0]`` of many bins at once (uint32)."""
    v = np.asarray(bins, dtype=np.uint64).reshape(-1).copy()
    mask = np.uint64(0x7F_FFFF)
    while True:
        high = v >> np.uint64(23)
        if not high.any():
            break
        v = (v & mask) ^ high
    head = (REFLEX_ID_DOMAIN & 0xF) << 28 | (int(EntityType.STATE) & 0xF) << 24
    out: np.ndarray = ((v << np.uint64(1)) & np.uint64(0xFF_FFFF)).astype(np.uint32) | np.uint32(head)
    return out


def pattern_to_connection(pattern: Pattern, *, now: int | None = None,
                          token_ids: tuple[int, int] | None = None,
                          connection_type: int = ASSOCIATED_WITH) -> Connection:
    """The reflex connection that consolidates ``pattern``.

    target_vector = the encoded ``better_action_vector``; confidence = round(255 ×
    confidence); evidence_count = n_better (saturating u16); mutability Learnable; source_id
    1; flags ACTIVE; rigidity = max(128, round(255 × confidence)); pull_strength 1.0;
    created_at = last_update = ``now``. Token ids: ``reflex_token_ids(pattern.bin)`` unless
    ``token_ids`` is given. ``connection_type`` must be of a Learnable block (default 0x50).

    The result passes ``validation.validate_reflex`` whenever ``pattern.confidence`` >=
    128/255 (the reflex rule needs raw confidence >= 128); the engine's auto-consolidation
    gate (>= 192, evidence >= 10) is checked by the engine, not here.
    """
    if not isinstance(pattern, Pattern):
        raise InvalidArgumentError(f"expected a Pattern, got {type(pattern).__name__}")
    a, b = token_ids if token_ids is not None else reflex_token_ids(pattern.bin)
    conn = Connection(a, b, connection_type, now=now)
    if conn.mutability != Mutability.LEARNABLE:
        raise InvalidArgumentError(f"connection type {connection_type:#04x} is not in a Learnable block")
    raw_conf = int(min(255, max(0, math.floor(255.0 * pattern.confidence + 0.5))))
    conn.confidence_raw = raw_conf
    conn.evidence_count = min(int(pattern.n_better), 0xFFFF)
    conn.source_id = GENERATED_SOURCE_ID
    conn.flags = int(ConnectionFlags.ACTIVE)
    conn.rigidity = max(128, raw_conf)
    conn.pull_strength = REFLEX_PULL_STRENGTH
    conn.target_vector = encode_action(np.asarray(pattern.better_action_vector, dtype=np.float64))
    return conn


def patterns_to_connections(patterns: list[Pattern], *, now: int | None = None) -> np.ndarray:
    """``pattern_to_connection`` for each pattern, as one CONNECTION_DTYPE array (same order)."""
    if not patterns:
        return np.zeros(0, dtype=CONNECTION_DTYPE)
    return np.concatenate([pattern_to_connection(p, now=now).record for p in patterns])
