"""The evidence the IntuitionEngine accumulates: running reward moments per (bin, action).

What is kept
------------
For each **group** (state bin, action = ``event_type``) of one binning (``B`` bins per
dimension): the number of events with a finite total reward, their mean total reward, the
sum of squared deviations ``m2`` (so the sample variance is ``m2 / (count - 1)``), and the
mean ``action`` and ``state`` vectors. That is everything the analysis needs to run its
Welch t-test on all the evidence seen so far instead of on one sample, and to turn a
pattern into a reflex. The bytes are ``docs/format.md`` §3.3 (``learn`` database) and
§5.1 (the LEARN_UPDATE op).

How it grows: folds at analysis cycles
--------------------------------------
The statistics are updated once per ``analyze()`` cycle, not as events are written: a
cycle **folds** the events written since the last fold (``[cursor, end)``) into partial
moments per group (two passes over the fold: mean = sum/n, then the squared deviations),
and one LEARN_UPDATE op in the cycle's batch merges them into the stored moments with
Chan's parallel formula (Welford's one-sample update is its ``nb = 1`` case). Rejected:
updating at ``write_events`` -- every commit would bin its events and read-modify-write
one LMDB value per group on the apply path, and the binning is the engine's
configuration, which the store does not know; a cycle pays for one grouped pass over a
batch of events and one small op instead.

The rule that makes it exact: a fold carries its range; applying it is a no-op when its
first sequence number is below the cursor (those events are folded already), otherwise
it merges and moves the cursor to its end. So applying depends only on the stored state
and the op -- live commits, a transaction re-run after map growth and replay write the
same bytes -- and a fold is counted once. After a crash the statistics are exactly the
fold of the stored events ``[0, cursor)`` (less any trimmed before a cycle reached them,
counted as missed); the events from the cursor on are folded by the next cycle.

Everything here is pure numpy: :func:`merge_moments` is the one implementation of the
merge, used by ``apply`` on LMDB values and by :class:`LearnedStatistics` in memory, so
an in-memory engine and a store hold the same numbers bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import CorruptionError, InvalidArgumentError, NgStoreError
from .layout import (
    DB_LEARN,
    LEARN_CURSOR_BYTES,
    LEARN_MOMENTS_DTYPE,
    LearnCursor,
    decode_learn_moments,
    learn_cursor_key,
    learn_group_key_fields,
    learn_group_prefix,
    unseal,
)
from .ops import LEARN_UPDATE_DTYPE

__all__ = ["LEARN_MOMENTS_DTYPE", "LEARN_UPDATE_DTYPE", "LearnCursor", "LearnedStatistics", "check_fold",
           "group_moments", "make_fold", "merge_folds", "merge_moments", "next_cursor", "read_statistics"]

_KEY = np.dtype([("bin", ">u8"), ("action", ">u2")])
_MOMENT_FIELDS = ("count", "mean", "m2", "action_mean", "state_mean")


def merge_moments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chan's merge of two LEARN_MOMENTS_DTYPE arrays, row by row (format.md §5.1 gives the
    order of evaluation). A row of count 0 is the empty set: merging it changes nothing."""
    na = a["count"].astype(np.float64)
    nb = b["count"].astype(np.float64)
    n = a["count"] + b["count"]
    nf = n.astype(np.float64)
    out = np.zeros(len(a), LEARN_MOMENTS_DTYPE)
    out["count"] = n
    with np.errstate(invalid="ignore", divide="ignore"):
        w = nb / nf
    d = b["mean"] - a["mean"]
    out["mean"] = a["mean"] + d * w
    out["m2"] = a["m2"] + b["m2"] + ((d * d) * na) * w
    wv = w[:, None]
    for name in ("action_mean", "state_mean"):
        out[name] = a[name] + (b[name] - a[name]) * wv
    empty = n == 0
    if empty.any():
        out[empty] = a[empty]
    return out


