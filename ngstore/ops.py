"""The operations of a batch and their encoding as a log record's payload (``docs/format.md`` §5).

A batch is a list of :class:`Op`. The same bytes are written to the log and, after a
crash, decoded and applied again; live commits and replay run the one ``apply.apply_ops``,
so replay cannot drift from what a commit did. This module owns the payload bytes and
the record layout of every op's items; it knows nothing of LMDB.
"""
from __future__ import annotations

import struct
from typing import Final

import numpy as np

from .errors import CorruptionError, FormatVersionError
from .records import CONNECTION_DTYPE, EVENT_DTYPE, TOKEN_DTYPE

PAYLOAD_MAGIC: Final = 0x4E47_4231  # "NGB1"

OP_TOKEN_PUT: Final = 1
OP_TOKEN_DELETE: Final = 2
OP_CONNECTION_PUT: Final = 3
OP_CONNECTION_DELETE: Final = 4
OP_EVENT_APPEND: Final = 5
OP_REFLEX_PUT: Final = 6
OP_REFLEX_DELETE: Final = 7
OP_EVENT_TRIM: Final = 8
OP_REFLEX_DELETE_KEY: Final = 9
OP_LEARN_UPDATE: Final = 10
OP_REFLEX_RESIZE: Final = 11
OP_OUTCOME_KEY: Final = 12

_PAYLOAD_HEAD = struct.Struct("<II")  # magic, op count
_OP_HEAD = struct.Struct("<HHIQ")     # op type, reserved, item count, body bytes

#: (token_a, token_b, connection_type): the identity of a connection, the item of a delete.
CONN_KEY_DTYPE = np.dtype({"names": ["token_a", "token_b", "connection_type"],
                           "formats": ["<u4", "<u4", "u1"], "offsets": [0, 4, 8], "itemsize": 12})
#: A reflex to store: the state's 24 raw coordinates and the Connection.
REFLEX_PUT_DTYPE = np.dtype({"names": ["state", "connection"],
                             "formats": [("<i2", (8, 3)), CONNECTION_DTYPE], "offsets": [0, 48],
                             "itemsize": 112})
#: A reflex to delete by state: one identity, or every reflex of the state (``all`` = 1).
REFLEX_DELETE_DTYPE = np.dtype({"names": ["state", "token_a", "token_b", "connection_type", "all"],
                                "formats": [("<i2", (8, 3)), "<u4", "<u4", "u1", "u1"],
                                "offsets": [0, 48, 52, 56, 57], "itemsize": 60})
#: A reflex to delete by its table key (the Guardian's cleanup has keys, not states).
REFLEX_DELETE_KEY_DTYPE = np.dtype({"names": ["grid_hash", "fingerprint", "token_a", "token_b",
                                              "connection_type", "all"],
                                    "formats": ["<u8", "<u8", "<u4", "<u4", "u1", "u1"],
                                    "offsets": [0, 8, 16, 20, 24, 25], "itemsize": 32})

#: A keyed batch's idempotency key (§5.2): the key's digest and the window of keys kept.
OUTCOME_KEY_DTYPE = np.dtype({"names": ["digest", "remember"], "formats": [("u1", (16,)), "<u8"],
                              "offsets": [0, 16], "itemsize": 24})
#: One group's partial moments of one fold of events into the learning statistics (§5.1).
#: (No gaps: a copy or a selection of items carries every byte.)
LEARN_UPDATE_DTYPE = np.dtype({"names": ["bins_per_dim", "action", "reserved", "bin", "first_seq", "end_seq", "count",
                                         "mean", "m2", "action_mean", "state_mean"],
                               "formats": ["<u2", "<u2", "<u4", "<u8", "<u8", "<u8", "<u8", "<f8", "<f8",
                                           ("<f8", (8,)), ("<f8", (8,))],
                               "offsets": [0, 2, 4, 8, 16, 24, 32, 40, 48, 56, 120], "itemsize": 184})

