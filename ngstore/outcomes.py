"""Known outcomes: idempotency keys, their digests, and what the store can say of them.

A caller gives a batch a key (``store.batch(key=b"order-17")``); the batch logs the key's
digest (``ops.outcome_key_op``, ``docs/format.md`` §5.2) and applying it records the digest
in the ``outcomes`` database (§3.6) in the transaction of the batch's own data. So whatever
survives a crash, the key is known exactly when its batch is committed, and
``store.outcome(key)`` can answer after any failure or restart. This module owns the
caller's side of it: which keys are valid, the digest, the :class:`Outcome` answer,
reading a digest's entry in one LMDB point read, and the writer's in-memory
:class:`KeyFilter` of the digests LMDB may hold. Recording and forgetting keys is
``apply``'s; the keys still pending in the log are the overlay's.
"""
from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import xxhash

from .errors import InvalidArgumentError
from .kv import KV
from .layout import (
    DB_OUTCOMES,
    DIGEST_BYTES,
    ORDER_PREFIX,
    OUTCOMES_HEADER_KEY,
    KnownOutcome,
    OutcomesHeader,
    outcome_key,
    outcome_order_key,
    outcome_order_sequence,
)
from .ops import Op, outcome_key_op

#: The longest key, in bytes (a ``str`` key counts its UTF-8 bytes).
MAX_KEY_BYTES = 256
#: How many keys a store remembers unless opened with ``remember_keys=``.
DEFAULT_REMEMBER_KEYS = 100_000
#: The most ``remember_keys`` may be (the order index is a u64 but the window is memory
#: the caller reasons about; 2^32 keys are 400+ GiB of entries).
MAX_REMEMBER_KEYS = 1 << 32


class Outcome(enum.Enum):
    """What ``store.outcome(key)`` knows of the batch committed with ``key``.

    * ``COMMITTED``: a batch with this key is committed (in the log with its durability,
      or in LMDB). A retry with the key is not applied again.
    * ``NOT_COMMITTED``: no batch with this key is committed: the store has recorded every
      key since it was created (none was forgotten) and this one is not among them.
      Retrying is safe.
    * ``UNKNOWN_KEY``: the key is not among the keys the store remembers, and it has
      forgotten older ones: a batch with this key may have committed before the newest
      ``remember_keys`` keyed batches. A read-only handle, which cannot see the writer's
      pending commits, answers this instead of ``NOT_COMMITTED``.
    """

    COMMITTED = "committed"
    NOT_COMMITTED = "not-committed"
    UNKNOWN_KEY = "unknown-key"


def key_digest(key: Any) -> bytes:
    """The 16-byte digest of an idempotency key (XXH3-128 of its bytes, ``format.md``
    §3.6): ``key`` is bytes-like or a ``str`` (UTF-8), 1 … 256 bytes; else
    InvalidArgumentError."""
    if isinstance(key, str):
        raw = key.encode("utf-8", "surrogatepass")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise InvalidArgumentError(f"an idempotency key is bytes or str, got {type(key).__name__}")
    if not 1 <= len(raw) <= MAX_KEY_BYTES:
        raise InvalidArgumentError(f"an idempotency key is 1 to {MAX_KEY_BYTES} bytes, got {len(raw)}")
    return xxhash.xxh3_128_digest(raw)


def key_op(key: Any, remember: int) -> Op | None:
    """The OUTCOME_KEY op of a batch with idempotency key ``key`` (None: no key) in a
    store that remembers ``remember`` keys; InvalidArgumentError for a bad key, or for any
    key when ``remember`` is 0 (keys are off)."""
    if key is None:
        return None
    digest = key_digest(key)
    if remember == 0:
        raise InvalidArgumentError("this store was opened with remember_keys=0: idempotency keys are off; "
                                   "open it with remember_keys=N to use them")
    return outcome_key_op(digest, remember)


def keyed(ops: list[Op], key: Any, remember: int) -> list[Op]:
    """``ops`` with the OUTCOME_KEY op of ``key`` first (``ops`` itself when ``key`` is None)."""
    op = key_op(key, remember)
    return ops if op is None else [op, *ops]


