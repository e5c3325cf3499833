"""A writer process and an ``ngstore serve`` sidecar process: the sidecar shows the writer's
metrics (its stats page, docs/format.md §8.2), judges quotas against the writer's limits, and
labels everything with the writer's pid and liveness.

Every process here is real (``subprocess``); metrics are parsed with prometheus_client's
own parser.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 60

# The writer: max_tokens=1000; 30 commits of 30 tokens (900: 90 % of its quota); 64 reflexes
# and 200 lookups of them; then it publishes, prints its own figures and waits on stdin.
WRITER = textwrap.dedent("""
    import json, sys, numpy as np, ngstore
    from ngstore.connections import as_connection_array, new_connections
    path = sys.argv[1]
    s = ngstore.open(path, max_tokens=1000, tracing=False)
    for i in range(30):
        s.put_tokens(ngstore.Token.create_batch(30, start=i * 30))
    rng = np.random.default_rng(1)
    states = rng.uniform(-1, 1, size=(64, 8)).astype(np.float32)
    conns = np.array(as_connection_array(new_connections(np.arange(64, dtype=np.uint32) * 2,
                                                         np.arange(64, dtype=np.uint32) * 2 + 1)))
    conns["pull_strength"], conns["rigidity"], conns["confidence"] = 1.0, 200, 240
    conns["evidence_count"] = 20
    with s.batch() as b:
        b.put_reflexes(states, conns)
    engine = s.intuition()
    hits = sum(engine.try_fast_path(states[i % 64]) is not None for i in range(200))
    s.obs.publish_stats()
    st = s.stats()
    print(json.dumps({"pid": __import__("os").getpid(), "commits_total": st["commits_total"],
                      "commit_count": s.obs.commit_seconds.count,
                      "commit_sum": s.obs.commit_seconds.sum,
                      "reflex_lookups_total": st["reflex_lookups_total"], "hits": hits,
                      "token_limit": st["token_limit"], "tokens_live": st["tokens_live"]}),
          flush=True)
    if sys.stdin.readline().strip() == "close":
        s.close()
        print("closed", flush=True)
        sys.stdin.readline()
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _samples(text: str) -> list[Any]:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def _one(samples: list[Any], name: str, **labels: str) -> Any:
    got = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (name, labels, got)
    return got[0]


