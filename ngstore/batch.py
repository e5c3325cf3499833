"""The Batch a caller fills: operations committed together, all or nothing after any crash.

A batch validates and copies what it is given when it is given (so a bad record is
refused at the call that adds it, and later changes to the caller's arrays cannot leak
in), collects :class:`ops.Op`, and hands them to the writer's commit at ``commit()``.
"""
from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .connections import as_connection_array
from .errors import InvalidArgumentError, NgStoreError, ValidationError
from .experience import as_event_rows
from .inputs import connection_keys, ids_array, state_coords
from .learning import check_fold
from .ops import (
    OP_CONNECTION_DELETE,
    OP_CONNECTION_PUT,
    OP_EVENT_APPEND,
    OP_LEARN_UPDATE,
    OP_REFLEX_DELETE,
    OP_REFLEX_PUT,
    OP_REFLEX_RESIZE,
    OP_TOKEN_DELETE,
    OP_TOKEN_PUT,
    REFLEX_DELETE_DTYPE,
    REFLEX_PUT_DTYPE,
    Op,
)
from .records import CONNECTION_DTYPE, EVENT_DTYPE, TOKEN_DTYPE
from .tokens import as_token_array
from .validation import check_connections, connections_pass_defaults

if TYPE_CHECKING:
    from .obs import Observability

DURABILITY_MODES = ("sync", "async", "none")


@dataclass(slots=True)
class CommitResult:
    """What a commit did: its log position, and the sequence number of the first event
    it appended (None if it appended none). ``already_committed``: the batch's idempotency
    key was committed already, so nothing was written; the position and first event are
    those of the batch that committed it."""

    position: int
    first_event: int | None = None
    already_committed: bool = False


#: The writer's commit: (ops, durability) -> CommitResult.
Committer = Callable[[list[Op], str], CommitResult]
#: Gets the outcome of a submitted batch: its CommitResult, or the exception.
OutcomeCallback = Callable[[CommitResult | BaseException], None]
#: Runs a function now or later (an event loop's ``call_soon``).
Defer = Callable[[Callable[[], None]], None]
#: The writer's submit: (ops, durability, outcome, defer) -> None, never blocking.
Submitter = Callable[[list[Op], str, OutcomeCallback, "Defer | None"], None]


@dataclass
class ValidationCounters:
    """Records checked by batches of one store handle (exported as metrics)."""

    tokens_validated_total: int = 0
    tokens_rejected_total: int = 0
    connections_validated_total: int = 0
    connections_rejected_total: int = 0


def check_durability(durability: str) -> str:
    if durability not in DURABILITY_MODES:
        raise InvalidArgumentError(f"durability must be one of {DURABILITY_MODES}, got {durability!r}")
    return durability