def check_remember_keys(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REMEMBER_KEYS:
        raise InvalidArgumentError(f"remember_keys must be an int in 0..{MAX_REMEMBER_KEYS}, got {value!r}")
    return value


def lookup(txn: Any, db: Any, digest: bytes, where: str) -> KnownOutcome | None:
    """The outcome recorded for ``digest`` in ``txn`` (None: not among the keys held)."""
    if db is None:  # a store made before the database existed: no key was ever recorded
        return None
    value = txn.get(outcome_key(digest), db=db)
    return KnownOutcome.decode(value, where) if value is not None else None


def point_lookup(kv: KV, digest: bytes) -> KnownOutcome | None:
    """:func:`lookup` as a point read (``KV.read_one``), for a writer: the transaction point
    reads share is ended by every LMDB commit, so it sees each key the applier recorded
    before dropping it from the overlay, and a keyed commit begins no transaction of its own."""
    return kv.read_one(_lookup_in, (kv.db(DB_OUTCOMES), digest, kv.path))


def _lookup_in(txn: Any, _values: dict[Any, Any], args: tuple[Any, bytes, str]) -> KnownOutcome | None:
    return lookup(txn, *args)


def header(txn: Any, db: Any, where: str) -> OutcomesHeader:
    if db is None:
        return OutcomesHeader()
    return OutcomesHeader.decode(txn.get(OUTCOMES_HEADER_KEY, db=db), where)


def outcome_in(kv: KV, digest: bytes, sees_everything: bool) -> Outcome:
    """The answer for a key as LMDB has it now: recorded; or absent from a store that
    forgot no key, when the caller sees every commit (a writer that found no pending entry
    of the key); or neither. One point read (``KV.read_one``): a read transaction of its
    own would be an open reader, and a map growth meanwhile would fail and stop the writer."""
    return kv.read_one(_outcome_in, (kv.db(DB_OUTCOMES), digest, sees_everything, kv.path))


def _outcome_in(txn: Any, _values: dict[Any, Any], args: tuple[Any, bytes, bool, str]) -> Outcome:
    db, digest, sees_everything, where = args
    if lookup(txn, db, digest, where) is not None:
        return Outcome.COMMITTED
    if sees_everything and header(txn, db, where).forgotten == 0:
        return Outcome.NOT_COMMITTED
    return Outcome.UNKNOWN_KEY


#: The most keys a :class:`KeyFilter` is built for: its 2^27 bits a generation at 16 bits a
#: key. With a wider window (or more keys held) a keyed commit looks every key up in LMDB,
#: as without a filter: one past its size would answer "may hold" for nearly every key, and
#: building it would read millions of keys at the first keyed commit.
FILTER_MAX_KEYS = 1 << 23


class KeyFilter:
    """Which digests LMDB's ``outcomes`` may hold, in memory: a writer's keyed commit asks
    it before the LMDB look-up, and a fresh key -- nearly every key -- is answered without
    one. The look-up is cheap alone (~2 µs) but shares the point-read lock with the
    applier's commits; behind an apply that records keys it waited 15–25 µs.

    The filter never says "absent" of a digest LMDB holds (a false "may hold" only costs
    the look-up). It is two Bloom filters of three probes taken from the digest's bits (an
    XXH3-128 digest: uniform), 16 bits a key at ``remember`` keys up to 2^27 bits each:
    ``new`` takes every key the writer commits, ``old`` the generation before it, and at
    build time every digest LMDB holds. LMDB keeps the ``remember`` newest keys it has
    applied, forgetting the oldest first (``apply._record_keys``), so ``old`` may be dropped
    -- ``new`` becomes ``old`` and a fresh ``new`` begins -- once ``new`` holds
    ``remember`` keys and the applier has applied the ``remember``-th of them: every key
    LMDB holds is among those then. Until it has, ``new`` grows past ``remember`` (more
    false positives, never a false negative).

    A writer's filter builds itself in a thread (:meth:`start`): reading the keys LMDB
    holds costs ~0.6 µs a key here, 0.06 s at the default window, which the first keyed
    commit would otherwise wait for. Until the build is done every key "may" be held (the
    look-up answers, as without a filter) and the keys committed meanwhile are kept; the
    leader installs the build at its next use.

    Used by the commit leader alone, which adds each key it commits (:meth:`add`) before
    any other commit is looked up; not thread-safe (the build thread only hands over its
    bit array)."""

    __slots__ = ("_applied", "_bits", "_built", "_count", "_early", "_failed", "_last", "_last_digest", "_mask",
                 "_new", "_old", "_ready", "_remember", "_rotate_at", "_thread")

    def __init__(self, remember: int, applied: Callable[[], int]) -> None:
        if remember < 1:
            raise ValueError(f"a key filter for {remember} keys")
        bits = 1 << 16
        while bits < 16 * remember and bits < 1 << 27:
            bits <<= 1
        self._bits = bits
        self._mask = bits - 1
        self._remember = remember
        self._applied = applied
        self._new = bytearray(bits >> 3)
        self._old = bytearray(bits >> 3)
        self._count = 0
        self._rotate_at: int | None = None  # position of new's remember-th key
        self._last_digest = b""  # the digest may_hold saw last, and its probes
        self._last = (0, 0, 0)
        self._ready = True  # False while a build runs (start)
        self._built: bytearray | None = None  # the build's bits, handed over by its thread
        self._failed = False  # the build failed: every key may be held, for good
        self._early: list[tuple[bytes, int]] = []  # keys added while the build ran
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, kv: KV, remember: int, applied: Callable[[], int],
              pending: Callable[[], Iterable[bytes]]) -> KeyFilter:
        """A filter that builds itself in a thread of its own, from ``pending()`` (the
        digests of the keys committed but not applied) read before the digests LMDB holds; call it as the
        commit leader. Keys committed from now on are :meth:`add`-ed as usual: a key the
        applier moves while the build reads is in one of the two reads, and a key committed
        after this call is among those added, so none falls between."""
        if remember > FILTER_MAX_KEYS:
            return _NoFilter(remember, applied)
        f = cls(remember, applied)
        f._ready = False
        f._thread = threading.Thread(target=f._build, args=(kv, pending), name="ngstore-key-filter", daemon=True)
        f._thread.start()
        return f

    def _build(self, kv: KV, pending: Callable[[], Iterable[bytes]]) -> None:
        try:
            early = b"".join(pending())  # before LMDB
            joined = _held_digests(kv)
            if joined is None:
                self._failed = True
                return
            bits = bytearray(self._bits >> 3)
            # pending keys go with LMDB's into the older generation: the applier applies
            # them before any key committed later, so they leave LMDB no later either
            self._set_many(bits, joined + early)
            self._built = bits
        except BaseException:  # a store closed meanwhile, an I/O error: no filter, the look-ups answer
            self._failed = True

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the build (tests and tools; call it when no commit runs) and installs
        it; True once the filter filters."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._ready or (not self._failed and self._install())

    def _install(self) -> bool:
        """As the leader: the build's bits become the older generation and the keys added
        meanwhile are added again; False while the build runs."""
        built = self._built
        if built is None:
            return False
        self._old, self._built, self._ready = built, None, True
        early, self._early = self._early, []
        for digest, position in early:
            self.add(digest, position)
        return True

    @staticmethod
    def _probes(digest: bytes, mask: int) -> tuple[int, int, int]:
        h = int.from_bytes(digest, "little")
        return h & mask, (h >> 40) & mask, (h >> 80) & mask

    def _set_many(self, bits: bytearray, joined: bytes) -> None:
        """Sets the probes of the digests ``joined`` (16 bytes each) in ``bits``, as
        :meth:`add` would one by one: a bool per bit, packed (a tenth of ``bitwise_or.at``)."""
        if not joined:
            return
        words = np.frombuffer(joined, dtype="<u8").reshape(-1, 2)
        lo, hi = words[:, 0], words[:, 1]
        mask = np.uint64(self._mask)
        hit = np.zeros(self._bits, dtype=bool)
        for p in (lo & mask, ((lo >> np.uint64(40)) | (hi << np.uint64(24))) & mask, (hi >> np.uint64(16)) & mask):
            hit[p.astype(np.intp)] = True
        view = np.frombuffer(bits, dtype=np.uint8)
        view |= np.packbits(hit, bitorder="little")

    def may_hold(self, digest: bytes) -> bool:
        """False only when neither LMDB nor any commit since the build holds ``digest``."""
        if not self._ready and (self._failed or not self._install()):
            return True
        a, b, c = self._last = self._probes(digest, self._mask)  # add() of the same key reuses them
        self._last_digest = digest
        new = self._new
        if new[a >> 3] >> (a & 7) & new[b >> 3] >> (b & 7) & new[c >> 3] >> (c & 7) & 1:
            return True
        old = self._old
        return bool(old[a >> 3] >> (a & 7) & old[b >> 3] >> (b & 7) & old[c >> 3] >> (c & 7) & 1)

    def add(self, digest: bytes, position: int) -> None:
        """Notes a key committed at log ``position`` (positions rise from call to call)."""
        if not self._ready and not self._install():
            if not self._failed:
                self._early.append((digest, position))
            return
        rotate_at = self._rotate_at
        if rotate_at is not None and rotate_at <= self._applied():
            self._old, self._new = self._new, bytearray(self._bits >> 3)
            self._count, self._rotate_at = 0, None
        new = self._new
        for p in self._last if digest == self._last_digest else self._probes(digest, self._mask):
            new[p >> 3] |= 1 << (p & 7)
        self._count += 1
        if self._count == self._remember:
            self._rotate_at = position


