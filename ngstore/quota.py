"""Quotas on commits: what a batch would add, checked against the Guardian's limits before
anything of it is written.

:class:`Quota` counts what the Guardian limits (``guardian.Usage``): LMDB's records as the
applier's counters say, plus what the overlay may still add, the reflex table's memory and
the overlay's own. The writer asks :meth:`Quota.check` for each batch of a group, with what
the group's earlier batches will add (:class:`GroupAdds`: they are in neither LMDB nor the
overlay yet); a refusal raises ``QuotaExceededError`` and writes nothing. The cleanup
headroom (``cleanup_headroom``) is the room left before Guardian's aggressive cleanup must
be looked at; the writer runs that cleanup.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import reflex_store
from .applier import Applier
from .errors import QuotaExceededError
from .guardian import CONNECTION_BYTES, EVENT_BYTES, TOKEN_BYTES, Guardian, Usage
from .kv import KV, ReadTxn
from .ops import (
    OP_CONNECTION_DELETE,
    OP_CONNECTION_PUT,
    OP_EVENT_APPEND,
    OP_EVENT_TRIM,
    OP_OUTCOME_KEY,
    OP_REFLEX_PUT,
    OP_TOKEN_DELETE,
    OP_TOKEN_PUT,
    REFLEX_KINDS,
    Op,
)
from .overlay import INDEX_ENTRY_BYTES, Overlay
from .snapshot import presence

if TYPE_CHECKING:
    from .reflex import ReflexTable

#: Op kinds whose quota charge is known from the op alone (upper bounds: every put a new
#: record), so a batch of them can be checked against the slack (``Quota.check``)
#: and is charged exactly what the full check charges it. An event append is charged
#: what it adds below the event capacity, and a reflex op the table growth it may cause:
#: both need the store's state, and take the full check.
_SLACK_KINDS = frozenset({OP_TOKEN_PUT, OP_TOKEN_DELETE, OP_CONNECTION_PUT, OP_CONNECTION_DELETE,
                          OP_EVENT_TRIM, OP_OUTCOME_KEY})
#: The slack of a limit that is not set.
_UNLIMITED = 1 << 62

@dataclass
class GroupAdds:
    """What the batches accepted so far in one commit group will add (they are in neither
    LMDB nor the overlay yet): quotas count them for the batches behind them."""

    tokens: int = 0
    bytes: int = 0
    #: their ops, in log order (the reflex ones apply before a later batch's)
    ops: list[Op] = field(default_factory=list)


class Quota:
    """The quota checks of one writer (module docstring)."""

    def __init__(self, guardian: Guardian, kv: KV, applier: Applier, overlay: Overlay, refuse: bool) -> None:
        self._guardian = guardian
        self._kv = kv
        self._applier = applier
        self._overlay = overlay
        #: ``reflex_eviction="refuse"``: a reflex put that would push a reflex out is refused
        self._refuse = refuse
        #: accounted bytes that may still be added before cleanup must be looked at (the
        #: groups' upper bounds are subtracted; looking recomputes it)
        self.cleanup_headroom = 0
        #: (Guardian.revision, tokens, bytes): what may still be added before a quota could
        #: refuse, measured at a group's first batch and lowered by each batch accepted since
        #: -- its upper-bound additions and what it adds to the overlay. None: measure again.
        self._slack: tuple[int, int, int] | None = None
        self._table_seen: weakref.ref[ReflexTable] | None = None  # the version whose memory_bytes ...
        self._table_bytes = 0            # ... is this

    def forget_slack(self) -> None:
        """Measure the slack again at the next batch (one went to LMDB past the overlay)."""
        self._slack = None

    def usage(self, overlay: bool = True) -> Usage:
        """What the Guardian counts (``guardian``): LMDB's records plus what the overlay may
        add, the reflex table's memory (plus, as an upper bound, the growth the overlay's
        reflex puts may cause), the overlay's own memory (unless ``overlay`` is False: it is
        transient, and no cleanup can free it), and the Guardian's reservations."""
        a = self._applier
        c = a.counters
        pend = self._overlay.pending
        table = a.reflex_table
        seen = self._table_seen
        if seen is None or seen() is not table:  # a version never changes: ask C once per version
            # by weak reference: this accounting must not keep a version (or its lease) alive
            self._table_seen = weakref.ref(table) if table is not None else None
            self._table_bytes = table.memory_bytes if table is not None else 0
        reflex_bytes = self._table_bytes
        if pend.reflexes:
            reflex_bytes = max(reflex_bytes, reflex_store.table_bytes_after(table, a.reflex_capacity, [],
                                                                            pend.reflexes))
        return Usage(tokens=c.tokens_live + pend.tokens, connections=c.connections_live + pend.connections,
                     events=min(c.events_live + pend.events, a.event_capacity), reflex_bytes=reflex_bytes,
                     overlay_bytes=self._overlay.memory_bytes if overlay else 0, reserved=self._guardian.reserved)

    def check(self, ops: list[Op], group: GroupAdds | None, overlay_bytes: int) -> int:
        """Raises QuotaExceededError if the batch would pass a limit -- or, with
        ``reflex_eviction="refuse"``, push a reflex out of the table -- and writes nothing
        then; returns the tokens it may add. Counts with upper bounds (every put a new id or
        reflex, the reflex table growing by the most its rule allows); when those would
        refuse, applies the overlay and counts exactly, so a refusal never depends on how
        far the applier has got. The overlay counts in the usage while it holds other
        commits; a batch is not charged its own passage through it (transient, and bounded
        by ``overlay_bytes``). Takes what it may add from the cleanup headroom and adds it
        to ``group`` (None: a group of this batch alone). ``overlay_bytes``: the batch's
        payload, what the overlay will hold of it besides its token index.

        A batch of :data:`_SLACK_KINDS` ops is checked against the slack instead of a new
        usage: the room left under each limit, measured at a group's first batch and
        lowered by every batch accepted since. Usage only falls meanwhile (applies turn upper
        bounds into exact counts, deletes free), so a batch the slack admits, the full
        check would admit too; one it does not goes to the full check, which decides."""
        slack = self._slack
        add_tokens = add_bytes = entries = 0
        for op in ops:
            kind = op.kind
            if kind == OP_TOKEN_PUT:
                n = op.count
                add_tokens += n
                add_bytes += n * TOKEN_BYTES
                entries += n
            elif kind == OP_TOKEN_DELETE:
                entries += op.count
            elif kind == OP_CONNECTION_PUT:
                add_bytes += op.count * CONNECTION_BYTES
            elif kind not in _SLACK_KINDS:
                slack = None
                break
        else:
            if slack is None or slack[0] != self._guardian.revision:
                slack = self._measure_slack(group)
            if slack is not None and add_tokens <= slack[1] and add_bytes <= slack[2]:
                self._slack = (slack[0], slack[1] - add_tokens,
                               slack[2] - add_bytes - overlay_bytes - entries * INDEX_ENTRY_BYTES)
                if group is not None:
                    group.tokens += add_tokens
                    group.bytes += add_bytes
                    group.ops.extend(ops)
                self.cleanup_headroom -= add_bytes
                return add_tokens
        self._slack = None  # measured again at the next group
        return self.full_check(ops, GroupAdds() if group is None else group)

    def _measure_slack(self, group: GroupAdds | None) -> tuple[int, int, int] | None:
        """The slack (see :meth:`check`) now, at a group's first batch; None within
        a group (its earlier batches are in neither the usage nor the slack)."""
        if group is not None and group.ops:
            return None
        g = self._guardian
        usage = self.usage()
        limit = g.byte_limit
        return (g.revision, _UNLIMITED if g.max_tokens is None else g.max_tokens - usage.tokens,
                _UNLIMITED if limit is None else limit - usage.bytes)

    def full_check(self, ops: list[Op], group: GroupAdds) -> int:
        g = self._guardian
        refuse = self._refuse and any(op.kind == OP_REFLEX_PUT for op in ops)
        if refuse and self._overlay.pending.reflex_ops:
            self._applier.wait_applied(self._overlay.last_position)  # plan on the table they make
        usage, add_tokens, add_bytes = self._additions(ops, group, exact=False)
        if g.exceeds(usage, add_tokens, add_bytes):  # else check() would pass: not asked again
            usage, add_tokens, add_bytes = self._additions(ops, group, exact=True)
            g.check(usage, add_tokens, add_bytes)
        if refuse:
            self._refuse_displacing(ops, group.ops)
        group.tokens += add_tokens
        group.bytes += add_bytes
        group.ops.extend(ops)
        self.cleanup_headroom -= add_bytes
        return add_tokens

    def _additions(self, ops: list[Op], group: GroupAdds, exact: bool) -> tuple[Usage, int, int]:
        """(usage, tokens, bytes) the batch may add; ``exact``: the overlay applied first and
        token puts counted against LMDB (reflex puts stay upper bounds)."""
        if exact:
            self._applier.wait_applied(self._overlay.last_position)
        usage = self.usage()
        usage.tokens += group.tokens
        usage.pending_bytes = group.bytes
        add_tokens = add_bytes = 0
        reflexes = False
        for op in ops:
            kind = op.kind
            if kind == OP_TOKEN_PUT:
                n = self._count_absent(op.data["id"]) if exact else op.count
                add_tokens += n
                add_bytes += n * TOKEN_BYTES
            elif kind == OP_CONNECTION_PUT:
                add_bytes += op.count * CONNECTION_BYTES  # an upper bound: overwrites add nothing
            elif kind == OP_EVENT_APPEND:
                live = usage.events
                add_bytes += (min(self._applier.event_capacity, live + op.count) - live) * EVENT_BYTES
            elif kind in REFLEX_KINDS:
                reflexes = True
        if reflexes:  # what the table may grow by
            a = self._applier
            earlier = [op for op in group.ops if op.kind in REFLEX_KINDS]
            pending = 0 if exact else self._overlay.pending.reflexes
            table = a.reflex_table
            before = reflex_store.table_bytes_after(table, a.reflex_capacity, earlier, pending)
            after = reflex_store.table_bytes_after(table, a.reflex_capacity, earlier + ops, pending)
            add_bytes += max(0, after - before)  # the group's earlier batches counted theirs
        return usage, add_tokens, add_bytes

    def _refuse_displacing(self, ops: list[Op], earlier: list[Op]) -> None:
        """``reflex_eviction="refuse"``: QuotaExceededError if a reflex put of the batch
        would push a reflex out of the table (planned exactly; nothing is written)."""
        a = self._applier
        hit = reflex_store.first_displacing_put(a.reflex_table, a.reflex_capacity, earlier, ops)
        if hit is None:
            return
        table = a.reflex_table
        live = len(table) if table is not None else 0
        self._guardian.quota_exceeded_total += 1
        raise QuotaExceededError(
            "reflex_capacity", live, sum(op.count for op in ops if op.kind == OP_REFLEX_PUT), a.reflex_capacity,
            detail=f"with reflex_eviction='refuse', reflex #{hit[1]} of the batch's put #{hit[0]} would push a "
                   "reflex out: the table is at capacity or its cell holds 4 reflexes already",
            hint="store.resize_reflexes(n) to make room, or open with reflex_eviction='evict'")

    def _count_absent(self, ids: np.ndarray) -> int:
        """Ids of ``ids`` not present, exactly: the overlay is applied first."""
        self._applier.wait_applied(self._overlay.last_position)
        ids = np.unique(np.asarray(ids, dtype=np.uint32))
        with ReadTxn(self._kv) as txn:
            present = presence(txn, self._kv, self._applier.layout, ids, writing=True)
        return int(ids.size - np.count_nonzero(present))
