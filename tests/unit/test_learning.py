"""The learning statistics: Welford/Chan moments, folds and their rules, the op's bytes,
patterns of the statistics, and the bin keys learned reflexes are filed under."""
from __future__ import annotations

import numpy as np
import pytest

from ngstore.analysis import (
    bin_digits,
    bin_key_states,
    find_patterns,
    find_patterns_in_statistics,
    fold_events,
    reflex_token_a,
    reflex_token_ids,
    state_bins,
)
from ngstore.config import IntuitionConfig
from ngstore.errors import CorruptionError, InvalidArgumentError
from ngstore.experience import new_events
from ngstore.layout import LEARN_MOMENTS_DTYPE, LearnCursor, learn_group_key
from ngstore.learning import (
    LearnedStatistics,
    check_fold,
    group_moments,
    merge_folds,
    merge_moments,
)
from ngstore.ops import LEARN_UPDATE_DTYPE, OP_LEARN_UPDATE, Op, decode_ops, encode_ops
from ngstore.reflex import quantized_state_bytes


def moments_of(x: np.ndarray) -> np.ndarray:
    """One group's moments computed by the module (two passes), vectors zero."""
    z = np.zeros(len(x), np.uint64)
    _b, _a, m = group_moments(z, z.astype(np.uint16), x, np.zeros((len(x), 8)), np.zeros((len(x), 8)))
    return m


def merged(parts: list[np.ndarray]) -> np.ndarray:
    acc = np.zeros(1, LEARN_MOMENTS_DTYPE)
    for p in parts:
        acc = merge_moments(acc, p)
    return acc


@pytest.mark.parametrize("seed", range(8))
def test_chan_merge_of_any_chunking_matches_numpy_over_the_whole(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.uniform(-5, 5), rng.uniform(0.01, 3), int(rng.integers(2, 3000)))
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=min(len(x) - 1, int(rng.integers(1, 40))), replace=False))
    m = merged([moments_of(c) for c in np.split(x, cuts)])[0]
    assert int(m["count"]) == len(x)
    assert m["mean"] == pytest.approx(np.mean(x), rel=1e-12, abs=1e-12)
    assert m["m2"] / (len(x) - 1) == pytest.approx(np.var(x, ddof=1), rel=1e-10)


def test_welford_one_sample_at_a_time_is_the_same_merge():
    x = np.random.default_rng(1).normal(3.0, 0.5, 500)
    m = merged([moments_of(x[i:i + 1]) for i in range(len(x))])[0]
    assert m["mean"] == pytest.approx(np.mean(x), rel=1e-13)
    assert m["m2"] == pytest.approx(np.var(x) * len(x), rel=1e-11)


def test_merge_is_order_independent_up_to_rounding_and_an_empty_side_changes_nothing():
    rng = np.random.default_rng(2)
    a, b = moments_of(rng.normal(0, 1, 100)), moments_of(rng.normal(5, 2, 37))
    ab, ba = merge_moments(a, b)[0], merge_moments(b, a)[0]
    assert ab["count"] == ba["count"] == 137
    assert ab["mean"] == pytest.approx(ba["mean"], rel=1e-14) and ab["m2"] == pytest.approx(ba["m2"], rel=1e-13)
    empty = np.zeros(1, LEARN_MOMENTS_DTYPE)
    assert merge_moments(empty, a).tobytes() == a.tobytes()   # a new group is the fold's own values
    assert merge_moments(a, empty).tobytes() == a.tobytes()


def test_vector_means_merge_like_the_reward_mean():
    rng = np.random.default_rng(3)
    vec = rng.normal(0, 1, (300, 8))
    z = np.zeros(300, np.uint64)
    parts = []
    for lo, hi in ((0, 10), (10, 250), (250, 300)):
        parts.append(group_moments(z[lo:hi], z[lo:hi].astype(np.uint16), vec[lo:hi, 0], vec[lo:hi], -vec[lo:hi])[2])
    m = merged(parts)[0]
    assert np.allclose(m["action_mean"], vec.mean(axis=0), rtol=1e-12, atol=1e-14)
    assert np.allclose(m["state_mean"], -vec.mean(axis=0), rtol=1e-12, atol=1e-14)