class Batch:
    """Operations committed together: all visible after commit, or none, after any crash.

    Use ``with store.batch() as b: ...`` (commits on success, discards on an exception)
    or call :meth:`commit` / :meth:`discard`.

    ``key_op``: the OUTCOME_KEY op of the batch's idempotency key (``store.batch(key=)``
    makes it); it is committed as the batch's first op, even when the batch is otherwise
    empty, so the key records that the batch happened."""

    def __init__(self, commit: Committer, durability: str, counters: ValidationCounters,
                 obs: Observability | None = None, submit: Submitter | None = None,
                 key_op: Op | None = None) -> None:
        self._commit = commit
        self._submit = submit
        self.durability = check_durability(durability)
        self._counters = counters
        self._obs = obs
        self._key_op = key_op
        self._ops: list[Op] = []
        self._done = False
        self.position: int | None = None
        #: sequence number of the first event appended, once committed (None if none)
        self.first_event: int | None = None
        #: once committed: the batch's key had been committed already, and this batch was
        #: not applied (``position`` and ``first_event`` are the original's)
        self.already_committed = False

    def _check(self) -> None:
        if self._done:
            raise NgStoreError("this batch was already committed or discarded")

    # -- tokens -----------------------------------------------------------------------

    def put_tokens(self, tokens: Any, *, copy: bool = True) -> None:
        """Adds token records (a TokenArray, a TOKEN_DTYPE array, a Token or a list of
        Tokens). They are copied now unless ``copy=False``, which the store's own one-shot
        calls use when the caller cannot touch the array before the commit returns."""
        self._check()
        op = token_put_op(tokens, self._counters, self._obs, copy=copy)
        if op is not None:
            self._ops.append(op)

    def delete_tokens(self, ids: Any) -> None:
        """Deletes tokens by id (absent ids are ignored)."""
        self._check()
        a = ids_array(ids)
        if a.size:
            self._ops.append(Op(OP_TOKEN_DELETE, np.ascontiguousarray(a, dtype="<u4")))

    # -- connections ------------------------------------------------------------------

    def put_connections(self, connections: Any, *, copy: bool = True) -> None:
        """Adds connection records, keyed by (token_a, token_b, connection_type)."""
        self._check()
        arr = as_connection_array(connections)
        if arr.size == 0:
            return
        t0 = time.perf_counter()
        try:
            if arr.size > _SMALL or not connections_pass_defaults(arr.tobytes()):  # else checked, no numpy
                self._validate_connections(arr, "connection(s)")
        except ValidationError as exc:
            self._counters.connections_rejected_total += exc.n_failed
            self._counters.connections_validated_total += int(arr.size) - exc.n_failed
            raise
        finally:
            if self._obs is not None:
                self._obs.validation_seconds.observe(time.perf_counter() - t0)
        self._counters.connections_validated_total += int(arr.size)
        data = np.array(arr, dtype=CONNECTION_DTYPE, copy=True) if copy else np.ascontiguousarray(arr)
        self._ops.append(Op(OP_CONNECTION_PUT, data))

    def _validate_connections(self, arr: np.ndarray, what: str) -> None:
        """Raises ValidationError unless every record is a valid connection; records the
        failure in the black box."""
        res = check_connections(arr)
        if res.all_ok:
            return
        if self._obs is not None:
            self._obs.event("validation_failed", what=what, count=int(res.n_failed),
                            first=str(res.reasons[:1]))
        raise ValidationError(f"{res.n_failed} {what} of the batch",
                              [(f, m, v) for _i, f, m, v in res.reasons], int(res.n_failed))

    def delete_connections(self, keys: Any) -> None:
        """Deletes by key: connections (their a, b, type) or (a, b, type) triples."""
        self._check()
        k = connection_keys(keys)
        if k.size:
            self._ops.append(Op(OP_CONNECTION_DELETE, k))

    # -- reflexes -------------------------------------------------------------------

    def put_reflexes(self, states: Any, connections: Any) -> None:
        """Adds reflexes: ``connections[i]`` for ``states[i]`` (8-float states, Token
        records, or raw (n, 8, 3) int16 coordinates).

        Each must be a valid connection (``validate_connection``). The stricter
        ``validate_reflex`` is the auto-consolidation gate (``try_auto_consolidate``,
        ``analyze``), not a storage rule: like the original's ``consolidate_reflex``, a
        store may hold Hypothesis reflexes, which the fast path answers only from
        confidence 200 and the Guardian's cleanup evicts once they decay."""
        self._check()
        coords = state_coords(states)
        conns = as_connection_array(connections)
        if conns.shape[0] != coords.shape[0]:
            raise InvalidArgumentError(f"{coords.shape[0]} states but {conns.shape[0]} connections")
        self._validate_connections(conns, "reflex(es)")
        data = np.zeros(coords.shape[0], dtype=REFLEX_PUT_DTYPE)
        data["state"] = coords
        data["connection"] = conns
        if data.size:
            self._ops.append(Op(OP_REFLEX_PUT, data))

    def delete_reflexes(self, states: Any, connections: Any = None) -> None:
        """Deletes the reflex of each state with the identity (token_a, token_b, type) of
        the matching connection, or every reflex of the states when ``connections`` is None."""
        self._check()
        coords = state_coords(states)
        data = np.zeros(coords.shape[0], dtype=REFLEX_DELETE_DTYPE)
        data["state"] = coords
        if connections is None:
            data["all"] = 1
        else:
            conns = as_connection_array(connections)
            if conns.shape[0] != coords.shape[0]:
                raise InvalidArgumentError(f"{coords.shape[0]} states but {conns.shape[0]} connections")
            data["token_a"], data["token_b"] = conns["token_a"], conns["token_b"]
            data["connection_type"] = conns["connection_type"]
        if data.size:
            self._ops.append(Op(OP_REFLEX_DELETE, data))

    # -- events ---------------------------------------------------------------------

    def append_events(self, events: Any) -> None:
        """Adds experience events (copied now); sequence numbers are assigned at commit."""
        self._check()
        try:
            rows = as_event_rows(events)
        except InvalidArgumentError:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"not experience events: {exc}") from None
        if rows.size:
            self._ops.append(Op(OP_EVENT_APPEND, np.array(rows, dtype=EVENT_DTYPE, copy=True)))

    # -- learning -------------------------------------------------------------------

    def update_learning(self, fold: np.ndarray) -> None:
        """Adds one fold of events into the learning statistics (LEARN_UPDATE_DTYPE items,
        format.md §5.1; the IntuitionEngine makes them). Checked now, copied."""
        self._check()
        check_fold(fold, InvalidArgumentError)
        self._ops.append(Op(OP_LEARN_UPDATE, np.array(fold, copy=True)))

    # -- ending -----------------------------------------------------------------------

    def _all_ops(self) -> list[Op]:
        return [self._key_op, *self._ops] if self._key_op is not None else self._ops

    def commit(self) -> int:
        """Commits; returns the log position. Raises and writes nothing on refusal; every
        error says whether the batch's outcome is known (``NgStoreError.outcome_known``).
        A keyed batch whose key is committed already is not applied again: it returns
        the original's position and sets ``already_committed``."""
        self._check()
        self._done = True
        result = self._commit(self._all_ops(), self.durability)
        self.position, self.first_event = result.position, result.first_event
        self.already_committed = result.already_committed
        return result.position

    def submit(self, outcome: OutcomeCallback, defer: Defer | None = None) -> None:
        """Commits without blocking (what ``ngstore.aio`` awaits): ``outcome`` gets the
        CommitResult -- or the exception :meth:`commit` would raise -- from a thread of the
        store's once the batch is committed or refused. Raises at once, writing nothing, if
        the store refuses writes. ``defer``: see ``commit.Writer.submit``."""
        self._check()
        if self._submit is None:
            raise NgStoreError("this batch has no store to submit to")
        self._done = True

        def done(result: CommitResult | BaseException) -> None:
            if isinstance(result, CommitResult):
                self.position, self.first_event = result.position, result.first_event
                self.already_committed = result.already_committed
            outcome(result)

        self._submit(self._all_ops(), self.durability, done, defer)

    @property
    def nbytes(self) -> int:
        """Bytes of the records it holds (what its commit writes, about)."""
        return sum(op.nbytes for op in self._ops)

    def discard(self) -> None:
        self._done = True
        self._ops = []

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()


