"""The writer's key filter (``outcomes.KeyFilter``): a keyed commit of a fresh key skips the
LMDB look-up, and the filter never hides a key LMDB still holds -- whatever the window,
however far the applier lags behind the commits, across reopening.

LMDB's ``outcomes`` database is read straight from a second LMDB handle (``raw_outcomes``),
and the witness of a hidden key is behavioural too: a retry of a remembered key that was
written again instead of being answered with the original's position.
"""
from __future__ import annotations

import random
import threading
import time

import pytest
from conftest import make_tokens
from test_outcomes import OPEN, raw_outcomes

import ngstore
from ngstore import outcomes
from ngstore.outcomes import KeyFilter, key_digest


def _writer(s: ngstore.Store):  # type: ignore[no-untyped-def]
    w = s._writer  # type: ignore[attr-defined]
    assert w is not None
    return w


def test_fresh_keys_are_committed_without_an_lmdb_look_up_and_retries_still_find_them(store_path):
    with ngstore.open(store_path, **OPEN) as s:
        w = _writer(s)
        looked: list[bytes] = []
        lookup = w.lookup_key
        w.lookup_key = lambda d: looked.append(d) or lookup(d)
        positions = [s.put_tokens(make_tokens([1]), key="fresh-0", durability="none")]
        assert w._key_filter.wait(30)  # built in its own thread from the first keyed commit
        looked.clear()
        positions += [s.put_tokens(make_tokens([i + 1]), key=f"fresh-{i}", durability="none") for i in range(1, 300)]
        assert looked == []  # 300 keys in 2^22 bits: a false positive is a 1e-10 event
        s.flush()
        for i in (0, 150, 299):
            with s.batch(key=f"fresh-{i}") as b:
                b.put_tokens(make_tokens([1000 + i]))
            assert b.already_committed and b.position == positions[i]
        assert len(looked) == 3  # each retry asked LMDB, which holds it
        assert s.stats()["tokens_live"] == 300


@pytest.mark.parametrize("seed", range(3))
def test_no_key_lmdb_remembers_is_hidden_while_generations_turn_over_and_the_applier_lags(store_path, seed):
    rng = random.Random(seed)
    remember = 4
    with ngstore.open(store_path, **OPEN, remember_keys=remember, apply_interval=3600.0) as s:
        w = _writer(s)
        committed: list[tuple[str, int]] = []
        for step in range(150):
            key = f"k{seed}-{step}"
            committed.append((key, s.put_tokens(make_tokens([step % 40 + 1]), key=key, durability="none")))
            if step == 0:
                assert w._key_filter.wait(30)
            if rng.random() < 0.15:
                s.flush()  # the applier catches up: LMDB forgets all but the newest `remember`
            if rng.random() < 0.25:
                # the newest `remember` keys are always remembered (pending, or the newest applied)
                key, position = committed[-rng.randint(1, remember)]
                with s.batch(key=key, durability="none") as b:
                    b.put_tokens(make_tokens([999]))
                assert b.already_committed and b.position == position, (step, key)
            _head, known, _order = raw_outcomes(store_path)
            hidden = [d.hex() for d in known if not w._key_filter.may_hold(d)]
            assert hidden == [], step
        assert s.stats()["tokens_live"] == 40  # no retry put token 999


def test_old_generations_are_dropped_once_the_applier_has_applied_the_keys_that_replace_them(store_path):
    with ngstore.open(store_path, **OPEN, remember_keys=4, apply_interval=3600.0) as s:
        w = _writer(s)
        for i in range(4):
            s.put_tokens(make_tokens([i + 1]), key=f"a{i}", durability="none")
        assert w._key_filter.wait(30)
        s.flush()
        # twelve more keys, none applied: LMDB still holds a0..a3, so the filter keeps them
        for i in range(12):
            s.put_tokens(make_tokens([i + 1]), key=f"b{i}", durability="none")
        assert all(w._key_filter.may_hold(key_digest(f"a{i}")) for i in range(4))
        assert set(raw_outcomes(store_path)[1]) == {key_digest(f"a{i}") for i in range(4)}
        s.flush()  # LMDB now holds b8..b11 alone
        for i in range(8):  # two turnovers, each once its keys are applied
            s.put_tokens(make_tokens([i + 1]), key=f"c{i}", durability="none")
            s.flush()
        assert not any(w._key_filter.may_hold(key_digest(f"a{i}")) for i in range(4))
        assert all(w._key_filter.may_hold(d) for d in raw_outcomes(store_path)[1])


