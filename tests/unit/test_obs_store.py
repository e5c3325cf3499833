"""Observability against real stores (``ngstore.open``), not the fake stores of test_obs_*.

Metrics are scraped over HTTP from ``store.serve_metrics()`` and parsed with
prometheus_client's own parser; crashes happen in child processes (cwd = tmp_path);
spans go to the OTel SDK's in-memory exporter.
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import ngstore
from ngstore.fileio import DEFAULT_IO, FileIO
from ngstore.obs import StoreCollector, register
from ngstore.obs.blackbox import list_dumps, load_dump, read_ring
from ngstore.obs.logs import disable_json_logging, enable_json_logging
from ngstore.obs.metrics import METRICS, metric_names
from ngstore.records import CONNECTION_DTYPE

TIMEOUT = 120



# ------------------------------------------------------------------------------ helpers

def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}, via prometheus_client's parser."""
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(server: Any) -> dict[str, dict[tuple, float]]:
    code, body = _get(server.url + "/metrics")
    assert code == 200
    return parse(body.decode())


def value(samples: dict[str, dict[tuple, float]], name: str, store: Any = None) -> float:
    rows = samples[name]
    if store is None:
        (v,) = [v for k, v in rows.items() if not any(lk == "le" for lk, _ in k)]
        return v
    want = os.path.realpath(store.path) if hasattr(store, "path") else store
    (v,) = [v for k, v in rows.items() if ("store", want) in k and not any(lk == "le" for lk, _ in k)]
    return v


def events(store: Any) -> list[str]:
    return [e["event_type"] for e in store._obs.blackbox.get_events()]


def simulate_system_crash(path: str) -> None:
    sp = os.path.join(path, "state")
    with open(sp) as f:
        st = json.load(f)
    st["boot_id"] = "a-boot-after-the-crash"
    with open(sp, "w") as f:
        json.dump(st, f)


