"""The overlay: commits that are in the log but not yet in LMDB.

A commit is durable (or, in ``async``/``none`` mode, written) once its log record is; it
becomes visible through the writer's handle the moment it joins the overlay, and reaches
LMDB later, in a group of many commits, when the applier (``applier``) drains the overlay.
The overlay holds:

* the pending entries ``(log position, ops)`` in log order -- the applier's input;
* an index of the tokens they write, ``id -> (position, record or None for a delete)``,
  so a point read (``get_token``, ``contains``) through the writer's handle sees its own
  writes without waiting for the applier; every other read first drains the overlay
  (a *barrier*, see ``applier.Applier.wait_applied``) -- a read of connections alone,
  only through the newest entry that wrote connections (``connection_position``);
* the idempotency keys of its keyed entries, ``digest -> (position, first event)``, so
  ``outcome(key)`` and the writer's duplicate check see a key from the moment its batch is
  committed (``outcomes``);
* the additions the entries may make (upper bounds), so quotas count the overlay.

It is bounded in size and in age: :meth:`Overlay.wait_for_room` makes a committer wait
for the applier when adding would pass ``max_bytes``, or while the oldest entry is older
than ``max_lag`` seconds (back-pressure, never an unbounded queue). The age bound is what
bounds how stale LMDB -- what other processes read -- can be. Without it, a thread
committing in a loop keeps the GIL from the applier (which gets it back only at the
interpreter's switch interval, each time it lets it go), and an apply of one group of
one-token updates to a 1M-token store took 1.1-3.4 s instead of ~60 ms, its group growing
to ~80,000 commits.

An entry holds no object the cyclic garbage collector must visit: it is one flat tuple
of its position, its log payload (the bytes the committer encoded for the log), its time
and its pending additions as ints, and the applier decodes its ops from the payload when
it takes it. Tens of thousands of entries of tracked ``Op`` objects made every full
collection walk them all (measured: 14 % of a sustained run of one-token updates, in
110 ms collections), and nested tuples are untracked only one level per collection.

The token index is two dicts: the entries of the applier's last take (``taken``) and those
added since (``current``, looked at first: it holds the newer write of a token in both).
When the applier has applied what it took, the drop forgets ``taken`` whole: a dict
swapped for an empty one under the lock, freed after it. The drop used to find and delete
the applied ids one by one under the lock, which every commit takes: 1.3-1.5 µs per
applied entry, 46-67 ms per apply in a sustained run of one-token updates to a 1M-token
store. It now takes ~0.46 µs per entry, none of it under the lock.

Threads: the commit leader adds, the applier takes and drops (one thread: a drop's
entries are found without the lock, as only it removes any), readers look tokens up.
``add``/``drop``/``take`` hold the overlay's lock; a token or key lookup does not need it
(one dict ``get`` is atomic), because the applier drops an index entry only after LMDB has
committed it: a reader that misses the index and then begins an LMDB transaction sees the
applied value.
"""
from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from .interrupts import Gate
from .ops import (
    OP_CONNECTION_DELETE,
    OP_CONNECTION_PUT,
    OP_EVENT_APPEND,
    OP_ITEM_SIZE,
    OP_REFLEX_PUT,
    OP_TOKEN_PUT,
    REFLEX_KINDS,
    Op,
    decode_ops,
    one_op_head,
    token_put_records,
)

Entry = tuple[int, list[Op]]