def _wait(pred: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = pred()
            if r:
                return r
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def sidecar(tmp_path: Any) -> Iterator[tuple[str, str]]:
    """(store path, base URL) of an ``ngstore serve`` process started before the store exists."""
    path = str(tmp_path / "store")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ngstore", "serve", path, "--port", str(port)],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _get(base + "/health")[0] == 200, "the sidecar")
        yield path, base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


def _start_writer(path: str, cwd: Any) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    w = subprocess.Popen([sys.executable, "-c", WRITER, path], cwd=str(cwd), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert w.stdout is not None
    line = w.stdout.readline()
    assert line, w.communicate(timeout=TIMEOUT)
    return w, json.loads(line)


def _scrape_when(base: str, pred: Callable[[list[Any]], bool]) -> list[Any]:
    def attempt() -> list[Any] | None:
        code, body = _get(base + "/metrics")
        samples = _samples(body.decode()) if code == 200 else []
        return samples if samples and pred(samples) else None

    got = _wait(attempt, "the sidecar to show the writer")
    assert isinstance(got, list)
    return got


def test_the_sidecar_shows_the_writers_counters_histograms_lookups_and_limits(tmp_path: Any,
                                                                              sidecar: tuple[str, str]) -> None:
    path, base = sidecar
    w, mine = _start_writer(path, tmp_path)
    try:
        pid = str(mine["pid"])
        samples = _scrape_when(base, lambda ss: any(s.name == "neurograph_commits_total"
                                                    and s.labels.get("writer_pid") == pid
                                                    and s.value == mine["commits_total"] for s in ss))
        live = {"writer_pid": pid, "writer_alive": "1"}
        assert mine["commits_total"] == 31   # 30 token batches and the reflex batch
        assert _one(samples, "neurograph_commits_total", **live).value == mine["commits_total"]
        assert _one(samples, "neurograph_commit_duration_seconds_count", **live).value == mine["commit_count"]
        assert _one(samples, "neurograph_commit_duration_seconds_sum", **live).value == \
            pytest.approx(mine["commit_sum"])
        inf = _one(samples, "neurograph_commit_duration_seconds_bucket", le="+Inf", **live)
        assert inf.value == mine["commit_count"]
        assert mine["reflex_lookups_total"] == 200 and mine["hits"] == 200
        assert _one(samples, "neurograph_reflex_lookups_total", **live).value == 200
        assert _one(samples, "neurograph_token_limit", **live).value == mine["token_limit"] == 1000
        assert _one(samples, "neurograph_tokens_active", **live).value == mine["tokens_live"] == 900
        assert _one(samples, "neurograph_token_quota_usage_percent", **live).value == pytest.approx(90.0)
        assert _one(samples, "neurograph_writer_alive", **live).value == 1
        assert _one(samples, "neurograph_store_readonly", **live).value == 1   # the sidecar's view
        # /ready judges the quota against the writer's max_tokens (1000), not its own default
        # (the sidecar retries opening the store every 2 s: it may not have it open yet)
        code, body = _wait(lambda: (lambda r: r if json.loads(r[1])["checks"]["store_open"]["ok"] else None)(
            _get(base + "/ready")), "the sidecar to open the store")
        ready = json.loads(body)
        assert code == 503 and ready["failed"] == ["token_quota"], ready
        assert "900 of 1000" in ready["checks"]["token_quota"]["detail"]
        assert ready["checks"]["writer"]["ok"] and f"pid {pid} alive" in ready["checks"]["writer"]["detail"]

        # the writer closes: its final figures stay, labelled as a writer that is gone
        assert w.stdin is not None and w.stdout is not None
        w.stdin.write("close\n")
        w.stdin.flush()
        assert w.stdout.readline().strip() == "closed"
        samples = _scrape_when(base, lambda ss: any(s.name == "neurograph_writer_alive"
                                                    and s.labels.get("writer_alive") == "0" for s in ss))
        gone = {"writer_pid": pid, "writer_alive": "0"}
        assert _one(samples, "neurograph_writer_alive", **gone).value == 0
        assert _one(samples, "neurograph_commits_total", **gone).value == mine["commits_total"]
        assert _one(samples, "neurograph_reflex_lookups_total", **gone).value == 200
        assert _one(samples, "neurograph_token_limit", **gone).value == 1000
        ready = json.loads(_get(base + "/ready")[1])
        assert ready["checks"]["writer"] == {"ok": True, "detail": f"pid {pid} closed the store"}
    finally:
        if w.stdin is not None:
            w.stdin.close()
        w.wait(timeout=TIMEOUT)


def test_a_writer_killed_by_sigkill_is_shown_dead_and_not_ready(tmp_path: Any,
                                                                 sidecar: tuple[str, str]) -> None:
    path, base = sidecar
    w, mine = _start_writer(path, tmp_path)
    pid = str(mine["pid"])
    _scrape_when(base, lambda ss: any(s.labels.get("writer_pid") == pid for s in ss))
    w.send_signal(signal.SIGKILL)
    w.wait(timeout=TIMEOUT)
    samples = _scrape_when(base, lambda ss: any(s.name == "neurograph_writer_alive"
                                                and s.labels.get("writer_alive") == "0" for s in ss))
    gone = {"writer_pid": pid, "writer_alive": "0"}
    assert _one(samples, "neurograph_commits_total", **gone).value == mine["commits_total"]
    assert _one(samples, "neurograph_stats_page_age_seconds", **gone).value >= 0
    code, body = _get(base + "/ready")
    ready = json.loads(body)
    assert code == 503 and "writer" in ready["failed"]
    assert "ended without closing" in ready["checks"]["writer"]["detail"]
    if w.stdin is not None:
        w.stdin.close()


def test_without_a_writer_the_sidecar_labels_nothing_as_alive(tmp_path: Any) -> None:
    """A store that no writer of this version ever held: no stats page, labels empty."""
    import ngstore
    from ngstore.obs.http import SidecarView

    path = str(tmp_path / "s")
    with ngstore.open(path, observability=False) as s:
        s.put_tokens(ngstore.Token.create_batch(3))
    assert not os.path.exists(os.path.join(path, "stats.page"))
    view = SidecarView(path)
    view.store = ngstore.open(path, readonly=True)
    try:
        st = view.stats()
        assert "writer_pid" not in st and st["tokens_live"] == 3
        assert view.metric_labels() == {"writer_pid": "", "writer_alive": "0"}
        assert view.obs is None
        assert view.ready_checks()["writer"]["ok"]
    finally:
        view.close()


def test_a_read_only_store_of_the_application_also_shows_the_writers_metrics_and_limits(tmp_path: Any) -> None:
    """Not only the sidecar: any read-only handle's collector and /ready merge the page."""
    from prometheus_client import CollectorRegistry, generate_latest

    import ngstore

    path = str(tmp_path / "s")
    w = ngstore.open(path, max_tokens=1000, tracing=False)
    try:
        w.put_tokens(ngstore.Token.create_batch(900))
        w.obs.publish_stats()
        with ngstore.open(path, readonly=True, tracing=False) as r:
            assert r.stats()["token_limit"] == 10_000_000          # its own Guardian's default
            reg = CollectorRegistry()
            reg.register(r.metrics_collector())
            samples = _samples(generate_latest(reg).decode())
            live = {"writer_pid": str(os.getpid()), "writer_alive": "1"}
            assert _one(samples, "neurograph_token_limit", **live).value == 1000
            assert _one(samples, "neurograph_commits_total", **live).value == 1
            assert _one(samples, "neurograph_commit_duration_seconds_count", **live).value == 1
            with r.serve_metrics() as srv:
                code, body = _get(srv.url + "/ready")
            ready = json.loads(body)
            assert code == 503 and ready["failed"] == ["token_quota"], ready
            assert "quotas_below_threshold" not in ready["checks"]   # the reader's own limits
        # the writer's own collector is unchanged: no writer labels
        reg = CollectorRegistry()
        reg.register(w.metrics_collector())
        own = _one(_samples(generate_latest(reg).decode()), "neurograph_token_limit")
        assert own.value == 1000 and "writer_pid" not in own.labels
    finally:
        w.close()
