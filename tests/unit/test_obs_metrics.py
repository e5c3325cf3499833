"""The Prometheus collector and the hot-path histograms, against a fake store."""
from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ngstore.obs import Observability
from ngstore.obs.metrics import HISTOGRAMS, METRICS, Histogram, StoreCollector, metric_names, register

ORIGINAL_21 = {
    "neurograph_tokens_created_total": "counter",
    "neurograph_connections_created_total": "counter",
    "neurograph_tokens_validated_total": "counter",
    "neurograph_tokens_rejected_total": "counter",
    "neurograph_connections_validated_total": "counter",
    "neurograph_connections_rejected_total": "counter",
    "neurograph_quota_exceeded_total": "counter",
    "neurograph_aggressive_cleanups_total": "counter",
    "neurograph_panics_recovered_total": "counter",
    "neurograph_wal_entries_written_total": "counter",
    "neurograph_wal_entries_replayed_total": "counter",
    "neurograph_tokens_active": "gauge",
    "neurograph_connections_active": "gauge",
    "neurograph_memory_used_bytes": "gauge",
    "neurograph_memory_usage_percent": "gauge",
    "neurograph_intuition_queue_size": "gauge",
    "neurograph_guardian_event_queue_size": "gauge",
    "neurograph_token_creation_duration_seconds": "histogram",
    "neurograph_connection_creation_duration_seconds": "histogram",
    "neurograph_validation_duration_seconds": "histogram",
    "neurograph_wal_write_duration_seconds": "histogram",
}
ORIGINAL_TRACING = {
    "neurograph_tracing_samples_total": "counter",
    "neurograph_tracing_samples_recorded_total": "counter",
    "neurograph_tracing_samples_skipped_total": "counter",
    "neurograph_tracing_error_operations_total": "counter",
    "neurograph_tracing_slow_operations_total": "counter",
    "neurograph_tracing_sample_rate": "gauge",
    "neurograph_tracing_overhead_seconds": "histogram",
}


class FakeStore:
    """Just what the collector reads: ``stats()``, ``path``, ``obs``."""

    def __init__(self, path: str, **stats: Any) -> None:
        self.path = path
        self.obs = Observability(path, tracing=False)
        self.values: dict[str, Any] = {"path": path, "readonly": False, "closed": False}
        self.values.update(stats)

    def stats(self) -> dict[str, Any]:
        return dict(self.values)


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def family_name(exposed: str, kind: str) -> str:
    """The parser strips ``_total`` from counter family names."""
    return exposed[: -len("_total")] if kind == "counter" and exposed.endswith("_total") else exposed


def value(fams: dict[str, Any], name: str, store: str | None = None, suffix: str = "") -> float:
    kind = next(m.kind for m in METRICS if m.name == name)
    fam = fams[family_name(name, kind)]
    want = (family_name(name, kind) + suffix) if kind != "counter" else family_name(name, kind) + "_total"
    for s in fam.samples:
        if s.name == want and (store is None or s.labels.get("store") == store):
            return s.value
    raise KeyError(f"{want} for {store}")


@pytest.fixture
def store(tmp_path: Any) -> FakeStore:
    return FakeStore(str(tmp_path))


def test_every_metric_is_present_from_the_first_scrape(store: FakeStore) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    fams = scrape(reg)
    for name in metric_names():
        kind = next(m.kind for m in METRICS if m.name == name)
        fam = fams[family_name(name, kind)]
        assert fam.type == kind
        assert fam.samples, name


def test_the_original_names_and_types_are_all_exported(store: FakeStore) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    fams = scrape(reg)
    for name, kind in {**ORIGINAL_21, **ORIGINAL_TRACING}.items():
        assert fams[family_name(name, kind)].type == kind, name
    assert {m.name for m in METRICS if m.origin == "original"} == set(ORIGINAL_21) | set(ORIGINAL_TRACING)


def test_names_follow_prometheus_conventions() -> None:
    for m in METRICS:
        assert m.name.startswith("neurograph_")
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
    assert len(set(metric_names())) == len(METRICS)


