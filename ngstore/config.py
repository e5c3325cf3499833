"""IntuitionConfig: every knob of the IntuitionEngine, validated, immutable.

The first five parameters are the original Python signature, positional or keyword, each
accepting ``None`` for "the default" (``IntuitionConfig(analysis_interval_secs=30,
min_confidence=0.8, enable_fast_path=True)`` from the original README works unchanged). The
rest are keyword-only and were not reachable from the original's Python API (they were Rust
``IntuitionConfig``/``FastPathConfig``/``ShiftConfig`` fields); ``None`` means the default for
them too.

Unlike the original, every field has a read-only property (the original forgot
``max_proposals_per_cycle``), every value is checked (``InvalidArgumentError``, a
``ValueError``, naming the field and the accepted range), configs compare by value and hash,
and ``replace(**changes)`` makes a modified copy. ``repr`` keeps the original's summary
format, ``IntuitionConfig(interval=60s, batch=1000, confidence=0.70, fast_path=true)``, so two
configs with equal reprs can still differ in the keyword-only fields; ``as_dict()`` shows all.

Field                      Default                    Accepted
-------------------------  -------------------------  ------------------------------------
analysis_interval_secs     60                         int >= 1 (0 would spin; tokio panics)
batch_size                 1000                       int >= 1
min_confidence             0.7                        0.0..1.0
max_proposals_per_cycle    5                          int >= 0
enable_fast_path           True                       bool
sampling_strategy          PrioritizedByReward(1.0)   Uniform/PrioritizedByReward/RecencyWeighted/Mixed
state_bins_per_dim         4                          int 1..256 (B**8 bins must fit u64)
min_samples                10                         int >= 1
min_reward_delta           0.5                        finite >= 0
shifts                     (4,4,5,6,6,6,8,8)          8 ints, each 0..15 (``codec.MAX_SHIFT``)
fast_path_min_confidence   150                        int 0..255 (raw confidence)
hypothesis_threshold       200                        int 0..255 (raw confidence)
similarity_threshold       0.85                       0.0..1.0 (compared with the measured similarity)
nearest_fallback           None (off)                 None, or a distance > 0 in grid cells (new)
reflex_capacity            1 048 576                  int >= 1 (new: the original had no bound; the
                                                      in-memory table grows to it on demand)
consolidation_min_confidence 192                      int 0..255 (auto-consolidation gate)
consolidation_min_evidence 10                         int 0..65535
zero_variance_confidence   0.0                        0.0..1.0 (see ``analysis``)
learning                   "accumulate"               "accumulate" or "sample" (new; see below)

``learning`` chooses the slow path. ``"accumulate"`` (the default): each ``analyze()`` folds
every event written since the last cycle into running statistics per (bin, action) --
persisted in a store (``ngstore.learning``) -- and proposes patterns from all the evidence
so far; ``batch_size`` and ``sampling_strategy`` are not used. ``"sample"``: the original's
analysis, kept for comparison -- each cycle looks at one sample of ``batch_size`` events
drawn with ``sampling_strategy`` and nothing carries over.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np

from .codec import DEFAULT_SHIFTS, MAX_SHIFT
from .errors import InvalidArgumentError
from .experience import Mixed, PrioritizedByReward, RecencyWeighted, SamplingStrategy, Uniform

__all__ = ["DEFAULTS", "LEARNING_MODES", "IntuitionConfig"]

DEFAULTS: dict[str, Any] = {
    "analysis_interval_secs": 60,
    "batch_size": 1000,
    "min_confidence": 0.7,
    "max_proposals_per_cycle": 5,
    "enable_fast_path": True,
    "sampling_strategy": PrioritizedByReward(1.0),
    "state_bins_per_dim": 4,
    "min_samples": 10,
    "min_reward_delta": 0.5,
    "shifts": tuple(DEFAULT_SHIFTS),
    "fast_path_min_confidence": 150,
    "hypothesis_threshold": 200,
    "similarity_threshold": 0.85,
    "nearest_fallback": None,
    "reflex_capacity": 1 << 20,
    "consolidation_min_confidence": 192,
    "consolidation_min_evidence": 10,
    "zero_variance_confidence": 0.0,
    "learning": "accumulate",
}

LEARNING_MODES = ("accumulate", "sample")


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer, got {v!r}")
    i = int(v)
    if i < lo or (hi is not None and i > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InvalidArgumentError(f"{name} must be {bound}, got {i}")
    return i


def _float(name: str, v: Any, lo: float, hi: float | None = None) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < lo or (hi is not None and f > hi):
        bound = f"in [{lo:g}, {hi:g}]" if hi is not None else f"finite and >= {lo:g}"
        raise InvalidArgumentError(f"{name} must be {bound}, got {f}")
    return f


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be True or False, got {v!r}")
    return bool(v)


@dataclass(frozen=True, repr=False)
class IntuitionConfig:
    """Configuration of the IntuitionEngine (see the module docstring for every field).

    Frozen: attributes are read-only (assignment raises ``dataclasses.FrozenInstanceError``,
    an ``AttributeError``); use ``replace``.
    """

    analysis_interval_secs: int = None  # type: ignore[assignment]
    batch_size: int = None  # type: ignore[assignment]
    min_confidence: float = None  # type: ignore[assignment]
    max_proposals_per_cycle: int = None  # type: ignore[assignment]
    enable_fast_path: bool = None  # type: ignore[assignment]
    _: KW_ONLY
    sampling_strategy: SamplingStrategy = None  # type: ignore[assignment]
    state_bins_per_dim: int = None  # type: ignore[assignment]
    min_samples: int = None  # type: ignore[assignment]
    min_reward_delta: float = None  # type: ignore[assignment]
    shifts: tuple[int, ...] = None  # type: ignore[assignment]
    fast_path_min_confidence: int = None  # type: ignore[assignment]
    hypothesis_threshold: int = None  # type: ignore[assignment]
    similarity_threshold: float = None  # type: ignore[assignment]
    nearest_fallback: float | None = None
    reflex_capacity: int = None  # type: ignore[assignment]
    consolidation_min_confidence: int = None  # type: ignore[assignment]
    consolidation_min_evidence: int = None  # type: ignore[assignment]
    zero_variance_confidence: float = None  # type: ignore[assignment]
    learning: str = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, v in values.items():
            if v is None:
                values[name] = DEFAULTS[name]
        checked = {
            "analysis_interval_secs": _int("analysis_interval_secs", values["analysis_interval_secs"], 1),
            "batch_size": _int("batch_size", values["batch_size"], 1),
            "min_confidence": _float("min_confidence", values["min_confidence"], 0.0, 1.0),
            "max_proposals_per_cycle": _int("max_proposals_per_cycle", values["max_proposals_per_cycle"], 0),
            "enable_fast_path": _bool("enable_fast_path", values["enable_fast_path"]),
            "sampling_strategy": self._strategy(values["sampling_strategy"]),
            "state_bins_per_dim": _int("state_bins_per_dim", values["state_bins_per_dim"], 1, 256),
            "min_samples": _int("min_samples", values["min_samples"], 1),
            "min_reward_delta": _float("min_reward_delta", values["min_reward_delta"], 0.0),
            "shifts": self._shifts(values["shifts"]),
            "fast_path_min_confidence": _int("fast_path_min_confidence", values["fast_path_min_confidence"], 0, 255),
            "hypothesis_threshold": _int("hypothesis_threshold", values["hypothesis_threshold"], 0, 255),
            "similarity_threshold": _float("similarity_threshold", values["similarity_threshold"], 0.0, 1.0),
            "nearest_fallback": self._radius(values["nearest_fallback"]),
            "reflex_capacity": _int("reflex_capacity", values["reflex_capacity"], 1),
            "consolidation_min_confidence": _int("consolidation_min_confidence",
                                                 values["consolidation_min_confidence"], 0, 255),
            "consolidation_min_evidence": _int("consolidation_min_evidence",
                                               values["consolidation_min_evidence"], 0, 0xFFFF),
            "zero_variance_confidence": _float("zero_variance_confidence",
                                               values["zero_variance_confidence"], 0.0, 1.0),
            "learning": self._learning(values["learning"]),
        }
        for name, v in checked.items():
            object.__setattr__(self, name, v)

    @staticmethod
    def _strategy(v: Any) -> SamplingStrategy:
        if not isinstance(v, (Uniform, PrioritizedByReward, RecencyWeighted, Mixed)):
            raise InvalidArgumentError(
                f"sampling_strategy must be Uniform(), PrioritizedByReward(alpha), RecencyWeighted(decay) "
                f"or Mixed(reward_weight, recency_weight), got {v!r}")
        return v

    @staticmethod
    def _learning(v: Any) -> str:
        if not isinstance(v, str) or v not in LEARNING_MODES:
            raise InvalidArgumentError(f"learning must be one of {LEARNING_MODES}, got {v!r}")
        return v

    @staticmethod
    def _radius(v: Any) -> float | None:
        if v is None:
            return None
        r = _float("nearest_fallback", v, 0.0)
        if r == 0.0:
            raise InvalidArgumentError("nearest_fallback must be > 0 (a distance in grid cells) or None (off)")
        return r

    @staticmethod
    def _shifts(v: Any) -> tuple[int, ...]:
        try:
            items = list(v)
        except TypeError:
            raise InvalidArgumentError(f"shifts must be 8 integers, got {v!r}") from None
        if len(items) != 8:
            raise InvalidArgumentError(f"shifts must be 8 integers (one per layer), got {len(items)}")
        return tuple(_int(f"shifts[{i}]", s, 0, MAX_SHIFT) for i, s in enumerate(items))

    def replace(self, **changes: Any) -> IntuitionConfig:
        """A copy with ``changes`` applied and validated (unknown names raise TypeError)."""
        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"IntuitionConfig has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (the strategy as its dataclass instance)."""
        return {name: getattr(self, name) for name in DEFAULTS}

    def __repr__(self) -> str:
        return (f"IntuitionConfig(interval={self.analysis_interval_secs}s, batch={self.batch_size}, "
                f"confidence={self.min_confidence:.2f}, fast_path={'true' if self.enable_fast_path else 'false'})")
