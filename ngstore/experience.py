"""ExperienceStream: an in-memory ring of 128-byte experience events, sampling and appraisers.

The ring
--------
``ExperienceStream(capacity, channel_size)`` holds one numpy array of ``capacity`` rows of
``EVENT_DTYPE`` and two counters. The event with sequence number ``s`` lives in row
``s % capacity``. Sequence numbers are **0-based everywhere**: ``write_event`` returns the
sequence number of the event it wrote, and ``read(s)`` reads it back. (The original returns
the 1-based running total from ``write()`` but takes 0-based indices everywhere else, so a
caller had to subtract one; ``total_written`` here is exactly the original's running total,
i.e. one more than the last sequence number.)

Live events are the half-open window ``[first_seq, total_written)`` with
``first_seq = max(total_written - capacity, floor)``, where ``floor`` is raised only by
``trim_before`` and ``restore``. ``trimmed`` = ``first_seq`` = how many events are no longer
held (overwritten by newer ones — retention by capacity — or trimmed explicitly).

Writing stamps each stored event's ``sequence`` field with its sequence number (truncated to
u32). The original stamps only the broadcast copy and stores the caller's value; stamping
the stored copy makes every sample and query traceable to its sequence number.

All methods take one lock (``threading.RLock``); reads return **copies**, so nothing handed
out can change under the caller when the ring wraps.

Subscribers
-----------
``subscribe()`` returns a ``Subscription`` with a cursor. ``poll()`` returns the events
written since the last poll (as an array copy, each with its sequence number), and
``lagged``: how many events the subscriber missed because it fell more than
``channel_size`` events behind (the oldest are lost, as with tokio's broadcast ``Lagged(n)``),
or because the ring itself overwrote them (a subscriber cannot be further behind than
``capacity``). Events are read from the ring at poll time, so a subscriber sees rewards that
appraisers wrote after the event was published (the original broadcasts a copy taken at
write time). Writing costs the same with any number of subscribers.

Persistence hook
----------------
The stream knows nothing about disk. Two ways in:

* ``add_write_hook(fn)``: ``fn(first_seq, events)`` is called after each write, under the
  lock, with the stamped rows just written (a read-only array that is only valid during the
  call — copy what you keep). Exceptions from a hook propagate to the writer; the ring already
  holds the events.
* ``restore(first_seq, events)`` (and ``export_state``/``import_state`` around it): the store
  replays persisted events into a fresh stream on open; ``total_written`` becomes
  ``first_seq + len(events)`` and the last ``capacity`` events are held.

Sampling
--------
``sample_batch(size, strategy, rng=None)`` draws ``min(size, live)`` distinct events with the
original weight formulas (i = position in the live window, 0 = oldest, N = live count):

* ``Uniform()``;
* ``PrioritizedByReward(alpha)``: weight ``|total_reward| ** alpha``;
* ``RecencyWeighted(decay)``: weight ``decay ** (1 - i/N)``;
* ``Mixed(reward_weight, recency_weight)``: ``max(|total_reward|*rw + (i/N)*recw, 0)``.

Sampling is weighted **without replacement**, the same distribution as the original's
repeated roulette wheel, computed with the Efraimidis–Spirakis key trick: key =
log(U)/w, take the k largest (``argpartition``): O(N) instead of the original's O(N·k).
When every weight is 0 the draw is uniform (the original does that for the reward-based
strategies; for RecencyWeighted it would always return the oldest events). When fewer than
k weights are positive, the rest is drawn uniformly among the zero-weight events (the
original takes them oldest first). NaN weights count as 0. Results come in draw order.

Appraisers
----------
``homeostasis_reward``, ``curiosity_reward``, ``efficiency_reward`` and ``goal_reward`` are
the original formulas (defaults included) as pure functions over an event array, returning
float32 arrays. ``appraise(stream)`` computes all four for the live events not yet marked
FULLY_APPRAISED, writes each non-negligible value (|r| > 1e-6, as the original) into its
own slot and marks the events FULLY_APPRAISED (the original defines that flag but never
sets it).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .records import EVENT_DTYPE, LAYERS, EventFlags

__all__ = [
    "APPRAISAL_EPSILON",
    "Appraiser",
    "AppraiserParams",
    "Event",
    "ExperienceStream",
    "Mixed",
    "PollResult",
    "PrioritizedByReward",
    "RecencyWeighted",
    "SamplingStrategy",
    "Subscription",
    "Uniform",
    "appraise",
    "curiosity_reward",
    "efficiency_reward",
    "goal_reward",
    "homeostasis_reward",
    "new_events",
    "sample_indices",
    "strategy_weights",
    "total_reward",
]

#: The appraisers skip writing rewards with |r| <= this (the original's threshold).
APPRAISAL_EPSILON = 1e-6

_REWARD_FIELDS = ("reward_homeostasis", "reward_curiosity", "reward_efficiency", "reward_goal")
_U32 = 0xFFFF_FFFF


# --------------------------------------------------------------------------------------
# Sampling strategies
# --------------------------------------------------------------------------------------

def _finite(name: str, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a number, got {v!r}")
    f = float(v)
    if not np.isfinite(f):
        raise InvalidArgumentError(f"{name} must be finite, got {f}")
    return f


@dataclass(frozen=True)
class Uniform:
    """Every live event equally likely."""

    def __repr__(self) -> str:
        return "Uniform()"


@dataclass(frozen=True)
class PrioritizedByReward:
    """Weight ``|total_reward| ** alpha`` (alpha >= 0; alpha 0 is uniform)."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        a = _finite("alpha", self.alpha)
        if a < 0:
            raise InvalidArgumentError(f"alpha must be >= 0, got {a}")
        object.__setattr__(self, "alpha", a)


