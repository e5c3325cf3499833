"""Guardian validation of tokens, connections and reflexes: the original rules, vectorised.

Three families, each in three shapes:

* ``check_token(token)`` / ``check_connection(c)`` / ``check_reflex(c)`` take **one** record
  and return the list of ``(field, message, value)`` failures (empty = valid);
* ``check_tokens(arr)`` / ``check_connections(arr)`` / ``check_reflexes(arr)`` take an array
  and return an ``ArrayCheck``: a boolean mask (True = valid) and the reasons for the first
  ``max_reasons`` failures as ``(index, field, message, value)``; the work is numpy column
  comparisons, no Python loop over records;
* ``validate_token`` / ``validate_connection`` / ``validate_reflex`` take one record **or**
  an array and raise ``ValidationError(what, errors)`` when anything fails (for an array the
  field is prefixed with the index, ``"[3].weight"``); they return None otherwise.

Counters (validated/rejected totals) are not kept here; the store counts.

Rules
-----
Token (``Token::validate`` and Guardian ``validate_token``): id != 0; weight finite and within
``weight_range``; timestamp at most ``max_future_secs`` (3600) after ``now``; field_radius
and field_strength (raw u8) within their ranges (default the whole u8, as the CDNA default).

Connection (Guardian ``validate_connection``): the type is allowed by ``allowed_types`` (a
bit mask over all 176 codes 0x00..0xAF, or an iterable of codes; codes above 0xAF are unknown
and always rejected); pull_strength finite and within ``pull_strength_range``; rigidity/255
within ``rigidity_range``. Additions (the original cannot express these): canonical order
``token_a <= token_b``, ``token_a != token_b`` when ``allow_self_loops=False``, mutability
in {0, 1, 2}, preferred_distance finite.

Reflex (Guardian ``validate_reflex``), exactly: confidence >= 128, mutability <= 1 (not a
hypothesis), 0 < pull_strength <= 100, rigidity >= 128, token_a != token_b.

Decisions on the original's contradictions
------------------------------------------
**Token weight: [0, 1]**, not [0, 100]. ``Token::validate`` uses [0, 100], the Guardian's CDNA
default [0, 1]. The Guardian is the layer that validates what is written, and the record's
own documentation says "typically 0..1"; ``weight_range=`` restores 100 for callers that
want the token-level rule. NaN is rejected (the original's ``w < min || w > max`` lets NaN
through by accident).

**Pull strength: stored connections are checked against [0, 100]**; reflexes against (0, 100]
(unchanged); the proposal limit |pull| <= 10 stays a rule of proposals
(``PROPOSAL_PULL_LIMIT``), not of stored records. The original has three ranges: [0, 1] in
``validate_connection`` (the CDNA ``min/max_connection_weight``), (0, 100] in
``validate_reflex`` and [-10, 10] for proposals. [0, 1] cannot be the record-level rule: the
original's own reflex tests use pull 5.0, which ``validate_reflex`` accepts, so every valid
reflex would be an invalid connection and could never be stored through a validated batch.
Negative values are not admitted because nothing in the force law needs them (inhibition has
its own flag, INHIBITORY) and no original code path other than a proposal produces them.
So the stored range is the union of what a fresh connection (0.0) and a valid reflex
((0, 100]) need, and a reflex is always a valid connection. ``pull_strength_range=(0.0, 1.0)``
gives back the CDNA default for a caller who wants it.

**Connection types: all 176 codes**. The original tests ``1 << type`` on a u64 mask, which
overflows for codes >= 64 (a panic in debug builds, a wrapped shift in release). Here the mask
is a Python int of any width (default: all 176 codes allowed).
"""
from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .connections import Connection, ConnectionArray
from .errors import InvalidArgumentError, ValidationError
from .records import CONNECTION_DTYPE, MAX_CONNECTION_TYPE, TOKEN_DTYPE

