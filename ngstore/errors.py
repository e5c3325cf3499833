"""The exception tree of ngstore: one root, a few leaves.

Each leaf also inherits the built-in exception a caller would naturally catch
(``KeyError`` for a missing record, ``ValueError`` for bad input), and each message
says what failed and what to do about it. LMDB's exceptions are translated in ``kv``
only.

Errors of the operating system on the store's own files (a full disk, a read-only file
system, a permission, an I/O error) are :class:`StorageError` leaves named by their
errno -- each still an ``OSError`` with ``errno`` and ``filename`` set, so ``except
OSError`` code keeps working -- and each says the store's state afterwards
(:class:`StoreState`) and what to do. :func:`storage_error` is the one place they are
made; the layer where the error arises calls it, and the operation that knows the
store's state (an open, a commit, the applier, a close) settles ``state`` with
:meth:`StorageError.restate`.
"""
from __future__ import annotations

import enum
import errno
import os
from typing import Any


class NgStoreError(Exception):
    """Root of every error raised by ngstore itself."""


class InvalidArgumentError(NgStoreError, ValueError):
    """Bad input: wrong dtype or shape, out-of-range ids, NaN where not allowed.

    Raised before anything is written: the store is exactly as it was.
    """


class NotFoundError(NgStoreError, KeyError):
    """A record that does not exist was asked for by key."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it plainly
        return str(self.args[0]) if self.args else "not found"


class StoreLockedError(NgStoreError):
    """Another writer (this process or another) holds the store, or recovery is running."""


class StoreClosedError(NgStoreError):
    """The store, snapshot or view was used after ``close()``."""


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
    (for the first failing records), ``n_failed`` counts every failing record."""

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




# -- errors of the operating system on the store's files ----------------------------------

class StoreState(enum.Enum):
    """Where a failed operation left the store (:attr:`StorageError.state`)."""

    #: The store takes no more writes (what failed may have left a file in a state only
    #: recovery can read): close it and open it again.
    STOPPED = "stopped"
    #: An open failed: the store was not opened, and is as the last writer left it.
    NOT_OPENED = "not opened"
    #: The creation of a new store failed: the next open creates it again.
    NOT_CREATED = "not created"
    #: ``close()`` failed: the store is closed without its final checkpoint.
    CLOSED = "closed"


_STATE_SENTENCES = {
    StoreState.STOPPED: "the store takes no more writes; reopening it recovers every commit whose "
                        "log record reached the disk, each whole",
    StoreState.NOT_OPENED: "the store was not opened; nothing acknowledged is lost: the next open "
                           "recovers it",
    StoreState.NOT_CREATED: "the store was not created; the next open creates it again",
    StoreState.CLOSED: "the store is closed without its final checkpoint; nothing acknowledged is "
                       "lost: the next open recovers it from the log",
}
_NEXT_STEP = {
    StoreState.STOPPED: "then close the store and open it again",
    StoreState.NOT_OPENED: "then open it again",
    StoreState.NOT_CREATED: "then open it again",
    StoreState.CLOSED: "then open it again",
}
_OUTCOME_SENTENCES = {
    True: "this commit was not applied",
    False: "whether this commit was applied is known only once the store is reopened: recovery "
           "keeps it whole if its log record reached the disk, or drops it whole",
}


def _set_os_fields(exc: OSError, errno_: int | None, strerror: str | None, filename: str | None) -> None:
    """Sets the ``OSError`` attributes directly: ``OSError.__init__`` parses its arguments
    or not depending on which of ``__new__``/``__init__`` a subclass overrides."""
    exc.errno = errno_  # typeshed says int | None, as OSError allows
    exc.strerror = strerror
    exc.filename = filename
    exc.args = (errno_, strerror)


def _rebuild(cls: type[OSError], errno_: int | None, strerror: str | None, filename: str | None,
             attrs: dict[str, Any]) -> OSError:
    """Unpickles a StorageError or an OutcomeUnknownError (their constructors take more
    than the ``(errno, strerror)`` that pickle would pass)."""
    exc = OSError.__new__(cls)
    _set_os_fields(exc, errno_, strerror, filename)
    exc.__dict__.update(attrs)
    return exc


