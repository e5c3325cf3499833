"""The HTTP sidecar against a real server on 127.0.0.1, and offline checks of examples/deploy."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ngstore.obs import Observability
from ngstore.obs.http import MetricsServer, serve
from ngstore.obs.metrics import StoreCollector, metric_names

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "examples", "deploy")


class FakeStore:
    def __init__(self, path: str, **stats: Any) -> None:
        self.path = path
        self.obs = Observability(path, tracing=False)
        self.values: dict[str, Any] = {"path": path, "readonly": False, "closed": False,
                                       "map_size_bytes": 1000, "map_used_bytes": 100}
        self.values.update(stats)

    def stats(self) -> dict[str, Any]:
        return dict(self.values)


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def store(tmp_path: Any) -> FakeStore:
    return FakeStore(str(tmp_path))


@pytest.fixture
def server(store: FakeStore) -> Iterator[MetricsServer]:
    srv = serve(store)
    yield srv
    srv.close()


def test_metrics_are_served_with_the_exposition_content_type(server: MetricsServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    code, headers, body = get(server.url + "/metrics")
    assert code == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    fams = {f.name for f in text_string_to_metric_families(body.decode())}
    for name in metric_names():
        assert (name[:-6] if name.endswith("_total") else name) in fams, name


def test_scraped_values_follow_the_store(server: MetricsServer, store: FakeStore) -> None:
    def tokens() -> float:
        text = get(server.url + "/metrics")[2].decode()
        fam = next(f for f in text_string_to_metric_families(text)
                   if f.name == "neurograph_tokens_active")
        return fam.samples[0].value

    assert tokens() == 0
    store.values["tokens_live"] = 123
    assert tokens() == 123
    store.obs.wal_write_seconds.observe(0.0005)
    text = get(server.url + "/metrics")[2].decode()
    assert "neurograph_wal_write_duration_seconds_count{store=" in text


def test_health_is_liveness(server: MetricsServer, store: FakeStore) -> None:
    store.values["closed"] = True
    code, headers, body = get(server.url + "/health")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    assert headers["Content-Type"] == "application/json"


def test_ready_when_every_check_passes(server: MetricsServer) -> None:
    code, _, body = get(server.url + "/ready")
    doc = json.loads(body)
    assert code == 200 and doc["status"] == "ready"
    assert set(doc["checks"]) >= {"store_open", "log_writable", "map_not_full", "token_quota",
                                  "memory_quota"}
    assert all(c["ok"] for c in doc["checks"].values())


@pytest.mark.parametrize("change, failing", [
    ({"closed": True}, "store_open"),
    ({"map_used_bytes": 950}, "map_not_full"),                       # 95 % of the map
    ({"tokens_live": 85, "token_limit": 100}, "token_quota"),         # 85 % of max_tokens
    ({"memory_used_bytes": 850, "memory_limit_bytes": 1000}, "memory_quota"),
])
def test_ready_turns_503_and_names_the_failing_check(server: MetricsServer, store: FakeStore,
                                                     change: dict[str, Any], failing: str) -> None:
    store.values.update(change)
    code, _, body = get(server.url + "/ready")
    doc = json.loads(body)
    assert code == 503 and doc["status"] == "not_ready"
    assert failing in doc["failed"] and doc["checks"][failing]["ok"] is False
    assert doc["checks"][failing]["detail"]


def test_store_ready_checks_are_merged(tmp_path: Any) -> None:
    class WithChecks(FakeStore):
        def ready_checks(self) -> dict[str, Any]:
            return {"log_writable": (False, "ENOSPC on log segment"), "recovery_done": True}

    s = WithChecks(str(tmp_path))
    with serve(s) as srv:
        code, _, body = get(srv.url + "/ready")
    doc = json.loads(body)
    assert code == 503 and doc["failed"] == ["log_writable"]
    assert doc["checks"]["log_writable"]["detail"] == "ENOSPC on log segment"
    assert doc["checks"]["recovery_done"]["ok"] is True


def test_a_read_only_store_is_ready(tmp_path: Any) -> None:
    s = FakeStore(str(tmp_path), readonly=True)
    with serve(s) as srv:
        assert get(srv.url + "/ready")[0] == 200


def test_unknown_paths_get_404_json(server: MetricsServer) -> None:
    code, headers, body = get(server.url + "/nope")
    assert code == 404 and json.loads(body)["status"] == 404
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "BREW"])
def test_other_methods_get_405(server: MetricsServer, method: str) -> None:
    code, headers, body = get(server.url + "/metrics", method=method)
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    assert json.loads(body)["status"] == 405


def test_head_has_headers_and_no_body(server: MetricsServer) -> None:
    code, headers, body = get(server.url + "/health", method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("line", [b"GARBAGE\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n",
                                  b"GET\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n"])
def test_a_malformed_request_gets_a_4xx_and_no_traceback(server: MetricsServer, line: bytes) -> None:
    reply = raw_request(server.port, line)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 600 and status != 500
    assert b"Traceback" not in reply and b"<html" not in reply.lower()
    assert get(server.url + "/health")[0] == 200   # still serving


def test_a_failing_handler_answers_500_json_without_traceback(server: MetricsServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import ngstore.obs.http as http_mod

    def boom(store: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(http_mod, "readiness", boom)
    code, _, body = get(server.url + "/ready")
    assert code == 500
    assert b"secret internal detail" not in body and b"Traceback" not in body
    assert json.loads(body)["status"] == 500


def test_two_sidecars_in_one_process_have_their_own_registries(tmp_path: Any) -> None:
    a = FakeStore(str(tmp_path / "a"), tokens_live=1)
    b = FakeStore(str(tmp_path / "b"), tokens_live=2)
    with serve(a) as sa, serve(b) as sb:
        assert sa.registry is not sb.registry and sa.port != sb.port
        ta = get(sa.url + "/metrics")[2].decode()
        tb = get(sb.url + "/metrics")[2].decode()
    assert f'neurograph_tokens_active{{store="{a.path}"}} 1.0' in ta and b.path not in ta
    assert f'neurograph_tokens_active{{store="{b.path}"}} 2.0' in tb


def test_close_releases_the_port(store: FakeStore) -> None:
    srv = serve(store)
    port = srv.port
    srv.close()
    srv.close()  # idempotent
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_serve_waits_for_the_store_then_serves_it_until_sigterm(tmp_path: Any) -> None:
    port = free_port()
    child = textwrap.dedent(f"""
        import sys, os
        sys.path.insert(0, {REPO!r})
        import ngstore, ngstore.obs.http as h
        from ngstore.obs import Observability

        class Fake:
            path = {str(tmp_path)!r}
            def __init__(self): self.obs = Observability(self.path, tracing=False)
            def stats(self): return {{"tokens_live": 5, "path": self.path, "readonly": True}}
            def close(self): print("closed", flush=True)

        flag = os.path.join({str(tmp_path)!r}, "created")
        def fake_open(path, readonly=False):
            assert readonly is True
            if not os.path.exists(flag):
                raise FileNotFoundError("no store yet")
            return Fake()
        ngstore.open = fake_open
        sys.exit(h.main_serve({str(tmp_path)!r}, "127.0.0.1", {port}, retry_seconds=0.05))
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def wait_for(pred: Any) -> Any:
            for _ in range(600):
                try:
                    r = pred()
                    if r:
                        return r
                except OSError:
                    pass
                time.sleep(0.05)
            raise AssertionError("condition never held; stderr: " + proc.stderr.read())

        wait_for(lambda: get(url + "/health")[0] == 200)
        # The server answers from the moment it binds, before main_serve's first open attempt
        # has run ("not opened yet"): wait for that attempt's error, not for the first answer.
        def first_open_failed() -> Any:
            r = get(url + "/ready")
            return r if "no store yet" in r[2].decode() else None

        assert wait_for(first_open_failed)[0] == 503
        assert 'neurograph_store_open{store=' in get(url + "/metrics")[2].decode()
        open(os.path.join(tmp_path, "created"), "w").close()
        wait_for(lambda: get(url + "/ready")[0] == 200)
        assert "neurograph_tokens_active{store=" in get(url + "/metrics")[2].decode()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "closed" in out
    assert any(json.loads(line).get("message", "").startswith("serving") for line in
               err.splitlines() if line.startswith("{"))


