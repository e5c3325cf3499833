"""Known outcomes: idempotency keys, their digests, and what the store can say of them.

A caller gives a batch a key (``store.batch(key=b"order-17")``); the batch logs the key's
digest (``ops.outcome_key_op``, ``docs/format.md`` §5.2) and applying it records the digest
in the ``outcomes`` database (§3.6) in the transaction of the batch's own data. So whatever
survives a crash, the key is known exactly when its batch is committed, and
``store.outcome(key)`` can answer after any failure or restart. This module owns the
caller's side of it: which keys are valid, the digest, the :class:`Outcome` answer, and
reading a digest's entry in one LMDB read transaction. Recording and forgetting keys is
``apply``'s; the keys still pending in the log are the overlay's.
"""
from __future__ import annotations

import enum
from typing import Any

import xxhash

from .errors import InvalidArgumentError
from .kv import KV, ReadTxn
from .layout import DB_OUTCOMES, OUTCOMES_HEADER_KEY, KnownOutcome, OutcomesHeader, outcome_key
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
    return kv.read_one(_lookup_in, kv.db(DB_OUTCOMES), digest, kv.path)


def _lookup_in(txn: Any, _values: dict[Any, Any], db: Any, digest: bytes, where: str) -> KnownOutcome | None:
    return lookup(txn, db, digest, where)


def header(txn: Any, db: Any, where: str) -> OutcomesHeader:
    if db is None:
        return OutcomesHeader()
    return OutcomesHeader.decode(txn.get(OUTCOMES_HEADER_KEY, db=db), where)


def outcome_in(kv: KV, digest: bytes, sees_everything: bool) -> Outcome:
    """The answer for a key as LMDB has it now: recorded; or absent from a store that
    forgot no key, when the caller sees every commit (a writer that found no pending entry
    of the key); or neither."""
    db = kv.db(DB_OUTCOMES)
    with ReadTxn(kv) as txn:
        if lookup(txn, db, digest, kv.path) is not None:
            return Outcome.COMMITTED
        if sees_everything and header(txn, db, kv.path).forgotten == 0:
            return Outcome.NOT_COMMITTED
    return Outcome.UNKNOWN_KEY