#: The item layout of each op's body; the decoder checks body = count * itemsize exactly.
OP_DTYPES: Final[dict[int, np.dtype]] = {
    OP_TOKEN_PUT: TOKEN_DTYPE,
    OP_TOKEN_DELETE: np.dtype("<u4"),
    OP_CONNECTION_PUT: CONNECTION_DTYPE,
    OP_CONNECTION_DELETE: CONN_KEY_DTYPE,
    OP_EVENT_APPEND: EVENT_DTYPE,
    OP_REFLEX_PUT: REFLEX_PUT_DTYPE,
    OP_REFLEX_DELETE: REFLEX_DELETE_DTYPE,
    OP_EVENT_TRIM: np.dtype("<u8"),
    OP_REFLEX_DELETE_KEY: REFLEX_DELETE_KEY_DTYPE,
    OP_LEARN_UPDATE: LEARN_UPDATE_DTYPE,
    OP_REFLEX_RESIZE: np.dtype("<u8"),
    OP_OUTCOME_KEY: OUTCOME_KEY_DTYPE,
}
OP_ITEM_SIZE: Final = {kind: dt.itemsize for kind, dt in OP_DTYPES.items()}
assert OP_ITEM_SIZE == {1: 64, 2: 4, 3: 64, 4: 12, 5: 128, 6: 112, 7: 60, 8: 8, 9: 32, 10: 184, 11: 8, 12: 24}

#: The ops that change the reflex table (their commits return once applied).
REFLEX_KINDS: Final = frozenset({OP_REFLEX_PUT, OP_REFLEX_DELETE, OP_REFLEX_DELETE_KEY, OP_REFLEX_RESIZE})


class Op:
    """One operation: ``data`` is a contiguous array of ``OP_DTYPES[kind]`` items;
    ``raw``, when given, is the same items as bytes, which saves the encoders a copy.

    An op made from bytes (:meth:`of_bytes`) makes its array at the first use of ``data``:
    a one-token commit never needs it (the log takes the bytes, the overlay their
    record), and ``np.frombuffer`` would be a tenth of such a commit. Treat an op as
    immutable."""

    __slots__ = ("_data", "count", "kind", "raw")

    def __init__(self, kind: int, data: np.ndarray, raw: bytes | None = None) -> None:
        self.kind = kind
        self._data: np.ndarray | None = data
        self.raw = raw
        #: the number of items
        self.count: int = int(data.shape[0])

    @property
    def data(self) -> np.ndarray:
        d = self._data
        if d is None:
            assert self.raw is not None
            d = self._data = np.frombuffer(self.raw, dtype=OP_DTYPES[self.kind])
        return d

    @property
    def nbytes(self) -> int:
        """The size of the body."""
        return len(self.raw) if self.raw is not None else int(self.data.nbytes)

    def body(self) -> bytes:
        return self.raw if self.raw is not None else np.ascontiguousarray(self.data).tobytes()

    @staticmethod
    def of_bytes(kind: int, raw: bytes) -> Op:
        """An op over ``raw`` (a whole number of items, checked); its array, made when
        first used, is a read-only view."""
        size = OP_ITEM_SIZE[kind]
        n = len(raw) // size
        if n * size != len(raw):
            raise AssertionError(f"op {kind}: {len(raw)} bytes are not whole items of {size}")
        return Op.whole(kind, raw, n)

    @staticmethod
    def whole(kind: int, raw: bytes, count: int) -> Op:
        """``of_bytes`` for bytes the caller knows to be ``count`` whole items."""
        op = _new_op(Op)
        op.kind, op._data, op.raw, op.count = kind, None, raw, count
        return op

    def __repr__(self) -> str:
        return f"Op(kind={self.kind}, count={self.count})"


_new_op = object.__new__


class KeyOp(Op):
    """The OUTCOME_KEY op of a batch the API built (:func:`outcome_key_op`): an ``Op`` that
    also holds what its body encodes, so that the writer reads the key without unpacking
    it again (``batch_key`` does that for any other)."""

    __slots__ = ("digest", "remember")
    digest: bytes
    remember: int


_OUTCOME_KEY_ITEM = struct.Struct("<16sQ")


def outcome_key_op(digest: bytes, remember: int) -> Op:
    """The OUTCOME_KEY op of a keyed batch: its key's digest and the keys to keep (≥ 1)."""
    if len(digest) != 16 or not 1 <= remember < 1 << 64:
        raise AssertionError(f"outcome key op of a {len(digest)}-byte digest, remember {remember}")
    op = _new_op(KeyOp)
    op.kind, op._data, op.raw, op.count = OP_OUTCOME_KEY, None, _OUTCOME_KEY_ITEM.pack(digest, remember), 1
    op.digest, op.remember = bytes(digest), remember
    return op


