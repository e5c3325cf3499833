"""The learning statistics after crashes: kill -9 mid-stream, power loss, map growth.

The rule (docs/format.md §5.1): the statistics of a binning are exactly the fold of the
stored events ``[0, next_seq)`` -- counts equal, moments equal up to float64 rounding
(the folds' chunking decides the last bits) -- and the events from ``next_seq`` on are
folded by the next cycle. Replay rebuilds the statistics bit for bit.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from walfaults import AnotherBoot

import ngstore
from ngstore.analysis import state_bins
from ngstore.experience import total_reward

CHILD = textwrap.dedent("""
    import os, sys, numpy as np, ngstore
    from ngstore.experience import new_events
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    s = ngstore.open(path, segment_bytes=64 << 10, checkpoint_bytes=256 << 10, apply_interval=0.005)
    engine = s.intuition()
    centres = np.random.default_rng(0).uniform(-0.9, 0.9, (12, 8)).astype(np.float32)
    print("open", flush=True)
    while True:
        n = int(rng.integers(50, 700))
        c = rng.integers(0, 12, n)
        ev = new_events(n)
        ev["state"] = centres[c] + rng.normal(0, 0.01, (n, 8)).astype(np.float32)
        ev["event_type"] = rng.integers(1, 5, n)
        ev["action"][:, 0] = 0.2 * ev["event_type"]
        ev["reward_goal"] = (ev["event_type"] == c % 4 + 1) + rng.normal(0, 0.1, n)
        s.write_events(ev, durability=("sync", "async", "none")[int(rng.integers(3))])
        if rng.random() < 0.6:
            engine.analyze()
        print("cycle", flush=True)
""")


def recomputed(events: np.ndarray, bins_per_dim: int = 4) -> dict[tuple[int, int], tuple[int, float, float]]:
    """(bin, action) -> (count, mean, m2) of ``events``, computed directly (one pass each)."""
    r = total_reward(events).astype(np.float64)
    ok = np.isfinite(r)
    bins = state_bins(events["state"][ok], bins_per_dim)
    acts = events["event_type"][ok]
    out = {}
    for b, a in set(zip(bins.tolist(), acts.tolist(), strict=True)):
        x = r[ok][(bins == b) & (acts == a)]
        out[(b, a)] = (len(x), float(x.mean()), float(((x - x.mean()) ** 2).sum()))
    return out


def assert_statistics_are_the_fold_of_the_stored_events(s: ngstore.Store) -> int:
    stats = s.learning_statistics()
    with s.snapshot() as snap:
        first, events = snap.events.since(0)
        nxt = snap.events.next_sequence()
    assert first == 0 and stats.cursor.next_seq <= nxt and stats.cursor.events_missed == 0
    want = recomputed(events[:stats.cursor.next_seq])
    got = {(int(b), int(a)): m for b, a, m in zip(stats.bins, stats.actions, stats.moments, strict=True)}
    assert set(got) == set(want)
    for key, (n, mean, m2) in want.items():
        m = got[key]
        assert int(m["count"]) == n
        assert m["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert m["m2"] == pytest.approx(m2, rel=1e-7, abs=1e-9)
    assert stats.cursor.events_counted == sum(n for n, _m, _v in want.values())
    return nxt


def test_after_kill9_the_statistics_are_the_fold_of_the_stored_events_up_to_the_cursor(tmp_path):
    path = str(tmp_path / "store")
    ngstore.open(path).close()
    for seed in range(8):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(seed)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        assert child.stdout is not None
        cycles = 0
        while cycles < 3 + 4 * seed:  # mid-stream: after some cycles, at a moment within one
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "the child died"
            cycles += line.startswith("cycle")
        time.sleep(0.003 * seed)
        os.kill(child.pid, signal.SIGKILL)
        _out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        with ngstore.open(path) as s:
            assert s.check().ok, str(s.check())
            nxt = assert_statistics_are_the_fold_of_the_stored_events(s)
            if seed % 2:  # half the time the next cycle folds the rest before the next kill
                s.intuition().analyze()
                assert s.learning_statistics().cursor.next_seq == nxt
                assert_statistics_are_the_fold_of_the_stored_events(s)
    with ngstore.open(path) as s:
        assert s.learning_statistics().cursor.events_counted > 0


def test_replay_after_a_power_loss_rebuilds_the_statistics_bit_for_bit(tmp_path):
    path = str(tmp_path / "s")
    saved = str(tmp_path / "stats.npz")
    child = textwrap.dedent(f"""
        import os, numpy as np, ngstore
        from ngstore.experience import new_events
        rng = np.random.default_rng(1)
        s = ngstore.open({path!r}, durability="sync")
        engine = s.intuition()
        for _ in range(12):
            ev = new_events(400)
            ev["state"] = rng.uniform(-1, 1, (400, 8)).astype(np.float32) * 0.3
            ev["event_type"] = rng.integers(1, 4, 400)
            ev["reward_goal"] = rng.normal(ev["event_type"], 0.2)
            s.write_events(ev)
            engine.analyze()
        st = s.learning_statistics()
        c = st.cursor
        np.savez({saved!r}, bins=st.bins, actions=st.actions, moments=st.moments.view(np.uint8),
                 cursor=np.array([c.next_seq, c.events_counted, c.events_missed, c.folds]))
        os._exit(0)  # no close, no checkpoint: the folds are only in the log
    """)
    subprocess.run([sys.executable, "-c", child], check=True, cwd=str(tmp_path), timeout=120)
    before = np.load(saved)
    with ngstore.open(path, io=AnotherBoot()) as s:
        assert s.recovery.power_loss_rollback and s.recovery.replayed_records >= 24
        st = s.learning_statistics()
        c = st.cursor
        assert [c.next_seq, c.events_counted, c.events_missed, c.folds] == before["cursor"].tolist() == \
            [4800, 4800, 0, 12]
        assert np.array_equal(st.bins, before["bins"]) and np.array_equal(st.actions, before["actions"])
        assert st.moments.view(np.uint8).tobytes() == before["moments"].tobytes()
        assert s.check().ok


def test_statistics_do_not_depend_on_map_growth(tmp_path):
    """A transaction that fills the map is run again from scratch in a larger one: its
    folds must count once and write the same bytes as in a map that never filled."""
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(15):
        ev = ngstore.experience.new_events(2000)
        ev["state"] = rng.uniform(-1, 1, (2000, 8)).astype(np.float32)
        ev["event_type"] = rng.integers(1, 5, 2000)
        ev["reward_goal"] = rng.normal(ev["event_type"], 0.5)
        batches.append(ev)
    results = []
    for name, map_size in (("small", 1 << 20), ("large", 1 << 32)):
        with ngstore.open(str(tmp_path / name), map_size=map_size) as s:
            engine = s.intuition()
            for ev in batches:
                s.write_events(ev, durability="none")
                engine.analyze()
            results.append((s.learning_statistics(), s.stats()["map_size_bytes"]))
            assert s.check().ok
    (small, grown_to), (large, _) = results
    assert grown_to > 1 << 20  # the small map did grow
    assert small.same_as(large) and small.cursor.events_counted == 30_000
