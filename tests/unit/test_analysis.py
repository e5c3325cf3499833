"""The analysis cycle: state bins, pattern finding with its cut-offs, and reflex generation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ngstore.analysis import (
    REFLEX_ID_DOMAIN,
    Pattern,
    analyze_stream,
    find_patterns,
    pattern_to_connection,
    patterns_to_connections,
    reflex_token_ids,
    state_bins,
)
from ngstore.config import IntuitionConfig
from ngstore.connections import encode_action
from ngstore.errors import InvalidArgumentError
from ngstore.experience import ExperienceStream, Uniform, new_events
from ngstore.records import EVENT_DTYPE, ConnectionFlags, EntityType, Mutability, id_domain, id_entity_type
from ngstore.validation import check_connection, check_reflex

A, B, C = 0x0200, 0x0201, 0x0202
HIGH = np.full(8, 0.75)  # every digit 3 with 4 bins (mid-bin): bin 65535
LOW = np.full(8, -0.25)  # every digit 1 (mid-bin): bin 21845
ALL = IntuitionConfig(min_confidence=0.0, max_proposals_per_cycle=100)


def group(state, action, rewards, action_vec=None) -> np.ndarray:
    n = len(rewards)
    return new_events(n, state=np.broadcast_to(state, (n, 8)), event_type=action,
                      reward_goal=np.asarray(rewards, dtype=np.float64),
                      action=np.zeros((n, 8)) if action_vec is None else np.broadcast_to(action_vec, (n, 8)))


def events(*groups) -> np.ndarray:
    return np.concatenate(groups)


def welch_confidence(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return min(abs(a.mean() - b.mean()) / se / 3, 1.0)


# -- state bins -----------------------------------------------------------------------------

def test_state_bins_are_base_b_numbers_with_dimension_0_most_significant():
    states = np.array([np.zeros(8), np.ones(8), -np.ones(8), [1, -1, -1, -1, -1, -1, -1, -1], HIGH, LOW])
    assert state_bins(states).tolist() == [43690, 65535, 0, 3 * 4**7, 65535, 21845]


def test_state_bins_clamp_out_of_range_values_and_send_nan_to_digit_0():
    states = np.array([np.full(8, 7.0), np.full(8, -7.0), np.full(8, np.nan), np.full(8, np.inf)])
    assert state_bins(states).tolist() == [65535, 0, 0, 65535]


def test_state_bins_respect_the_number_of_bins_per_dimension():
    assert state_bins(np.zeros(8), 2).tolist() == [255]  # (0+1)/2 = 0.5 -> digit 1 of 2
    assert state_bins(np.ones(8), 256).tolist() == [2**64 - 1]
    assert state_bins(np.zeros((3, 8)), 1).tolist() == [0, 0, 0]
    for bad in (0, 257, 2.0):
        with pytest.raises(InvalidArgumentError):
            state_bins(np.zeros(8), bad)
    with pytest.raises(InvalidArgumentError):
        state_bins(np.zeros((2, 7)))


def test_bin_edges_follow_float32_arithmetic():
    # -0.5 is exactly on an edge: (−0.5+1)/2 = 0.25 -> 0.25*4 = 1.0 -> digit 1
    assert state_bins(np.full(8, -0.5)).tolist() == state_bins(np.full(8, -0.4999)).tolist()
    assert state_bins(np.full(8, -0.5001)).tolist() == [0]


# -- find_patterns ----------------------------------------------------------------------------

def test_a_clearly_better_action_is_found_with_the_welch_confidence():
    ra, rb = [0.0, 4.0] * 5, [0.0, 1.0] * 5
    (p,) = find_patterns(events(group(HIGH, A, ra), group(HIGH, B, rb)), ALL)
    assert (p.bin, p.better_action, p.worse_action) == (65535, A, B)
    assert (p.mean_better, p.mean_worse, p.delta) == (2.0, 0.5, 1.5)
    assert (p.n_better, p.n_worse, p.sample_count) == (10, 10, 20)
    assert p.confidence == pytest.approx(welch_confidence(ra, rb)) == pytest.approx(0.7276, abs=1e-4)
    assert p.t == pytest.approx(3 * p.confidence)


def test_the_better_action_may_be_the_larger_code():
    (p,) = find_patterns(events(group(HIGH, A, [0.0, 1.0] * 5), group(HIGH, B, [3.0, 4.0] * 5)), ALL)
    assert (p.better_action, p.worse_action) == (B, A)
    assert p.delta == 3.0


def test_confidence_is_capped_at_one():
    (p,) = find_patterns(events(group(HIGH, A, [9.0, 10.0] * 5), group(HIGH, B, [0.0, 1.0] * 5)), ALL)
    assert p.confidence == 1.0 and p.t > 3


def test_actions_in_different_bins_are_never_compared():
    ev = events(group(HIGH, A, [5.0, 6.0] * 5), group(LOW, B, [0.0, 1.0] * 5))
    assert find_patterns(ev, ALL) == []


def test_every_pair_of_actions_in_a_bin_is_compared():
    ev = events(group(HIGH, A, [4.0, 5.0] * 5), group(HIGH, B, [2.0, 3.0] * 5), group(HIGH, C, [0.0, 1.0] * 5))
    pairs = {(p.better_action, p.worse_action) for p in find_patterns(ev, ALL)}
    assert pairs == {(A, B), (A, C), (B, C)}


def test_min_samples_is_required_of_both_actions():
    ev = events(group(HIGH, A, [0.0, 4.0] * 5), group(HIGH, B, [0.0, 1.0] * 4 + [0.0]))  # 10 vs 9
    assert find_patterns(ev, ALL) == []
    assert len(find_patterns(ev, ALL.replace(min_samples=9))) == 1


def test_differences_below_min_reward_delta_are_skipped():
    ev = events(group(HIGH, A, [0.49, 1.49] * 5), group(HIGH, B, [0.0, 1.0] * 5))  # delta 0.49
    assert find_patterns(ev, ALL) == []
    (p,) = find_patterns(ev, ALL.replace(min_reward_delta=0.49))
    assert p.delta == pytest.approx(0.49)


def test_zero_variance_in_both_actions_gives_confidence_zero_like_the_original():
    ev = events(group(HIGH, A, [5.0] * 10), group(HIGH, B, [1.0] * 10))
    assert find_patterns(ev) == []  # confidence 0 < min_confidence 0.7
    (p,) = find_patterns(ev, ALL)
    assert p.confidence == 0.0 and p.t == math.inf and p.delta == 4.0


def test_zero_variance_confidence_can_treat_perfect_separation_as_certain():
    ev = events(group(HIGH, A, [5.0] * 10), group(HIGH, B, [1.0] * 10))
    (p,) = find_patterns(ev, IntuitionConfig(zero_variance_confidence=1.0))
    assert p.confidence == 1.0 and p.better_action == A


def test_zero_variance_in_one_action_only_is_an_ordinary_t_test():
    ra, rb = [5.0] * 10, [0.0, 1.0] * 5
    (p,) = find_patterns(events(group(HIGH, A, ra), group(HIGH, B, rb)), ALL)
    assert p.confidence == pytest.approx(welch_confidence(ra, rb))


def test_patterns_are_sorted_by_confidence_times_delta():
    ev = events(
        group(LOW, A, [0.0, 4.0] * 5), group(LOW, B, [0.0, 1.0] * 5),  # conf 0.73, delta 1.5
        group(HIGH, A, [9.0, 10.0] * 5), group(HIGH, B, [0.0, 1.0] * 5),  # conf 1, delta 9
    )
    found = find_patterns(ev, ALL)
    assert [p.bin for p in found] == [65535, 21845]
    assert found[0].score > found[1].score


def test_min_confidence_and_max_proposals_limit_the_result():
    ev = events(
        group(LOW, A, [0.0, 4.0] * 5), group(LOW, B, [0.0, 1.0] * 5),  # conf 0.73
        group(HIGH, A, [9.0, 10.0] * 5), group(HIGH, B, [0.0, 1.0] * 5),  # conf 1
    )
    assert [p.bin for p in find_patterns(ev, ALL.replace(min_confidence=0.8))] == [65535]
    assert [p.bin for p in find_patterns(ev, ALL.replace(max_proposals_per_cycle=1))] == [65535]
    assert find_patterns(ev, ALL.replace(max_proposals_per_cycle=0)) == []
    assert len(find_patterns(ev, ALL.replace(min_confidence=1.0, max_proposals_per_cycle=0), limit=False)) == 2


def test_the_default_config_keeps_confident_patterns():
    (p,) = find_patterns(events(group(HIGH, A, [9.0, 10.0] * 5), group(HIGH, B, [0.0, 1.0] * 5)))
    assert p.confidence >= 0.7


def test_total_reward_sums_all_four_slots():
    ev = events(group(HIGH, A, [0.0, 1.0] * 5), group(HIGH, B, [0.0, 1.0] * 5))
    ev["reward_curiosity"][:10] = 2.0
    ev["reward_homeostasis"][:10] = 1.0
    (p,) = find_patterns(ev, ALL)
    assert p.better_action == A and p.delta == 3.0


def test_events_with_non_finite_rewards_are_ignored():
    ev = events(group(HIGH, A, [0.0, 4.0] * 5), group(HIGH, B, [0.0, 1.0] * 5), group(HIGH, B, [np.nan, np.inf]))
    (p,) = find_patterns(ev, ALL)
    assert p.n_worse == 10 and p.mean_worse == 0.5


def test_the_pattern_carries_the_mean_state_of_its_bin_and_the_better_action_vector():
    rng = np.random.default_rng(0)
    ga = group(HIGH, A, [0.0, 4.0] * 5, action_vec=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    gb = group(HIGH, B, [0.0, 1.0] * 5, action_vec=np.full(8, -1.0))
    ev = events(ga, gb)
    ev["state"] += rng.uniform(-0.1, 0.1, size=(20, 8)).astype(np.float32)  # same bin
    ev["action"][0] += 1.0
    (p,) = find_patterns(ev, ALL)
    assert p.representative_state == pytest.approx(ev["state"].astype(float).mean(axis=0))
    assert p.better_action_vector == pytest.approx(ev["action"][:10].astype(float).mean(axis=0))


def test_find_patterns_handles_empty_input_and_rejects_foreign_arrays():
    assert find_patterns(np.zeros(0, dtype=EVENT_DTYPE)) == []
    assert find_patterns(group(HIGH, A, [1.0] * 20)) == []
    with pytest.raises(InvalidArgumentError):
        find_patterns(np.zeros(3))


def test_find_patterns_matches_a_plain_python_reference_on_random_data():
    rng = np.random.default_rng(42)
    n = 3000
    states = rng.choice([-0.9, -0.3, 0.3, 0.9], size=(n, 8))
    states[:, 2:] = 0.0  # 16 bins in use
    actions = rng.integers(0, 3, n) + A
    rewards = rng.normal(0, 1, n) + (actions == A) * (states[:, 0] > 0) * 1.5
    ev = new_events(n, state=states, event_type=actions, reward_goal=rewards)
    cfg = IntuitionConfig(min_confidence=0.0, max_proposals_per_cycle=1000, min_samples=20)
    found = {(p.bin, p.better_action, p.worse_action): p for p in find_patterns(ev, cfg)}

    bins = state_bins(ev["state"])
    r = ev["reward_goal"].astype(float)
    expected = {}
    for b in np.unique(bins):
        acts = sorted(set(ev["event_type"][bins == b].tolist()))
        for i, x in enumerate(acts):
            for y in acts[i + 1:]:
                rx, ry = r[(bins == b) & (ev["event_type"] == x)], r[(bins == b) & (ev["event_type"] == y)]
                if len(rx) < 20 or len(ry) < 20 or abs(rx.mean() - ry.mean()) < 0.5:
                    continue
                better, worse = (x, y) if rx.mean() > ry.mean() else (y, x)
                expected[(int(b), better, worse)] = welch_confidence(rx, ry)
    assert expected and set(found) == set(expected)
    for key, conf in expected.items():
        assert found[key].confidence == pytest.approx(conf, rel=1e-9)


def test_analyze_stream_samples_then_finds_patterns():
    s = ExperienceStream(1000)
    s.write_events(events(group(HIGH, A, [9.0, 10.0] * 10), group(HIGH, B, [0.0, 1.0] * 10)))
    (p,) = analyze_stream(s, IntuitionConfig(sampling_strategy=Uniform(), batch_size=1000), rng=0)
    assert (p.better_action, p.n_better, p.n_worse) == (A, 20, 20)


# -- consolidation ---------------------------------------------------------------------------

def a_pattern(**overrides) -> Pattern:
    fields = {"bin": 65535, "better_action": A, "worse_action": B, "mean_better": 2.0, "mean_worse": 0.5, "delta": 1.5,
                  "t": 2.9, "confidence": 0.9, "n_better": 40, "n_worse": 30, "representative_state": HIGH,
                  "better_action_vector": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])}
    fields.update(overrides)
    return Pattern(**fields)


def test_a_pattern_becomes_a_valid_learnable_reflex():
    c = pattern_to_connection(a_pattern(), now=1_700_000_000)
    assert check_reflex(c) == [] and check_connection(c) == []
    assert c.confidence_raw == round(255 * 0.9) == 230
    assert c.evidence_count == 40 and c.source_id == 1
    assert c.mutability is Mutability.LEARNABLE and c.flags == ConnectionFlags.ACTIVE
    assert c.rigidity >= 128 and 0 < c.pull_strength <= 100
    assert c.target_vector.tolist() == [10, 2000, 300, 4000, 5000, 6000, 70, 8000]
    assert c.created_at == c.last_update == 1_700_000_000


def test_reflex_evidence_saturates_and_rigidity_never_drops_below_128():
    c = pattern_to_connection(a_pattern(n_better=100_000, confidence=0.2), now=0)
    assert c.evidence_count == 0xFFFF and c.rigidity == 128 and c.confidence_raw == 51


def test_reflex_token_ids_are_per_bin_canonical_and_marked_as_generated():
    a, b = reflex_token_ids(65535)
    assert b == a + 1 and a != 0
    assert id_domain(a) == REFLEX_ID_DOMAIN and id_entity_type(a) == EntityType.STATE
    ids = {reflex_token_ids(k)[0] for k in range(0, 4**8, 97)}
    assert len(ids) == len(range(0, 4**8, 97))
    assert reflex_token_ids(2**64 - 1)[1] <= 0xFFFF_FFFF
    c = pattern_to_connection(a_pattern(), now=0)
    assert (c.token_a, c.token_b) == reflex_token_ids(65535)


def test_reflex_token_ids_and_type_can_be_chosen():
    c = pattern_to_connection(a_pattern(), now=0, token_ids=(7, 9), connection_type=0x10)
    assert (c.token_a, c.token_b, c.connection_type) == (7, 9, 0x10)
    with pytest.raises(InvalidArgumentError):
        pattern_to_connection(a_pattern(), now=0, connection_type=0x00)  # immutable block


def test_found_patterns_turn_into_reflexes_carrying_the_better_action():
    act = np.array([0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 1.5, 0.25])
    ev = events(group(HIGH, A, [9.0, 10.0] * 5, action_vec=act), group(HIGH, B, [0.0, 1.0] * 5),
                group(LOW, A, [9.0, 10.0] * 5), group(LOW, B, [0.0, 1.0] * 5))
    patterns = find_patterns(ev)
    arr = patterns_to_connections(patterns, now=0)
    assert len(arr) == 2 and len(set(arr["token_a"].tolist())) == 2
    high = arr[arr["token_a"] == reflex_token_ids(65535)[0]]
    assert high["target_vector"][0].tolist() == encode_action(act.astype(np.float32).astype(np.float64)).tolist()
    assert len(patterns_to_connections([], now=0)) == 0