#: What a batch puts, as ``batch_summary`` says it: tokens, connections (bits).
PUTS_TOKENS: Final = 1
PUTS_CONNECTIONS: Final = 2
#: The ``puts`` bit of an op kind, for batch_summary (0 for the kinds that put neither).
PUTS_OF: Final = {OP_TOKEN_PUT: PUTS_TOKENS, OP_CONNECTION_PUT: PUTS_CONNECTIONS}


def batch_summary(ops: list[Op]) -> tuple[int, int]:
    """``(records, puts)`` of a batch for the commit histograms: its records, and whether
    it puts tokens (``PUTS_TOKENS``) and connections (``PUTS_CONNECTIONS``)."""
    if len(ops) == 1:  # the usual small commit: no loop
        op = ops[0]
        return op.count, PUTS_OF.get(op.kind, 0)
    records = puts = 0
    for op in ops:
        records += op.count
        puts |= PUTS_OF.get(op.kind, 0)
    return records, puts


def batch_key(ops: list[Op], where: str | int = "batch") -> tuple[bytes, int] | None:
    """``(digest, remember)`` of a keyed batch, None for an unkeyed one. A batch holds at
    most one OUTCOME_KEY op, of one item, as its first op (§5.2); anything else is a
    CorruptionError naming ``where`` (an int: the log position of the batch's record)."""
    if not ops:
        return None
    keyed = ops[0].kind == OP_OUTCOME_KEY
    for op in ops[1:] if keyed else ops:
        if op.kind == OP_OUTCOME_KEY:
            raise CorruptionError(f"{_where(where)}: an OUTCOME_KEY op that is not the batch's first")
    if not keyed:
        return None
    op = ops[0]
    if op.count != 1:
        raise CorruptionError(f"{_where(where)}: an OUTCOME_KEY op of {op.count} items")
    digest, remember = _OUTCOME_KEY_ITEM.unpack(op.body())
    if remember < 1:
        raise CorruptionError(f"{_where(where)}: an OUTCOME_KEY op keeping {remember} keys")
    return bytes(digest), int(remember)


def _where(where: str | int) -> str:
    return f"log record {where}" if isinstance(where, int) else where


_ID_AT_48 = struct.Struct("<48xI")


def token_writes(ops: list[Op], limit: int) -> list[tuple[int, bytes | None]] | None:
    """The token writes of ``ops`` in order: ``(id, 64-byte record)`` per put and
    ``(id, None)`` per delete; None when there are more than ``limit`` of them."""
    if len(ops) == 1 and limit >= 1:  # a one-token commit's
        op = ops[0]
        raw = op.raw
        if op.kind == OP_TOKEN_PUT and raw is not None and len(raw) == 64:
            return [(_ID_AT_48.unpack_from(raw)[0], raw)]
    n = sum(op.count for op in ops if op.kind in (OP_TOKEN_PUT, OP_TOKEN_DELETE))
    if n > limit:
        return None
    out: list[tuple[int, bytes | None]] = []
    for op in ops:
        if op.kind == OP_TOKEN_PUT:
            raw = op.body()
            if len(raw) == 64:
                out.append((_ID_AT_48.unpack_from(raw)[0], raw))
                continue
            for off in range(0, len(raw), 64):
                out.append((_ID_AT_48.unpack_from(raw, off)[0], raw[off:off + 64]))
        elif op.kind == OP_TOKEN_DELETE:
            out.extend((int(i), None) for i in op.data.tolist())
    return out


_ONE_OP_HEAD = struct.Struct("<IIHHIQ")  # the payload head and one op head, for one-op batches


def one_op_head(kind: int, count: int) -> bytes:
    """The head ``encode_ops`` writes before the body of a batch of one op of ``count``
    items of ``kind``."""
    return _ONE_OP_HEAD.pack(PAYLOAD_MAGIC, 1, kind, 0, count, count * OP_ITEM_SIZE[kind])