@dataclass(frozen=True)
class RecencyWeighted:
    """Weight ``decay ** (1 - i/N)``; decay in [0, 1], smaller prefers recent events more.

    The original has no default; 0.5 (the oldest event half as likely as the newest) is ours.
    """

    decay: float = 0.5

    def __post_init__(self) -> None:
        d = _finite("decay", self.decay)
        if not 0.0 <= d <= 1.0:
            raise InvalidArgumentError(f"decay must be in [0, 1], got {d}")
        object.__setattr__(self, "decay", d)


@dataclass(frozen=True)
class Mixed:
    """Weight ``max(|total_reward|*reward_weight + (i/N)*recency_weight, 0)``.

    The original has no defaults; 1.0 and 1.0 are ours.
    """

    reward_weight: float = 1.0
    recency_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reward_weight", _finite("reward_weight", self.reward_weight))
        object.__setattr__(self, "recency_weight", _finite("recency_weight", self.recency_weight))


SamplingStrategy = Uniform | PrioritizedByReward | RecencyWeighted | Mixed
_STRATEGIES = (Uniform, PrioritizedByReward, RecencyWeighted, Mixed)


def total_reward(events: np.ndarray) -> np.ndarray:
    """Sum of the four reward slots, float32 like the original's ``total_reward()``."""
    total: np.ndarray = (events["reward_homeostasis"] + events["reward_curiosity"]
                         + events["reward_efficiency"] + events["reward_goal"]).astype(np.float32)
    return total