class StorageError(NgStoreError, OSError):
    """The operating system failed an operation on one of the store's files.

    An ``OSError`` with ``errno``, ``strerror`` and ``filename`` (= ``path``, the file)
    as the system reported them, and:

    * ``doing`` -- what the store was doing (``"appending to the log"``);
    * ``state`` -- a :class:`StoreState`: where the failure left the store;
    * ``outcome_known`` -- for a failed commit: True when it was not applied, False when
      only reopening tells (then the error is also an :class:`OutcomeUnknownError`);
      None for anything but a commit;
    * ``hint`` -- what to do.

    Raised as the leaf of its errno (:class:`DiskFullError`, ...), or as this class for
    an errno without one.
    """

    #: What to do about the cause; ``{path}`` is the file.
    remedy = "see the operating system's error"

    def __init__(self, errno_: int | None, strerror: str | None, path: str | None, *, doing: str,
                 state: StoreState, outcome_known: bool | None = None, detail: str = "") -> None:
        if not strerror:
            strerror = os.strerror(errno_) if errno_ else "unknown error"
        _set_os_fields(self, errno_, strerror, path)
        self.path = path
        self.doing = doing
        self.state = state
        self.outcome_known = outcome_known
        self.detail = detail

    def restate(self, state: StoreState, outcome_known: bool | None = None) -> StorageError:
        """Settles where the failure left the store (and, for a commit, its outcome), once
        the operation that knows it has seen the error; returns the error itself."""
        self.state = state
        if outcome_known is not None:
            self.outcome_known = outcome_known
        return self

    @property
    def hint(self) -> str:
        """What to do: the remedy of the cause, then the next step in this state."""
        return f"{self.remedy.format(path=self.path or 'the store')}, {_NEXT_STEP[self.state]}"

    def cause_text(self) -> str:
        """``"<doing> <path> failed: <strerror> [<ERRNO>] (<detail>)"``."""
        name = errno.errorcode.get(self.errno, "") if self.errno is not None else ""
        where = f" {self.path}" if self.path else ""
        return (f"{self.doing}{where} failed: {self.strerror}" + (f" [{name}]" if name else "")
                + (f" ({self.detail})" if self.detail else ""))

    #: Set on the error a stopped store raises for a later write (:func:`refusal`): the
    #: store's path; the cause is then an earlier failure, not this call's.
    refused_by: str | None = None

    def summary(self) -> str:
        """The message without its "What to do" (the CLI prints the hint apart)."""
        outcome = _OUTCOME_SENTENCES.get(self.outcome_known) if self.outcome_known is not None else None
        before = (f"the store {self.refused_by} stopped accepting writes after an earlier failure: "
                  if self.refused_by is not None else "")
        return (f"{before}{self.cause_text()}; {_STATE_SENTENCES[self.state]}"
                + (f"; {outcome}" if outcome else ""))

    def __str__(self) -> str:
        return f"{self.summary()}. What to do: {self.hint}."

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.errno, self.strerror, self.filename, dict(self.__dict__))


class DiskFullError(StorageError):
    """No space left on the device (``ENOSPC``), or the disk quota is used up (``EDQUOT``).

    LMDB reports a short write as ``EIO``; the store reports it as this error when the
    file system has (almost) no space left at that moment."""

    remedy = "free space on the file system that holds {path} (or raise the disk quota)"


class ReadOnlyFileSystemError(StorageError):
    """The file system is mounted read-only (``EROFS``), perhaps remounted so by the
    kernel after an error."""

    remedy = ("remount the file system that holds {path} read-write (if the kernel remounted it "
              "read-only after an error, check the system log and the disk first; to read the store "
              "meanwhile, open it with readonly=True)")


class StoragePermissionError(StorageError, PermissionError):
    """The process may not do this to the file (``EACCES``, ``EPERM``). Also a
    ``PermissionError``."""

    remedy = ("give the user running ngstore read and write permission on {path} and the store "
              "directory (to read the store meanwhile, open it with readonly=True)")


class StorageIOError(StorageError):
    """The device reported an I/O error (``EIO``): a hardware or file-system fault. After a
    failed write or fsync the file's contents are unknown (the kernel may have dropped the
    pages it could not write), which is why the store stops taking writes."""

    remedy = "check the system log (dmesg) and the disk before going on"


_CLASS_OF_ERRNO: dict[int, type[StorageError]] = {
    errno.ENOSPC: DiskFullError,
    errno.EDQUOT: DiskFullError,
    errno.EROFS: ReadOnlyFileSystemError,
    errno.EACCES: StoragePermissionError,
    errno.EPERM: StoragePermissionError,
    errno.EIO: StorageIOError,
}


def storage_error(exc: OSError, doing: str, state: StoreState, *, path: str | None = None,
                  outcome_known: bool | None = None, errno_: int | None = None,
                  detail: str = "") -> StorageError:
    """The one place an ``OSError`` of the store's files becomes a :class:`StorageError`:
    the leaf of its errno (``errno_`` overrides it: LMDB's short write is a full disk when
    the file system is full), ``path`` the file (default: the error's ``filename``).
    An error that is a StorageError already is returned as it is."""
    if isinstance(exc, StorageError):
        return exc
    code = exc.errno if errno_ is None else errno_
    cls = _CLASS_OF_ERRNO.get(code, StorageError) if code is not None else StorageError
    strerror = exc.strerror if errno_ is None or errno_ == exc.errno else None
    filename = path if path is not None else exc.filename
    return cls(code, strerror, None if filename is None else str(filename), doing=doing, state=state,
               outcome_known=outcome_known, detail=detail)