#: Batches up to this many records are copied to bytes and checked record by record (the
#: numpy calls of the vectorised check cost more than the records themselves).
_SMALL = 64
_WEIGHT = struct.Struct("<54xf")
#: Validation of a batch this large is timed (a smaller one takes less than the timing).
_TIMED = 64
#: A copy of this many tokens or more (1 MiB) is made as a numpy array, not as bytes:
#: numpy's copy of 64 MB takes 5.4 ns/token against tobytes' 20 (it gets huge pages, bytes
#: do not), and a batch this large usually goes to LMDB directly (``direct_threshold``),
#: which reads the array. Through the log it is turned into bytes once more, at encode.
_COPY_AS_ARRAY = 16_384


def token_put_op(tokens: Any, counters: ValidationCounters, obs: Observability | None, *,
                 copy: bool = True) -> Op | None:
    """The TOKEN_PUT op of ``tokens``, validated (None when there are none). ``copy=False``
    lets a large contiguous array be used in place."""
    raw: bytes | None
    if type(tokens) is np.ndarray and tokens.dtype is TOKEN_DTYPE and tokens.ndim == 1 \
            and 0 < len(tokens) <= _SMALL:
        # a small 1-D array (what a one-token commit passes): its bytes are the op's
        raw = tokens.tobytes()
        n = len(raw) >> 6
        for off in range(0, len(raw), 64):
            if not math.isfinite(_WEIGHT.unpack_from(raw, off)[0]):
                break
        else:
            counters.tokens_validated_total += n
            return Op.whole(OP_TOKEN_PUT, raw, n)
        arr = tokens  # a bad weight: the general path below reports it
    else:
        arr = as_token_array(tokens)
        n = int(arr.size)
        if n == 0:
            return None
        raw = None
        if n <= _SMALL or (copy and n < _COPY_AS_ARRAY):
            raw = arr.tobytes()
        elif copy:  # numpy's copy of the bytes: the copy is what gets validated and committed
            arr = arr.view(np.uint8).copy().view(TOKEN_DTYPE)
    timed = obs is not None and n >= _TIMED
    t0 = time.perf_counter() if timed else 0.0
    try:
        if raw is not None and n <= _SMALL:
            for off in range(0, len(raw), 64):
                if not math.isfinite(_WEIGHT.unpack_from(raw, off)[0]):
                    _reject_weights(arr)
        else:
            _reject_weights(arr)
    except InvalidArgumentError:
        counters.tokens_rejected_total += n
        if obs is not None:
            obs.event("validation_failed", what="tokens", count=n)
        raise
    counters.tokens_validated_total += n
    if timed and obs is not None:
        obs.validation_seconds.observe(time.perf_counter() - t0)
    return Op.of_bytes(OP_TOKEN_PUT, raw) if raw is not None else Op(OP_TOKEN_PUT, np.ascontiguousarray(arr))


#: The largest reflex capacity: a table holds at most 2^32 records (format §7.2).
MAX_REFLEX_CAPACITY = 1 << 32


def reflex_resize_op(capacity: Any, live: int) -> Op:
    """The REFLEX_RESIZE op of ``capacity`` for a table of ``live`` reflexes, or
    InvalidArgumentError (a resize never drops a reflex)."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
            or not 1 <= int(capacity) <= MAX_REFLEX_CAPACITY:
        raise InvalidArgumentError(f"a reflex capacity is an int in 1..{MAX_REFLEX_CAPACITY}, got {capacity!r}")
    if int(capacity) < live:
        raise InvalidArgumentError(f"cannot resize the reflex table to {int(capacity)}: it holds {live} reflexes; "
                                   "delete some first")
    return Op(OP_REFLEX_RESIZE, np.array([int(capacity)], dtype="<u8"))


def _reject_weights(arr: np.ndarray) -> None:
    """Rejects records a store must not hold (NaN/inf weight). Vectorised."""
    w = arr["weight"]
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"token id {int(arr['id'][i])} has a non-finite weight {float(w[i])!r}; "
            f"{int(bad.sum())} record(s) of the batch are invalid and nothing was written")