#: the ops that change the connections databases (a token delete leaves them alone)
_CONNECTION_KINDS = frozenset((OP_CONNECTION_PUT, OP_CONNECTION_DELETE))
_POSITION = itemgetter(0)
_PAYLOAD = itemgetter(1)
#: the counts of an entry, in Pending.add's order (tokens, connections, events, reflexes, reflex ops)
_COUNTS = tuple(itemgetter(k) for k in range(3, 8))
#: The payload of a one-token commit: the head ``encode_ops`` writes for one TOKEN_PUT op
#: of one record, then the record.
_ONE_TOKEN_HEAD = np.frombuffer(one_op_head(OP_TOKEN_PUT, 1), dtype=np.uint8)
_ONE_TOKEN_HEAD_BYTES = _ONE_TOKEN_HEAD.size
_ONE_TOKEN_PAYLOAD_BYTES = _ONE_TOKEN_HEAD_BYTES + OP_ITEM_SIZE[OP_TOKEN_PUT]
#: An entry's additions to :class:`Pending`: tokens, connections, events, reflexes, reflex ops.
_Delta = tuple[int, int, int, int, int]
#: position, payload, time added, then the five additions of ``_Delta``: atoms only
_Stored = tuple[int, bytes, float, int, int, int, int, int]


class Taken(NamedTuple):
    """What the applier takes (:meth:`Overlay.take`): the ``entries`` to apply, standing
    for ``log_entries`` entries of the log, the first at position ``first``."""

    entries: list[Entry]
    log_entries: int
    first: int

#: Memory of one token index entry: the dict slot, the (position, record) tuple and the
#: 64-byte record as a bytes object -- 237 bytes measured with tracemalloc over 100 000
#: entries (CPython 3.11), rounded up.
INDEX_ENTRY_BYTES = 240


@dataclass
class Pending:
    """Upper bounds of what the overlay's entries may add once applied."""

    tokens: int = 0
    connections: int = 0
    events: int = 0
    reflexes: int = 0
    #: ops that change the reflex table (puts, deletes, resizes)
    reflex_ops: int = 0

    @staticmethod
    def delta(ops: Iterable[Op]) -> _Delta:
        """What ``ops`` add, as :meth:`add` takes it."""
        tokens = connections = events = reflexes = reflex_ops = 0
        for op in ops:
            kind = op.kind
            if kind == OP_TOKEN_PUT:
                tokens += op.count
            elif kind == OP_CONNECTION_PUT:
                connections += op.count
            elif kind == OP_EVENT_APPEND:
                events += op.count
            elif kind in REFLEX_KINDS:
                reflex_ops += 1
                if kind == OP_REFLEX_PUT:
                    reflexes += op.count
        return tokens, connections, events, reflexes, reflex_ops

    def add(self, delta: _Delta | _Stored, sign: int = 1) -> None:
        """Adds (``sign`` -1: removes) the additions ``delta``, or those at the end of a
        stored entry."""
        self.tokens += sign * delta[-5]
        self.connections += sign * delta[-4]
        self.events += sign * delta[-3]
        self.reflexes += sign * delta[-2]
        self.reflex_ops += sign * delta[-1]


