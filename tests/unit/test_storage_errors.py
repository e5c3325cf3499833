"""The named errors of the store's files (errors.StorageError and its leaves): what each
is, what it carries, what it says, and that it survives pickling."""
from __future__ import annotations

import errno
import pickle

import lmdb
import pytest

import ngstore
from ngstore.errors import (
    DiskFullError,
    NgStoreError,
    OutcomeUnknownError,
    ReadOnlyFileSystemError,
    StorageError,
    StorageIOError,
    StoragePermissionError,
    StoreState,
    refusal,
    storage_error,
)
from ngstore.fileio import DEFAULT_IO, FileIO
from ngstore.kv import DISK_FULL_FREE_BYTES, lmdb_storage_error

PATH = "/data/store/wal/0000000000000001.wal"


@pytest.mark.parametrize(("code", "cls"), [
    (errno.ENOSPC, DiskFullError), (errno.EDQUOT, DiskFullError), (errno.EROFS, ReadOnlyFileSystemError),
    (errno.EACCES, StoragePermissionError), (errno.EPERM, StoragePermissionError), (errno.EIO, StorageIOError),
    (errno.ENXIO, StorageError),
])
def test_each_errno_has_its_leaf_which_is_an_ngstore_error_and_an_os_error(code, cls):
    err = storage_error(OSError(code, "os text"), "appending to the log segment", StoreState.STOPPED, path=PATH)
    assert type(err) is cls
    assert isinstance(err, NgStoreError) and isinstance(err, OSError)
    assert err.errno == code and err.filename == PATH and err.path == PATH
    assert err.strerror == "os text"
    assert err.state is StoreState.STOPPED


def test_a_permission_error_is_also_a_permission_error():
    err = storage_error(OSError(errno.EACCES, "denied"), "writing the state file", StoreState.NOT_OPENED, path=PATH)
    assert isinstance(err, PermissionError)


def test_the_message_says_what_failed_where_the_state_and_what_to_do():
    err = storage_error(OSError(errno.ENOSPC, "No space left on device"), "appending to the log segment",
                        StoreState.STOPPED, path=PATH)
    text = str(err)
    assert text.startswith(f"appending to the log segment {PATH} failed: No space left on device [ENOSPC]")
    assert "the store takes no more writes" in text
    assert "What to do: free space on the file system that holds " + PATH in text
    assert text.endswith("then close the store and open it again.")


@pytest.mark.parametrize("state", list(StoreState))
def test_every_state_has_a_sentence_and_a_next_step(state):
    err = storage_error(OSError(errno.EROFS, "Read-only file system"), "writing the state file", state, path=PATH)
    assert "What to do: remount" in str(err)


def test_restate_settles_the_state_and_the_outcome():
    err = storage_error(OSError(errno.ENOSPC, "full"), "x", StoreState.STOPPED, path=PATH)
    assert err.restate(StoreState.CLOSED) is err
    assert err.state is StoreState.CLOSED and "closed without its final checkpoint" in str(err)
    err.restate(StoreState.STOPPED, outcome_known=False)
    assert "known only once the store is reopened" in str(err)


def test_storage_error_leaves_a_named_error_as_it_is():
    err = storage_error(OSError(errno.ENOSPC, "full"), "x", StoreState.STOPPED, path=PATH)
    assert storage_error(err, "y", StoreState.CLOSED) is err


def test_an_errno_override_names_the_leaf_with_that_errno_text():
    err = storage_error(OSError(errno.EIO, "Input/output error"), "x", StoreState.STOPPED, path=PATH,
                        errno_=errno.ENOSPC)
    assert type(err) is DiskFullError and err.errno == errno.ENOSPC and err.strerror == "No space left on device"


def test_errors_survive_pickling_with_their_fields():
    err = storage_error(OSError(errno.ENOSPC, "full"), "appending", StoreState.STOPPED, path=PATH, detail="d")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DiskFullError and str(back) == str(err)
    assert (back.errno, back.filename, back.state, back.detail) == (errno.ENOSPC, PATH, StoreState.STOPPED, "d")
    unknown = OutcomeUnknownError("the batch was written", 7, err)
    back2 = pickle.loads(pickle.dumps(unknown))
    assert type(back2) is type(unknown) and back2.position == 7 and str(back2) == str(unknown)


