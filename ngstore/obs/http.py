"""The HTTP sidecar: ``/metrics``, ``/health`` (liveness), ``/ready`` (readiness).

A ``ThreadingHTTPServer`` on a daemon thread, bound to 127.0.0.1 unless told otherwise (the
endpoints have no authentication, like the original's ``/metrics``). Each server has its own
``CollectorRegistry`` holding the store's ``StoreCollector``, so two stores served from one
process never share a registry.

* ``GET /metrics`` — Prometheus text exposition, ``Content-Type`` = prometheus_client's
  ``CONTENT_TYPE_LATEST``.
* ``GET /health`` — liveness: ``200 {"status": "ok"}`` as long as the process serves requests.
  It does not look at the store (a closed store is a readiness failure, not a reason to kill
  the process).
* ``GET /ready`` — readiness with real checks (the original's were hard-coded ``true``):
  ``store_open``, ``log_writable``, ``map_not_full`` (< 90 % of the LMDB map used),
  ``token_quota`` and ``memory_quota`` (< 80 % of the limit; no limit = pass), plus whatever
  ``store.ready_checks()`` returns if the store has it (its entries override these).
  ``200 {"status": "ready", "checks": {...}}`` or
  ``503 {"status": "not_ready", "failed": [...], "checks": {...}}``; each check is
  ``{"ok": bool, "detail": str}``.
* Any other path: 404 JSON; any other method: 405 JSON with ``Allow: GET, HEAD``; a malformed
  request: 400 JSON (from the standard library's parser); an exception in a handler: logged,
  500 JSON, never a traceback to the client.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .metrics import StoreCollector

__all__ = ["MetricsServer", "serve", "readiness", "main_serve", "MAP_FULL_RATIO",
           "QUOTA_RATIO"]

_log = logging.getLogger("ngstore.obs.http")

MAP_FULL_RATIO = 0.90
QUOTA_RATIO = 0.80


def _f(stats: dict[str, Any], key: str) -> float:
    try:
        return float(stats.get(key) or 0)
    except (TypeError, ValueError):
        return 0.0


def _ratio_check(used: float, limit: float, bound: float, what: str) -> dict[str, Any]:
    if limit <= 0:
        return {"ok": True, "detail": f"{what}: no limit"}
    r = used / limit
    return {"ok": r < bound,
            "detail": f"{what}: {used:.0f} of {limit:.0f} ({100 * r:.1f} %, threshold "
                      f"{100 * bound:.0f} %)"}


def readiness(store: Any) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Compute the readiness checks for ``store``; ``(all_ok, checks)``."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        stats = dict(store.stats())
    except Exception as exc:
        checks["stats"] = {"ok": False, "detail": f"stats() failed: {type(exc).__name__}: {exc}"}
        return False, checks
    closed = bool(stats.get("closed"))
    checks["store_open"] = {"ok": not closed, "detail": "closed" if closed else "open"}
    if stats.get("readonly"):
        checks["log_writable"] = {"ok": True, "detail": "read-only store: not applicable"}
    else:
        checks["log_writable"] = {"ok": not closed, "detail": "store open for writing"
                                  if not closed else "store closed"}
    checks["map_not_full"] = _ratio_check(_f(stats, "map_used_bytes"),
                                          _f(stats, "map_size_bytes"), MAP_FULL_RATIO,
                                          "LMDB map bytes")
    checks["token_quota"] = _ratio_check(_f(stats, "tokens_live"), _f(stats, "token_limit"),
                                         QUOTA_RATIO, "tokens")
    checks["memory_quota"] = _ratio_check(_f(stats, "memory_used_bytes"),
                                          _f(stats, "memory_limit_bytes"), QUOTA_RATIO,
                                          "accounted bytes")
    extra_fn = getattr(store, "ready_checks", None)
    if callable(extra_fn):
        try:
            for name, value in dict(extra_fn()).items():
                if isinstance(value, dict):
                    checks[str(name)] = {"ok": bool(value.get("ok")),
                                         "detail": str(value.get("detail", ""))}
                elif isinstance(value, tuple):
                    checks[str(name)] = {"ok": bool(value[0]),
                                         "detail": str(value[1]) if len(value) > 1 else ""}
                else:
                    checks[str(name)] = {"ok": bool(value), "detail": ""}
        except Exception as exc:
            checks["ready_checks"] = {"ok": False,
                                      "detail": f"ready_checks() failed: {type(exc).__name__}: {exc}"}
    return all(c["ok"] for c in checks.values()), checks


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    server_version = "ngstore-sidecar"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"

    def _send(self, code: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(doc).encode(), "application/json", headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors from the standard library's request parsing, as JSON and without HTML."""
        try:
            self.close_connection = True
            if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
                # A garbled request line leaves the parser assuming HTTP/0.9, which has no
                # status line; answer with one so the client sees the 4xx.
                self.request_version = "HTTP/1.0"
            body = json.dumps({"error": message or self.responses.get(code, ("",))[0],
                               "status": code}).encode()
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except Exception:  # client gone
            pass

    def do_GET(self) -> None:
        try:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self._json(200, {"status": "ok"})
            elif path == "/ready":
                ok, checks = readiness(self.server.store)
                if ok:
                    self._json(200, {"status": "ready", "checks": checks})
                else:
                    failed = [k for k, c in checks.items() if not c["ok"]]
                    self._json(503, {"status": "not_ready", "failed": failed, "checks": checks})
            else:
                self._json(404, {"error": "not found", "status": 404,
                                 "paths": ["/metrics", "/health", "/ready"]})
        except Exception:
            _log.exception("sidecar request %s %s failed", self.command, self.path)
            try:
                self._json(500, {"error": "internal error (see the server log)", "status": 500})
            except Exception:
                pass

    do_HEAD = do_GET

    def _method_not_allowed(self) -> None:
        self._json(405, {"error": f"method {self.command} not allowed", "status": 405},
                   {"Allow": "GET, HEAD"})

    def __getattr__(self, name: str) -> Any:
        # Every ``do_<METHOD>`` other than GET/HEAD answers 405 (the standard handler would
        # answer 501 for methods it has no ``do_`` for).
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("sidecar %s - " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], store: Any, registry: Any) -> None:
        self.store = store
        self.registry = registry
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("sidecar error serving %s", client_address)