def refusal(store_path: str, cause: BaseException | None) -> NgStoreError:
    """What a store that stopped taking writes raises for every later write: when the
    cause was an error of the store's files, a new error of the cause's leaf
    (:class:`DiskFullError` for a full disk, so ``except DiskFullError`` sees every write
    refused because of it) saying the store stopped after it, in state
    :attr:`StoreState.STOPPED`, with ``outcome_known`` True (nothing of this write was
    written); otherwise an :class:`NgStoreError` naming the cause. Either way the message
    says to close the store and open it again, and ``__cause__`` is the first failure."""
    storage = cause.cause if isinstance(cause, OutcomeUnknownError) else cause
    if isinstance(storage, StorageError):
        leaf = next(c for c in type(storage).__mro__ if c in _OUTCOME_UNKNOWN_OF)
        named = leaf(storage.errno, storage.strerror, storage.path, doing=storage.doing,
                     state=StoreState.STOPPED, outcome_known=True, detail=storage.detail)
        named.refused_by = store_path
        err: NgStoreError = named
    else:
        err = NgStoreError(f"the store {store_path} stopped accepting writes after an I/O error "
                           f"({cause!r}); close it and open it again to recover")
    err.__cause__ = cause
    return err


class OutcomeUnknownError(NgStoreError, OSError):
    """A commit failed after its batch was written to the log: whether it is committed is
    unknown until the store is reopened -- recovery keeps it, whole, if its record reached
    the disk, and drops it, whole, otherwise. ``position`` is the log position it was
    given; ``cause`` the failure. The store refuses writes from here on (``state`` is
    :attr:`StoreState.STOPPED`, ``outcome_known`` False).

    It is an ``OSError`` with the errno of its cause. When the cause is a
    :class:`StorageError`, the error is of a class that is both -- the way
    ``OSError(ENOENT, ...)`` makes a ``FileNotFoundError``: a full disk during the log's
    fdatasync raises an error that is an ``OutcomeUnknownError`` *and* a
    :class:`DiskFullError` (``except DiskFullError`` sees it, with ``outcome_known``
    False; ``except OutcomeUnknownError`` sees it, with its ``position``).
    """

    def __new__(cls, message: str, position: int, cause: BaseException) -> OutcomeUnknownError:
        target: type[OutcomeUnknownError] = cls
        if cls is OutcomeUnknownError and isinstance(cause, StorageError):
            target = next(_OUTCOME_UNKNOWN_OF[c] for c in type(cause).__mro__ if c in _OUTCOME_UNKNOWN_OF)
        # OSError.__new__, not NgStoreError's: an OSError's instance layout is OSError's
        return OSError.__new__(target)

    def __init__(self, message: str, position: int, cause: BaseException) -> None:
        errno_ = cause.errno if isinstance(cause, OSError) else None
        filename = cause.filename if isinstance(cause, OSError) else None
        _set_os_fields(self, errno_, message, filename)
        self.position = position
        self.cause = cause
        self.outcome_known: bool | None = False
        self.state = StoreState.STOPPED
        if isinstance(cause, StorageError):
            self.path = cause.path
            self.doing = cause.doing
            self.detail = cause.detail

    @property
    def hint(self) -> str:
        """What to do: the cause's remedy when it is a StorageError, then reopen."""
        if isinstance(self.cause, StorageError):
            return f"{self.cause.remedy.format(path=self.cause.path or 'the store')}, {_NEXT_STEP[self.state]}"
        return "close the store and open it again"

    def __str__(self) -> str:
        message = str(self.args[1]) if len(self.args) > 1 else super().__str__()
        if isinstance(self.cause, StorageError):
            return f"{message} (cause: {self.cause.cause_text()}; what to do: {self.hint})"
        return message

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.errno, self.strerror, self.filename, dict(self.__dict__))


class StorageOutcomeUnknownError(OutcomeUnknownError, StorageError):
    """An :class:`OutcomeUnknownError` caused by a :class:`StorageError` of no named errno."""


class DiskFullOutcomeUnknownError(OutcomeUnknownError, DiskFullError):
    """An :class:`OutcomeUnknownError` caused by a full disk: also a :class:`DiskFullError`."""


class ReadOnlyFileSystemOutcomeUnknownError(OutcomeUnknownError, ReadOnlyFileSystemError):
    """An :class:`OutcomeUnknownError` caused by a read-only file system."""


class StoragePermissionOutcomeUnknownError(OutcomeUnknownError, StoragePermissionError):
    """An :class:`OutcomeUnknownError` caused by a permission error."""


class StorageIOOutcomeUnknownError(OutcomeUnknownError, StorageIOError):
    """An :class:`OutcomeUnknownError` caused by an I/O error: also a :class:`StorageIOError`."""


_OUTCOME_UNKNOWN_OF: dict[type[StorageError], type[OutcomeUnknownError]] = {
    DiskFullError: DiskFullOutcomeUnknownError,
    ReadOnlyFileSystemError: ReadOnlyFileSystemOutcomeUnknownError,
    StoragePermissionError: StoragePermissionOutcomeUnknownError,
    StorageIOError: StorageIOOutcomeUnknownError,
    StorageError: StorageOutcomeUnknownError,
}
