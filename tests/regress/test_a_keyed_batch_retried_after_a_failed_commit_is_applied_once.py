"""A commit that raised could still have committed: its record reached the log before the
log's fdatasync failed, and recovery kept it. The caller could not tell, and its retry was
applied a second time (issue 13, item 9: the events of the batch were in the store twice).

The unkeyed half shows the hazard as it was and still is without a key; with a key, the
error says the outcome is unknown, ``outcome(key)`` answers after reopening, and the retry is
not applied again."""
from __future__ import annotations

import errno

import numpy as np
import pytest

import ngstore
from ngstore import Outcome
from ngstore.experience import new_events
from ngstore.fileio import FileIO

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)


class FailNextLogSync(FileIO):
    def __init__(self) -> None:
        self.armed = False
        self.paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def fdatasync(self, fd: int) -> None:
        if self.armed and self.paths.get(fd, "").endswith(".wal"):
            self.armed = False
            raise OSError(errno.EIO, "injected EIO on the log's fdatasync")
        super().fdatasync(fd)


def _events() -> np.ndarray:
    return new_events(4, event_type=2, timestamp_us=1, event_id=np.arange(4) + 1)


def _commit_that_fails_its_sync(path: str, key: str | None) -> ngstore.OutcomeUnknownError:
    io = FailNextLogSync()
    s = ngstore.open(path, **OPEN, io=io)
    io.armed = True
    with pytest.raises(ngstore.OutcomeUnknownError) as exc:
        s.write_events(_events(), key=key)
    s.close()
    return exc.value


def test_without_a_key_a_retry_after_an_unknown_outcome_duplicates(tmp_path):
    path = str(tmp_path / "store")
    err = _commit_that_fails_its_sync(path, None)
    assert err.outcome_known is False
    with ngstore.open(path, **OPEN) as s:
        s.write_events(_events())  # the caller's retry: nothing told it the first one stayed
        assert s.stats()["events_live"] == 8


def test_a_keyed_batch_retried_after_an_unknown_outcome_is_applied_once(tmp_path):
    path = str(tmp_path / "store")
    err = _commit_that_fails_its_sync(path, "order-17")
    assert err.outcome_known is False and err.committed is None
    assert "store.outcome(key)" in str(err)
    with ngstore.open(path, **OPEN) as s:
        assert s.outcome("order-17") is Outcome.COMMITTED
        assert s.write_events(_events(), key="order-17") == 0  # the original's first event
        assert s.stats()["events_live"] == 4
        assert s.check().ok