@pytest.mark.parametrize("slice_", [7, 1024])
def test_a_reopened_writer_builds_its_filter_from_the_keys_lmdb_holds(store_path, monkeypatch, slice_):
    monkeypatch.setattr(outcomes, "_BUILD_SLICE", slice_)  # 7: the 50 keys read in eight point reads
    with ngstore.open(store_path, **OPEN, remember_keys=50) as s:
        positions = {i: s.put_tokens(make_tokens([i + 1]), key=f"r{i}") for i in range(80)}
    with ngstore.open(store_path, **OPEN, remember_keys=50) as s:
        with s.batch(key="r79") as b:  # the first keyed commit builds the filter
            b.put_tokens(make_tokens([500]))
        assert b.already_committed and b.position == positions[79]
        f = _writer(s)._key_filter
        assert f.wait(30)
        known = raw_outcomes(store_path)[1]
        assert len(known) == 50 and all(f.may_hold(d) for d in known)
        assert not f.may_hold(key_digest("r0"))  # forgotten by LMDB before the build
        with s.batch(key="r0") as b:  # so it is new again
            b.put_tokens(make_tokens([501]))
        assert not b.already_committed


def test_a_build_holds_the_pending_keys_given_and_the_window_sizes_the_filter(store_path):
    with ngstore.open(store_path, **OPEN) as s:
        kv = _writer(s)._kv
        pending = [key_digest(f"p{i}") for i in range(5)]
        f = KeyFilter.start(kv, 3, lambda: 0, lambda: pending)
        assert f.wait(30)
        assert all(f.may_hold(d) for d in pending)
        assert sum(f.may_hold(key_digest(f"other-{i}")) for i in range(1000)) == 0
        with pytest.raises(ValueError):
            KeyFilter(0, lambda: 0)


def test_a_key_committed_straight_to_lmdb_is_in_the_filter(store_path):
    with ngstore.open(store_path, **OPEN, direct_threshold=1024) as s:
        s.put_tokens(make_tokens([1]), key="small")  # builds the filter
        big = make_tokens(range(100, 200))  # 6,400 bytes: a direct commit
        position = s.put_tokens(big, key="big")
        assert _writer(s).stats_counters["direct_commits_total"] == 1
        with s.batch(key="big") as b:
            b.put_tokens(make_tokens(range(300, 400)))
        assert b.already_committed and b.position == position
        assert s.stats()["tokens_live"] == 101


def test_past_the_filters_size_every_key_is_looked_up_in_lmdb(store_path, monkeypatch):
    monkeypatch.setattr(outcomes, "FILTER_MAX_KEYS", 5)
    with ngstore.open(store_path, **OPEN, remember_keys=8) as s:  # a window wider than a filter serves
        w = _writer(s)
        looked: list[bytes] = []
        lookup = w.lookup_key
        w.lookup_key = lambda d: looked.append(d) or lookup(d)
        positions = [s.put_tokens(make_tokens([i + 1]), key=f"w{i}") for i in range(8)]
        assert len(looked) == 8 and all(w._key_filter.may_hold(key_digest(f"never-{i}")) for i in range(50))
        with s.batch(key="w3") as b:
            b.put_tokens(make_tokens([100]))
        assert b.already_committed and b.position == positions[3]
    # a narrower window now, but LMDB holds more keys than a filter serves: no filter either
    with ngstore.open(store_path, **OPEN, remember_keys=2) as s:
        with s.batch(key="w7") as b:
            b.put_tokens(make_tokens([101]))
        assert b.already_committed and b.position == positions[7]
        assert _writer(s)._key_filter.may_hold(key_digest("anything"))
        assert s.stats()["tokens_live"] == 8