class MetricsServer:
    """A running sidecar. ``port``, ``url``, ``registry``; ``close()`` stops it."""

    def __init__(self, store: Any, host: str = "127.0.0.1", port: int = 0,
                 name: str | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = StoreCollector(store, name=name)
        self.registry.register(self.collector)
        self._server = _Server((host, port), store, self.registry)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"ngstore-sidecar-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(store: Any, host: str = "127.0.0.1", port: int = 0, *,
          name: str | None = None) -> MetricsServer:
    """Serve ``store``'s metrics, health and readiness on ``host:port`` (0 = a free port)."""
    return MetricsServer(store, host=host, port=port, name=name)


class _StoreSlot:
    """Stands for the store until ``ngstore.open`` succeeds (the sidecar may start before the
    application has created the store): ``stats()`` says closed, so ``/ready`` is 503 with
    ``store_open`` failed, ``/metrics`` shows ``neurograph_store_open 0``, ``/health`` is 200."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.store: Any = None
        self.error = "not opened yet"

    @property
    def obs(self) -> Any:
        return getattr(self.store, "obs", None)

    def stats(self) -> dict[str, Any]:
        if self.store is None:
            return {"path": self.path, "closed": True, "readonly": True}
        return self.store.stats()

    def ready_checks(self) -> dict[str, Any]:
        if self.store is None:
            return {"store_open": {"ok": False, "detail": f"cannot open {self.path}: {self.error}"}}
        fn = getattr(self.store, "ready_checks", None)
        return dict(fn()) if callable(fn) else {}


def main_serve(path: str, host: str = "127.0.0.1", port: int = 9818, *,
               retry_seconds: float = 2.0) -> int:
    """``ngstore serve PATH``: serve ``ngstore.open(PATH, readonly=True)`` until SIGTERM/SIGINT.

    The server starts at once; opening the store is retried every ``retry_seconds`` until it
    succeeds (so a container can start before its store exists). Logs JSON lines to stderr
    unless the application configured the ``ngstore`` logger. Returns the exit code (0).
    """
    import ngstore
    from .logs import enable_json_logging

    if not logging.getLogger("ngstore").handlers:
        enable_json_logging()
    slot = _StoreSlot(path)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    prev = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server = serve(slot, host=host, port=port, name=path)
    _log.info("serving %s on %s", path, server.url, extra={"store_path": path})
    try:
        while slot.store is None and not stop.is_set():
            try:
                slot.store = ngstore.open(path, readonly=True)  # type: ignore[attr-defined]
                _log.info("opened %s read-only", path, extra={"store_path": path})
            except Exception as exc:  # not created yet, locked by recovery, ...
                if str(exc) != slot.error:
                    _log.warning("cannot open %s yet: %s", path, exc, extra={"store_path": path})
                slot.error = str(exc)
                stop.wait(retry_seconds)
        stop.wait()
    finally:
        server.close()
        for sig, h in prev.items():
            signal.signal(sig, h)
        if slot.store is not None:
            slot.store.close()
    return 0