def _strategy_weights(rewards: np.ndarray | None, n: int, strategy: SamplingStrategy) -> np.ndarray | None:
    """Weights in window order (``rewards``: total rewards in window order), or None for uniform."""
    if isinstance(strategy, Uniform):
        return None
    pos = np.arange(n, dtype=np.float64) / max(n, 1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if isinstance(strategy, PrioritizedByReward):
            assert rewards is not None
            w = np.abs(rewards.astype(np.float64)) ** strategy.alpha
        elif isinstance(strategy, RecencyWeighted):
            w = strategy.decay ** (1.0 - pos)
        elif isinstance(strategy, Mixed):
            assert rewards is not None
            r = np.abs(rewards.astype(np.float64))
            w = np.maximum(r * strategy.reward_weight + pos * strategy.recency_weight, 0.0)
        else:
            raise InvalidArgumentError(f"unknown sampling strategy {strategy!r}")
    return np.where(np.isnan(w), 0.0, w)


def strategy_weights(events: np.ndarray, strategy: SamplingStrategy) -> np.ndarray | None:
    """The sampling weights of ``events`` (a window, oldest first) under ``strategy``; None = uniform."""
    return _strategy_weights(total_reward(events), len(events), strategy)


def sample_indices(weights: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct indices of range(n), weighted without replacement (None = uniform), draw order."""
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if weights is None or not (weights > 0).any():
        return rng.choice(n, size=k, replace=False).astype(np.intp)
    positive = np.flatnonzero(weights > 0)
    u = 1.0 - rng.random(len(positive))  # (0, 1]
    with np.errstate(divide="ignore"):
        keys = np.log(u) / weights[positive]  # <= 0; larger = drawn earlier
    if len(positive) > k:
        top = np.argpartition(-keys, k - 1)[:k]
    else:
        top = np.arange(len(positive))
    top = top[np.argsort(-keys[top], kind="stable")]
    chosen = positive[top]
    if len(chosen) < k:
        zero = np.flatnonzero(~(weights > 0))
        chosen = np.concatenate([chosen, rng.choice(zero, size=k - len(chosen), replace=False)])
    return chosen.astype(np.intp)


def _rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise InvalidArgumentError(f"rng must be a numpy Generator, a seed or None, got {rng!r}")


# --------------------------------------------------------------------------------------
# Event records
# --------------------------------------------------------------------------------------

def new_events(n: int, **columns: Any) -> np.ndarray:
    """A new zeroed array of ``n`` events with the given columns broadcast in.

    Column names are the ``EVENT_DTYPE`` fields, plus ``event_id`` (an int < 2**128, split
    into the two halves). Unknown names raise ``InvalidArgumentError``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidArgumentError(f"n must be a non-negative integer, got {n!r}")
    out = np.zeros(int(n), dtype=EVENT_DTYPE)
    for name, value in columns.items():
        _assign(out, name, value)
    return out


def _assign(out: np.ndarray, name: str, value: Any) -> None:
    if name == "event_id":
        ids = np.asarray(value, dtype=object).reshape(-1) if np.ndim(value) else [value]
        lo, hi = [], []
        for v in ids:  # event ids are Python ints (u128); small per call
            v = int(v)
            if not 0 <= v < (1 << 128):
                raise InvalidArgumentError(f"event_id must be in 0..2**128-1, got {v}")
            lo.append(v & 0xFFFF_FFFF_FFFF_FFFF)
            hi.append(v >> 64)
        out["event_id_lo"] = np.asarray(lo, dtype=np.uint64) if len(lo) > 1 else lo[0]
        out["event_id_hi"] = np.asarray(hi, dtype=np.uint64) if len(hi) > 1 else hi[0]
        return
    if name not in (EVENT_DTYPE.names or ()):
        raise InvalidArgumentError(f"events have no field {name!r}")
    target = out[name]
    v = np.asarray(value)
    if target.dtype.kind == "u":
        if v.dtype.kind not in "ui" and not (v.dtype.kind == "b"):
            raise InvalidArgumentError(f"{name} must be integer, got {v.dtype}")
        info = np.iinfo(target.dtype)
        if v.size and (v.min() < 0 or int(v.max()) > info.max):
            raise InvalidArgumentError(f"{name} must be in 0..{info.max}")
    try:
        out[name] = v
    except ValueError as e:
        raise InvalidArgumentError(f"cannot set {name}: {e}") from None


class Event:
    """A thin view of one ``EVENT_DTYPE`` record.

    ``Event(**fields)`` builds a new zeroed event (fields as in ``new_events``); ``read()``
    returns an Event owning a copy. Fields are properties; ``state``/``action`` return
    writable views of the 8 floats.
    """

    __slots__ = ("_row",)

    def __init__(self, **fields: Any) -> None:
        self._row = new_events(1, **fields)

    @classmethod
    def view(cls, arr: np.ndarray, index: int) -> Event:
        """A view of ``arr[index]`` (no copy)."""
        if not isinstance(arr, np.ndarray) or arr.dtype != EVENT_DTYPE or arr.ndim != 1:
            raise InvalidArgumentError("expected a 1-D EVENT_DTYPE array")
        i = int(index) + (len(arr) if int(index) < 0 else 0)
        if not 0 <= i < len(arr):
            raise IndexError(f"event index {index} out of range for {len(arr)}")
        obj = cls.__new__(cls)
        obj._row = arr[i:i + 1]
        return obj

    @property
    def record(self) -> np.ndarray:
        """The one-row array this object views."""
        return self._row

    def to_bytes(self) -> bytes:
        return self._row.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Event:
        if len(data) != EVENT_DTYPE.itemsize:
            raise InvalidArgumentError(f"an event image is {EVENT_DTYPE.itemsize} bytes, got {len(data)}")
        obj = cls.__new__(cls)
        obj._row = np.frombuffer(bytes(data), dtype=EVENT_DTYPE).copy()
        return obj

    def _get(self, name: str) -> Any:
        return self._row[name][0]

    def _set(self, name: str, value: Any) -> None:
        _assign(self._row, name, value)

    @property
    def event_id(self) -> int:
        return int(self._get("event_id_hi")) << 64 | int(self._get("event_id_lo"))

    @event_id.setter
    def event_id(self, v: int) -> None:
        self._set("event_id", v)

    timestamp_us = property(lambda s: int(s._get("timestamp_us")), lambda s, v: s._set("timestamp_us", v),
                            doc="Unix microseconds.")
    episode_id = property(lambda s: int(s._get("episode_id")), lambda s, v: s._set("episode_id", v))
    step = property(lambda s: int(s._get("step")), lambda s, v: s._set("step", v))
    event_type = property(lambda s: int(s._get("event_type")), lambda s, v: s._set("event_type", v))
    flags = property(lambda s: EventFlags(int(s._get("flags"))), lambda s, v: s._set("flags", int(v)))
    adna_hash = property(lambda s: int(s._get("adna_hash")), lambda s, v: s._set("adna_hash", v))
    sequence = property(lambda s: int(s._get("sequence")), lambda s, v: s._set("sequence", v),
                        doc="u32 sequence number stamped by the stream.")
    reward_homeostasis = property(lambda s: float(s._get("reward_homeostasis")),
                                  lambda s, v: s._set("reward_homeostasis", v))
    reward_curiosity = property(lambda s: float(s._get("reward_curiosity")),
                                lambda s, v: s._set("reward_curiosity", v))
    reward_efficiency = property(lambda s: float(s._get("reward_efficiency")),
                                 lambda s, v: s._set("reward_efficiency", v))
    reward_goal = property(lambda s: float(s._get("reward_goal")), lambda s, v: s._set("reward_goal", v))

    @property
    def state(self) -> np.ndarray:
        state: np.ndarray = self._row["state"][0]
        return state

    @state.setter
    def state(self, v: Any) -> None:
        self._set("state", np.broadcast_to(np.asarray(v, dtype=np.float32), (1, LAYERS)))

    @property
    def action(self) -> np.ndarray:
        action: np.ndarray = self._row["action"][0]
        return action

    @action.setter
    def action(self, v: Any) -> None:
        self._set("action", np.broadcast_to(np.asarray(v, dtype=np.float32), (1, LAYERS)))

    @property
    def total_reward(self) -> float:
        return float(total_reward(self._row)[0])

    @property
    def is_fully_appraised(self) -> bool:
        return bool(self._get("flags") & EventFlags.FULLY_APPRAISED)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Event(seq={self.sequence}, type=0x{self.event_type:04X}, episode={self.episode_id}, "
                f"step={self.step}, reward={self.total_reward:g})")


def as_event_rows(event: Any) -> np.ndarray:
    if isinstance(event, Event):
        return event.record
    if isinstance(event, Mapping):
        return new_events(1, **event)
    if isinstance(event, np.void) and event.dtype == EVENT_DTYPE:
        return np.array([event], dtype=EVENT_DTYPE)
    if isinstance(event, np.ndarray) and event.dtype == EVENT_DTYPE:
        if event.ndim > 1:
            raise InvalidArgumentError(f"expected a 1-D event array, got shape {event.shape}")
        return event.reshape(-1)
    raise InvalidArgumentError(
        f"an event is an Event, a dict of fields or an EVENT_DTYPE record, got {type(event).__name__}"
        + (f" with dtype {event.dtype}" if isinstance(event, (np.ndarray, np.void)) else ""))


# --------------------------------------------------------------------------------------
# Appraisers
# --------------------------------------------------------------------------------------

class Appraiser(IntEnum):
    """The four reward slots; also accepted as names ("homeostasis", ...)."""

    HOMEOSTASIS = 0
    CURIOSITY = 1
    EFFICIENCY = 2
    GOAL = 3

    @property
    def field(self) -> str:
        return _REWARD_FIELDS[int(self)]


def _slot(slot: Any) -> Appraiser:
    if isinstance(slot, str):
        try:
            return Appraiser[slot.upper()]
        except KeyError:
            raise InvalidArgumentError(
                f"unknown appraiser {slot!r}; use homeostasis, curiosity, efficiency or goal") from None
    try:
        return Appraiser(int(slot))
    except (ValueError, TypeError):
        raise InvalidArgumentError(f"unknown appraiser slot {slot!r}") from None


def _col(events: np.ndarray, name: str, index: int) -> np.ndarray:
    return events[name][:, index].astype(np.float32)


# The appraisers compute in float32, like the original (f32 states and f32 parameters): a
# novelty of float32(0.3) is not above a threshold of float32(0.3), while in float64 it
# would be (0.30000001 > 0.3) and earn a reward of 2e-9.
_f = np.float32


def _outside_sq(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lo32, hi32 = _f(lo), _f(hi)
    d = np.where(v < lo32, lo32 - v, np.where(v > hi32, v - hi32, _f(0)))
    sq: np.ndarray = d * d
    return sq


def homeostasis_reward(events: np.ndarray, weight: float = 0.3, penalty_multiplier: float = 1.0) -> np.ndarray:
    """-weight*multiplier*(sum of squared distances outside the comfort ranges).

    CognitiveLoad state[4] in [0.2, 0.7], Certainty state[5] in [0.4, 0.9], Coherence state[7]
    in [0.5, 1.0]. Returns float32 (n,).
    """
    dev = (_outside_sq(_col(events, "state", 4), 0.2, 0.7) + _outside_sq(_col(events, "state", 5), 0.4, 0.9)
           + _outside_sq(_col(events, "state", 7), 0.5, 1.0))
    reward: np.ndarray = (-_f(weight) * _f(penalty_multiplier) * dev).astype(np.float32)
    return reward


def curiosity_reward(events: np.ndarray, weight: float = 0.2, novelty_threshold: float = 0.3,
                     multiplier: float = 1.0) -> np.ndarray:
    """weight*multiplier*(novelty - threshold) when Novelty state[1] > threshold, else 0."""
    nov = _col(events, "state", 1)
    thr = _f(novelty_threshold)
    reward: np.ndarray = np.where(nov > thr, _f(weight) * _f(multiplier) * (nov - thr), _f(0)).astype(np.float32)
    return reward


def efficiency_reward(events: np.ndarray, weight: float = 0.1, motor_cost: float = 0.01,
                      cognitive_cost: float = 0.02) -> np.ndarray:
    """-weight*(motor*(velocity^2 + acceleration^2) + cognitive*load).

    velocity = state[2], acceleration = action[2], cognitive load = state[4].
    """
    v = _col(events, "state", 2)
    a = _col(events, "action", 2)
    load = _col(events, "state", 4)
    cost = _f(motor_cost) * (v * v + a * a) + _f(cognitive_cost) * load
    reward: np.ndarray = (-_f(weight) * cost).astype(np.float32)
    return reward


def goal_reward(events: np.ndarray, weight: float = 0.4) -> np.ndarray:
    """Valence = state[6]: weight*valence if > 0.5; weight*valence*0.5 if in (0, 0.5]; else 0."""
    val = _col(events, "state", 6)
    w = _f(weight)
    reward: np.ndarray = np.where(val > _f(0.5), w * val,
                                  np.where(val > _f(0), w * val * _f(0.5), _f(0))).astype(np.float32)
    return reward


@dataclass(frozen=True)
class AppraiserParams:
    """The appraisers' parameters, with the original defaults."""

    homeostasis_weight: float = 0.3
    homeostasis_penalty_multiplier: float = 1.0
    curiosity_weight: float = 0.2
    curiosity_novelty_threshold: float = 0.3
    curiosity_multiplier: float = 1.0
    efficiency_weight: float = 0.1
    efficiency_motor_cost: float = 0.01
    efficiency_cognitive_cost: float = 0.02
    goal_weight: float = 0.4

    def rewards(self, events: np.ndarray) -> np.ndarray:
        """(n, 4) float32: homeostasis, curiosity, efficiency, goal."""
        return np.stack([
            homeostasis_reward(events, self.homeostasis_weight, self.homeostasis_penalty_multiplier),
            curiosity_reward(events, self.curiosity_weight, self.curiosity_novelty_threshold,
                             self.curiosity_multiplier),
            efficiency_reward(events, self.efficiency_weight, self.efficiency_motor_cost,
                              self.efficiency_cognitive_cost),
            goal_reward(events, self.goal_weight),
        ], axis=1)


def appraise(stream: ExperienceStream, seqs: Any = None, *, params: AppraiserParams | None = None,
             mark: bool = True) -> int:
    """Runs the four appraisers over live events; see ``ExperienceStream.appraise``."""
    return stream.appraise(seqs, params=params, mark=mark)


# --------------------------------------------------------------------------------------
# Subscriptions
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PollResult:
    """What a subscriber got: ``events`` (copy) starting at ``first_seq``, after ``lagged`` lost ones."""

    events: np.ndarray
    first_seq: int
    lagged: int

    @property
    def seqs(self) -> np.ndarray:
        return np.arange(self.first_seq, self.first_seq + len(self.events), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.events)


class Subscription:
    """A bounded, lossy view of the events written after ``subscribe()``.

    Holds only a cursor; the queue bound is the stream's ``channel_size`` (and, necessarily,
    its capacity). ``poll`` is the only consumer call; ``close`` makes further polls fail.
    """

    __slots__ = ("_closed", "_cursor", "_stream", "lagged_total")

    def __init__(self, stream: ExperienceStream, start_seq: int) -> None:
        self._stream = stream
        self._cursor = start_seq
        self._closed = False
        #: Total events lost by this subscriber since it subscribed.
        self.lagged_total = 0

    @property
    def next_seq(self) -> int:
        """Sequence number of the next event this subscriber will receive."""
        return self._cursor

    @property
    def pending(self) -> int:
        """Events written but not yet polled (some may be lost by the time of the poll)."""
        return self._stream.total_written - self._cursor

    def poll(self, max_events: int | None = None, timeout: float | None = 0.0) -> PollResult:
        """Returns the next events (oldest first), at most ``max_events``.

        ``timeout``: 0 returns at once; a positive number waits up to that many seconds for at
        least one new event; None waits indefinitely. ``lagged`` counts events lost before the
        returned ones since the previous poll.
        """
        if self._closed:
            raise InvalidArgumentError("subscription is closed")
        if max_events is not None and (isinstance(max_events, bool) or int(max_events) < 0):
            raise InvalidArgumentError(f"max_events must be >= 0, got {max_events!r}")
        s = self._stream
        with s._cond:
            if timeout is None or timeout > 0:
                s._cond.wait_for(lambda: s._total > self._cursor, timeout=timeout)
            oldest = max(s._total - s._channel_size, s._first_seq_locked())
            lagged = 0
            if self._cursor < oldest:
                lagged = oldest - self._cursor
                self._cursor = oldest
            end = s._total if max_events is None else min(s._total, self._cursor + int(max_events))
            first = self._cursor
            events = s._copy_range(first, end)
            self._cursor = end
        self.lagged_total += lagged
        return PollResult(events, first, lagged)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------

WriteHook = Callable[[int, np.ndarray], None]


class ExperienceStream:
    """A fixed-capacity ring of experience events; see the module docstring for the contract.

    ``capacity`` rows (128 B each) are allocated eagerly, as in the original.
    """

    def __init__(self, capacity: int = 10_000, channel_size: int = 1000) -> None:
        for name, v in (("capacity", capacity), ("channel_size", channel_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {v!r}")
        self._capacity = int(capacity)
        self._channel_size = int(channel_size)
        self._ring = np.zeros(self._capacity, dtype=EVENT_DTYPE)
        self._total = 0
        self._floor = 0
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._hooks: list[WriteHook] = []

    # -- counters -------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def memory_bytes(self) -> int:
        """Bytes of its ring of events, allocated whole at construction."""
        return int(self._ring.nbytes)

    @property
    def channel_size(self) -> int:
        return self._channel_size

    @property
    def total_written(self) -> int:
        """Events ever written (never wraps); the next sequence number."""
        return self._total

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest live event (== total_written when empty)."""
        with self._lock:
            return self._first_seq_locked()

    @property
    def trimmed(self) -> int:
        """Events no longer held: overwritten by capacity or trimmed (== first_seq)."""
        return self.first_seq

    def size(self) -> int:
        """Live events, ``total_written - first_seq`` (at most capacity)."""
        with self._lock:
            return self._total - self._first_seq_locked()

    def __len__(self) -> int:
        return self.size()

    def __repr__(self) -> str:
        return (f"ExperienceStream(capacity={self._capacity}, size={self.size()}, "
                f"total_written={self._total})")

    def _first_seq_locked(self) -> int:
        return max(self._total - self._capacity, self._floor)

    # -- writing --------------------------------------------------------------------------
    def write_event(self, event: Any) -> int:
        """Stores one event (Event, dict of fields, or structured scalar / 1-row array).

        Returns its 0-based sequence number. The stored copy's ``sequence`` is that number
        (mod 2**32).
        """
        rows = as_event_rows(event)
        if len(rows) != 1:
            raise InvalidArgumentError(f"write_event takes one event, got {len(rows)}; use write_events")
        return self.write_events(rows)

    def write_events(self, events: Any) -> int:
        """Stores events in order; returns the sequence number of the first.

        At most two slice copies into the ring. If more than ``capacity`` events are given,
        only the last ``capacity`` are kept (the earlier ones are overwritten at once, and are
        counted in ``total_written`` and ``trimmed``). An empty array writes nothing and
        returns ``total_written``.
        """
        rows = as_event_rows(events)
        n = len(rows)
        with self._cond:
            first = self._total
            if n == 0:
                return first
            cap = self._capacity
            keep_from = max(0, n - cap)
            kept = rows[keep_from:]
            start = (first + keep_from) % cap
            m = len(kept)
            head = min(m, cap - start)
            self._ring[start:start + head] = kept[:head]
            if head < m:
                self._ring[:m - head] = kept[head:]
            seqs = (np.arange(first + keep_from, first + n, dtype=np.uint64) & _U32).astype(np.uint32)
            self._ring["sequence"][start:start + head] = seqs[:head]
            if head < m:
                self._ring["sequence"][:m - head] = seqs[head:]
            self._total = first + n
            if self._hooks:
                written = self._copy_range(max(first, self._first_seq_locked()), self._total)
                written.flags.writeable = False
                for hook in list(self._hooks):
                    hook(self._total - len(written), written)
            self._cond.notify_all()
            return first

    def add_write_hook(self, hook: WriteHook) -> None:
        """Registers ``hook(first_seq, events)``, called after each write (see module docstring)."""
        if not callable(hook):
            raise InvalidArgumentError("hook must be callable")
        with self._lock:
            self._hooks.append(hook)

    def remove_write_hook(self, hook: WriteHook) -> None:
        with self._lock:
            self._hooks.remove(hook)

    # -- reading --------------------------------------------------------------------------
    def _slots(self, start: int, end: int) -> np.ndarray:
        return np.arange(start, end, dtype=np.int64) % self._capacity

    def _copy_range(self, start: int, end: int) -> np.ndarray:
        """Copy of live rows [start, end), caller holds the lock and has clipped the range."""
        if end <= start:
            return np.zeros(0, dtype=EVENT_DTYPE)
        s = start % self._capacity
        n = end - start
        if s + n <= self._capacity:
            rows: np.ndarray = self._ring[s:s + n].copy()
            return rows
        return np.concatenate([self._ring[s:], self._ring[:n - (self._capacity - s)]])

    @staticmethod
    def _check_seq(seq: Any) -> int:
        if isinstance(seq, (bool, np.bool_)) or not isinstance(seq, (int, np.integer)) or seq < 0:
            raise InvalidArgumentError(f"a sequence number is a non-negative integer, got {seq!r}")
        return int(seq)

    def is_live(self, seq: int) -> bool:
        seq = self._check_seq(seq)
        with self._lock:
            return self._first_seq_locked() <= seq < self._total

    def read(self, seq: int) -> Event | None:
        """A copy of event ``seq``, or None if it was overwritten/trimmed or not written yet."""
        seq = self._check_seq(seq)
        with self._lock:
            if not self._first_seq_locked() <= seq < self._total:
                return None
            return Event.view(self._ring[seq % self._capacity:seq % self._capacity + 1].copy(), 0)

    def query_range(self, start: int, end: int) -> np.ndarray:
        """A copy of the live events with start <= seq < end, oldest first (maybe empty)."""
        start = self._check_seq(start)
        end = self._check_seq(end)
        with self._lock:
            lo = max(start, self._first_seq_locked())
            hi = min(end, self._total)
            return self._copy_range(lo, hi)

    def live_window(self) -> tuple[int, np.ndarray]:
        """(first_seq, copy of every live event oldest -> newest)."""
        with self._lock:
            first = self._first_seq_locked()
            return first, self._copy_range(first, self._total)

    # -- rewards and flags ----------------------------------------------------------------
    def set_appraiser_reward(self, seq: int, slot: Any, value: float) -> bool:
        """Writes one appraiser's reward slot; False if ``seq`` is not live."""
        seq = self._check_seq(seq)
        name = _slot(slot).field
        with self._lock:
            if not self._first_seq_locked() <= seq < self._total:
                return False
            self._ring[name][seq % self._capacity] = value
            return True

    def set_appraiser_rewards(self, seqs: Any, slot: Any, values: Any) -> int:
        """Vectorised ``set_appraiser_reward``; non-live seqs are skipped. Returns how many were written."""
        name = _slot(slot).field
        s = np.asarray(seqs, dtype=np.int64).reshape(-1)
        v = np.broadcast_to(np.asarray(values, dtype=np.float32), s.shape)
        with self._lock:
            live = (s >= self._first_seq_locked()) & (s < self._total)
            self._ring[name][s[live] % self._capacity] = v[live]
            return int(np.count_nonzero(live))

    def mark_fully_appraised(self, seq: int) -> bool:
        """Sets FULLY_APPRAISED on a live event; False if ``seq`` is not live."""
        seq = self._check_seq(seq)
        with self._lock:
            if not self._first_seq_locked() <= seq < self._total:
                return False
            self._ring["flags"][seq % self._capacity] |= int(EventFlags.FULLY_APPRAISED)
            return True

    def appraise(self, seqs: Any = None, *, params: AppraiserParams | None = None, mark: bool = True) -> int:
        """Computes the four appraiser rewards and writes each into its slot.

        ``seqs=None``: every live event not yet FULLY_APPRAISED; otherwise the given sequence
        numbers that are live. Rewards with |r| <= 1e-6 are not written (the slot keeps its
        value). With ``mark`` the events are flagged FULLY_APPRAISED. Returns the number of
        events appraised. One pass of numpy over the selected rows.
        """
        params = params or AppraiserParams()
        with self._lock:
            first = self._first_seq_locked()
            if seqs is None:
                slots = self._slots(first, self._total)
                slots = slots[(self._ring["flags"][slots] & int(EventFlags.FULLY_APPRAISED)) == 0]
            else:
                s = np.asarray(seqs, dtype=np.int64).reshape(-1)
                s = s[(s >= first) & (s < self._total)]
                slots = np.unique(s % self._capacity)
            if len(slots) == 0:
                return 0
            rewards = params.rewards(self._ring[slots])
            for j, name in enumerate(_REWARD_FIELDS):
                write = np.abs(rewards[:, j]) > APPRAISAL_EPSILON
                self._ring[name][slots[write]] = rewards[write, j]
            if mark:
                self._ring["flags"][slots] |= int(EventFlags.FULLY_APPRAISED)
            return len(slots)

    # -- retention ------------------------------------------------------------------------
    def trim_before(self, seq: int) -> int:
        """Drops every live event with sequence number < ``seq``; returns how many were dropped."""
        seq = self._check_seq(seq)
        with self._lock:
            before = self._first_seq_locked()
            self._floor = max(self._floor, min(seq, self._total))
            return self._first_seq_locked() - before

    # -- sampling -------------------------------------------------------------------------
    def sample_batch(self, size: int, strategy: SamplingStrategy | None = None, rng: Any = None, *,
                     return_seqs: bool = False) -> Any:
        """``min(size, live)`` distinct live events drawn with ``strategy`` (default Uniform).

        Returns an event array copy in draw order, or ``(events, seqs)`` with
        ``return_seqs=True``. ``rng``: a numpy Generator, a seed, or None (fresh entropy).
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise InvalidArgumentError(f"size must be a non-negative integer, got {size!r}")
        strategy = Uniform() if strategy is None else strategy
        if not isinstance(strategy, _STRATEGIES):
            raise InvalidArgumentError(f"unknown sampling strategy {strategy!r}")
        gen = _rng(rng)
        with self._lock:
            first = self._first_seq_locked()
            n = self._total - first
            slots = self._slots(first, self._total)
            rewards = None
            if isinstance(strategy, (PrioritizedByReward, Mixed)):
                ring = self._ring
                rewards = (ring["reward_homeostasis"][slots] + ring["reward_curiosity"][slots]
                           + ring["reward_efficiency"][slots] + ring["reward_goal"][slots])
            weights = _strategy_weights(rewards, n, strategy)
            pick = sample_indices(weights, n, int(size), gen)
            events = self._ring[slots[pick]]
        if return_seqs:
            return events, first + pick.astype(np.int64)
        return events

    # -- subscribers ----------------------------------------------------------------------
    def subscribe(self) -> Subscription:
        """A subscription that receives every event written from now on (see ``Subscription``)."""
        with self._lock:
            return Subscription(self, self._total)

    # -- state for persistence ------------------------------------------------------------
    def restore(self, first_seq: int, events: Any) -> None:
        """Replaces the content: ``events`` are sequence numbers first_seq, first_seq+1, ...

        ``total_written`` becomes ``first_seq + len(events)``; the last ``capacity`` events are
        held; ``sequence`` fields are stamped. Meant for opening a store, before subscribers
        exist (existing subscriptions see the jump as lag or as nothing new).
        """
        first_seq = self._check_seq(first_seq)
        rows = as_event_rows(events)
        with self._cond:
            if self._total:  # a stream that never held an event is all zeros already:
                self._ring[:] = np.zeros(1, dtype=EVENT_DTYPE)  # (don't touch 128 MB to clear it)
            self._total = first_seq
            self._floor = first_seq
            hooks, self._hooks = self._hooks, []
            try:
                self.write_events(rows)
            finally:
                self._hooks = hooks

    def export_state(self) -> dict[str, Any]:
        """A dict (capacity, channel_size, total_written, first_seq, events copy) for ``import_state``."""
        with self._lock:
            first, events = self.live_window()
            return {"capacity": self._capacity, "channel_size": self._channel_size,
                    "total_written": self._total, "first_seq": first, "events": events}

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Restores what ``export_state`` produced (the capacity of this stream is kept)."""
        try:
            first, events, total = int(state["first_seq"]), state["events"], int(state["total_written"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(f"not an ExperienceStream state: {e}") from None
        rows = as_event_rows(events)
        if first + len(rows) != total:
            raise InvalidArgumentError(
                f"inconsistent state: first_seq {first} + {len(rows)} events != total_written {total}")
        self.restore(first, rows)