def test_values_move_with_the_store_counters(store: FakeStore) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    assert value(scrape(reg), "neurograph_tokens_active") == 0
    store.values.update(tokens_live=7, tokens_created_total=10, tokens_deleted_total=3,
                        commits_total=4, map_size_bytes=1000, map_used_bytes=250,
                        memory_used_bytes=30, memory_limit_bytes=120, wal_position=4096,
                        last_checkpoint_unix=1_700_000_000.5, reflex_hits_total=9)
    fams = scrape(reg)
    assert value(fams, "neurograph_tokens_active") == 7          # live, not lifetime
    assert value(fams, "neurograph_tokens_created_total") == 10
    assert value(fams, "neurograph_tokens_deleted_total") == 3
    assert value(fams, "neurograph_commits_total") == 4
    assert value(fams, "neurograph_map_usage_percent") == 25.0
    assert value(fams, "neurograph_memory_usage_percent") == 25.0
    assert value(fams, "neurograph_wal_position") == 4096
    assert value(fams, "neurograph_last_checkpoint_timestamp_seconds") == 1_700_000_000.5
    assert value(fams, "neurograph_reflex_hits_total") == 9
    assert value(fams, "neurograph_store_open") == 1
    store.values["closed"] = True
    assert value(scrape(reg), "neurograph_store_open") == 0


def test_missing_or_odd_stats_values_read_as_zero(tmp_path: Any) -> None:
    s = FakeStore(str(tmp_path), tokens_live=None, commits_total="not a number")
    s.values.pop("closed")
    reg = CollectorRegistry()
    reg.register(StoreCollector(s))
    fams = scrape(reg)
    assert value(fams, "neurograph_tokens_active") == 0
    assert value(fams, "neurograph_commits_total") == 0
    assert value(fams, "neurograph_memory_usage_percent") == 0  # no limit: no division by 0


def test_histogram_buckets_are_cumulative_and_count_sum_are_right(store: FakeStore) -> None:
    for v in (10e-6, 30e-6, 30e-6, 0.002, 20.0):
        store.obs.commit_seconds.observe(v)
    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    fam = scrape(reg)["neurograph_commit_duration_seconds"]
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples if s.name.endswith("_bucket")]
    les = [le for le, _ in buckets]
    assert les == sorted(les) and math.isinf(les[-1])
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)                      # cumulative
    assert dict(buckets)[25e-6] == 1 and dict(buckets)[50e-6] == 3
    assert dict(buckets)[10.0] == 4 and counts[-1] == 5
    count = next(s.value for s in fam.samples if s.name.endswith("_count"))
    total = next(s.value for s in fam.samples if s.name.endswith("_sum"))
    assert count == 5
    assert total == pytest.approx(10e-6 + 60e-6 + 0.002 + 20.0)


def test_the_original_bucket_boundaries_are_kept(store: FakeStore) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    fams = scrape(reg)
    for name, orig in (("neurograph_token_creation_duration_seconds", (1e-5, 1e-4, 1e-3, 0.01, 0.1, 1)),
                       ("neurograph_wal_write_duration_seconds", (1e-4, 1e-3, 0.01, 0.1, 1))):
        les = {float(s.labels["le"]) for s in fams[name].samples if s.name.endswith("_bucket")}
        assert set(orig) <= les, name
    les = {float(s.labels["le"]) for s in fams["neurograph_commit_duration_seconds"].samples
           if "le" in s.labels}
    assert min(les) < 1e-3  # latency buckets start below a millisecond


def test_histogram_value_on_a_boundary_falls_in_that_bucket() -> None:
    h = Histogram((1.0, 2.0))
    for v in (1.0, 1.5, 2.0, 3.0):
        h.observe(v)
    cum, count, total = h.snapshot()
    assert cum == [(1.0, 1), (2.0, 3), (float("inf"), 4)]
    assert (count, total) == (4, 7.5)
    with pytest.raises(ValueError):
        Histogram((2.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 2.0, 2.5, 1e-9]),
                          st.floats(min_value=-10, max_value=10, allow_nan=False)), max_size=60))