__all__ = [
    "ALL_CONNECTION_TYPES",
    "DEFAULT_PULL_STRENGTH_RANGE",
    "DEFAULT_WEIGHT_RANGE",
    "MAX_FUTURE_SECS",
    "PROPOSAL_PULL_LIMIT",
    "REFLEX_MAX_PULL_STRENGTH",
    "REFLEX_MIN_CONFIDENCE",
    "REFLEX_MIN_RIGIDITY",
    "ArrayCheck",
    "check_connection",
    "check_connections",
    "check_reflex",
    "check_reflexes",
    "check_token",
    "check_tokens",
    "validate_connection",
    "validate_reflex",
    "validate_token",
]

#: Bit i set = connection type i allowed; all 176 defined codes.
ALL_CONNECTION_TYPES = (1 << (MAX_CONNECTION_TYPE + 1)) - 1
DEFAULT_WEIGHT_RANGE = (0.0, 1.0)
DEFAULT_PULL_STRENGTH_RANGE = (0.0, 100.0)
#: |pull_strength| bound of a single Modify proposal (the original's proposal rule).
PROPOSAL_PULL_LIMIT = 10.0
REFLEX_MIN_CONFIDENCE = 128
REFLEX_MIN_RIGIDITY = 128
REFLEX_MAX_PULL_STRENGTH = 100.0
MAX_FUTURE_SECS = 3600

Reason = tuple[int, str, str, object]


@dataclass(frozen=True)
class ArrayCheck:
    """Result of a vectorised check.

    ``ok[i]`` is True when record i passes every rule. ``reasons`` lists
    ``(index, field, message, value)`` for the first failing records in index order (every
    failed rule of each, at most ``max_reasons`` entries); ``n_failed`` counts all failing
    records.
    """

    ok: np.ndarray
    reasons: list[Reason] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return int(len(self.ok) - np.count_nonzero(self.ok))

    @property
    def all_ok(self) -> bool:
        return bool(self.ok.all())

    def __bool__(self) -> bool:
        return self.all_ok


# --------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------

def _as_records(obj: Any, dtype: np.dtype, what: str) -> tuple[np.ndarray, bool]:
    """(1-D array, was_single) for a record, a record array or an object with ``.data``/``.record``."""
    if isinstance(obj, Connection):
        return obj.record, True
    if isinstance(obj, ConnectionArray):
        return obj.data, False
    if dtype == CONNECTION_DTYPE and isinstance(obj, (list, tuple)) and all(isinstance(c, Connection) for c in obj):
        return (np.concatenate([c.record for c in obj]) if obj else np.zeros(0, dtype=CONNECTION_DTYPE)), False
    single = False
    if dtype == TOKEN_DTYPE and not isinstance(obj, (np.ndarray, np.void)):
        # Token / TokenArray / list of Tokens: the token layer's own normaliser (imported
        # here so that validation does not need the token module for arrays).
        from .tokens import Token, TokenArray, as_token_array
        if isinstance(obj, (Token, TokenArray, list, tuple)):
            return as_token_array(obj), isinstance(obj, Token)
    if isinstance(obj, np.void):
        arr, single = np.array([obj]), True
    elif isinstance(obj, np.ndarray):
        arr, single = obj, obj.ndim == 0
    elif isinstance(getattr(obj, "record", None), np.ndarray):  # e.g. a Token view
        arr, single = obj.record, True
    elif isinstance(getattr(obj, "data", None), np.ndarray):  # e.g. a TokenArray
        arr = obj.data
        single = arr.ndim == 0
    elif hasattr(obj, "to_bytes"):
        raw = obj.to_bytes()
        if len(raw) % dtype.itemsize:
            raise InvalidArgumentError(f"{what}: {len(raw)} bytes is not a whole number of records")
        arr = np.frombuffer(raw, dtype=dtype)
        single = len(arr) == 1
    else:
        raise InvalidArgumentError(f"cannot validate {type(obj).__name__} as {what}")
    if arr.dtype != dtype:
        raise InvalidArgumentError(f"{what}: expected dtype {what.upper()}_DTYPE, got {arr.dtype}")
    if arr.ndim > 1:
        raise InvalidArgumentError(f"{what}: expected a 1-D array, got shape {arr.shape}")
    return arr.reshape(-1), single