def test_keys_committed_while_the_filter_builds_are_looked_up_then_kept(store_path, monkeypatch):
    release = threading.Event()
    read = outcomes._held_digests

    def slow_read(kv):  # type: ignore[no-untyped-def]
        release.wait(30)
        return read(kv)

    with ngstore.open(store_path, **OPEN) as s:
        s.put_tokens(make_tokens([1]), key="before")  # in LMDB when the build reads
        s.flush()
    monkeypatch.setattr(outcomes, "_held_digests", slow_read)
    with ngstore.open(store_path, **OPEN) as s:
        w = _writer(s)
        looked: list[bytes] = []
        lookup = w.lookup_key
        w.lookup_key = lambda d: looked.append(d) or lookup(d)
        during = {f"during-{i}": s.put_tokens(make_tokens([i + 10]), key=f"during-{i}") for i in range(5)}
        assert len(looked) == 5  # the build has not read LMDB: every key is looked up there
        release.set()
        assert w._key_filter.wait(30)
        assert all(w._key_filter.may_hold(key_digest(k)) for k in ("before", *during))
        s.flush()  # every original applied: each retry finds its key in LMDB, not the overlay
        looked.clear()
        for k, position in during.items():
            with s.batch(key=k) as b:
                b.put_tokens(make_tokens([99]))
            assert b.already_committed and b.position == position
        s.put_tokens(make_tokens([50]), key="after")
        assert len(looked) == 5  # the retries; the new key went by the filter
        assert s.stats()["tokens_live"] == 7


def test_a_build_that_fails_leaves_every_key_to_the_lmdb_look_up(store_path, monkeypatch):
    def broken(kv):  # type: ignore[no-untyped-def]
        raise ngstore.StorageError(5, "injected EIO reading the outcomes")

    monkeypatch.setattr(outcomes, "_held_digests", broken)
    with ngstore.open(store_path, **OPEN) as s:
        w = _writer(s)
        first = s.put_tokens(make_tokens([1]), key="k0")
        assert not w._key_filter.wait(30)
        assert w._key_filter.may_hold(key_digest("anything"))
        with s.batch(key="k0") as b:
            b.put_tokens(make_tokens([2]))
        assert b.already_committed and b.position == first
        assert s.stats()["tokens_live"] == 1


def test_the_map_grows_while_the_filter_builds(store_path, monkeypatch):
    # The build reads LMDB in short point reads, never holding a reader between them:
    # map growth refuses to remap under an open reader of the process.
    opts = {**OPEN, "map_size": 2 << 20}
    with ngstore.open(store_path, **opts) as s:
        for i in range(20):
            s.put_tokens(make_tokens([i + 1]), key=f"old-{i}")
    monkeypatch.setattr(outcomes, "_BUILD_SLICE", 2)
    one_slice = outcomes._order_slice

    def slow_slice(*args):  # type: ignore[no-untyped-def]
        time.sleep(0.02)  # ten slices: the build spans the growths below
        return one_slice(*args)

    monkeypatch.setattr(outcomes, "_order_slice", slow_slice)
    with ngstore.open(store_path, **opts) as s:
        w = _writer(s)
        s.put_tokens(make_tokens([1]), key="first")  # starts the build
        size = s._kv.env.info()["map_size"]  # type: ignore[attr-defined]
        for start in range(1000, 101_000, 10_000):
            s.put_tokens(ngstore.Token.create_batch(10_000, start=start))
        assert s._kv.env.info()["map_size"] > size  # type: ignore[attr-defined]
        assert w._key_filter.wait(30)
        with s.batch(key="old-7") as b:
            b.put_tokens(make_tokens([5]))
        assert b.already_committed
        assert s.check().ok