def test_observe_many_counts_like_one_observe_per_value(values: list[float]) -> None:
    one, many = Histogram((0.5, 1.0, 2.0)), Histogram((0.5, 1.0, 2.0))
    for v in values:
        one.observe(v)
    many.observe_many(values)
    (a, na, sa), (b, nb, sb) = one.snapshot(), many.snapshot()
    assert a == b and na == nb == len(values)
    assert math.isclose(sa, sb, rel_tol=1e-12, abs_tol=1e-12)


def test_observability_has_every_histogram_the_store_observes(store: FakeStore) -> None:
    for attr in ("commit_seconds", "wal_write_seconds", "batch_records", "validation_seconds",
                 "token_creation_seconds", "connection_creation_seconds"):
        getattr(store.obs, attr).observe(1)
    assert set(HISTOGRAMS) >= {"commit_seconds", "batch_records"}


def test_two_stores_in_one_registry_do_not_collide(tmp_path: Any) -> None:
    a = FakeStore(str(tmp_path / "a"), tokens_live=1)
    b = FakeStore(str(tmp_path / "b"), tokens_live=2)
    reg = CollectorRegistry(auto_describe=True)
    c1 = register(reg, a)
    c2 = register(reg, b)
    assert c1 is c2
    text = generate_latest(reg).decode()
    assert text.count("# TYPE neurograph_tokens_active gauge") == 1  # one group per family
    fams = scrape(reg)
    assert value(fams, "neurograph_tokens_active", a.path) == 1
    assert value(fams, "neurograph_tokens_active", b.path) == 2
    for name in metric_names():
        kind = next(m.kind for m in METRICS if m.name == name)
        stores = {s.labels["store"] for s in fams[family_name(name, kind)].samples}
        assert stores == {a.path, b.path}, name


def test_two_separate_collectors_on_one_registry_are_refused_not_garbled(tmp_path: Any) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(FakeStore(str(tmp_path / "a"))))
    with pytest.raises(ValueError):
        reg.register(StoreCollector(FakeStore(str(tmp_path / "b"))))


def test_a_duplicate_store_name_in_one_collector_is_refused(tmp_path: Any) -> None:
    c = StoreCollector(FakeStore(str(tmp_path)), name="x")
    with pytest.raises(ValueError):
        c.add(FakeStore(str(tmp_path)), name="x")


def test_a_store_whose_stats_fail_does_not_break_the_others(tmp_path: Any) -> None:
    class Broken(FakeStore):
        def stats(self) -> dict[str, Any]:
            raise RuntimeError("closed")

    good = FakeStore(str(tmp_path / "g"), tokens_live=3)
    broken = Broken(str(tmp_path / "b"))
    reg = CollectorRegistry()
    reg.register(StoreCollector(good, broken))
    fams = scrape(reg)
    assert value(fams, "neurograph_tokens_active", good.path) == 3
    assert value(fams, "neurograph_store_open", str(tmp_path / "b")) == 0


def test_stores_are_held_weakly(tmp_path: Any) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(FakeStore(str(tmp_path))))  # no other reference
    assert scrape(reg)["neurograph_tokens_active"].samples == []


def test_unlabeled_mode_gives_the_original_unlabeled_series(store: FakeStore) -> None:
    reg = CollectorRegistry()
    reg.register(StoreCollector(store, labeled=False))
    fam = scrape(reg)["neurograph_tokens_active"]
    assert fam.samples[0].labels == {}
    with pytest.raises(ValueError):
        StoreCollector(store, labeled=False).add(FakeStore(store.path + "x"))


def test_black_box_and_tracing_counters_are_exported(store: FakeStore) -> None:
    store.obs.event("commit", n=1)
    store.obs.event("commit", n=2)
    store.obs.sampler.decide(0.0, is_error=True)
    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    fams = scrape(reg)
    assert value(fams, "neurograph_blackbox_events_recorded_total") == 2
    assert value(fams, "neurograph_tracing_samples_total") == 1
    assert value(fams, "neurograph_tracing_error_operations_total") == 1
    assert value(fams, "neurograph_tracing_sample_rate") == 0.01


def test_the_documentation_lists_every_metric() -> None:
    import os

    doc = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "observability.md")
    with open(doc) as f:
        text = f.read()
    missing = [n for n in metric_names() if f"`{n}`" not in text]
    assert not missing, missing
