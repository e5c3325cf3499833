"""ExperienceStream: ring numbering, wrap-around, subscribers, sampling and appraisers."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from ngstore.errors import InvalidArgumentError
from ngstore.experience import (
    Appraiser,
    Event,
    ExperienceStream,
    Mixed,
    PrioritizedByReward,
    RecencyWeighted,
    Uniform,
    appraise,
    curiosity_reward,
    efficiency_reward,
    goal_reward,
    homeostasis_reward,
    new_events,
    sample_indices,
    strategy_weights,
    total_reward,
)
from ngstore.records import CONNECTION_DTYPE, EVENT_DTYPE, EventFlags


def filled(capacity: int, n: int, channel_size: int = 1000, **columns) -> ExperienceStream:
    s = ExperienceStream(capacity, channel_size)
    s.write_events(new_events(n, step=np.arange(n), **columns))
    return s


# -- numbering and the ring -----------------------------------------------------------------

def test_write_event_returns_0_based_sequence_numbers_and_read_uses_them():
    s = ExperienceStream(10)
    assert s.write_event({"step": 42}) == 0
    assert s.write_event({"step": 43}) == 1
    assert s.read(0).step == 42 and s.read(1).step == 43
    assert s.total_written == 2 and s.size() == 2 and s.trimmed == 0


def test_reading_an_unwritten_sequence_number_gives_none():
    s = filled(10, 3)
    assert s.read(3) is None and s.read(100) is None


def test_the_ring_overwrites_the_oldest_events():
    s = ExperienceStream(10)
    for i in range(15):
        s.write_event({"step": i})
    assert s.read(0) is None and s.read(4) is None
    assert s.read(5).step == 5 and s.read(14).step == 14
    assert s.size() == 10 and s.total_written == 15 and s.trimmed == 5 and s.first_seq == 5


def test_stored_events_carry_their_sequence_number():
    s = ExperienceStream(4)
    for i in range(6):
        s.write_event({"sequence": 999})
    assert s.query_range(0, 10)["sequence"].tolist() == [2, 3, 4, 5]


def test_query_range_is_half_open_and_clipped_to_the_live_window():
    s = filled(10, 15)
    assert s.query_range(7, 9)["step"].tolist() == [7, 8]
    assert s.query_range(0, 7)["step"].tolist() == [5, 6]
    assert s.query_range(12, 100)["step"].tolist() == [12, 13, 14]
    assert len(s.query_range(9, 9)) == 0 and len(s.query_range(9, 3)) == 0
    assert len(s.query_range(20, 30)) == 0


def test_write_events_across_the_wrap_keeps_order():
    s = filled(10, 7)
    first = s.write_events(new_events(6, step=np.arange(100, 106)))
    assert first == 7
    start, window = s.live_window()
    assert start == 3
    assert window["step"].tolist() == [3, 4, 5, 6, 100, 101, 102, 103, 104, 105]
    assert window["sequence"].tolist() == list(range(3, 13))


def test_write_events_larger_than_the_capacity_keeps_the_newest():
    s = ExperienceStream(10)
    assert s.write_events(new_events(25, step=np.arange(25))) == 0
    assert s.total_written == 25 and s.trimmed == 15
    assert s.live_window()[1]["step"].tolist() == list(range(15, 25))


def test_writing_nothing_changes_nothing():
    s = filled(10, 3)
    assert s.write_events(new_events(0)) == 3 and s.total_written == 3


def test_reads_are_copies():
    s = filled(10, 3)
    e = s.read(1)
    e.step = 99
    q = s.query_range(0, 3)
    q["step"] = 77
    assert s.read(1).step == 1


def test_write_event_accepts_dicts_events_and_records():
    s = ExperienceStream(10)
    s.write_event({"event_type": 0x200, "state": [0.5] * 8, "event_id": 2**100 + 5})
    s.write_event(Event(step=3))
    s.write_event(new_events(1, step=4))
    s.write_event(new_events(1, step=5)[0])
    assert [s.read(i).step for i in range(4)] == [0, 3, 4, 5]
    assert s.read(0).event_id == 2**100 + 5 and s.read(0).state.tolist() == [0.5] * 8


@pytest.mark.parametrize("bad", [{"no_such_field": 1}, {"step": -1}, {"step": 2**32},
                                 np.zeros(1, dtype=CONNECTION_DTYPE), "event", new_events(2)])
def test_write_event_rejects_anything_else(bad):
    with pytest.raises(InvalidArgumentError):
        ExperienceStream(10).write_event(bad)


def test_sequence_numbers_must_be_non_negative_integers():
    s = filled(10, 3)
    for bad in (-1, 1.0, True, "1"):
        with pytest.raises(InvalidArgumentError):
            s.read(bad)


def test_capacity_and_channel_size_must_be_positive():
    for kwargs in ({"capacity": 0}, {"channel_size": 0}, {"capacity": 2.5}):
        with pytest.raises(InvalidArgumentError):
            ExperienceStream(**kwargs)


def test_trim_before_drops_the_oldest_live_events():
    s = filled(10, 8)
    assert s.trim_before(3) == 3
    assert s.first_seq == 3 and s.size() == 5 and s.read(2) is None
    assert s.trim_before(2) == 0  # never moves back
    assert s.trim_before(100) == 5 and s.size() == 0
    assert s.write_event({}) == 8 and s.size() == 1


# -- rewards and flags ---------------------------------------------------------------------

def test_each_appraiser_writes_its_own_slot():
    s = filled(10, 2)
    assert s.set_appraiser_reward(1, "homeostasis", 1.0)
    assert s.set_appraiser_reward(1, Appraiser.CURIOSITY, 2.0)
    assert s.set_appraiser_reward(1, 2, -0.5)
    assert s.set_appraiser_reward(1, "goal", 1.5)
    e = s.read(1)
    assert (e.reward_homeostasis, e.reward_curiosity, e.reward_efficiency, e.reward_goal) == (1.0, 2.0, -0.5, 1.5)
    assert e.total_reward == 4.0
    with pytest.raises(InvalidArgumentError):
        s.set_appraiser_reward(1, "hunger", 1.0)


def test_rewards_for_overwritten_events_are_refused():
    s = filled(2, 5)
    assert s.set_appraiser_reward(0, "goal", 1.0) is False
    assert s.mark_fully_appraised(0) is False
    assert s.set_appraiser_rewards([0, 3, 4, 9], "goal", [1, 2, 3, 4]) == 2
    assert s.query_range(3, 5)["reward_goal"].tolist() == [2.0, 3.0]


def test_mark_fully_appraised_sets_the_flag():
    s = filled(10, 1)
    assert not s.read(0).is_fully_appraised
    assert s.mark_fully_appraised(0)
    assert s.read(0).is_fully_appraised and s.read(0).flags & EventFlags.FULLY_APPRAISED


# -- subscribers ------------------------------------------------------------------------------

def test_a_subscriber_receives_events_written_after_it_subscribed():
    s = filled(100, 5)
    sub = s.subscribe()
    s.write_events(new_events(3, step=[10, 11, 12]))
    r = sub.poll()
    assert r.lagged == 0 and r.first_seq == 5 and r.events["step"].tolist() == [10, 11, 12]
    assert r.seqs.tolist() == [5, 6, 7]
    assert len(sub.poll()) == 0


def test_a_slow_subscriber_loses_the_oldest_and_is_told_exactly_how_many():
    s = ExperienceStream(100, channel_size=4)
    sub = s.subscribe()
    s.write_events(new_events(10, step=np.arange(10)))
    r = sub.poll()
    assert r.lagged == 6 and r.first_seq == 6 and r.events["step"].tolist() == [6, 7, 8, 9]
    s.write_events(new_events(2, step=[10, 11]))
    r = sub.poll()
    assert r.lagged == 0 and r.events["step"].tolist() == [10, 11]
    assert sub.lagged_total == 6


def test_a_subscriber_cannot_lag_less_than_the_ring_lost():
    s = ExperienceStream(5, channel_size=100)
    sub = s.subscribe()
    s.write_events(new_events(8, step=np.arange(8)))
    r = sub.poll()
    assert r.lagged == 3 and r.events["step"].tolist() == [3, 4, 5, 6, 7]


def test_poll_can_take_events_in_pieces():
    s = ExperienceStream(100, channel_size=50)
    sub = s.subscribe()
    s.write_events(new_events(5, step=np.arange(5)))
    assert sub.pending == 5
    assert sub.poll(max_events=2).events["step"].tolist() == [0, 1]
    assert sub.poll(max_events=10).events["step"].tolist() == [2, 3, 4]


def test_poll_with_a_timeout_waits_for_a_writer():
    s = ExperienceStream(10)
    sub = s.subscribe()
    writer = threading.Timer(0.05, lambda: s.write_event({"step": 7}))
    writer.start()
    r = sub.poll(timeout=10.0)
    writer.join()
    assert r.events["step"].tolist() == [7]


def test_a_closed_subscription_refuses_to_poll():
    s = ExperienceStream(10)
    with s.subscribe() as sub:
        pass
    with pytest.raises(InvalidArgumentError):
        sub.poll()


# -- sampling ---------------------------------------------------------------------------------

STRATEGIES = [Uniform(), PrioritizedByReward(1.0), PrioritizedByReward(2.0), RecencyWeighted(0.1),
              Mixed(1.0, 1.0), Mixed(0.0, 1.0)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_samples_are_distinct_live_events_of_the_requested_size(strategy):
    rng = np.random.default_rng(1)
    s = filled(100, 130, reward_goal=rng.normal(size=130))
    events, seqs = s.sample_batch(50, strategy, rng=2, return_seqs=True)
    assert len(events) == 50 and len(np.unique(seqs)) == 50
    assert (seqs >= 30).all() and (seqs < 130).all()
    assert events["step"].tolist() == seqs.tolist()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_asking_for_more_than_is_live_returns_every_live_event(strategy):
    s = filled(100, 20, reward_goal=np.linspace(-1, 1, 20))
    events = s.sample_batch(1000, strategy, rng=0)
    assert sorted(events["step"].tolist()) == list(range(20))


def test_sampling_an_empty_stream_gives_nothing():
    assert len(ExperienceStream(10).sample_batch(5, PrioritizedByReward())) == 0
    assert len(filled(10, 5).sample_batch(0)) == 0


def test_all_zero_weights_fall_back_to_uniform():
    s = filled(100, 100)
    for strategy in (PrioritizedByReward(1.0), Mixed(1.0, 0.0), RecencyWeighted(0.0)):
        events = s.sample_batch(30, strategy, rng=5)
        assert len(np.unique(events["step"])) == 30


def test_zero_weight_events_are_drawn_only_after_every_positive_one():
    reward = np.zeros(100)
    reward[[10, 50, 90]] = 1.0
    s = filled(100, 100, reward_goal=reward)
    events = s.sample_batch(5, PrioritizedByReward(1.0), rng=3)
    assert sorted(events["step"][:3].tolist()) == [10, 50, 90]
    assert len(np.unique(events["step"])) == 5


def test_sampling_is_reproducible_with_a_seed():
    s = filled(100, 100, reward_goal=np.arange(100) / 10)
    a = s.sample_batch(10, PrioritizedByReward(1.0), rng=11)
    b = s.sample_batch(10, PrioritizedByReward(1.0), rng=np.random.default_rng(11))
    assert a["step"].tolist() == b["step"].tolist()


def test_prioritized_sampling_prefers_high_rewards():
    reward = np.ones(1000)
    reward[:10] = 100.0  # 10 events hold about half of the total weight
    s = filled(1000, 1000, reward_goal=reward)
    rng = np.random.default_rng(12)
    high = [np.count_nonzero(s.sample_batch(10, PrioritizedByReward(1.0), rng)["step"] < 10) for _ in range(200)]
    assert np.mean(high) > 2.0  # uniform would give 0.1


def test_recency_weighted_sampling_prefers_recent_events():
    s = filled(1000, 1000)
    rng = np.random.default_rng(13)
    steps = np.concatenate([s.sample_batch(10, RecencyWeighted(0.01), rng)["step"] for _ in range(100)])
    assert steps.mean() > 650  # uniform would give ~500; the weights give ~780


def test_strategy_weights_follow_the_original_formulas():
    ev = new_events(4, reward_goal=[0.0, -2.0, 3.0, 0.5], reward_curiosity=[0, 0, 1, 0])
    assert strategy_weights(ev, Uniform()) is None
    assert strategy_weights(ev, PrioritizedByReward(2.0)).tolist() == [0.0, 4.0, 16.0, 0.25]
    assert strategy_weights(ev, RecencyWeighted(0.5)) == pytest.approx([0.5, 0.5**0.75, 0.5**0.5, 0.5**0.25])
    assert strategy_weights(ev, Mixed(1.0, 2.0)) == pytest.approx([0.0, 2.5, 5.0, 2.0])
    assert strategy_weights(ev, Mixed(-1.0, 0.0)).tolist() == [0.0, 0.0, 0.0, 0.0]  # clamped at 0


def test_sample_indices_without_replacement_covers_the_positive_weights_first():
    rng = np.random.default_rng(0)
    w = np.array([0.0, 5.0, 0.0, 1.0])
    picks = sample_indices(w, 4, 4, rng)
    assert sorted(picks.tolist()) == [0, 1, 2, 3] and set(picks[:2].tolist()) == {1, 3}


@pytest.mark.parametrize("make", [lambda: PrioritizedByReward(-1.0), lambda: RecencyWeighted(1.5),
                                  lambda: RecencyWeighted(-0.1), lambda: Mixed(float("nan"), 1.0),
                                  lambda: PrioritizedByReward("1")])
def test_strategies_validate_their_parameters(make):
    with pytest.raises(InvalidArgumentError):
        make()


def test_sample_batch_rejects_bad_arguments():
    s = filled(10, 5)
    with pytest.raises(InvalidArgumentError):
        s.sample_batch(-1)
    with pytest.raises(InvalidArgumentError):
        s.sample_batch(3, "uniform")
    with pytest.raises(InvalidArgumentError):
        s.sample_batch(3, Uniform(), rng="seed")


# -- appraisers ---------------------------------------------------------------------------------

def one_event(state=None, action=None) -> np.ndarray:
    st = np.zeros(8) if state is None else state
    return new_events(1, state=st, action=np.zeros(8) if action is None else action)


def test_homeostasis_penalises_squared_distance_outside_the_comfort_ranges():
    st = np.zeros(8)
    st[4], st[5], st[7] = 0.9, 0.3, 0.5  # +0.2 over, 0.1 under, inside
    assert homeostasis_reward(one_event(st))[0] == pytest.approx(-0.3 * (0.04 + 0.01), rel=1e-5)
    st[4], st[5], st[7] = 0.5, 0.5, 0.7
    assert homeostasis_reward(one_event(st))[0] == 0.0
    st[4] = 0.9
    assert homeostasis_reward(one_event(st), weight=1.0, penalty_multiplier=2.0)[0] == pytest.approx(-0.08, rel=1e-5)


def test_curiosity_rewards_novelty_above_the_threshold():
    ev = new_events(3, state=np.array([[0, n, 0, 0, 0, 0, 0, 0] for n in (0.8, 0.3, 0.1)]))
    assert curiosity_reward(ev) == pytest.approx([0.2 * 0.5, 0.0, 0.0])


def test_efficiency_charges_motion_and_cognitive_load():
    st = np.zeros(8)
    st[2], st[4] = 0.5, 0.9
    act = np.zeros(8)
    act[2] = 1.0
    expected = -0.1 * (0.01 * (0.25 + 1.0) + 0.02 * 0.9)
    assert efficiency_reward(one_event(st, act))[0] == pytest.approx(expected, rel=1e-5)


def test_goal_rewards_positive_valence_with_half_weight_up_to_one_half():
    valence = [0.8, 0.5, 0.4, 0.0, -0.3]
    ev = new_events(5, state=np.array([[0, 0, 0, 0, 0, 0, v, 0] for v in valence]))
    assert goal_reward(ev) == pytest.approx([0.32, 0.1, 0.08, 0.0, 0.0])


def test_appraise_writes_every_slot_and_marks_events():
    s = ExperienceStream(10)
    st = np.zeros(8)
    st[1], st[2], st[4], st[5], st[6], st[7] = 0.8, 0.5, 0.9, 0.3, 0.8, 0.5
    s.write_event({"state": st})
    assert appraise(s) == 1
    e = s.read(0)
    assert e.reward_homeostasis == pytest.approx(-0.015, rel=1e-5)
    assert e.reward_curiosity == pytest.approx(0.1, rel=1e-5)
    assert e.reward_efficiency == pytest.approx(-0.1 * (0.01 * 0.25 + 0.02 * 0.9), rel=1e-5)
    assert e.reward_goal == pytest.approx(0.32, rel=1e-5)
    assert e.is_fully_appraised
    assert appraise(s) == 0  # already appraised


def test_appraise_does_not_write_negligible_rewards():
    s = ExperienceStream(10)
    st = np.array([0, 0.1, 0, 0, 0.5, 0.5, 0, 0.7])  # comfortable, not novel, no valence
    s.write_event({"state": st, "reward_homeostasis": 7.0, "reward_goal": 3.0})
    appraise(s)
    e = s.read(0)
    assert (e.reward_homeostasis, e.reward_curiosity, e.reward_goal) == (7.0, 0.0, 3.0)
    assert e.reward_efficiency == pytest.approx(-0.001, rel=1e-5)


def test_appraise_can_target_given_sequence_numbers_only():
    s = ExperienceStream(4)
    s.write_events(new_events(6, state=np.full((6, 8), 0.9)))
    assert appraise(s, [0, 3, 5]) == 2  # 0 is overwritten
    flags = s.query_range(2, 6)["flags"] & EventFlags.FULLY_APPRAISED
    assert flags.astype(bool).tolist() == [False, True, False, True]


def test_total_reward_sums_the_four_slots():
    ev = new_events(1, reward_homeostasis=1.0, reward_curiosity=2.0, reward_efficiency=-0.5, reward_goal=1.5)
    assert total_reward(ev).tolist() == [4.0]


# -- persistence hooks ----------------------------------------------------------------------

def test_write_hooks_see_each_write_with_its_first_sequence_number():
    s = filled(10, 3)
    seen = []
    s.add_write_hook(lambda first, ev: seen.append((first, ev["step"].tolist(), ev.flags.writeable)))
    s.write_event({"step": 50})
    s.write_events(new_events(2, step=[60, 61]))
    assert seen == [(3, [50], False), (4, [60, 61], False)]


def test_restore_continues_the_numbering_of_persisted_events():
    s = ExperienceStream(3)
    s.restore(1000, new_events(4, step=[1, 2, 3, 4]))
    assert s.total_written == 1004 and s.first_seq == 1001
    assert s.read(1000) is None and s.read(1001).step == 2
    assert s.write_event({"step": 5}) == 1004


def test_export_and_import_round_trip_the_state():
    s = filled(5, 8)
    s.trim_before(4)
    state = s.export_state()
    t = ExperienceStream(5)
    t.import_state(state)
    assert (t.total_written, t.first_seq) == (8, 4)
    assert t.live_window()[1].tobytes() == s.live_window()[1].tobytes()
    with pytest.raises(InvalidArgumentError):
        t.import_state({"first_seq": 0, "events": new_events(2), "total_written": 5})


def test_event_ids_are_128_bit():
    e = Event(event_id=2**128 - 1)
    assert e.event_id == 2**128 - 1
    assert Event.from_bytes(e.to_bytes()) == e
    with pytest.raises(InvalidArgumentError):
        Event(event_id=2**128)
    assert EVENT_DTYPE.itemsize == len(e.to_bytes()) == 128
