"""The IntuitionEngine learns from accumulated evidence: the clustered task end to end
(through a store and in memory), what a learned reflex answers, what is counted, and the
statistics in a store (reopen, a store from before them, check())."""
from __future__ import annotations

import lmdb
import numpy as np
import pytest

import ngstore
from ngstore import kv as kv_module
from ngstore.analysis import bin_key_states, state_bins
from ngstore.experience import new_events
from ngstore.layout import ALL_DBS, DB_LEARN, learn_group_key

ACTIONS = 4


class Task:
    """The issue's task, smaller: ``k`` clusters of states (noise 0.01 around each centre),
    4 actions (event_type 1..4); in each cluster one action earns 1 and the others 0, with
    reward noise 0.1. Action a's vector is (0.2 a, 0, ..., 0), so an answer names its action."""

    def __init__(self, k: int, seed: int = 0, *, inside_bins: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.uniform(-0.9, 0.9, (k, 8)).astype(np.float32)
        if inside_bins:  # each cluster well inside one bin of B = 4 (no events across an edge)
            digits = self.rng.integers(0, 4, (k, 8))
            self.centres = ((2 * digits + 1) / 4 - 1 + self.rng.uniform(-0.1, 0.1, (k, 8))).astype(np.float32)
        self.best = self.rng.integers(1, ACTIONS + 1, k)

    def events(self, n: int) -> np.ndarray:
        c = self.rng.integers(0, len(self.centres), n)
        a = self.rng.integers(1, ACTIONS + 1, n)
        ev = new_events(n)
        ev["state"] = self.centres[c] + self.rng.normal(0, 0.01, (n, 8)).astype(np.float32)
        ev["event_type"] = a
        ev["action"][:, 0] = 0.2 * a
        ev["reward_goal"] = (a == self.best[c]) + self.rng.normal(0, 0.1, n)
        return ev

    def fresh(self, per_cluster: int) -> tuple[np.ndarray, np.ndarray]:
        c = np.repeat(np.arange(len(self.centres)), per_cluster)
        return self.centres[c] + self.rng.normal(0, 0.01, (len(c), 8)).astype(np.float32), c

    def score(self, engine: ngstore.IntuitionEngine, states: np.ndarray, cluster: np.ndarray) -> tuple[int, int, int]:
        """(answered, answered with the best action, answered with a worse one)."""
        r = engine.try_fast_path_batch(states)
        action = np.rint(r.action[:, 0] / 0.2).astype(int)
        right = r.found & (action == self.best[cluster])
        return int(r.found.sum()), int(right.sum()), int((r.found & ~right).sum())


def learn(engine: ngstore.IntuitionEngine, task: Task, write, cycles: int, per_cycle: int = 1000) -> None:
    for _ in range(cycles):
        write(task.events(per_cycle))
        engine.analyze()


def check_learned(engine: ngstore.IntuitionEngine, task: Task) -> None:
    k = len(task.centres)
    assert task.score(engine, task.centres, np.arange(k)) == (k, k, 0)
    fresh, cluster = task.fresh(50)
    answered, right, wrong = task.score(engine, fresh, cluster)
    assert wrong == 0 and right == answered >= 0.95 * len(fresh)
    for i in range(k):  # the single-state fast path agrees
        hit = engine.try_fast_path(task.centres[i].tolist())
        assert hit is not None and round(float(hit.action[0]) / 0.2) == task.best[i]


def test_a_store_engine_learns_the_best_action_of_every_cluster_and_never_a_worse_one(store_path):
    task = Task(16)
    with ngstore.open(store_path) as s:
        engine = s.intuition()  # the default configuration
        learn(engine, task, s.write_events, cycles=25)
        check_learned(engine, task)
        st = engine.stats()
        assert st["learned_events"] == 25_000 and st["learning_folds"] == 25
        assert st["reflexes_created"] == st["total_reflexes"] == s.stats()["reflexes_live"]
        assert s.check().ok


def test_an_in_memory_engine_learns_the_same_way():
    task = Task(16)
    engine = ngstore.IntuitionEngine.with_defaults()
    learn(engine, task, engine.experience.write_events, cycles=25)
    check_learned(engine, task)
    stats = engine.learned_statistics()
    assert stats.cursor.events_counted == 25_000 and len(stats) > 16 * ACTIONS - 1


def test_a_store_and_an_in_memory_engine_hold_the_same_statistics_bit_for_bit(store_path):
    task = Task(8, seed=3)
    batches = [task.events(700) for _ in range(6)]
    memory = ngstore.IntuitionEngine.with_defaults()
    with ngstore.open(store_path) as s:
        engine = s.intuition()
        for ev in batches:
            s.write_events(ev)
            memory.experience.write_events(ev)
            engine.analyze()
            memory.analyze()
        assert engine.learned_statistics().same_as(memory.learned_statistics())
        a, b = engine.try_fast_path_batch(task.centres), memory.try_fast_path_batch(task.centres)
        assert np.array_equal(a.found, b.found) and np.array_equal(a.action, b.action)


def test_reflexes_created_counts_creations_not_reconsolidations(store_path):
    task = Task(6, seed=4, inside_bins=True)  # six clusters, six bins
    with ngstore.open(store_path) as s:
        engine = s.intuition()
        written = 0
        for _ in range(30):  # every cycle proposes the six bins again; only new ones are created
            s.write_events(task.events(500))
            written += engine.analyze().consolidated
        st = engine.stats()
        assert st["reflexes_created"] == st["total_reflexes"] == 6 <= written
        assert s.stats()["reflexes_created_total"] == 6


def test_when_the_best_action_changes_the_old_reflex_is_retracted_then_the_new_one_learned():
    task = Task(1, seed=5, inside_bins=True)
    engine = ngstore.IntuitionEngine.with_defaults()
    learn(engine, task, engine.experience.write_events, cycles=3)
    assert task.score(engine, task.centres, np.array([0])) == (1, 1, 0)
    old = task.best[0]
    task.best[0] = old % ACTIONS + 1  # the world changes: another action pays now
    answers = []
    for _ in range(60):
        learn(engine, task, engine.experience.write_events, cycles=1)
        hit = engine.try_fast_path(task.centres[0].tolist())
        answers.append(None if hit is None else round(float(hit.action[0]) / 0.2))
    # the old answer, then none while the evidence is mixed (no action dominates), then the new one
    assert answers[-1] == task.best[0] and None in answers
    first_none, first_new = answers.index(None), answers.index(task.best[0])
    assert set(answers[:first_none]) <= {old} and first_none < first_new
    assert set(answers[first_new:]) == {task.best[0]}
    s = engine.stats()
    assert s["learned_reflexes_retracted"] == 1 and s["reflexes_created"] == 2 and s["total_reflexes"] == 1


def test_a_bin_shared_by_two_clusters_with_different_best_actions_gets_no_reflex():
    task = Task(2, seed=14, inside_bins=True)
    task.centres[1] = task.centres[0] + 0.03  # the same bin
    task.best[:] = [1, 3]
    engine = ngstore.IntuitionEngine.with_defaults()
    learn(engine, task, engine.experience.write_events, cycles=20)
    assert engine.try_fast_path_batch(task.centres).found.tolist() == [False, False]
    assert engine.stats()["total_reflexes"] == 0


def test_a_learned_reflex_answers_every_state_of_its_bin_and_no_state_of_another():
    rng = np.random.default_rng(6)
    engine = ngstore.IntuitionEngine.with_defaults()
    centre = np.full(8, 0.25, np.float32)  # bin (2, 2, ..., 2) of B = 4 spans [0, 0.5) per dimension
    ev = new_events(400)
    ev["state"] = centre + rng.uniform(-0.01, 0.01, (400, 8)).astype(np.float32)
    ev["event_type"] = np.tile([1, 2], 200)
    ev["action"][:, 0] = 0.2 * ev["event_type"]
    ev["reward_goal"] = (ev["event_type"] == 2) + rng.normal(0, 0.1, 400)
    engine.experience.write_events(ev)
    assert engine.analyze().consolidated == 1
    anywhere = rng.uniform(0.0, 0.4999, (2000, 8)).astype(np.float32)  # all over the bin
    r = engine.try_fast_path_batch(anywhere)
    assert r.found.all() and r.by_bin.all() and np.allclose(r.action[:, 0], 0.4)
    outside = anywhere.copy()
    outside[:, 3] -= 0.5  # the neighbouring bin along one dimension
    assert not engine.try_fast_path_batch(outside).found.any()
    s = engine.stats()
    assert s["fast_path_bin_answers"] == 2000 and s["fast_path_lookups"] == 4000  # the caller's lookups only


def test_an_engine_that_never_learned_looks_each_state_up_once(store_path):
    with ngstore.open(store_path) as s:
        with s.batch() as b:
            conn = ngstore.Connection(1, 2)
            conn.pull_strength, conn.rigidity, conn.confidence_raw, conn.evidence_count = 1.0, 200, 230, 20
            b.put_reflexes(np.full((1, 8), 0.1, np.float32), conn.record)
        engine = s.intuition()
        r = engine.try_fast_path_batch(np.random.default_rng(7).uniform(-1, 1, (100, 8)))
        assert not r.by_bin.any()
        assert s.reflex_stats()["reflex_lookups_total"] == 100


def test_the_single_sample_analysis_is_an_option_and_keeps_no_statistics(store_path):
    task = Task(8, seed=8)
    with ngstore.open(store_path) as s:
        engine = s.intuition(ngstore.IntuitionConfig(learning="sample"))
        learn(engine, task, s.write_events, cycles=5)
        assert not s.learning_statistics().learned
        assert engine.stats()["learning"] == "sample" and engine.last_report.learning == "sample"
    with pytest.raises(ngstore.InvalidArgumentError):
        ngstore.IntuitionConfig(learning="sometimes")


def test_statistics_survive_reopen_bit_for_bit_and_learning_goes_on(store_path):
    task = Task(8, seed=9)
    with ngstore.open(store_path) as s:
        learn(s.intuition(), task, s.write_events, cycles=4)
        before = s.learning_statistics()
    with ngstore.open(store_path) as s:
        assert s.learning_statistics().same_as(before)
        engine = s.intuition()
        assert engine.try_fast_path_batch(task.centres).found.any()  # bin answers from the first lookup
        learn(engine, task, s.write_events, cycles=2)
        assert s.learning_statistics().cursor.events_counted == 6000
        assert s.check().ok


def test_events_trimmed_before_a_cycle_reached_them_are_counted_missed():
    task = Task(4, seed=10)
    engine = ngstore.IntuitionEngine.create(capacity=1000)
    engine.experience.write_events(task.events(500))
    engine.analyze()
    engine.experience.write_events(task.events(2500))  # the ring keeps the newest 1000
    report = engine.analyze()
    c = engine.learned_statistics().cursor
    assert report.events_sampled == 1000 and (c.next_seq, c.events_counted, c.events_missed) == (3000, 1500, 1500)


def test_a_store_from_before_the_learn_database_opens_and_learns(store_path, monkeypatch):
    task = Task(4, seed=11)
    monkeypatch.setattr(kv_module, "ALL_DBS", tuple(d for d in ALL_DBS if d != DB_LEARN))
    with ngstore.open(store_path) as s:
        s.write_events(task.events(3000))
    env = lmdb.open(store_path, max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(DB_LEARN) is None  # no such database yet
    env.close()
    monkeypatch.undo()  # this ngstore, from here on
    with ngstore.open(store_path, readonly=True) as r:  # a reader never creates it
        assert not r.learning_statistics().learned and r.check().ok
    with ngstore.open(store_path) as s:
        engine = s.intuition()
        engine.analyze()
        assert s.learning_statistics().cursor.events_counted == 3000
        assert engine.try_fast_path_batch(task.centres).found.all()
        assert s.check().ok


def test_check_finds_statistics_that_disagree_with_their_cursor(store_path):
    task = Task(4, seed=12)
    with ngstore.open(store_path) as s:
        learn(s.intuition(), task, s.write_events, cycles=2)
        stats = s.learning_statistics()
    env = lmdb.open(store_path, max_dbs=16)
    db = env.open_db(DB_LEARN)
    with env.begin(write=True) as txn:
        key = learn_group_key(4, int(stats.bins[0]), int(stats.actions[0]))
        value = bytearray(txn.get(key, db=db))
        value[0:8] = (int(stats.moments["count"][0]) + 1).to_bytes(8, "little")
        txn.put(key, bytes(value), db=db)
    env.close()
    with ngstore.open(store_path, readonly=True) as r:
        report = r.check()
    assert not report.ok and any("cursor says" in p for p in report.problems), report


def test_bin_keys_follow_the_table_shifts():
    cfg = ngstore.IntuitionConfig(shifts=(2, 3, 4, 5, 6, 7, 9, 10))
    engine = ngstore.IntuitionEngine.create(config=cfg)
    task = Task(3, seed=13)
    learn(engine, task, engine.experience.write_events, cycles=4)
    keys = bin_key_states(state_bins(task.centres, 4), 4, cfg.shifts)
    assert len(engine.table) >= 3
    assert engine.table.lookup_batch(keys, similarity_threshold=0.0).found.all()