def _range(name: str, r: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(r[0]), float(r[1]))
    except (TypeError, ValueError, IndexError):
        raise InvalidArgumentError(f"{name} must be a (low, high) pair, got {r!r}") from None
    if np.isnan(lo) or np.isnan(hi) or lo > hi:
        raise InvalidArgumentError(f"{name} must satisfy low <= high, got {r!r}")
    return lo, hi


def _collect(checks: list[tuple[str, np.ndarray, str, np.ndarray]], n: int, max_reasons: int) -> ArrayCheck:
    """checks: (field, bad_mask, message, values). Reasons for the first failing records."""
    ok = np.ones(n, dtype=bool)
    for _, bad, _, _ in checks:
        ok &= ~bad
    reasons: list[Reason] = []
    if max_reasons > 0 and not ok.all():
        for i in np.flatnonzero(~ok):
            for fname, bad, msg, values in checks:
                if bad[i]:
                    v = values[i]
                    reasons.append((int(i), fname, msg, v.item() if hasattr(v, "item") else v))
            if len(reasons) >= max_reasons:
                break
        reasons = reasons[:max_reasons]
    return ArrayCheck(ok, reasons)


def _raise_if(result: ArrayCheck, single: bool, what: str, ids: np.ndarray | None = None) -> None:
    if result.all_ok:
        return
    if single:
        errors = [(f, m, v) for _, f, m, v in result.reasons]
        label = what if ids is None else f"{what} {int(ids[0])}"
    else:
        errors = [(f"[{i}].{f}", m, v) for i, f, m, v in result.reasons]
        label = f"{result.n_failed} of {len(result.ok)} {what}s"
    raise ValidationError(label, errors)


# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------

def check_tokens(tokens: Any, *, weight_range: tuple[float, float] = DEFAULT_WEIGHT_RANGE,
                 field_radius_range: tuple[int, int] = (0, 255),
                 field_strength_range: tuple[int, int] = (0, 255),
                 max_future_secs: int = MAX_FUTURE_SECS, now: int | None = None,
                 max_reasons: int = 10) -> ArrayCheck:
    """Vectorised token rules (see the module docstring); ``now`` defaults to the clock."""
    arr, _ = _as_records(tokens, TOKEN_DTYPE, "token")
    return _check_tokens(arr, weight_range, field_radius_range, field_strength_range,
                         max_future_secs, now, max_reasons)


def _check_tokens(arr: np.ndarray, weight_range: Any, radius_range: Any, strength_range: Any,
                  max_future_secs: int, now: int | None, max_reasons: int) -> ArrayCheck:
    wlo, whi = _range("weight_range", weight_range)
    rlo, rhi = _range("field_radius_range", radius_range)
    slo, shi = _range("field_strength_range", strength_range)
    now = int(time.time()) if now is None else int(now)
    w = arr["weight"]
    with np.errstate(invalid="ignore"):
        bad_w = ~((w >= wlo) & (w <= whi))  # NaN fails both comparisons
    ts = arr["timestamp"].astype(np.int64)
    radius = arr["field_radius"]
    strength = arr["field_strength"]
    checks = [
        ("id", arr["id"] == 0, "id 0 is reserved", arr["id"]),
        ("weight", bad_w, f"must be within [{wlo:g}, {whi:g}]", w),
        ("timestamp", ts > now + int(max_future_secs),
         f"more than {int(max_future_secs)} s in the future", arr["timestamp"]),
        ("field_radius", (radius < rlo) | (radius > rhi), f"must be within [{rlo:g}, {rhi:g}]", radius),
        ("field_strength", (strength < slo) | (strength > shi), f"must be within [{slo:g}, {shi:g}]", strength),
    ]
    return _collect(checks, len(arr), max_reasons)