def run_child(code: str, *args: str, cwd: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def served(path):
    s = ngstore.open(path, tracing=False)
    srv = s.serve_metrics()
    yield s, srv
    srv.close()
    s.close()


# ------------------------------------------------------------------------------ metrics

def test_every_metric_is_present_on_the_first_scrape(served):
    store, srv = served
    code, body = _get(srv.url + "/metrics")
    assert code == 200
    fams = families(body.decode())
    label = ("store", store.path)
    for spec in METRICS:
        base = spec.name[:-len("_total")] if spec.kind == "counter" else spec.name
        assert base in fams, spec.name
        fam = fams[base]
        assert fam.type == spec.kind, spec.name
        names = {s.name for s in fam.samples if label in s.labels.items()}
        if spec.kind == "histogram":
            assert {spec.name + "_bucket", spec.name + "_count", spec.name + "_sum"} <= names
        else:
            assert spec.name in names, spec.name
    assert len(metric_names()) == len(METRICS) == 70
    samples = parse(body.decode())
    assert value(samples, "neurograph_store_open", store) == 1
    assert value(samples, "neurograph_tokens_active", store) == 0
    assert value(samples, "neurograph_token_limit", store) == 10_000_000


def test_gauges_and_counters_move_with_the_store(served):
    store, srv = served
    before = scrape(srv)
    store.put_tokens(ngstore.Token.create_batch(500))
    store.put_tokens(ngstore.Token.create_batch(100, start=1000))
    s1 = scrape(srv)
    assert value(s1, "neurograph_tokens_active", store) == store.count() == 600
    assert value(s1, "neurograph_tokens_created_total", store) == 600
    assert value(s1, "neurograph_commits_total", store) - value(before, "neurograph_commits_total", store) == 2
    assert value(s1, "neurograph_wal_entries_written_total", store) \
        - value(before, "neurograph_wal_entries_written_total", store) == 2
    assert value(s1, "neurograph_wal_position", store) == value(s1, "neurograph_wal_applied_position", store) \
        == value(before, "neurograph_wal_position", store) + 2
    assert value(s1, "neurograph_memory_records_bytes", store) == 600 * 64
    parts = ("records", "reflex_table", "overlay", "blackbox", "stats_page", "experience_ring")
    assert value(s1, "neurograph_memory_used_bytes", store) == sum(
        value(s1, f"neurograph_memory_{p}_bytes", store) for p in parts)
    assert value(s1, "neurograph_memory_blackbox_bytes", store) > 0  # the ring is counted too
    assert value(s1, "neurograph_token_quota_usage_percent", store) == pytest.approx(600 / 1e7 * 100)
    store.delete_tokens(range(100))
    s2 = scrape(srv)
    assert value(s2, "neurograph_tokens_active", store) == store.count() == 500
    assert value(s2, "neurograph_tokens_deleted_total", store) == 100
    assert value(s2, "neurograph_tokens_created_total", store) == 600  # lifetime, not live
    n_ckpt = value(s2, "neurograph_checkpoints_total", store)
    store.checkpoint()
    s3 = scrape(srv)
    assert value(s3, "neurograph_checkpoints_total", store) == n_ckpt + 1
    assert value(s3, "neurograph_last_checkpoint_timestamp_seconds", store) == pytest.approx(time.time(), abs=60)


def test_histograms_and_blackbox_counters_move_with_commits(served):
    store, srv = served
    before = scrape(srv)
    for i in range(5):
        store.put_tokens(ngstore.Token.create_batch(10, start=i * 10))
    after = scrape(srv)
    def moved(name: str) -> float:
        return value(after, name, store) - value(before, name, store)

    assert moved("neurograph_commit_duration_seconds_count") == 5
    assert moved("neurograph_commit_batch_records_count") == 5
    assert moved("neurograph_wal_write_duration_seconds_count") >= 1  # one per group commit
    assert moved("neurograph_commit_batch_records_sum") == 50
    assert moved("neurograph_blackbox_events_recorded_total") >= 1  # an "apply" per group applied
    buckets = {dict(k)["le"]: v for k, v in after["neurograph_commit_duration_seconds_bucket"].items()}
    assert buckets["+Inf"] == value(after, "neurograph_commit_duration_seconds_count", store)


@pytest.mark.parametrize("bulk", [1, 10**9], ids=["drained-as-arrays", "drained-row-by-row"])
def test_grouped_commits_are_observed_once_per_batch_and_once_per_group(path, monkeypatch, bulk):
    # 8 threads commit at once, so batches share group commits: each batch is one
    # commit-duration observation, each group (one log append) one log-write observation.
    from ngstore import wal
    from ngstore.obs.metrics import CommitTimings
    monkeypatch.setattr(CommitTimings, "BULK", bulk)
    appends = [0]
    inside = threading.local()
    for name in ("append", "append_one"):
        real = getattr(wal.Log, name)

        def counted(self: wal.Log, *args: Any, real: Any = real, **kwargs: Any) -> Any:
            if getattr(inside, "busy", False):  # append_one's fallback to append: one append
                return real(self, *args, **kwargs)
            appends[0] += 1
            inside.busy = True
            try:
                return real(self, *args, **kwargs)
            finally:
                inside.busy = False

        monkeypatch.setattr(wal.Log, name, counted)
    with ngstore.open(path, tracing=False, durability="sync") as s:
        obs = s.obs
        assert obs is not None
        s.stats()  # drains what the open observed
        appends[0] = 0
        before = {h: getattr(obs, h).count for h in ("commit_seconds", "wal_write_seconds", "batch_records",
                                                     "token_creation_seconds", "connection_creation_seconds")}
        records_before = obs.batch_records.sum

        def work(t: int) -> None:
            for i in range(25):
                if i % 5 == 4:
                    c = np.zeros(1, CONNECTION_DTYPE)
                    c["token_a"], c["token_b"] = t * 1000 + i, t * 1000 + i + 1
                    s.put_connections(c)
                else:
                    s.put_tokens(ngstore.Token.create_batch(2, start=t * 1000 + 2 * i))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        st = s.stats()  # drains the pending timings
        moved = {h: getattr(obs, h).count - n for h, n in before.items()}
        assert moved["commit_seconds"] == moved["batch_records"] == 200
        assert moved["token_creation_seconds"] == 160 and moved["connection_creation_seconds"] == 40
        assert moved["wal_write_seconds"] == appends[0] <= 200
        assert obs.batch_records.sum - records_before == 160 * 2 + 40
        assert st["commits_total"] >= 200


def test_quota_refusal_and_readiness_follow_the_store(path):
    store = ngstore.open(path, max_tokens=100, tracing=False)
    srv = store.serve_metrics()
    try:
        store.put_tokens(ngstore.Token.create_batch(50))
        code, body = _get(srv.url + "/ready")
        assert code == 200, body
        store.put_tokens(ngstore.Token.create_batch(35, start=50))  # 85 % of max_tokens
        code, body = _get(srv.url + "/ready")
        assert code == 503
        doc = json.loads(body)
        assert doc["status"] == "not_ready"
        assert "token_quota" in doc["failed"] and "quotas_below_threshold" in doc["failed"]
        assert doc["checks"]["store_open"]["ok"] and doc["checks"]["log_writable"]["ok"]
        assert value(scrape(srv), "neurograph_quota_exceeded_total", store) == 0
        with pytest.raises(ngstore.QuotaExceededError):
            store.put_tokens(ngstore.Token.create_batch(20, start=100))
        s = scrape(srv)
        assert value(s, "neurograph_quota_exceeded_total", store) == 1
        assert value(s, "neurograph_tokens_active", store) == 85  # nothing of it written
        assert value(s, "neurograph_token_quota_usage_percent", store) == pytest.approx(85.0)
        assert "quota_refused" in events(store)
        store.delete_tokens(range(40))
        assert _get(srv.url + "/ready")[0] == 200
        store.close()
        code, body = _get(srv.url + "/ready")
        assert code == 503 and "store_open" in json.loads(body)["failed"]
        assert _get(srv.url + "/health")[0] == 200  # liveness does not look at the store
        s = scrape(srv)
        assert value(s, "neurograph_store_open", store) == 0
    finally:
        srv.close()
        store.close()


def test_two_stores_in_one_process_have_separate_metrics(tmp_path):
    a = ngstore.open(str(tmp_path / "a"), tracing=False)
    b = ngstore.open(str(tmp_path / "b"), tracing=False)
    try:
        a.put_tokens(ngstore.Token.create_batch(7))
        b.put_tokens(ngstore.Token.create_batch(3))
        b.put_tokens(ngstore.Token.create_batch(3, start=3))
        reg = CollectorRegistry()
        register(reg, a)
        register(reg, b)
        s = parse(generate_latest(reg).decode())
        assert {dict(k)["store"] for k in s["neurograph_tokens_active"]} == {a.path, b.path}
        assert value(s, "neurograph_tokens_active", a) == 7
        assert value(s, "neurograph_tokens_active", b) == 6
        assert value(s, "neurograph_commits_total", a) == 1
        assert value(s, "neurograph_commits_total", b) == 2
        # the same through one StoreCollector holding both
        reg2 = CollectorRegistry()
        reg2.register(StoreCollector(a, b))
        assert parse(generate_latest(reg2).decode())["neurograph_tokens_active"] == s["neurograph_tokens_active"]
        # a second separate collector on the same registry is refused, as documented
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            reg2.register(a.metrics_collector())
        # two sidecars in one process: their own registries, their own store each
        with a.serve_metrics() as sa, b.serve_metrics() as sb:
            assert sa.port != sb.port
            b.delete_tokens([0])
            assert value(scrape(sa), "neurograph_tokens_active", a) == 7
            assert value(scrape(sb), "neurograph_tokens_active", b) == 5
            assert {dict(k)["store"] for k in scrape(sa)["neurograph_tokens_active"]} == {a.path}
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------------------ black box

def test_an_unhandled_store_error_in_a_child_leaves_a_dump_with_the_events_before_it(tmp_path, path):
    r = run_child("""
        import sys, ngstore
        s = ngstore.open(sys.argv[1], apply_interval=600.0)  # no apply by age, however slow
        for i in range(3):
            s.put_tokens(ngstore.Token.create_batch(5, start=i * 5))
        s.flush()                                 # the three commits reach LMDB: one "apply"
        s.get_token(999)                          # NotFoundError, unhandled
    """, path, cwd=tmp_path)
    assert r.returncode == 1 and "NotFoundError" in r.stderr  # the previous hook ran
    dumps = list_dumps(path)
    assert len(dumps) == 1
    doc = load_dump(dumps[0])
    types = [e["event_type"] for e in doc["events"]]
    assert types[types.index("open"):] == ["open", "apply", "error"]
    assert doc["reason"] == "unhandled NotFoundError"
    assert doc["exception"]["type"] == "NotFoundError"
    assert "get_token" in doc["exception"]["traceback"]
    assert doc["store_stats"]["tokens_live"] == 15 and doc["store_path"] == os.path.realpath(path)
    applied = dict(doc["events"][types.index("apply")]["data"])
    assert applied["entries"] == "3" and applied["first"] == "1" and applied["last"] == "3"


def test_an_application_error_that_does_not_involve_the_store_leaves_no_dump(tmp_path, path):
    r = run_child("""
        import sys, ngstore
        s = ngstore.open(sys.argv[1], apply_interval=600.0)
        s.put_tokens(ngstore.Token.create_batch(5))
        s.flush()
        raise RuntimeError("the application's own bug")
    """, path, cwd=tmp_path)
    assert r.returncode == 1 and "the application's own bug" in r.stderr
    assert list_dumps(path) == []
    info, events, _ = read_ring(path)
    assert not info.closed and [e["event_type"] for e in events][-2:] == ["open", "apply"]


def test_sigsegv_leaves_the_ring_with_every_event_and_the_traceback_after_it(tmp_path, path):
    r = run_child("""
        import ctypes, sys, ngstore
        s = ngstore.open(sys.argv[1])
        for i in range(3):
            s.put_tokens(ngstore.Token.create_batch(5, start=i * 5))
            s.flush()
        ctypes.string_at(0)
    """, path, cwd=tmp_path)
    assert r.returncode == -signal.SIGSEGV, r.stderr
    _info, events, text = read_ring(path)
    types = [e["event_type"] for e in events]
    assert types[types.index("open"):] == ["open", "apply", "apply", "apply"]
    assert text.startswith("Fatal Python error: Segmentation fault") and "<string>" in text
    assert list_dumps(path) == []     # no dump at the moment of the crash: the ring is the record
    assert all(os.path.getsize(os.path.join(path, n)) > 0 for n in os.listdir(path)
               if os.path.isfile(os.path.join(path, n)) and n != "readers.lock")  # a lock holds no bytes


def test_quota_checkpoint_and_recovery_events_reach_the_black_box(tmp_path, path):
    with ngstore.open(path, max_tokens=10, tracing=False) as s:
        s.put_tokens(ngstore.Token.create_batch(10))
        with pytest.raises(ngstore.QuotaExceededError):
            s.put_tokens(ngstore.Token.create_batch(1, start=10))
        s.checkpoint()
        ev = s._obs.blackbox.get_events()
        types = [e["event_type"] for e in ev]
        assert types[-3:] == ["apply", "quota_refused", "checkpoint"]
        assert "max_tokens" in dict(ev[-2]["data"])["error"]
        assert s._obs.blackbox.stats()["total_recorded"] >= len(ev)
    # a writer that dies after commits, then the machine "reboots": rollback + replay
    r = run_child("""
        import os, sys, ngstore
        s = ngstore.open(sys.argv[1], max_tokens=None, checkpoint_bytes=1 << 40,
                         checkpoint_interval=1e9)
        for i in range(4):
            s.put_tokens(ngstore.Token.create_batch(5, start=100 + i * 5))
        os._exit(0)
    """, path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    simulate_system_crash(path)
    stream = io.StringIO()
    enable_json_logging(stream, level=logging.INFO)
    try:
        with ngstore.open(path, max_tokens=None, tracing=False) as s:
            ev = s._obs.blackbox.get_events()
            rec = [e for e in ev if e["event_type"] == "recovery"]
            assert len(rec) == 1
            data = dict(rec[0]["data"])
            assert data["replayed"] == "4" and data["rollback_to_txn"] != "None"
            assert [e["event_type"] for e in ev].index("open") < [e["event_type"] for e in ev].index("recovery")
            assert s.count() == 30
            samples = parse(generate_latest(_registry(s)).decode())
            assert value(samples, "neurograph_wal_entries_replayed_total", s) == 4
    finally:
        disable_json_logging()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warn = [d for d in lines if d["message"].startswith("recovered ")]
    assert len(warn) == 1
    assert warn[0]["level"] == "WARNING" and warn[0]["logger"] == "ngstore"
    assert warn[0]["store_path"] == os.path.realpath(path)
    assert "4 record(s) replayed" in warn[0]["message"] and "rolled back" in warn[0]["message"]


def _registry(store: Any) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(store.metrics_collector())
    return reg


# ------------------------------------------------------------------------------ tracing

class FailingSyncIO(FileIO):
    """The default file seam, except that fdatasync raises EIO once ``fail`` is set."""

    def __init__(self) -> None:
        self.fail = False

    def __getattribute__(self, name: str) -> Any:
        if name in ("fail", "fdatasync", "__class__", "__dict__"):
            return object.__getattribute__(self, name)
        return getattr(DEFAULT_IO, name)

    def fdatasync(self, fd: int) -> None:
        if self.fail:
            raise OSError(errno.EIO, "injected fdatasync failure")
        DEFAULT_IO.fdatasync(fd)


@pytest.fixture
def exporter():
    """The in-memory exporter on the global tracer provider (the store uses the global one)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exp = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    yield exp
    exp.shutdown()  # the processor stays on the provider but exports nowhere


def names(exp: Any) -> list[str]:
    return [s.name for s in exp.get_finished_spans()]


def test_at_rate_one_every_operation_is_one_span_never_one_per_token(path, exporter):
    s = ngstore.open(path, tracing=True, sample_rate=1.0)
    try:
        assert names(exporter) == ["checkpoint", "recovery"]  # creating a store checkpoints
        exporter.clear()
        for i in range(5):
            s.put_tokens(ngstore.Token.create_batch(1000, start=i * 1000))
        s.checkpoint()
        got = names(exporter)
        assert got.count("group_commit") == 5 and got.count("checkpoint") == 1
        assert len(got) == 6  # 5000 tokens, 6 spans
        gc = [sp for sp in exporter.get_finished_spans() if sp.name == "group_commit"][-1]
        assert gc.attributes["records"] == 1000 and gc.attributes["batches"] == 1
        samples = parse(generate_latest(_registry(s)).decode())
        assert value(samples, "neurograph_tracing_samples_recorded_total", s) >= 6
    finally:
        s.close()
    # reopening a writer is a recovery span (with how many records it replayed)
    exporter.clear()
    with ngstore.open(path, tracing=True, sample_rate=1.0):
        pass
    rec = [sp for sp in exporter.get_finished_spans() if sp.name == "recovery"]
    assert len(rec) == 1 and rec[0].attributes["replayed_records"] == 0


def test_commit_spans_are_emitted_in_bulk_with_the_times_the_commits_had(path, exporter):
    # Commits are traced after the fact, when their timings are drained (CommitTimings):
    # each span must still cover its own commit, and a group of batches is one span.
    with ngstore.open(path, tracing=True, sample_rate=1.0, apply_interval=3600.0) as s:
        exporter.clear()
        windows = []
        for i in range(3):
            a = time.time_ns()
            s.put_tokens(ngstore.Token.create_batch(10, start=i * 10), durability="none")
            windows.append((a, time.time_ns()))
            time.sleep(0.002)
        s.stats()  # drains the timings
        spans = [sp for sp in exporter.get_finished_spans() if sp.name == "group_commit"]
        assert len(spans) == 3
        for sp, (a, b) in zip(spans, windows, strict=True):
            assert a <= sp.start_time <= sp.end_time <= b
            assert sp.attributes["records"] == 10 and sp.attributes["batches"] == 1
        exporter.clear()
        barrier = threading.Barrier(8)

        def commit(t: int) -> None:
            barrier.wait()
            s.put_tokens(ngstore.Token.create_batch(1, start=1000 + t))

        threads = [threading.Thread(target=commit, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        s.stats()
        spans = [sp for sp in exporter.get_finished_spans() if sp.name == "group_commit"]
        assert sum(sp.attributes["batches"] for sp in spans) == 8
        assert sum(sp.attributes["records"] for sp in spans) == 8
        assert sorted(sp.attributes["last_position"] for sp in spans)[-1] == s.stats()["wal_position"]


def test_a_tracing_backend_that_raises_costs_the_spans_not_the_commits(path, exporter, caplog, monkeypatch):
    # Commit spans are emitted by whoever drains the timings -- the applier, after each apply:
    # an exception from the tracing side must not stop it (that would stop the writer).
    with ngstore.open(path, tracing=True, sample_rate=1.0) as s:
        tracer = s.obs.tracer
        assert tracer is not None

        def broken(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError("exporter down")

        monkeypatch.setattr(tracer, "emit", broken)
        with caplog.at_level(logging.WARNING, logger="ngstore.obs"):
            for i in range(3):
                s.put_tokens(ngstore.Token.create_batch(10, start=i * 10))
                s.flush()  # an apply, then its drain
        assert "emitting commit spans failed" in caplog.text
        assert caplog.text.count("emitting commit spans failed") == 1  # said once
        s.put_tokens(ngstore.Token.create_batch(10, start=100))  # the writer still writes
        assert s.count() == 40 and not s.stats()["write_failed"]


def test_analysis_is_one_span_and_one_event(path, exporter):
    import numpy as np

    from ngstore.experience import new_events

    with ngstore.open(path, tracing=True, sample_rate=1.0) as s:
        ev = new_events(200, event_type=1)
        ev["state"] = np.ones(8, np.float32) * 0.5
        ev["reward_goal"] = 1.0
        s.write_events(ev)
        exporter.clear()
        s.intuition().analyze(rng=np.random.default_rng(0))
        assert names(exporter).count("analysis") == 1
        assert "analysis" in events(s)


def test_at_rate_zero_only_error_spans_are_recorded(path, exporter):
    fio = FailingSyncIO()
    stream = io.StringIO()
    s = ngstore.open(path, tracing=True, sample_rate=0.0, io=fio)
    try:
        for i in range(20):
            s.put_tokens(ngstore.Token.create_batch(10, start=i * 10))
        s.checkpoint()
        assert names(exporter) == []
        enable_json_logging(stream, level=logging.INFO)
        fio.fail = True  # the next commit's log fdatasync fails inside the group_commit span
        with pytest.raises(OSError):
            s.put_tokens(ngstore.Token.create_batch(10, start=1000))
        spans = exporter.get_finished_spans()
        assert [sp.name for sp in spans] == ["group_commit"]
        from opentelemetry.trace import StatusCode

        assert spans[0].status.status_code == StatusCode.ERROR
        assert any(e.name == "exception" for e in spans[0].events)
        samples = parse(generate_latest(_registry(s)).decode())
        assert value(samples, "neurograph_commit_errors_total", s) == 1
        assert events(s)[-1] == "error"
        checks = s.ready_checks()
        assert checks["log_writable"][0] is False
        with pytest.raises(ngstore.NgStoreError):  # refuses writes until reopened
            s.put_tokens(ngstore.Token.create_batch(1, start=2000))
    finally:
        disable_json_logging()
        fio.fail = False
        s.close()
    err = [json.loads(line) for line in stream.getvalue().splitlines()]
    err = [d for d in err if d["level"] == "ERROR"]
    assert err and err[0]["store_path"] == os.path.realpath(path)
    assert "commit failed" in err[0]["message"]
    with ngstore.open(path) as s:  # reopening recovers every acknowledged batch
        assert s.count() >= 200 and s.check().ok


def test_a_caught_commit_error_counts_as_a_recovered_panic(path):
    fio = FailingSyncIO()
    s = ngstore.open(path, tracing=False, io=fio)
    try:
        s.put_tokens(ngstore.Token.create_batch(10))
        fio.fail = True
        with pytest.raises(OSError):
            s.put_tokens(ngstore.Token.create_batch(10, start=10))
        assert events(s)[-1] == "error"
        samples = parse(generate_latest(_registry(s)).decode())
        assert value(samples, "neurograph_panics_recovered_total", s) == 1
    finally:
        fio.fail = False
        s.close()


def test_tracing_off_records_nothing(path, exporter):
    with ngstore.open(path, tracing=False) as s:
        s.put_tokens(ngstore.Token.create_batch(10))
        s.checkpoint()
    assert names(exporter) == []


# ------------------------------------------------------------------------------ scrape cost

def test_scrape_time_of_a_store_with_a_million_tokens(path, capsys):
    with ngstore.open(path, tracing=False) as s:
        s.put_tokens(ngstore.Token.create_batch(1_000_000))
        assert s.count() == 1_000_000
        reg = _registry(s)
        generate_latest(reg)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            generate_latest(reg)
            times.append(time.perf_counter() - t0)
        stats_t = []
        for _ in range(30):
            t0 = time.perf_counter()
            s.stats()
            stats_t.append(time.perf_counter() - t0)
        with s.serve_metrics() as srv:
            http_t = []
            for _ in range(30):
                t0 = time.perf_counter()
                code, body = _get(srv.url + "/metrics")
                http_t.append(time.perf_counter() - t0)
            assert code == 200
            assert value(parse(body.decode()), "neurograph_tokens_active", s) == 1_000_000
    with capsys.disabled():
        print(f"\n1M-token store: collect+exposition median {statistics.median(times) * 1e3:.2f} ms "
              f"(min {min(times) * 1e3:.2f}), store.stats() median "
              f"{statistics.median(stats_t) * 1e3:.3f} ms, HTTP GET /metrics median "
              f"{statistics.median(http_t) * 1e3:.2f} ms")