def group_moments(bins: np.ndarray, actions: np.ndarray, rewards: np.ndarray, action_vectors: np.ndarray,
                  states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bins, actions, moments)`` of the groups of some events, sorted by (bin, action).

    ``rewards`` (float64, finite), ``action_vectors`` and ``states`` ((n, 8)) are the
    events' columns. Two passes per group, in float64."""
    order = np.lexsort((actions, bins))
    sb, sa = bins[order].astype(np.uint64), actions[order].astype(np.uint16)
    n = len(order)
    if n == 0:
        return sb, sa, np.zeros(0, LEARN_MOMENTS_DTYPE)
    new = np.ones(n, dtype=bool)
    new[1:] = (sb[1:] != sb[:-1]) | (sa[1:] != sa[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, n))
    row_group = np.cumsum(new) - 1
    r = rewards[order].astype(np.float64)
    out = np.zeros(len(starts), LEARN_MOMENTS_DTYPE)
    out["count"] = counts
    cf = counts.astype(np.float64)
    mean = np.add.reduceat(r, starts) / cf
    dev = r - mean[row_group]
    out["mean"] = mean
    out["m2"] = np.add.reduceat(dev * dev, starts)
    out["action_mean"] = np.add.reduceat(action_vectors[order].astype(np.float64), starts, axis=0) / cf[:, None]
    out["state_mean"] = np.add.reduceat(states[order].astype(np.float64), starts, axis=0) / cf[:, None]
    return sb[starts], sa[starts], out


def make_fold(bins_per_dim: int, first_seq: int, end_seq: int, bins: np.ndarray, actions: np.ndarray,
              moments: np.ndarray) -> np.ndarray:
    """The LEARN_UPDATE items of one fold (groups sorted by (bin, action)); a fold with no
    group is one item of count 0, so that it still moves the cursor."""
    k = max(1, len(moments))
    rows = np.zeros(k, LEARN_UPDATE_DTYPE)
    rows["bins_per_dim"], rows["first_seq"], rows["end_seq"] = bins_per_dim, first_seq, end_seq
    if len(moments):
        rows["bin"], rows["action"] = bins, actions
        for name in _MOMENT_FIELDS:
            rows[name] = moments[name]
    return rows


def fold_moments(fold: np.ndarray) -> np.ndarray:
    """The groups' moments of a fold's items, as a LEARN_MOMENTS_DTYPE array."""
    out = np.zeros(len(fold), LEARN_MOMENTS_DTYPE)
    for name in _MOMENT_FIELDS:
        out[name] = fold[name]
    return out