def events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = new_events(n)
    ev["state"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32) * (rng.random((n, 1)) < 0.5)
    ev["event_type"] = rng.integers(1, 4, n)
    ev["action"] = rng.normal(0, 1, (n, 8))
    ev["reward_goal"] = rng.normal(ev["event_type"], 0.3)
    return ev


def test_a_fold_groups_by_bin_and_action_and_leaves_out_non_finite_rewards():
    ev = events(2000)
    ev["reward_curiosity"][:7] = np.nan
    fold = fold_events(ev, 4, 100, 2100)
    assert check_fold(fold) == (4, 100, 2100)
    assert int(fold["count"].sum()) == 1993
    good = ev[7:]
    bins = state_bins(good["state"], 4)
    r = (good["reward_homeostasis"] + good["reward_curiosity"] + good["reward_efficiency"]
         + good["reward_goal"]).astype(np.float32).astype(np.float64)
    for row in fold[:: max(1, len(fold) // 20)]:
        sel = (bins == row["bin"]) & (good["event_type"] == row["action"])
        assert int(row["count"]) == int(sel.sum())
        assert row["mean"] == pytest.approx(r[sel].mean(), rel=1e-12)
        assert row["m2"] == pytest.approx(((r[sel] - r[sel].mean()) ** 2).sum(), rel=1e-9, abs=1e-12)
        assert np.allclose(row["state_mean"], good["state"][sel].astype(np.float64).mean(axis=0))


def test_a_fold_of_no_event_is_one_empty_item_that_still_moves_the_cursor():
    fold = fold_events(new_events(0), 4, 50, 50)
    assert len(fold) == 1 and fold["count"][0] == 0
    stats, applied = LearnedStatistics(4).applied(fold)
    assert applied and stats.cursor == LearnCursor(50, 0, 50, 1) and len(stats) == 0


def test_consecutive_folds_merge_into_the_fold_of_their_union():
    ev = events(3000, seed=5)
    one = fold_events(ev, 4, 0, 3000)
    two = merge_folds(fold_events(ev[:1234], 4, 0, 1234), fold_events(ev[1234:], 4, 1234, 3000))
    assert np.array_equal(one[["bin", "action", "count"]], two[["bin", "action", "count"]])
    assert np.allclose(one["mean"], two["mean"], rtol=1e-12) and np.allclose(one["m2"], two["m2"], rtol=1e-9)
    with pytest.raises(InvalidArgumentError):
        merge_folds(fold_events(ev[:10], 4, 0, 10), fold_events(ev[10:20], 4, 11, 21))


def test_a_fold_counts_once_and_events_it_skipped_are_missed():
    ev = events(1000, seed=6)
    stats, ok = LearnedStatistics(4).applied(fold_events(ev[:600], 4, 0, 600))
    assert ok and stats.cursor == LearnCursor(600, 600, 0, 1)
    again, ok = stats.applied(fold_events(ev[:600], 4, 0, 600))
    assert not ok and again is stats                       # the same fold twice: counted once
    _overlap, ok = stats.applied(fold_events(ev[500:], 4, 500, 1000))
    assert not ok                                           # starts below the cursor: stale
    later, ok = stats.applied(fold_events(ev[700:], 4, 700, 1000))
    assert ok and later.cursor == LearnCursor(1000, 900, 100, 2)  # 600..699 were never folded


@pytest.mark.parametrize("breakage, message", [
    (lambda f: f["bins_per_dim"].__setitem__(1, 5), "bins_per_dim"),
    (lambda f: f.__setitem__("bins_per_dim", 300), "bins_per_dim"),
    (lambda f: f["first_seq"].__setitem__(0, 1), "first_seq"),
    (lambda f: f.__setitem__("end_seq", 0), "first_seq"),
    (lambda f: f["m2"].__setitem__(1, -1.0), "m2"),
    (lambda f: f["mean"].__setitem__(1, np.inf), "finite"),
    (lambda f: f["reserved"].__setitem__(0, 7), "reserved"),
    (lambda f: f["count"].__setitem__(1, 0), "count-0"),
    (lambda f: f.__setitem__("bin", f["bin"][::-1].copy()), "strictly increase"),
])
def test_a_fold_that_breaks_a_rule_is_corruption(breakage, message):
    fold = fold_events(events(500, seed=7), 4, 10, 510)
    assert len(fold) > 3
    breakage(fold)
    with pytest.raises(CorruptionError, match=message):
        check_fold(fold)
    with pytest.raises(InvalidArgumentError):
        check_fold(fold, InvalidArgumentError)


def test_the_op_carries_a_fold_byte_for_byte():
    fold = fold_events(events(300, seed=8), 4, 0, 300)
    (op,) = decode_ops(encode_ops([Op(OP_LEARN_UPDATE, fold)]))
    assert op.kind == OP_LEARN_UPDATE and LEARN_UPDATE_DTYPE.itemsize == 184
    assert op.data.tobytes() == fold.tobytes()
    assert learn_group_key(4, 1, 2) < learn_group_key(4, 1, 3) < learn_group_key(4, 2, 0) < learn_group_key(5, 0, 0)


def test_patterns_of_the_statistics_are_the_patterns_of_the_same_events():
    ev = events(6000, seed=9)
    cfg = IntuitionConfig(min_reward_delta=0.5)
    stats = LearnedStatistics(4).applied(fold_events(ev[:2500], 4, 0, 2500))[0]
    stats = stats.applied(fold_events(ev[2500:], 4, 2500, 6000))[0]
    direct = {(p.bin, p.better_action, p.worse_action): p for p in find_patterns(ev, cfg, limit=False)}
    accumulated = {(p.bin, p.better_action, p.worse_action): p
                   for p in find_patterns_in_statistics(stats, cfg, limit=False)}
    assert direct and set(direct) == set(accumulated)
    for key, p in direct.items():
        q = accumulated[key]
        assert (q.n_better, q.n_worse) == (p.n_better, p.n_worse)
        assert q.confidence == pytest.approx(p.confidence, rel=1e-9) and q.t == pytest.approx(p.t, rel=1e-9)
        assert np.allclose(q.representative_state, p.representative_state, rtol=1e-9, atol=1e-12)
        assert np.allclose(q.better_action_vector, p.better_action_vector, rtol=1e-9, atol=1e-12)


def test_every_state_of_a_bin_maps_to_its_key_and_no_two_bins_share_a_key_cell():
    rng = np.random.default_rng(10)
    states = rng.uniform(-1, 1, (5000, 8)).astype(np.float32)
    bins = state_bins(states, 4)
    keys = bin_key_states(bins, 4, (4, 4, 5, 6, 6, 6, 8, 8))
    for b in np.unique(bins)[:50]:
        assert (keys[bins == b] == keys[bins == b][0]).all()
    every = bin_key_states(np.arange(4 ** 8), 4, (4, 4, 5, 6, 6, 6, 8, 8))
    cells = {quantized_state_bytes(k) for k in every}
    assert len(cells) == 4 ** 8                    # one cell per bin
    assert (every[:, :, 1] != 0).all()             # never the cell of an 8-float state (Y = 0)
    assert (bin_digits(states, 4) < 4).all()


def test_vectorised_reflex_token_ids_match_the_scalar_ones():
    bins = np.array([0, 1, 65535, 2 ** 23 - 1, 2 ** 23, 2 ** 40 + 5, 2 ** 64 - 1], np.uint64)
    assert reflex_token_a(bins).tolist() == [reflex_token_ids(int(b))[0] for b in bins]