#: Order-index entries a filter build reads per point read. A point read holds the lock
#: that map growth and every other point read of the process take (``KV.read_one``), for
#: ~1.5 ms at this many; a transaction of its own held through the whole build would be an
#: open reader for 0.15 s, and map growth refuses to remap under one.
_BUILD_SLICE = 1024


def _held_digests(kv: KV) -> bytes | None:
    """The digests LMDB's ``outcomes`` holds, 16 bytes each joined, oldest first, read in
    point reads of :data:`_BUILD_SLICE` entries; None when there are more than
    :data:`FILTER_MAX_KEYS` (a window once wider than now) or an entry is not a digest
    (damage ``check()`` reports): no filter then. The slices are read at different
    moments: a key recorded between two was pending in the overlay, which the build read
    first; one forgotten between two is not needed."""
    db = kv.db(DB_OUTCOMES)
    if db is None:
        return b""
    if kv.read_one(_held_in, (db, kv.path)) > FILTER_MAX_KEYS:
        return None
    parts: list[bytes] = []
    start = ORDER_PREFIX
    while True:
        joined, last = kv.read_one(_order_slice, (db, start))
        if joined is None:
            return None
        parts.append(joined)
        if last is None:
            return b"".join(parts)
        start = outcome_order_key(outcome_order_sequence(last) + 1)