def _keys(bins: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(bin, action) as 10 big-endian bytes each: sorts like LMDB's key order."""
    k = np.empty(len(bins), _KEY)
    k["bin"], k["action"] = bins, actions
    return k.view("S10")


def check_fold(fold: Any, error: type[NgStoreError] = CorruptionError) -> tuple[int, int, int]:
    """``(bins_per_dim, first_seq, end_seq)`` of a valid fold; raises ``error`` naming the
    broken rule of format.md §5.1 otherwise."""
    if not isinstance(fold, np.ndarray) or fold.dtype != LEARN_UPDATE_DTYPE or fold.ndim != 1 or not len(fold):
        raise error("a learning fold is a non-empty 1-d LEARN_UPDATE_DTYPE array")
    b, first, end = int(fold["bins_per_dim"][0]), int(fold["first_seq"][0]), int(fold["end_seq"][0])
    if not 1 <= b <= 256 or (fold["bins_per_dim"] != b).any():
        raise error(f"learning fold: bins_per_dim must be one value in 1..256, got {sorted(set(fold['bins_per_dim']))}")
    if (fold["first_seq"] != first).any() or (fold["end_seq"] != end).any() or first > end:
        raise error("learning fold: every item must carry the same first_seq <= end_seq")
    if fold["reserved"].any():
        raise error("learning fold: the reserved field (bytes 4..7) is not zero")
    floats = np.concatenate([fold["mean"][:, None], fold["m2"][:, None], fold["action_mean"], fold["state_mean"]],
                            axis=1)
    if not np.isfinite(floats).all() or (fold["m2"] < 0).any():
        raise error("learning fold: moments must be finite with m2 >= 0")
    counts = fold["count"]
    if (counts == 0).any():
        if len(fold) != 1 or fold["bin"][0] or fold["action"][0] or floats.any():
            raise error("learning fold: a count-0 item must be the fold's only item, all zero")
        return b, first, end
    k = _keys(fold["bin"], fold["action"])
    if len(k) > 1 and not (k[1:] > k[:-1]).all():
        raise error("learning fold: (bin, action) must strictly increase")
    return b, first, end


def next_cursor(cursor: LearnCursor, fold: np.ndarray) -> LearnCursor | None:
    """The cursor after applying ``fold`` (valid), or None when the fold is stale (its
    events are folded already) and changes nothing."""
    first, end = int(fold["first_seq"][0]), int(fold["end_seq"][0])
    if first < cursor.next_seq:
        return None
    counted = int(fold["count"].sum(dtype=np.uint64))
    return LearnCursor(end, cursor.events_counted + counted, cursor.events_missed + first - cursor.next_seq,
                       cursor.folds + 1)


def merge_folds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One fold of two consecutive folds of the same binning (``a`` ends where ``b``
    starts): how a cycle that reads its events in chunks makes one op."""
    ba, fa, ea = check_fold(a, InvalidArgumentError)
    bb, fb, eb = check_fold(b, InvalidArgumentError)
    if ba != bb or ea != fb:
        raise InvalidArgumentError(f"folds [{fa}, {ea}) and [{fb}, {eb}) of B={ba}, {bb} are not consecutive")
    la, lb = a[a["count"] > 0], b[b["count"] > 0]
    bins, actions, moments = _merge_sorted(la["bin"], la["action"], fold_moments(la), lb["bin"], lb["action"],
                                           fold_moments(lb))
    return make_fold(ba, fa, eb, bins, actions, moments)


def _merge_sorted(bins: np.ndarray, actions: np.ndarray, moments: np.ndarray, new_bins: np.ndarray,
                  new_actions: np.ndarray, new_moments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges sorted groups ``new_*`` into sorted groups ``*`` (absent = all zeros)."""
    if len(new_moments) == 0:
        return bins, actions, moments
    keys, new_keys = _keys(bins, actions), _keys(new_bins, new_actions)
    pos = np.searchsorted(keys, new_keys)
    found = np.zeros(len(new_keys), dtype=bool)
    inside = pos < len(keys)
    found[inside] = keys[pos[inside]] == new_keys[inside]
    old = np.zeros(len(new_moments), LEARN_MOMENTS_DTYPE)
    old[found] = moments[pos[found]]
    merged = merge_moments(old, new_moments)
    out = moments.copy()
    out[pos[found]] = merged[found]
    add = ~found
    return (np.insert(bins, pos[add], new_bins[add]).astype(np.uint64),
            np.insert(actions, pos[add], new_actions[add]).astype(np.uint16),
            np.insert(out, pos[add], merged[add]))


class LearnedStatistics:
    """The statistics of one binning (immutable): the fold ``cursor`` and the groups,
    sorted by (bin, action) -- ``bins`` (uint64), ``actions`` (uint16) and ``moments``
    (LEARN_MOMENTS_DTYPE). ``applied(fold)`` is the in-memory twin of applying a
    LEARN_UPDATE op to a store."""

    __slots__ = ("actions", "bins", "bins_per_dim", "cursor", "moments")

    def __init__(self, bins_per_dim: int, cursor: LearnCursor | None = None, bins: np.ndarray | None = None,
                 actions: np.ndarray | None = None, moments: np.ndarray | None = None) -> None:
        self.bins_per_dim = int(bins_per_dim)
        self.cursor = cursor if cursor is not None else LearnCursor()
        self.bins = bins if bins is not None else np.zeros(0, np.uint64)
        self.actions = actions if actions is not None else np.zeros(0, np.uint16)
        self.moments = moments if moments is not None else np.zeros(0, LEARN_MOMENTS_DTYPE)
        for a in (self.bins, self.actions, self.moments):
            a.flags.writeable = False

    def __len__(self) -> int:
        return len(self.moments)

    @property
    def learned(self) -> bool:
        """Whether any fold was applied (a store then holds a cursor for this binning)."""
        return self.cursor.folds > 0

    def applied(self, fold: np.ndarray) -> tuple[LearnedStatistics, bool]:
        """``(statistics after the fold, whether it applied)``; a stale fold (format.md
        §5.1) returns ``(self, False)``."""
        b, _first, _end = check_fold(fold, InvalidArgumentError)
        if b != self.bins_per_dim:
            raise InvalidArgumentError(f"a fold of B={b} applied to the statistics of B={self.bins_per_dim}")
        cursor = next_cursor(self.cursor, fold)
        if cursor is None:
            return self, False
        live = fold[fold["count"] > 0]
        bins, actions, moments = _merge_sorted(self.bins, self.actions, self.moments, live["bin"], live["action"],
                                               fold_moments(live))
        return LearnedStatistics(self.bins_per_dim, cursor, bins, actions, moments), True

    def variance(self) -> np.ndarray:
        """The sample variance (n - 1) of each group's reward, 0 for a group of one."""
        c = self.moments["count"].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 1, self.moments["m2"] / (c - 1), 0.0)

    def group(self, state_bin: int, action: int) -> np.void | None:
        """The moments of one group (a LEARN_MOMENTS_DTYPE record), or None."""
        hit = np.flatnonzero((self.bins == state_bin) & (self.actions == action))
        return self.moments[int(hit[0])] if len(hit) else None

    def same_as(self, other: LearnedStatistics) -> bool:
        """Bit for bit the same statistics (what replay must rebuild)."""
        return (self.bins_per_dim == other.bins_per_dim and self.cursor == other.cursor
                and np.array_equal(self.bins, other.bins) and np.array_equal(self.actions, other.actions)
                and self.moments.tobytes() == other.moments.tobytes())

    def __repr__(self) -> str:
        c = self.cursor
        return (f"LearnedStatistics(B={self.bins_per_dim}, groups={len(self)}, next_seq={c.next_seq}, "
                f"events_counted={c.events_counted}, events_missed={c.events_missed}, folds={c.folds})")


