"""Tracing: the sampler's rules, decided after the operation, against the OTel SDK in memory."""
from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ngstore.obs import Observability
from ngstore.obs.tracing import NOOP_SPAN, SamplerConfig, TraceSampler, from_headers, noop_span, parse_traceparent

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED_PARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
UNSAMPLED_PARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-00"


class FakeClock:
    """Each call advances by ``step`` seconds: every span lasts exactly ``step``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    yield exp
    exp.clear()


def make_obs(tmp_path: Any, exporter: InMemorySpanExporter, *, rate: float = 0.01,
             step: float = 0.001, seed: int = 1234, config: SamplerConfig | None = None) -> Observability:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Observability(str(tmp_path), tracing=config if config is not None else True,
                         sample_rate=rate, tracer_provider=provider, clock=FakeClock(step),
                         rng=random.Random(seed))


def test_at_one_percent_few_operations_are_recorded(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter)
    for i in range(2000):
        with obs.span("commit", batch_id=i):
            pass
    spans = exporter.get_finished_spans()
    c = obs.sampler.counters()
    assert c["total"] == 2000 and c["recorded"] == len(spans)
    assert 1 <= len(spans) <= 60            # ~20 expected; seeded, so deterministic anyway
    assert c["skipped"] == 2000 - len(spans)
    assert all(s.name == "commit" for s in spans)


def test_errors_are_always_recorded(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter)
    for i in range(50):
        with pytest.raises(RuntimeError), obs.span("commit"):
            raise RuntimeError(f"fail {i}")
    for i in range(50):
        with obs.span("checkpoint") as sp:
            sp.error(OSError("disk full"))     # an error reported without raising
    spans = exporter.get_finished_spans()
    assert len(spans) == 100
    assert all(s.status.status_code == StatusCode.ERROR for s in spans)
    assert any(ev.name == "exception" for ev in spans[0].events)
    assert obs.sampler.counters()["error_operations"] == 100


def test_slow_operations_are_recorded_at_half_rate(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=0.0, step=0.2)   # every op takes 200 ms
    for _ in range(400):
        with obs.span("checkpoint"):
            pass
    n = len(exporter.get_finished_spans())
    assert 140 <= n <= 260
    assert obs.sampler.counters()["slow_operations"] == 400


def test_fast_operations_at_rate_zero_are_never_recorded(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=0.0, step=0.01)
    for _ in range(200):
        with obs.span("commit"):
            pass
    assert exporter.get_finished_spans() == ()
    assert obs.sampler.counters()["slow_operations"] == 0


def test_a_recorded_span_carries_the_measured_start_and_duration(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=1.0, step=0.25)
    with obs.span("recovery", mode="strict") as sp:
        sp.set("records", 12)
        sp.set("path", tmp_path)          # non-primitive attributes become strings
    (span,) = exporter.get_finished_spans()
    assert span.end_time - span.start_time == 250_000_000
    assert span.attributes["mode"] == "strict" and span.attributes["records"] == 12
    assert span.attributes["path"] == str(tmp_path)
    assert obs.tracing_overhead_seconds.count == 1


def test_a_sampled_parent_forces_recording_and_is_the_parent(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=0.0)
    with obs.span("commit", traceparent=SAMPLED_PARENT) as sp:
        assert sp.trace_id == PARENT_TRACE
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == PARENT_TRACE
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_an_unsampled_parent_falls_through_to_the_rules(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=0.0)
    with obs.span("commit", traceparent=UNSAMPLED_PARENT):
        pass
    assert exporter.get_finished_spans() == ()
    with pytest.raises(ValueError), obs.span("commit", traceparent=UNSAMPLED_PARENT):
        raise ValueError("x")
    assert len(exporter.get_finished_spans()) == 1


def test_force_flag_records(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=0.0)
    with obs.span("analysis", **from_headers({"X-Force-Trace": "true"})):
        pass
    assert len(exporter.get_finished_spans()) == 1


def test_kill_switch_records_nothing_and_counts_skips(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=1.0)
    obs.sampler.config.enabled = False
    for _ in range(10):
        with pytest.raises(RuntimeError), obs.span("commit", force=True, traceparent=SAMPLED_PARENT):
            raise RuntimeError("x")
    assert exporter.get_finished_spans() == ()
    assert obs.sampler.counters() == {"total": 10, "recorded": 0, "skipped": 10,
                                      "error_operations": 0, "slow_operations": 0}
    assert not obs.tracing_enabled


def test_a_sampled_out_span_creates_no_otel_span(tmp_path: Any, exporter: InMemorySpanExporter) -> None:
    obs = make_obs(tmp_path, exporter, rate=0.0)

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("start_span called for a sampled-out operation")

    assert obs.tracer is not None
    obs.tracer._otel.start_span = refuse  # type: ignore[method-assign]
    for _ in range(100):
        with obs.span("commit"):
            pass
    assert obs.sampler.counters()["skipped"] == 100


def test_tracing_false_gives_the_shared_noop(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    assert obs.span is noop_span
    with obs.span("commit", a=1) as sp:
        sp.set("k", "v")
        sp.error(RuntimeError())
    assert sp is NOOP_SPAN and obs.sampler.counters()["total"] == 0


def test_without_opentelemetry_span_is_the_noop(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)   # makes `import` raise ImportError
    obs = Observability(str(tmp_path))
    assert obs.tracer is None and obs.span is noop_span
    with obs.span("commit"):
        pass
    with pytest.raises(ImportError):
        Observability(str(tmp_path), tracing=True)


def test_the_environment_kill_switch_turns_auto_tracing_off(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGSTORE_TRACING", "off")
    assert Observability(str(tmp_path)).span is noop_span


def test_sampler_rules_in_isolation() -> None:
    s = TraceSampler(SamplerConfig(base_rate=0.0), rng=random.Random(0))
    assert s.decide(0.0, is_error=True)
    assert s.decide(0.0, force=True)
    assert s.decide(0.0, parent_sampled=True)
    assert s.decide(0.0, rate=5.0)            # clamped to 1
    assert not s.decide(0.0, rate=-1.0)       # clamped to 0
    assert not s.decide(0.0)
    s.config.base_rate = 0.2
    assert s.decide(0.0, priority="high")     # 0.2 × 10 → 1
    assert s.counters()["total"] == 7


def test_traceparent_parsing() -> None:
    assert parse_traceparent(SAMPLED_PARENT) == (PARENT_TRACE, "00f067aa0ba902b7", True)
    assert parse_traceparent(UNSAMPLED_PARENT)[2] is False  # type: ignore[index]
    for bad in ("", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01",
                f"ff-{PARENT_TRACE}-00f067aa0ba902b7-01", f"00-{PARENT_TRACE}-xyz-01",
                f"00-{PARENT_TRACE}-00f067aa0ba902b7-01-extra"):
        assert parse_traceparent(bad) is None, bad


def test_headers_become_span_arguments() -> None:
    h = {"TraceParent": SAMPLED_PARENT, "x-force-trace": "1", "X-Sampling-Rate": "0.5",
         "x-sampling-priority": "LOW"}
    assert from_headers(h) == {"traceparent": SAMPLED_PARENT, "force": True, "rate": 0.5,
                               "priority": "low"}
    assert from_headers({"x-sampling-rate": "nan?"}) == {}


# --- the sidecar's HTTP requests: server spans, W3C traceparent honoured -----------------------

def _sidecar(exporter: InMemorySpanExporter, rate: float) -> Any:
    from ngstore.obs.http import serve
    from ngstore.obs.tracing import Tracer

    class Store:
        path = "/nowhere"

        def stats(self) -> dict[str, Any]:
            return {"path": self.path, "closed": False, "readonly": True}

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = Tracer(sampler=TraceSampler(SamplerConfig(base_rate=rate)), tracer_provider=provider)
    return serve(Store(), tracer=tracer)


def _get(url: str, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_a_request_with_a_sampled_traceparent_is_a_server_span_child_of_it(exporter: InMemorySpanExporter) -> None:
    from opentelemetry.trace import SpanKind

    srv = _sidecar(exporter, rate=0.0)
    try:
        assert _get(srv.url + "/metrics", {"traceparent": SAMPLED_PARENT}) == 200
        assert _get(srv.url + "/nope", {"traceparent": SAMPLED_PARENT}) == 404
        assert _get(srv.url + "/health", {"traceparent": UNSAMPLED_PARENT}) == 200   # rate 0: no span
        assert _get(srv.url + "/ready", {}) in (200, 503)                            # rate 0: no span
        assert _get(srv.url + "/health", {"x-force-trace": "true"}) == 200           # forced: a root span
    finally:
        srv.close()
    # Each request is handled in its own thread and its span ends after the response is
    # sent, so the next request's span can end first: compare by name, not by order.
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["GET /health", "GET /metrics", "GET unknown"]
    metrics, unknown, forced = spans["GET /metrics"], spans["GET unknown"], spans["GET /health"]
    assert metrics.kind == SpanKind.SERVER
    assert format(metrics.context.trace_id, "032x") == PARENT_TRACE
    assert metrics.parent is not None and format(metrics.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert metrics.attributes["http.response.status_code"] == 200
    assert metrics.attributes["http.request.method"] == "GET" and metrics.attributes["url.path"] == "/metrics"
    assert unknown.attributes["http.response.status_code"] == 404
    assert unknown.attributes["url.path"] == "/nope"                     # the route stays low-cardinality
    assert forced.parent is None and format(forced.context.trace_id, "032x") != PARENT_TRACE


def test_ngstore_serve_sends_its_spans_to_an_otlp_collector(tmp_path: Any) -> None:
    """End to end: ``ngstore serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointed at a fake
    collector receives a request carrying a sampled traceparent; the collector gets the span."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    import os
    import signal
    import socket
    import subprocess
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[bytes] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    collector = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_port}",
               OTEL_SERVICE_NAME="sidecar-under-test", NGSTORE_SAMPLE_RATE="0")
    env.pop("NGSTORE_TRACING", None)
    proc = subprocess.Popen([sys.executable, "-m", "ngstore", "serve", str(tmp_path / "store"),
                             "--port", str(port)], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/metrics", {"traceparent": SAMPLED_PARENT}) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)          # a clean exit flushes the exporter
        _out, err = proc.communicate(timeout=60)
        collector.shutdown()
    assert proc.returncode == 0, err
    spans = []
    for body in received:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
            spans += [(service, s) for ss in rs.scope_spans for s in ss.spans]
    ours = [(svc, s) for svc, s in spans if s.trace_id.hex() == PARENT_TRACE]
    assert ours, f"no span of the request's trace among {len(spans)} received"
    svc, span = ours[0]
    assert svc == "sidecar-under-test" and span.name == "GET /metrics"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7" and span.kind == 2   # SPAN_KIND_SERVER


def test_base_rate_decisions_drawn_as_gaps_record_the_rate_and_follow_a_rate_change():
    s = TraceSampler(SamplerConfig(base_rate=0.01), rng=random.Random(7))
    picks = [s.base_sampled() for _ in range(200_000)]
    n = sum(picks)
    assert abs(n - 2000) < 5 * (200_000 * 0.01 * 0.99) ** 0.5  # binomial: 2000 +- 5 sigma
    gaps = [b - a for a, b in zip([-1, *[i for i, p in enumerate(picks) if p]], [i for i, p in enumerate(picks) if p],
                                   strict=False)]
    assert 85 < sum(gaps) / len(gaps) < 115  # geometric with mean 1/p
    assert sum(1 for g in gaps if g == 1) > 0  # back-to-back records happen, as with independent draws
    c = s.counters()
    assert (c["total"], c["recorded"], c["skipped"]) == (200_000, n, 200_000 - n)
    s.config.base_rate = 0.0001  # a long gap is drawn ...
    s.base_sampled()
    s.config.base_rate = 1.0  # ... and a new rate applies from the next call, not after it
    assert all(s.base_sampled() for _ in range(100))
    s.config.base_rate = 0.0
    assert not any(s.base_sampled() for _ in range(10_000))


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.3, 1.0])
def test_sample_many_decides_as_due_would_one_operation_after_another(rate):
    # The commit path's spans are decided in bulk (CommitTimings): the same operations, the
    # same random stream, must give the same decisions and counters as asking one by one.
    import numpy as np

    from ngstore.obs.tracing import Tracer

    rng = np.random.default_rng(5)
    elapsed = rng.exponential(1e-5, 5000)
    elapsed[rng.choice(5000, 40, replace=False)] = 0.25  # slow operations, decided alone
    one = TraceSampler(SamplerConfig(base_rate=rate), rng=random.Random(11))
    bulk = TraceSampler(SamplerConfig(base_rate=rate), rng=random.Random(11))
    tracer = Tracer.__new__(Tracer)  # only its decision, no OTel behind it
    tracer.sampler = one
    expected = [i for i, e in enumerate(elapsed.tolist()) if tracer.due(e)]
    got: list[int] = []
    for part in np.array_split(np.arange(5000), [1, 7, 700, 2500, 4999]):  # drains of any size
        got += [int(part[0]) + j for j in bulk.sample_many(elapsed[part])] if part.size else []
    assert got == expected
    assert bulk.counters() == one.counters()
    off = TraceSampler(SamplerConfig(base_rate=1.0, enabled=False))
    assert off.sample_many(elapsed) == [] and off.counters()["skipped"] == 5000
