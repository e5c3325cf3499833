"""IntuitionConfig: defaults, None-means-default, validation, repr, equality, replace."""
from __future__ import annotations

import dataclasses

import pytest

from ngstore.config import IntuitionConfig
from ngstore.errors import InvalidArgumentError
from ngstore.experience import Mixed, PrioritizedByReward, RecencyWeighted, Uniform


def test_the_original_readme_example_works():
    config = IntuitionConfig(
        analysis_interval_secs=30,
        min_confidence=0.8,
        enable_fast_path=True,
    )
    assert config.analysis_interval_secs == 30
    assert config.min_confidence == 0.8
    assert config.enable_fast_path is True
    assert config.batch_size == 1000 and config.max_proposals_per_cycle == 5


def test_defaults_are_the_originals():
    c = IntuitionConfig()
    assert (c.analysis_interval_secs, c.batch_size, c.min_confidence, c.max_proposals_per_cycle,
            c.enable_fast_path) == (60, 1000, 0.7, 5, True)
    assert c.sampling_strategy == PrioritizedByReward(1.0)
    assert (c.state_bins_per_dim, c.min_samples, c.min_reward_delta) == (4, 10, 0.5)
    assert c.shifts == (4, 4, 5, 6, 6, 6, 8, 8)
    assert (c.fast_path_min_confidence, c.hypothesis_threshold, c.similarity_threshold) == (150, 200, 0.85)
    assert (c.consolidation_min_confidence, c.consolidation_min_evidence) == (192, 10)
    assert c.zero_variance_confidence == 0.0 and c.reflex_capacity >= 1


def test_none_means_the_default_for_every_field():
    explicit_none = IntuitionConfig(None, None, None, None, None, sampling_strategy=None, state_bins_per_dim=None,
                                    min_samples=None, min_reward_delta=None, shifts=None,
                                    fast_path_min_confidence=None, hypothesis_threshold=None,
                                    similarity_threshold=None, reflex_capacity=None,
                                    consolidation_min_confidence=None, consolidation_min_evidence=None,
                                    zero_variance_confidence=None)
    assert explicit_none == IntuitionConfig()


def test_the_five_original_parameters_are_positional():
    c = IntuitionConfig(10, 20, 0.5, 3, False)
    assert (c.analysis_interval_secs, c.batch_size, c.min_confidence, c.max_proposals_per_cycle,
            c.enable_fast_path) == (10, 20, 0.5, 3, False)
    with pytest.raises(TypeError):
        IntuitionConfig(10, 20, 0.5, 3, False, Uniform())  # the rest is keyword-only


def test_every_field_is_read_only():
    c = IntuitionConfig()
    for name in ("max_proposals_per_cycle", "min_confidence", "shifts", "sampling_strategy"):
        with pytest.raises(AttributeError):
            setattr(c, name, getattr(c, name))


def test_repr_matches_the_original():
    assert repr(IntuitionConfig()) == "IntuitionConfig(interval=60s, batch=1000, confidence=0.70, fast_path=true)"
    assert repr(IntuitionConfig(30, min_confidence=0.8, enable_fast_path=False)) == \
        "IntuitionConfig(interval=30s, batch=1000, confidence=0.80, fast_path=false)"


def test_configs_compare_and_hash_by_value():
    assert IntuitionConfig(30) == IntuitionConfig(analysis_interval_secs=30)
    assert hash(IntuitionConfig(30)) == hash(IntuitionConfig(analysis_interval_secs=30))
    assert IntuitionConfig(30) != IntuitionConfig(31)
    assert IntuitionConfig(min_samples=3) != IntuitionConfig()


def test_replace_makes_a_validated_copy():
    c = IntuitionConfig()
    d = c.replace(batch_size=5, sampling_strategy=Uniform())
    assert d.batch_size == 5 and d.sampling_strategy == Uniform() and c.batch_size == 1000
    with pytest.raises(InvalidArgumentError):
        c.replace(batch_size=0)
    with pytest.raises(TypeError):
        c.replace(no_such_field=1)


def test_as_dict_lists_every_field():
    d = IntuitionConfig().as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(IntuitionConfig)}
    assert d["max_proposals_per_cycle"] == 5


def test_accepted_boundaries():
    IntuitionConfig(analysis_interval_secs=1, batch_size=1, min_confidence=0.0, max_proposals_per_cycle=0,
                    state_bins_per_dim=1, min_samples=1, min_reward_delta=0.0, shifts=[0] * 8,
                    fast_path_min_confidence=0, hypothesis_threshold=255, similarity_threshold=1.0,
                    reflex_capacity=1, zero_variance_confidence=1.0)
    IntuitionConfig(min_confidence=1.0, state_bins_per_dim=256, shifts=[15] * 8, fast_path_min_confidence=255)
    for strategy in (Uniform(), RecencyWeighted(0.9), Mixed(0.5, 0.5)):
        assert IntuitionConfig(sampling_strategy=strategy).sampling_strategy == strategy


@pytest.mark.parametrize("kwargs", [
    {"analysis_interval_secs": 0}, {"analysis_interval_secs": 1.5}, {"analysis_interval_secs": True},
    {"batch_size": 0}, {"batch_size": "10"},
    {"min_confidence": -0.01}, {"min_confidence": 1.01}, {"min_confidence": float("nan")},
    {"max_proposals_per_cycle": -1},
    {"enable_fast_path": 1}, {"enable_fast_path": "yes"},
    {"sampling_strategy": "uniform"},
    {"state_bins_per_dim": 0}, {"state_bins_per_dim": 257},
    {"min_samples": 0}, {"min_reward_delta": -0.1}, {"min_reward_delta": float("inf")},
    {"shifts": (4, 4, 5)}, {"shifts": [16] * 8}, {"shifts": [-1] * 8}, {"shifts": 4},
    {"fast_path_min_confidence": 256}, {"hypothesis_threshold": -1},
    {"similarity_threshold": 1.5}, {"reflex_capacity": 0},
    {"consolidation_min_confidence": 300}, {"consolidation_min_evidence": 70000},
    {"zero_variance_confidence": 2.0},
])
def test_invalid_values_are_rejected_with_the_field_name(kwargs):
    (name, _), = kwargs.items()
    with pytest.raises(InvalidArgumentError, match=name.split("_")[0]):
        IntuitionConfig(**kwargs)