def read_statistics(txn: Any, db: Any, bins_per_dim: int, *, groups: bool = True,
                    region: Callable[[bytes, bytes, Any, int], Any] | None = None) -> LearnedStatistics:
    """The statistics of one binning as a read transaction ``txn`` sees the ``learn``
    database ``db`` (None: a store from before it existed, read-only: no statistics).
    ``groups=False`` reads the cursor only. ``region(db, key, value, n)`` gives a value's
    record region (``kv.KV.record``: verifies its checksum as the store's mode says;
    None: unverified, format.md §3.0)."""
    if db is None:
        return LearnedStatistics(bins_per_dim)
    if region is None:
        def region(dbname: bytes, key: bytes, value: Any, n: int) -> Any:
            return unseal(dbname, key, value, n, verify=False)
    ckey = learn_cursor_key(bins_per_dim)
    raw = txn.get(ckey, db=db)
    cursor = LearnCursor.decode(region(DB_LEARN, ckey, raw, LEARN_CURSOR_BYTES), "learn cursor") \
        if raw is not None else None
    if not groups:
        return LearnedStatistics(bins_per_dim, cursor)
    prefix = learn_group_prefix(bins_per_dim)
    bins: list[int] = []
    actions: list[int] = []
    values: list[bytes] = []
    cur = txn.cursor(db=db)
    if cur.set_range(prefix):
        for key, value in cur:
            k = bytes(key)
            if not k.startswith(prefix):
                break
            _b, state_bin, action = learn_group_key_fields(k)
            bins.append(state_bin)
            actions.append(action)
            values.append(decode_learn_moments(region(DB_LEARN, k, value, LEARN_MOMENTS_DTYPE.itemsize),
                                               f"learn group {k.hex()}").tobytes())
    moments = np.frombuffer(b"".join(values), LEARN_MOMENTS_DTYPE).copy()
    return LearnedStatistics(bins_per_dim, cursor, np.array(bins, np.uint64), np.array(actions, np.uint16), moments)
