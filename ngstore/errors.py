"""The exception tree of ngstore: one root, a few leaves.

Each leaf also inherits the built-in exception a caller would naturally catch
(``KeyError`` for a missing record, ``ValueError`` for bad input), and each message
says what failed and what to do about it. OS errors are not wrapped: they pass
through with their errno and path. LMDB's exceptions are translated in ``kv`` only.
"""
from __future__ import annotations


class NgStoreError(Exception):
    """Root of every error raised by ngstore itself.

    An error raised by a commit (``Batch.commit``, ``put_tokens`` and the other one-call
    writes, an awaited ``ngstore.aio`` commit) says what became of its batch:
    ``outcome_known`` is True when the store knows, and ``committed`` then says which
    (False: nothing of the batch was written -- a refusal, a quota, a store that stopped
    accepting writes; True: it is committed, only what followed failed). ``outcome_known``
    False (:class:`OutcomeUnknownError`): only reopening tells. Both are None on errors
    that do not come from a commit.
    """

    outcome_known: bool | None = None
    committed: bool | None = None


class InvalidArgumentError(NgStoreError, ValueError):
    """Bad input: wrong dtype or shape, out-of-range ids, NaN where not allowed.

    Raised before anything is written: the store is exactly as it was.
    """

    outcome_known = True
    committed = False


class NotFoundError(NgStoreError, KeyError):
    """A record that does not exist was asked for by key."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it plainly
        return str(self.args[0]) if self.args else "not found"


class StoreLockedError(NgStoreError):
    """Another writer (this process or another) holds the store, or recovery is running."""


class StoreClosedError(NgStoreError):
    """The store, snapshot or view was used after ``close()``."""

    outcome_known = True  # a commit on a closed store writes nothing
    committed = False


class CorruptionError(NgStoreError):
    """Stored bytes fail a check. Carries ``path``, ``offset`` and ``reason`` when known."""

    def __init__(self, reason: str, *, path: str | None = None, offset: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f" in {path}" + (f" at offset {offset}" if offset is not None else "")
        super().__init__(f"corruption{where}: {reason}")
        self.reason = reason
        self.path = path
        self.offset = offset


class FormatVersionError(NgStoreError):
    """The store was written by a newer (or unknown) format version than this code reads."""


class NotAStoreError(NgStoreError):
    """The path exists but is not an ngstore directory (a file, or a foreign directory)."""


class QuotaExceededError(NgStoreError):
    """A Guardian quota would be exceeded; nothing of the write happened.

    ``quota`` names the limit (``"max_tokens"``, ``"max_bytes"``, ``"memory_threshold"``;
    ``"reflex_capacity"`` when a store opened with ``reflex_eviction="refuse"`` would evict),
    ``current`` the value before the write, ``requested`` what the write would add and
    ``limit`` the refusing bound.
    """

    outcome_known = True
    committed = False

    def __init__(self, quota: str, current: int, requested: int, limit: int, detail: str = "",
                 hint: str = "") -> None:
        msg = (f"{quota} quota exceeded: {current} + {requested} > {limit}"
               + (f" ({detail})" if detail else "") + "; "
               + (hint or ("raise the limit with ngstore.open(..., "
                           + ("max_tokens=" if quota == "max_tokens" else "max_bytes=")
                           + "...) or delete data first")))
        super().__init__(msg)
        self.quota = quota
        self.current = current
        self.requested = requested
        self.limit = limit


class ValidationError(NgStoreError, ValueError):
    """A record fails Guardian validation; ``errors`` lists ``(field, message, value)``
    (for the first failing records), ``n_failed`` counts every failing record. Raised
    before anything is written."""

    outcome_known = True
    committed = False

    def __init__(self, what: str, errors: list[tuple[str, str, object]],
                 n_failed: int | None = None) -> None:
        detail = "; ".join(f"{f}: {m} (got {v!r})" for f, m, v in errors)
        super().__init__(f"{what} failed validation: {detail}")
        self.errors = errors
        self.n_failed = len(errors) if n_failed is None else n_failed


class NativeError(NgStoreError):
    """A C function of the compiled core returned an error status."""

    def __init__(self, function: str, code: int, message: str) -> None:
        super().__init__(f"{function} failed with status {code}: {message}")
        self.function = function
        self.code = code


class NativeCorruptionError(CorruptionError, NativeError):
    """Corrupt bytes found by the compiled core. It is a :class:`CorruptionError` -- one
    cause, one error, whichever layer finds it -- that also names the C function and its
    status, like every :class:`NativeError`."""

    def __init__(self, function: str, code: int, message: str) -> None:
        reason = f"{function} failed with status {code}: {message}"
        NgStoreError.__init__(self, f"corruption: {reason}")  # both parents' attributes, set here
        self.reason = reason
        self.path = None
        self.offset = None
        self.function = function
        self.code = code


class OutcomeUnknownError(NgStoreError, OSError):
    """A commit failed while or after its batch was written to the log: whether it is
    committed is unknown until the store is reopened -- recovery keeps it, whole, if its
    record reached the disk, and drops it, whole, otherwise. A keyed batch's outcome is
    then ``store.outcome(key)``. ``position`` is the log position it was given (None when
    the write itself failed). The store refuses writes from here on. It is an ``OSError``
    with the errno of the failure that caused it (``EIO`` for a failed fdatasync)."""

    def __init__(self, message: str, position: int | None, cause: BaseException) -> None:
        errno_ = cause.errno if isinstance(cause, OSError) else None
        OSError.__init__(self, errno_, message)
        self.position = position
        self.outcome_known = False
        self.committed = None

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def refused(exc: BaseException) -> BaseException:
    """``exc`` marked as the error of a commit that wrote nothing (``outcome_known`` True,
    ``committed`` False), unless it already says otherwise; returns it."""
    if isinstance(exc, NgStoreError) and exc.outcome_known is None:
        exc.outcome_known, exc.committed = True, False
    return exc