def test_an_outcome_unknown_error_caused_by_a_full_disk_is_also_a_disk_full_error():
    cause = storage_error(OSError(errno.ENOSPC, "full"), "syncing (fdatasync) the log segment", StoreState.STOPPED,
                          path=PATH)
    err = OutcomeUnknownError("the batch was written to the log (position 3), then syncing failed", 3, cause)
    assert isinstance(err, DiskFullError) and isinstance(err, OutcomeUnknownError)
    assert err.errno == errno.ENOSPC and err.filename == PATH and err.position == 3
    assert err.outcome_known is False and err.state is StoreState.STOPPED
    assert "free space" in str(err)
    plain = OutcomeUnknownError("m", 1, OSError(errno.EIO, "io"))
    assert type(plain) is OutcomeUnknownError and plain.errno == errno.EIO


def test_a_refusal_after_a_full_disk_is_a_disk_full_error_saying_the_store_stopped():
    cause = storage_error(OSError(errno.ENOSPC, "full"), "writing LMDB's data file", StoreState.STOPPED, path=PATH)
    err = refusal("/data/store", cause)
    assert type(err) is DiskFullError and err is not cause and err.__cause__ is cause
    assert err.state is StoreState.STOPPED and err.outcome_known is True
    assert "the store /data/store stopped accepting writes after an earlier failure" in str(err)
    assert "close the store and open it again" in str(err)
    # through an OutcomeUnknownError too: the refusal is of the storage leaf, not the combination
    again = refusal("/data/store", OutcomeUnknownError("m", 2, cause))
    assert type(again) is DiskFullError
    other = refusal("/data/store", RuntimeError("boom"))
    assert type(other) is NgStoreError and "stopped accepting writes" in str(other)


class _FreeBytes(FileIO):
    def __init__(self, free: int | None) -> None:
        self.free = free

    def free_bytes(self, path: str) -> int | None:
        return self.free


def _lmdb_error(what: str, code: int) -> lmdb.Error:
    exc = lmdb.Error(f"{what}: {errno.errorcode.get(code, code)}")
    exc.what = what  # as py-lmdb's C binding sets them
    exc.code = code
    return exc


def test_lmdb_eio_on_a_nearly_full_file_system_is_taken_for_a_full_disk():
    err = lmdb_storage_error(_lmdb_error("mdb_txn_commit", errno.EIO), "writing LMDB's data file",
                             "/s/data.mdb", _FreeBytes(4096))
    assert type(err) is DiskFullError and err.errno == errno.ENOSPC and err.filename == "/s/data.mdb"
    assert "reported EIO, which is how it reports a short write" in str(err)


def test_lmdb_eio_with_room_left_is_an_io_error():
    for free in (DISK_FULL_FREE_BYTES, None):
        err = lmdb_storage_error(_lmdb_error("mdb_txn_commit", errno.EIO), "writing LMDB's data file",
                                 "/s/data.mdb", _FreeBytes(free))
        assert type(err) is StorageIOError and err.errno == errno.EIO


def test_lmdb_enospc_is_a_full_disk_and_lmdb_codes_are_not_storage_errors():
    err = lmdb_storage_error(_lmdb_error("mdb_txn_commit", errno.ENOSPC), "w", "/s/data.mdb", DEFAULT_IO)
    assert type(err) is DiskFullError
    assert lmdb_storage_error(_lmdb_error("mdb_put", -30792), "w", "/s/data.mdb", DEFAULT_IO) is None
    assert lmdb_storage_error(lmdb.Error("no code"), "w", "/s/data.mdb", DEFAULT_IO) is None


def test_the_named_errors_are_public():
    for name in ("StorageError", "DiskFullError", "ReadOnlyFileSystemError", "StoragePermissionError",
                 "StorageIOError", "StoreState"):
        assert name in ngstore.__all__ and getattr(ngstore, name) is not None


def test_the_cli_prints_a_storage_error_as_one_line_with_its_hint_and_exit_4():
    from ngstore.cli import _one_line
    from ngstore.cliutil import EXIT_FAILED, store_error

    err = storage_error(OSError(errno.ENOSPC, "No space left on device"), "writing the state file",
                        StoreState.NOT_OPENED, path="/data/s/state")
    for line in (_one_line(err), store_error("/data/s", err)):
        assert line.code == EXIT_FAILED
        assert line.message == err.summary() and "What to do" not in line.message
        assert line.hint == err.hint and line.hint.startswith("free space on the file system that holds /data/s/state")