def encode_ops(ops: list[Op]) -> bytes:
    if len(ops) == 1:
        op = ops[0]
        body = op.body()
        n = op.count
        if n * OP_ITEM_SIZE[op.kind] != len(body):
            raise AssertionError(f"op {op.kind}: body of {len(body)} bytes for {n} items")
        return _ONE_OP_HEAD.pack(PAYLOAD_MAGIC, 1, op.kind, 0, n, len(body)) + body
    if len(ops) == 2:  # a keyed small commit: the key's op and one more, without the list
        a, b = ops
        body_a, body_b = a.body(), b.body()
        if len(body_a) != a.count * OP_ITEM_SIZE[a.kind] or len(body_b) != b.count * OP_ITEM_SIZE[b.kind]:
            raise AssertionError(f"ops {a.kind}, {b.kind}: bodies of {len(body_a)}, {len(body_b)} bytes "
                                 f"for {a.count}, {b.count} items")
        return (_ONE_OP_HEAD.pack(PAYLOAD_MAGIC, 2, a.kind, 0, a.count, len(body_a)) + body_a
                + _OP_HEAD.pack(b.kind, 0, b.count, len(body_b)) + body_b)
    parts = [_PAYLOAD_HEAD.pack(PAYLOAD_MAGIC, len(ops))]
    for op in ops:
        body = op.body()
        if len(body) != op.count * OP_ITEM_SIZE[op.kind]:
            raise AssertionError(f"op {op.kind}: body of {len(body)} bytes for {op.count} items")
        parts.append(_OP_HEAD.pack(op.kind, 0, op.count, len(body)))
        parts.append(body)
    return b"".join(parts)


def token_put_records(payload: bytes) -> bytes | None:
    """The records of a payload that is one TOKEN_PUT op and nothing else (what a commit of
    tokens encodes), as bytes; None for any other payload (``decode_ops`` reads those)."""
    if len(payload) < _ONE_OP_HEAD.size:
        return None
    magic, n_ops, kind, _res, count, nbytes = _ONE_OP_HEAD.unpack_from(payload)
    if magic != PAYLOAD_MAGIC or n_ops != 1 or kind != OP_TOKEN_PUT or nbytes != count * OP_ITEM_SIZE[kind] \
            or nbytes != len(payload) - _ONE_OP_HEAD.size:
        return None
    return payload[_ONE_OP_HEAD.size:]


#: ``decode_ops`` copies an op body up to this size to bytes rather than view it: a copy
#: is cheaper than ``np.frombuffer``, which an applier of small keyed commits paid twice a
#: commit (the key's op and the token's), on the thread that competes with committers.
_COPIED_BODY_BYTES: Final = 4096


def decode_ops(payload: bytes | memoryview, where: str = "batch payload") -> list[Op]:
    """Inverse of :func:`encode_ops`; an op kind it does not know is a FormatVersionError,
    any other inconsistency a CorruptionError.

    The log's CRC has already vouched for the bytes, so an error here means a bug or a
    payload from an incompatible version -- never a reason to guess. The op arrays are
    read-only: views of ``payload``, or of a copy of a body up to ``_COPIED_BODY_BYTES``.
    """
    mv = memoryview(payload)
    if len(mv) < _PAYLOAD_HEAD.size:
        raise CorruptionError(f"{where}: shorter than its header")
    magic, n_ops = _PAYLOAD_HEAD.unpack_from(mv, 0)
    if magic != PAYLOAD_MAGIC:
        raise CorruptionError(f"{where}: bad magic {magic:#x}")
    pos = _PAYLOAD_HEAD.size
    ops = []
    for _ in range(n_ops):
        if pos + _OP_HEAD.size > len(mv):
            raise CorruptionError(f"{where}: op header past the end", offset=pos)
        kind, _res, count, nbytes = _OP_HEAD.unpack_from(mv, pos)
        pos += _OP_HEAD.size
        dtype = OP_DTYPES.get(kind)
        if dtype is None:
            # The frame's CRC held: a newer ngstore wrote it, with an op kind this one does
            # not know. Refuse; never guess, never treat it as damage to cut away.
            raise FormatVersionError(
                f"{where} holds op kind {kind}, which this version of ngstore does not know: a "
                "newer version wrote it. Open the store with that version (nothing was changed)")
        if nbytes != count * dtype.itemsize or pos + nbytes > len(mv):
            raise CorruptionError(f"{where}: op {kind} body length {nbytes} for {count} items", offset=pos)
        if nbytes <= _COPIED_BODY_BYTES:  # its array made when first used (most never are)
            ops.append(Op.whole(kind, bytes(mv[pos:pos + nbytes]), count))
        else:
            ops.append(Op(kind, np.frombuffer(mv, dtype=dtype, count=count, offset=pos)))
        pos += nbytes
    if pos != len(mv):
        raise CorruptionError(f"{where}: {len(mv) - pos} trailing bytes", offset=pos)
    return ops