# --- examples/deploy, validated offline (Docker itself is not run) -----------------------------

def load_yaml(path: str) -> Any:
    yaml = pytest.importorskip("yaml")
    with open(path) as f:
        return yaml.safe_load(f)


def collector_sample_names(tmp_path: Any) -> set[str]:
    s = FakeStore(str(tmp_path))
    reg = CollectorRegistry()
    reg.register(StoreCollector(s))
    return sample_names(generate_latest(reg).decode())


def test_the_dashboard_queries_only_metrics_the_collector_exports(tmp_path: Any) -> None:
    with open(os.path.join(DEPLOY, "grafana", "dashboards", "ngstore.json")) as f:
        dash = json.load(f)
    exported = collector_sample_names(tmp_path)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs.append(dash["templating"]["list"][0]["query"]["query"])
    assert len(exprs) > 30
    used = {m for e in exprs for m in re.findall(r"\bneurograph_[a-z0-9_]+", e)}
    assert used and used <= exported, sorted(used - exported)
    # every exported family appears on the dashboard somewhere
    families = {n[:-6] if n.endswith("_total") else n for n in metric_names()}
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", u) for u in used}
    assert families <= shown, sorted(families - shown)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_the_compose_file_is_sane(tmp_path: Any) -> None:
    doc = load_yaml(os.path.join(DEPLOY, "docker-compose.yml"))
    services = doc["services"]
    assert set(services) == {"ngstore", "prometheus", "grafana"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)   # loopback only
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert os.path.exists(os.path.join(DEPLOY, src)), vol
            else:
                assert src in doc["volumes"], vol
    build = services["ngstore"]["build"]
    assert os.path.exists(os.path.normpath(os.path.join(DEPLOY, build["context"], build["dockerfile"])))
    assert services["prometheus"]["depends_on"]["ngstore"]["condition"] == "service_healthy"
    schema_path = os.environ.get("NGSTORE_COMPOSE_SCHEMA")   # e.g. compose_spec.json
    if schema_path:
        jsonschema = pytest.importorskip("jsonschema")
        with open(schema_path) as f:
            jsonschema.validate(doc, json.load(f))


