"""The writer checks a batch of token and connection ops against its quota slack --
the room left under each limit, measured at a group's first batch and lowered by every
batch accepted since -- instead of measuring the usage again (``Quota.check``).
The slack may only ever admit what the full check admits: these tests run the same
workloads with the slack and without it and require the same refusals and the same
contents, and they hold the three ways usage grows outside the slack's count (a direct
commit, a reservation, the overlay itself)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.overlay import INDEX_ENTRY_BYTES
from ngstore.quota import Quota
from ngstore.records import CONNECTION_DTYPE, EVENT_DTYPE


def _conns(ids: np.ndarray) -> np.ndarray:
    c = np.zeros(ids.size, CONNECTION_DTYPE)
    c["token_a"] = ids
    c["token_b"] = ids + 1
    c["confidence"] = 200
    return c


def _events(n: int, start: int) -> np.ndarray:
    e = np.zeros(n, EVENT_DTYPE)
    e["timestamp_us"] = np.arange(start, start + n)
    return e


def _workload(path: str, seed: int, **limits) -> tuple[list[bool], np.ndarray, int, int]:
    """Random small batches near the limits: which were refused, and what the store holds."""
    rng = np.random.default_rng(seed)
    refused = []
    with ngstore.open(path, durability="none", event_capacity=2000, memory_threshold=1.0, **limits) as s:
        for _ in range(400):
            what = rng.integers(0, 10)
            ids = rng.integers(0, 4000, int(rng.integers(1, 40)))
            try:
                if what < 5:
                    s.put_tokens(make_tokens(np.unique(ids)))
                elif what < 7:
                    s.delete_tokens(ids)
                elif what < 9:
                    s.put_connections(_conns(np.unique(ids)))
                else:
                    s.write_events(_events(int(ids.size), int(rng.integers(0, 10**6))))
                refused.append(False)
            except ngstore.QuotaExceededError:
                refused.append(True)
            if rng.integers(0, 25) == 0:
                s.flush()  # applies: exact counts replace upper bounds
        s.flush()
        with s.snapshot() as snap:
            ids = snap.tokens.ids()
        return refused, ids, s.count(), s.stats()["connections_live"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limits", [{"max_tokens": 1500, "max_bytes": None},
                                    {"max_tokens": None, "max_bytes": 480_000},
                                    {"max_tokens": 1800, "max_bytes": 500_000}])
def test_the_slack_refuses_exactly_what_the_full_check_refuses(tmp_path, monkeypatch, seed, limits):
    with_slack = _workload(str(tmp_path / "slack"), seed, **limits)
    monkeypatch.setattr(Quota, "_measure_slack", lambda self, group: None)  # every batch: the full check
    without = _workload(str(tmp_path / "full"), seed, **limits)
    assert any(with_slack[0]), "the workload never reached a limit: it tests nothing"
    assert with_slack[0] == without[0]
    assert np.array_equal(with_slack[1], without[1])
    assert with_slack[2:] == without[2:]


def test_a_direct_commit_is_counted_before_the_next_small_one(store_path):
    with ngstore.open(store_path, max_tokens=10_000, max_bytes=None, direct_threshold=64 * 1000) as s:
        s.put_tokens(make_tokens([0]))  # the slack is measured: 9,999 tokens of room
        s.put_tokens(make_tokens(np.arange(1, 9_999)), durability="sync")  # direct: straight to LMDB
        s.put_tokens(make_tokens([9_999]))  # the 10,000th token fits
        with pytest.raises(ngstore.QuotaExceededError):
            s.put_tokens(make_tokens([10_000]))
        assert s.count() == 10_000


def test_a_new_reservation_is_counted_before_the_next_small_commit(store_path):
    limit = 2_000_000
    with ngstore.open(store_path, max_tokens=None, max_bytes=limit, memory_threshold=1.0,
                      observability=False) as s:
        s.put_tokens(make_tokens([0]))  # the slack is measured
        used = s.stats()["memory_used_bytes"]
        s._guardian.reserve("experience_ring", limit - used - 64)  # room for one more token, no more
        s.put_tokens(make_tokens([1]))
        with pytest.raises(ngstore.QuotaExceededError):
            s.put_tokens(make_tokens([2]))


#: What a one-token commit adds to the overlay: its payload (about 90 bytes) and an index entry.
ONE_TOKEN_PASSAGE = 128 + INDEX_ENTRY_BYTES


def _fill_until_refused(path: str, limit: int) -> tuple[int, int]:
    """One-token commits until the byte quota refuses one: (commits, bytes used then)."""
    with ngstore.open(path, max_tokens=None, max_bytes=limit, memory_threshold=1.0, observability=False,
                      durability="none", apply_interval=3600) as s:
        n = 0
        with pytest.raises(ngstore.QuotaExceededError):
            while n < 100_000:
                s.put_tokens(make_tokens([n]))
                n += 1
                # Each commit was admitted with the usage before it (overlay included) plus
                # its records within the limit; only its own passage through the overlay
                # (payload and index entry) may come on top.
                assert s._writer.usage().bytes <= limit + ONE_TOKEN_PASSAGE
        return n, s._writer.usage().bytes


def test_pending_commits_are_counted_by_the_slack_as_by_the_usage(tmp_path, monkeypatch):
    # Nothing is applied until a check counts exactly (a long apply interval, a large
    # apply size): the overlay's own memory fills much of the byte quota, and the slack
    # must see it fill as the usage does -- the same commit is refused with it and without.
    limit = 1_000_000
    with_slack = _fill_until_refused(str(tmp_path / "slack"), limit)
    monkeypatch.setattr(Quota, "_measure_slack", lambda self, group: None)
    assert with_slack == _fill_until_refused(str(tmp_path / "full"), limit)
    assert 0 < with_slack[0] < 100_000
