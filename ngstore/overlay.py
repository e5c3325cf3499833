"""The overlay: commits that are in the log but not yet in LMDB.

A commit is durable (or, in ``async``/``none`` mode, written) once its log record is; it
becomes visible through the writer's handle the moment it joins the overlay, and reaches
LMDB later, in a group of many commits, when the applier (``applier``) drains the overlay.
The overlay holds:

* the pending entries ``(log position, ops)`` in log order -- the applier's input;
* an index of the tokens they write, ``id -> (position, record or None for a delete)``,
  so a point read (``get_token``, ``contains``) through the writer's handle sees its own
  writes without waiting for the applier; every other read first drains the overlay
  (a *barrier*, see ``applier.Applier.wait_applied``);
* the additions the entries may make (upper bounds), so quotas count the overlay.

It is bounded: :meth:`Overlay.wait_for_room` makes a committer wait for the applier when
adding would pass ``max_bytes`` (back-pressure, never an unbounded queue).

Threads: the commit leader adds, the applier takes and drops, readers look tokens up.
``add``/``drop``/``take`` hold the overlay's lock; a token lookup does not need it (one
dict ``get`` is atomic), because the applier drops an index entry only after LMDB has
committed it: a reader that misses the index and then begins an LMDB transaction sees the
applied value.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .ops import OP_CONNECTION_PUT, OP_EVENT_APPEND, OP_REFLEX_PUT, OP_TOKEN_PUT, REFLEX_KINDS, Op

Entry = tuple[int, list[Op]]

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

    def add(self, ops: Iterable[Op], sign: int = 1) -> None:
        for op in ops:
            if op.kind == OP_TOKEN_PUT:
                self.tokens += sign * op.count
            elif op.kind == OP_CONNECTION_PUT:
                self.connections += sign * op.count
            elif op.kind == OP_EVENT_APPEND:
                self.events += sign * op.count
            elif op.kind in REFLEX_KINDS:
                self.reflex_ops += sign
                if op.kind == OP_REFLEX_PUT:
                    self.reflexes += sign * op.count


class Overlay:
    """Pending entries, their token index and their size (see the module docstring)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._entries: list[tuple[int, list[Op], int, float]] = []  # position, ops, bytes, time added
        self._tokens: dict[int, tuple[int, bytes | None]] = {}
        self._bytes = 0
        self.pending = Pending()

    # -- the commit leader ------------------------------------------------------------

    def wait_for_room(self, nbytes: int, failed: threading.Event) -> None:
        """Blocks while ``nbytes`` more would pass ``max_bytes`` and the overlay is not
        empty (a single entry larger than the bound still goes in, alone), or until
        ``failed`` is set (the applier stopped: nothing will drain)."""
        if self._bytes + nbytes <= self.max_bytes:  # only the leader adds: room stays room
            return
        with self._room:
            while self._entries and self._bytes + nbytes > self.max_bytes and not failed.is_set():
                self._room.wait(0.5)

    def add(self, position: int, ops: list[Op], nbytes: int, tokens: list[tuple[int, bytes | None]] | None) -> int:
        """Adds one committed entry; ``tokens`` are its token writes in order (None: the
        entry is not indexed -- its commit waits for the applier before it returns).
        Returns the overlay's size in bytes after the add."""
        with self._lock:
            self._entries.append((position, ops, nbytes, time.monotonic()))
            self._bytes += nbytes
            self.pending.add(ops)
            if tokens:
                index = self._tokens
                for tid, record in tokens:
                    index[tid] = (position, record)
            return self._bytes

    # -- readers ---------------------------------------------------------------------

    def token(self, token_id: int) -> tuple[bool, bytes | None]:
        """``(True, record or None if deleted)`` when a pending entry wrote the token,
        ``(False, None)`` when LMDB has its newest state."""
        hit = self._tokens.get(token_id)
        if hit is None:
            return False, None
        return True, hit[1]

    # -- the applier -----------------------------------------------------------------

    def take(self) -> list[Entry]:
        """Every pending entry, in log order (they stay pending until :meth:`drop`)."""
        with self._lock:
            return [(pos, ops) for pos, ops, _n, _t in self._entries]

    def drop(self, through: int) -> None:
        """Forgets the entries at or below position ``through``, now in LMDB, and the
        index entries they made (a later write of the same token stays)."""
        with self._lock:
            keep = 0
            while keep < len(self._entries) and self._entries[keep][0] <= through:
                keep += 1
            gone, self._entries = self._entries[:keep], self._entries[keep:]
            for _pos, ops, nbytes, _t in gone:
                self._bytes -= nbytes
                self.pending.add(ops, -1)
            if not self._entries:
                self._tokens.clear()
            elif self._tokens:
                index = self._tokens
                stale = [tid for tid, (pos, _r) in index.items() if pos <= through]
                for tid in stale:
                    del index[tid]
            self._room.notify_all()

    def wake_waiters(self) -> None:
        with self._room:
            self._room.notify_all()

    def due_in(self, interval: float, threshold: int) -> float | None:
        """Seconds until the overlay should be applied (0: now), None when it is empty."""
        with self._lock:
            if not self._entries:
                return None
            if self._bytes >= threshold:
                return 0.0
            return max(0.0, self._entries[0][3] + interval - time.monotonic())

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def memory_bytes(self) -> int:
        """What the overlay holds in memory: its entries' op bytes and its token index."""
        return self._bytes + len(self._tokens) * INDEX_ENTRY_BYTES

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def last_position(self) -> int:
        """The position of the newest pending entry (0 when there is none)."""
        entries = self._entries
        return entries[-1][0] if entries else 0
