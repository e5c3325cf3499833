"""A committer that finds no leader commits its batch of token or connection ops as a
group of its own (``Writer._commit_solo``), without the queue. These tests hold what the
group path guaranteed: a committer that arrives meanwhile is led, not stranded; a failed
log write stops the writer with the outcome unknown; a quota refusal writes nothing and
leaves the next committer able to lead."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.errors import OutcomeUnknownError
from ngstore.fileio import FileIO


class HoldFirstLogWrite(FileIO):
    """Holds the first write to a log segment after ``armed`` until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.holding = threading.Event()
        self.go = threading.Event()

    def pwritev(self, fd, buffers, offset):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed = False
            self.holding.set()
            assert self.go.wait(30)
        super().pwritev(fd, buffers, offset)


def test_committers_arriving_during_a_solo_commit_are_led(store_path):
    io = HoldFirstLogWrite()
    with ngstore.open(store_path, io=io, durability="none") as s:
        s.put_tokens(make_tokens([0]))
        io.armed = True
        results: dict[int, int] = {}

        def commit(i: int) -> None:
            results[i] = s.put_tokens(make_tokens([i]))

        first = threading.Thread(target=commit, args=(1,))
        first.start()
        assert io.holding.wait(30)  # the solo leader is inside its log write
        others = [threading.Thread(target=commit, args=(i,)) for i in range(2, 6)]
        for t in others:
            t.start()
        while len(s._writer._queue) < len(others):  # they queue behind the leader
            threading.Event().wait(0.001)
        io.go.set()
        for t in [first, *others]:
            t.join(30)
            assert not t.is_alive(), "a committer was stranded"
        assert sorted(results) == [1, 2, 3, 4, 5]
        assert len(set(results.values())) == 5
        assert all(s.contains(i) for i in range(6))
        s.put_tokens(make_tokens([6]))  # leadership was given up: a new committer leads


class FailLogWrites(FileIO):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def pwritev(self, fd, buffers, offset):  # type: ignore[no-untyped-def]
        if self.fail:
            raise OSError(5, "Input/output error")
        super().pwritev(fd, buffers, offset)


def test_a_failed_log_write_of_a_solo_commit_stops_the_writer_with_the_outcome_unknown(store_path):
    io = FailLogWrites()
    s = ngstore.open(store_path, io=io, durability="none", crash_handlers=False)
    try:
        s.put_tokens(make_tokens([0]))
        io.fail = True
        with pytest.raises(OutcomeUnknownError) as info:
            s.put_tokens(make_tokens([1]))
        assert not info.value.outcome_known
        assert isinstance(info.value.__cause__, OSError)  # the error it names as its cause
        io.fail = False
        with pytest.raises(ngstore.NgStoreError) as refused:
            s.put_tokens(make_tokens([2]))
        assert refused.value.outcome_known  # refused: nothing of it was written
    finally:
        s.close()
    with ngstore.open(store_path) as s:
        assert s.contains(0) and not s.contains(2)


def test_a_refused_solo_commit_writes_nothing_and_the_next_one_leads(store_path):
    with ngstore.open(store_path, max_tokens=3, max_bytes=None) as s:
        s.put_tokens(make_tokens(np.arange(3)))
        with pytest.raises(ngstore.QuotaExceededError) as info:
            s.put_tokens(make_tokens([3]))
        assert info.value.outcome_known
        s.delete_tokens([0])
        s.put_tokens(make_tokens([3]))  # leadership was given up after the refusal
        assert [s.contains(i) for i in range(4)] == [False, True, True, True]