class Overlay:
    """Pending entries, their token index and their size (see the module docstring)."""

    def __init__(self, max_bytes: int, max_lag: float = math.inf) -> None:
        self.max_bytes = max_bytes
        self.max_lag = max_lag
        self._lock = threading.Lock()
        self._room = Gate()  # under _lock: committers waiting for room (interrupts.py)
        self._entries: list[_Stored] = []
        self._tokens: dict[int, tuple[int, bytes | None]] = {}  # current: written since the last take
        self._taken: dict[int, tuple[int, bytes | None]] = {}  # written by the entries the applier took
        self._taken_through = 0  # the position of the last entry taken
        self._keys: dict[bytes, tuple[int, int | None]] = {}  # digest -> (position, first event)
        self._bytes = 0
        #: the position of the newest entry that puts or deletes connections (0: none yet):
        #: what a read of connections alone waits for (``Writer.connection_barrier``)
        self._conn_position = 0
        self.pending = Pending()

    # -- the commit leader ------------------------------------------------------------

    def wait_for_room(self, nbytes: int, failed: threading.Event) -> bool:
        """Blocks while ``nbytes`` more would pass ``max_bytes`` or the oldest entry is
        older than ``max_lag``, and the overlay is not empty (a single entry larger than the
        bound still goes in, alone), or until ``failed`` is set (the applier stopped:
        nothing will drain). Returns whether it had to look (the caller then checks again
        that the writer still accepts writes)."""
        entries = self._entries  # replaced, never shrunk, by drop: its first entry stays there
        if self._bytes + nbytes <= self.max_bytes and (not entries or
                                                       time.monotonic() - entries[0][2] <= self.max_lag):
            return False  # only the leader adds, and drop only puts a younger entry first
        while True:
            with self._lock:
                entries = self._entries
                if not entries or failed.is_set() or (self._bytes + nbytes <= self.max_bytes
                                                      and time.monotonic() - entries[0][2] <= self.max_lag):
                    return True
                waiter = self._room.add_waiter()
            waiter.acquire(timeout=0.5)

    def add(self, position: int, ops: list[Op], payload: bytes, tokens: list[tuple[int, bytes | None]] | None,
            key: tuple[bytes, int | None] | None = None) -> int:
        """Adds one committed entry: ``ops`` (what it adds is counted; a key's op, which adds
        nothing, may be left out) and ``payload``, the encoding of all its ops in its log
        record (``ops.encode_ops``: kept, and decoded again when the applier takes it);
        ``tokens`` are its token writes in order (None: the entry is not indexed -- its
        commit waits for the applier before it returns); ``key``, for a keyed entry, its
        key's digest and the sequence number of its first event. Returns the overlay's
        size in bytes after the add."""
        one_put = len(ops) == 1 and ops[0].kind == OP_TOKEN_PUT  # the usual commit
        if one_put:
            t, c, e, r, ro = ops[0].count, 0, 0, 0, 0
            connections = False
        else:
            t, c, e, r, ro = Pending.delta(ops)
            connections = any(op.kind in _CONNECTION_KINDS for op in ops)
        entry = (position, payload, time.monotonic(), t, c, e, r, ro)
        nbytes = len(payload)
        pending = self.pending
        with self._lock:
            # What may run twice first (an interrupt may stop a loop or a call): the index
            # and the key. Then the counts and the entry, in statements without a call: an
            # interrupt finds the entry added whole or not at all (interrupts.py), and
            # ``last_position`` says which.
            if tokens:
                index = self._tokens
                for tid, record in tokens:
                    index[tid] = (position, record)
            if key is not None:
                self._keys[key[0]] = (position, key[1])
            self._bytes += nbytes
            pending.tokens += t
            if not one_put:
                pending.connections += c
                pending.events += e
                pending.reflexes += r
                pending.reflex_ops += ro
            if connections:
                self._conn_position = position
            self._entries.append(entry)
            return self._bytes

    # -- readers ---------------------------------------------------------------------

    def token(self, token_id: int) -> tuple[bool, bytes | None]:
        """``(True, record or None if deleted)`` when a pending entry wrote the token,
        ``(False, None)`` when LMDB has its newest state."""
        hit = self._tokens.get(token_id)
        if hit is None:
            hit = self._taken.get(token_id)
            if hit is None:
                return False, None
        return True, hit[1]

    def key(self, digest: bytes) -> tuple[int, int | None] | None:
        """``(position, first event)`` of the pending keyed entry with key ``digest``, None
        when no pending entry has it (LMDB may: look there next)."""
        return self._keys.get(digest)

    def key_digests(self) -> list[bytes]:
        """The key digests of the pending keyed entries."""
        with self._lock:
            return list(self._keys)

    # -- the applier -----------------------------------------------------------------

    def take(self) -> Taken:
        """Every pending entry, in log order (they stay pending until :meth:`drop`), its
        ops decoded from its payload. A run of entries that are each one token put is
        taken as one entry of one put (at the run's last position): the apply merges such
        runs anyway (``apply._coalesced``), and a group of small commits then makes a few
        objects, not several per commit -- objects the collector would walk while the
        apply runs."""
        with self._lock:
            pending = self._entries[:]
            if pending:  # the index entries of what is taken go to the taken generation
                if self._taken:  # a take whose apply failed: its entries are taken again
                    self._taken.update(self._tokens)  # the newer write of a token wins
                    self._tokens = {}
                else:
                    self._taken, self._tokens = self._tokens, {}
                self._taken_through = pending[-1][0]
        if not pending:
            return Taken([], 0, 0)
        payloads = list(map(_PAYLOAD, pending))
        if len(set(map(len, payloads))) == 1 and len(payloads[0]) == _ONE_TOKEN_PAYLOAD_BYTES:
            # every entry of one size, that of a one-token commit (the sustained-update
            # case): look at their heads as one array instead of one at a time
            rows = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(payloads), -1)
            if bool((rows[:, :_ONE_TOKEN_HEAD_BYTES] == _ONE_TOKEN_HEAD).all()):
                joined = rows[:, _ONE_TOKEN_HEAD_BYTES:].tobytes()
                return Taken([(pending[-1][0], [Op.whole(OP_TOKEN_PUT, joined, len(pending))])], len(pending),
                             pending[0][0])
        entries: list[Entry] = []
        run: list[bytes] = []
        run_end = 0
        for (pos, *_rest), payload in zip(pending, payloads, strict=True):
            records = token_put_records(payload)
            if records is not None:
                run.append(records)
                run_end = pos
                continue
            if run:
                entries.append((run_end, [Op.of_bytes(OP_TOKEN_PUT, b"".join(run))]))
                run = []
            entries.append((pos, decode_ops(payload, f"overlay entry {pos}")))
        if run:
            entries.append((run_end, [Op.of_bytes(OP_TOKEN_PUT, b"".join(run))]))
        return Taken(entries, len(pending), pending[0][0])

    def drop(self, through: int) -> None:
        """Forgets the entries at or below position ``through``, now in LMDB, and the
        index entries they made (a later write of the same token stays)."""
        # Without the lock (only this thread removes entries; adds append): the entries
        # dropped and what they add up to. The sums go through map(), which makes no object
        # per entry; zip(*gone) made an iterator per entry, enough to run the collector.
        keep = bisect_right(self._entries, through, key=_POSITION)
        gone = self._entries[:keep]
        nbytes = sum(map(len, map(_PAYLOAD, gone)))
        counts = tuple(sum(map(column, gone)) for column in _COUNTS)
        with self._lock:
            self._entries = self._entries[keep:]
            self._bytes -= nbytes
            self.pending.add(counts, -1)
            if self._keys:
                for digest in [d for d, (pos, _f) in self._keys.items() if pos <= through]:
                    del self._keys[digest]
            forgotten: object = None  # freed after the lock
            if not self._entries:
                forgotten = (self._tokens, self._taken)
                self._tokens, self._taken = {}, {}
            elif through == self._taken_through:  # the applier's drop of what it took
                forgotten, self._taken = self._taken, {}
            else:  # any other position: the index entries at or below it, one by one
                for index in (self._tokens, self._taken):
                    for tid in [tid for tid, hit in index.items() if hit[0] <= through]:
                        del index[tid]
            self._room.notify_all()
        del forgotten, gone  # the deallocations, outside the lock

    def wake_waiters(self) -> None:
        with self._lock:
            self._room.notify_all()

    def due_in(self, interval: float, threshold: int) -> float | None:
        """Seconds until the overlay should be applied (0: now), None when it is empty."""
        with self._lock:
            if not self._entries:
                return None
            if self._bytes >= threshold:
                return 0.0
            return max(0.0, self._entries[0][2] + interval - time.monotonic())

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def memory_bytes(self) -> int:
        """What the overlay holds in memory: its entries' op bytes and its token index."""
        return self._bytes + (len(self._tokens) + len(self._taken)) * INDEX_ENTRY_BYTES

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def connection_position(self) -> int:
        """The position of the newest entry, pending or applied, that puts or deletes
        connections (0 when none has since the overlay was made)."""
        return self._conn_position

    @property
    def last_position(self) -> int:
        """The position of the newest pending entry (0 when there is none)."""
        entries = self._entries
        return entries[-1][0] if entries else 0