def check_token(token: Any, **options: Any) -> list[tuple[str, str, object]]:
    """The failures of one token as ``(field, message, value)``; options as ``check_tokens``."""
    arr, _ = _as_records(token, TOKEN_DTYPE, "token")
    if len(arr) != 1:
        raise InvalidArgumentError(f"check_token takes one token, got {len(arr)}; use check_tokens")
    options.setdefault("max_reasons", 100)
    return [(f, m, v) for _, f, m, v in check_tokens(arr, **options).reasons]


def validate_token(token_or_array: Any, **options: Any) -> None:
    """Raises ``ValidationError`` unless every token passes; options as ``check_tokens``."""
    arr, single = _as_records(token_or_array, TOKEN_DTYPE, "token")
    result = check_tokens(arr, **options)
    _raise_if(result, single, "token", arr["id"] if single else None)


# --------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------

def _type_table(allowed_types: Any) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    if isinstance(allowed_types, (int, np.integer)) and not isinstance(allowed_types, bool):
        mask = int(allowed_types)
        if mask < 0:
            raise InvalidArgumentError("allowed_types mask must be non-negative")
        bits = mask & ALL_CONNECTION_TYPES
        table[:MAX_CONNECTION_TYPE + 1] = [(bits >> i) & 1 == 1 for i in range(MAX_CONNECTION_TYPE + 1)]
    elif isinstance(allowed_types, Iterable):
        codes = np.asarray(list(allowed_types), dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() > 255):
            raise InvalidArgumentError("allowed connection type codes must be in 0..255")
        table[codes] = True
        table[MAX_CONNECTION_TYPE + 1:] = False
    else:
        raise InvalidArgumentError(f"allowed_types must be an int mask or codes, got {allowed_types!r}")
    return table


def check_connections(connections: Any, *, allowed_types: Any = ALL_CONNECTION_TYPES,
                      pull_strength_range: tuple[float, float] = DEFAULT_PULL_STRENGTH_RANGE,
                      rigidity_range: tuple[float, float] = (0.0, 1.0),
                      allow_self_loops: bool = True, max_reasons: int = 10) -> ArrayCheck:
    """Vectorised connection rules (see the module docstring).

    ``allowed_types``: an int bit mask (bit i = code i) or an iterable of codes.
    ``rigidity_range`` is in units of rigidity/255.
    """
    arr, _ = _as_records(connections, CONNECTION_DTYPE, "connection")
    table = _type_table(allowed_types)
    plo, phi = _range("pull_strength_range", pull_strength_range)
    glo, ghi = _range("rigidity_range", rigidity_range)
    t = arr["connection_type"]
    pull = arr["pull_strength"]
    with np.errstate(invalid="ignore"):
        bad_pull = ~((pull >= plo) & (pull <= phi))
    rig = arr["rigidity"].astype(np.float64) / 255.0
    a, b = arr["token_a"], arr["token_b"]
    checks = [
        ("connection_type", ~table[t],
         "unknown type (above 0xAF)" if not table.any() else "type not allowed (or unknown above 0xAF)", t),
        ("pull_strength", bad_pull, f"must be finite and within [{plo:g}, {phi:g}]", pull),
        ("rigidity", ~((rig >= glo) & (rig <= ghi)), f"rigidity/255 must be within [{glo:g}, {ghi:g}]",
         arr["rigidity"]),
        ("token_a", a > b, "token_a > token_b: not in canonical order", a),
        ("mutability", arr["mutability"] > 2, "must be 0, 1 or 2", arr["mutability"]),
        ("preferred_distance", ~np.isfinite(arr["preferred_distance"]), "must be finite",
         arr["preferred_distance"]),
    ]
    if not allow_self_loops:
        checks.append(("token_b", a == b, "token_a == token_b (self loop)", b))
    return _collect(checks, len(arr), max_reasons)


