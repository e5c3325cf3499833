"""The overlay is bounded in age (``max_apply_lag``): a commit waits for the applier while
the oldest commit not yet in LMDB is older than the bound, so LMDB -- what other processes
read -- never falls further behind than the bound plus one apply, however hard a thread
commits. The applier is slowed down here (each apply sleeps), so that a commit made while
it works finds an old pending commit; what the tests look at is whether that commit
returned before or after the applier had applied the old one.
"""
from __future__ import annotations

import math
import threading
import time

import pytest

import ngstore
from ngstore import applier as applier_mod
from ngstore.errors import InvalidArgumentError
from ngstore.options import DEFAULT_APPLY_LAG, Options

APPLY_SLEEP = 0.6  # seconds each apply of the slowed applier takes, far above the bound below


@pytest.fixture
def slow_applier(monkeypatch):
    """Every apply sleeps first; ``started`` is set once the first apply has begun."""
    real = applier_mod.Applier.apply_now
    started = threading.Event()

    def slow(self, entries, count=None):
        if threading.current_thread().name == "ngstore-applier":
            started.set()
            time.sleep(APPLY_SLEEP)
        return real(self, entries, count)

    monkeypatch.setattr(applier_mod.Applier, "apply_now", slow)
    return started


def commit_behind_an_apply(path: str, started: threading.Event, **options) -> tuple[int, int]:
    """Commits A, waits until the applier is applying it, commits B once A is older than
    the bound, and returns (A's position, the applied position when B returned)."""
    with ngstore.open(path, durability="none", apply_interval=0.01, crash_handlers=False, **options) as s:
        a = s.put_tokens(ngstore.Token.create_batch(1, start=1))
        assert started.wait(10)
        time.sleep(0.15)  # A is now older than the 0.1 s bound, and still being applied
        s.put_tokens(ngstore.Token.create_batch(1, start=2))
        applied = s._live_writer().applier.applied_position
        assert s.count() == 2  # a barrier: both are in LMDB now, whatever happened above
    return a, applied


def test_a_commit_waits_while_the_oldest_pending_commit_is_older_than_the_bound(tmp_path, slow_applier):
    a, applied = commit_behind_an_apply(str(tmp_path / "s"), slow_applier, max_apply_lag=0.1)
    assert applied >= a


def test_without_a_bound_the_same_commit_returns_while_the_old_one_is_still_pending(tmp_path, slow_applier):
    a, applied = commit_behind_an_apply(str(tmp_path / "s"), slow_applier, max_apply_lag=math.inf)
    assert applied < a


def test_the_bound_defaults_to_a_second_or_twice_the_apply_interval_and_is_never_below_it():
    assert Options().apply_lag_bound == DEFAULT_APPLY_LAG == 1.0
    assert Options(apply_interval=0.8).apply_lag_bound == 1.6
    assert Options(max_apply_lag=0.2).apply_lag_bound == 0.2
    assert Options(max_apply_lag=math.inf).apply_lag_bound == math.inf
    for bad in (0.01, 0, -1.0, True, "1", math.nan):
        with pytest.raises(InvalidArgumentError, match="max_apply_lag"):
            Options(max_apply_lag=bad)