def _held_in(txn: Any, _values: dict[Any, Any], args: tuple[Any, str]) -> int:
    return header(txn, *args).held


def _order_slice(txn: Any, _values: dict[Any, Any], args: tuple[Any, bytes]) -> tuple[bytes | None, bytes | None]:
    """Up to ``_BUILD_SLICE`` digests of the order index from key ``start`` on, joined,
    and the last key read (None: the index ends here); ``(None, None)`` for an entry
    that is not 16 bytes. The order keys ("Q" ‖ sequence) are the last of the database."""
    db, start = args
    cur = txn.cursor(db=db)
    if not cur.set_range(start):
        return b"", None
    values = list(itertools.islice(cur.iternext(keys=False, values=True), _BUILD_SLICE))
    joined = b"".join(values)
    if len(joined) != len(values) * DIGEST_BYTES:
        return None, None
    return joined, bytes(cur.key()) if len(values) == _BUILD_SLICE else None


class _NoFilter(KeyFilter):
    """A filter that holds everything: every key is looked up in LMDB (``FILTER_MAX_KEYS``)."""

    __slots__ = ()

    def __init__(self, remember: int, applied: Callable[[], int]) -> None:
        super().__init__(1, applied)  # the smallest bit arrays: they are never read

    def may_hold(self, digest: bytes) -> bool:
        return True

    def add(self, digest: bytes, position: int) -> None:
        pass