#: The fields the default connection rules read, per 64-byte record: token_a, token_b,
#: connection_type, pull_strength, preferred_distance, mutability (rigidity/255 is always
#: within the default [0, 1]).
_CONNECTION_RULE_FIELDS = struct.Struct("<IIB7xff8xB31x")


def connections_pass_defaults(raw: bytes) -> bool:
    """Whether every connection record of ``raw`` (concatenated 64-byte images) passes
    :func:`check_connections` with its defaults -- read with ``struct``, without numpy:
    the vectorised check of a one-connection commit cost ~30 µs, several times the
    commit. False says only that ``check_connections`` must give the verdict (and the
    reasons)."""
    plo, phi = DEFAULT_PULL_STRENGTH_RANGE
    for a, b, t, pull, distance, mutability in _CONNECTION_RULE_FIELDS.iter_unpack(raw):
        if not (a <= b and t <= MAX_CONNECTION_TYPE and plo <= pull <= phi and mutability <= 2
                and math.isfinite(distance)):
            return False
    return True


def check_connection(connection: Any, **options: Any) -> list[tuple[str, str, object]]:
    """The failures of one connection as ``(field, message, value)``; options as ``check_connections``."""
    arr, _ = _as_records(connection, CONNECTION_DTYPE, "connection")
    if len(arr) != 1:
        raise InvalidArgumentError(f"check_connection takes one connection, got {len(arr)}")
    options.setdefault("max_reasons", 100)
    return [(f, m, v) for _, f, m, v in check_connections(arr, **options).reasons]


def validate_connection(connection_or_array: Any, **options: Any) -> None:
    """Raises ``ValidationError`` unless every connection passes; options as ``check_connections``."""
    arr, single = _as_records(connection_or_array, CONNECTION_DTYPE, "connection")
    _raise_if(check_connections(arr, **options), single, "connection")


# --------------------------------------------------------------------------------------
# Reflexes
# --------------------------------------------------------------------------------------

def check_reflexes(connections: Any, *, max_reasons: int = 10) -> ArrayCheck:
    """Vectorised ``validate_reflex`` rules, exactly the original's (no options)."""
    arr, _ = _as_records(connections, CONNECTION_DTYPE, "connection")
    pull = arr["pull_strength"]
    with np.errstate(invalid="ignore"):
        bad_pull = ~((pull > 0.0) & (pull <= REFLEX_MAX_PULL_STRENGTH))
    checks = [
        ("confidence", arr["confidence"] < REFLEX_MIN_CONFIDENCE,
         f"reflex confidence must be >= {REFLEX_MIN_CONFIDENCE}", arr["confidence"]),
        ("mutability", arr["mutability"] > 1, "a reflex must be Immutable or Learnable", arr["mutability"]),
        ("pull_strength", bad_pull, f"reflex pull must be in (0, {REFLEX_MAX_PULL_STRENGTH:g}]", pull),
        ("rigidity", arr["rigidity"] < REFLEX_MIN_RIGIDITY,
         f"reflex rigidity must be >= {REFLEX_MIN_RIGIDITY} (0.5)", arr["rigidity"]),
        ("token_b", arr["token_a"] == arr["token_b"], "token_a == token_b", arr["token_b"]),
    ]
    return _collect(checks, len(arr), max_reasons)


def check_reflex(connection: Any) -> list[tuple[str, str, object]]:
    """The failures of one reflex connection as ``(field, message, value)``."""
    arr, _ = _as_records(connection, CONNECTION_DTYPE, "connection")
    if len(arr) != 1:
        raise InvalidArgumentError(f"check_reflex takes one connection, got {len(arr)}")
    return [(f, m, v) for _, f, m, v in check_reflexes(arr, max_reasons=100).reasons]


def validate_reflex(connection_or_array: Any) -> None:
    """Raises ``ValidationError`` unless every connection is a valid reflex."""
    arr, single = _as_records(connection_or_array, CONNECTION_DTYPE, "connection")
    _raise_if(check_reflexes(arr), single, "reflex")