def test_the_prometheus_config_scrapes_the_sidecar() -> None:
    path = os.path.join(DEPLOY, "prometheus.yml")
    doc = load_yaml(path)
    (job,) = doc["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["ngstore:9818"]
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    ds = load_yaml(os.path.join(DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yml"))
    (src,) = ds["datasources"]
    assert src["type"] == "prometheus" and src["uid"] == "prometheus"
    assert src["url"] == "http://prometheus:9090"
    prov = load_yaml(os.path.join(DEPLOY, "grafana", "provisioning", "dashboards", "ngstore.yml"))
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_dockerfile_is_multi_stage_non_root_with_a_health_check() -> None:
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = f.read()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(froms) == 2 and froms[0][1] == "build"
    assert "--from=build" in text and "gcc" in text
    build_stage, runtime_stage = text.split("FROM ", 2)[1:]
    assert "gcc" not in runtime_stage.split("COPY --from")[0]
    assert re.search(r"^USER\s+(?!root|0\b)\S+", runtime_stage, re.M)
    assert re.search(r"^HEALTHCHECK .*", runtime_stage, re.M) and "/health" in runtime_stage
    assert '"serve", "/data", "--host", "0.0.0.0"' in runtime_stage
    for src in re.findall(r"^COPY\s+(?!--)(\S+)", build_stage, re.M):
        assert os.path.exists(os.path.join(REPO, src)), src
