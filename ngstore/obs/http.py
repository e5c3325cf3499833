"""The HTTP sidecar: ``/metrics``, ``/health`` (liveness), ``/ready`` (readiness).

A ``ThreadingHTTPServer`` on a daemon thread, bound to 127.0.0.1 unless told otherwise (the
endpoints have no authentication, like the original's ``/metrics``). Each server has its own
``CollectorRegistry`` holding the store's ``StoreCollector``, so two stores served from one
process never share a registry.

``ngstore serve PATH`` (:func:`main_serve`) serves a :class:`SidecarView`: the store opened
read-only, merged with the writer's stats page (``ngstore.obs.statspage``), so that the
writer's counters, histograms and limits are what it shows, labelled with the writer's pid
and whether it is alive.

* ``GET /metrics`` — Prometheus text exposition, ``Content-Type`` = prometheus_client's
  ``CONTENT_TYPE_LATEST`` (``text/plain; version=1.0.0; charset=utf-8`` with
  prometheus_client 0.20 and later).
* ``GET /health`` — liveness: ``200 {"status": "ok"}`` as long as the process serves requests.
  It does not look at the store (a closed store is a readiness failure, not a reason to kill
  the process).
* ``GET /ready`` — readiness with real checks (the original's were hard-coded ``true``):
  ``store_open``, ``log_writable``, ``map_not_full`` (< 90 % of the LMDB map used),
  ``token_quota`` (< 80 % of ``max_tokens``) and ``memory_quota`` (< 80 % of the byte count at
  which the Guardian refuses writes, ``max_bytes × memory_threshold``; no limit = pass), plus
  whatever ``store.ready_checks()`` returns if the store has it (its entries override these).
  ``200 {"status": "ready", "checks": {...}}`` or
  ``503 {"status": "not_ready", "failed": [...], "checks": {...}}``; each check is
  ``{"ok": bool, "detail": str}``.
* Any other path: 404 JSON; any other method: 405 JSON with ``Allow: GET, HEAD``; a malformed
  request: 400 JSON (from the standard library's parser); an exception in a handler: logged,
  500 JSON, never a traceback to the client.

With a ``tracer`` (``main_serve`` makes one when OpenTelemetry is installed), every request is
a server span ``GET /metrics`` etc., a child of the caller's W3C ``traceparent`` when the
request carries one, sampled by the rules of ``ngstore.obs.tracing``.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..fileio import DEFAULT_IO, FileIO
from ..interrupts import Signal
from .metrics import StoreCollector
from .statspage import PageHistograms, PublishedStats, merge_published, published_labels, read_stats_page
from .tracing import SamplerConfig, Tracer, TraceSampler, from_headers, otel_available

__all__ = [
    "MAP_FULL_RATIO",
    "QUOTA_RATIO",
    "MetricsServer",
    "SidecarView",
    "main_serve",
    "readiness",
    "serve",
]

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
    reader = _plain_reader(store, stats)
    if reader:   # a read-only Store: the writer's limits and counters, from its stats page
        stats = merge_published(stats, _page_of(stats))
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
    threshold = _f(stats, "memory_threshold") or 1.0
    checks["memory_quota"] = _ratio_check(_f(stats, "memory_used_bytes"),
                                          _f(stats, "memory_limit_bytes") * threshold, QUOTA_RATIO,
                                          "accounted bytes (of max_bytes x memory_threshold)")
    extra_fn = getattr(store, "ready_checks", None)
    if callable(extra_fn):
        try:
            for name, value in dict(extra_fn()).items():
                if reader and name == "quotas_below_threshold":
                    continue   # the reader's own Guardian: its default limits, not the writer's
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


def _plain_reader(store: Any, stats: dict[str, Any]) -> bool:
    """A read-only store of the application's own (not the sidecar's view, which merges
    itself): its metrics and readiness are merged with the writer's stats page."""
    return bool(stats.get("readonly")) and not stats.get("closed") and \
        not callable(getattr(store, "metric_labels", None)) and isinstance(stats.get("path"), str)


def _page_of(stats: dict[str, Any]) -> PublishedStats | None:
    try:
        return read_stats_page(str(stats["path"]))
    except (OSError, ValueError) as exc:
        _log.debug("no stats page for %s: %s", stats.get("path"), exc)
        return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "ngstore-sidecar"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"
    _status = 0

    def _send(self, code: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self._status = code
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

    def _route(self, path: str) -> None:
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

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        tracer = self.server.tracer
        if tracer is None:
            self._handle(path, None)
            return
        route = path if path in ("/metrics", "/health", "/ready") else "unknown"
        with tracer.span(f"{self.command} {route}", kind="server", **from_headers(dict(self.headers)),
                         **{"http.request.method": self.command, "url.path": path,
                            "http.route": route, "server.port": self.server.server_address[1]}) as sp:
            self._handle(path, sp)
            sp.set("http.response.status_code", self._status)

    def _handle(self, path: str, span: Any) -> None:
        try:
            self._route(path)
        except Exception as exc:
            _log.exception("sidecar request %s %s failed", self.command, self.path)
            if span is not None:
                span.error(exc)
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

    def __init__(self, addr: tuple[str, int], store: Any, registry: Any, tracer: Tracer | None) -> None:
        self.store = store
        self.registry = registry
        self.tracer = tracer
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("sidecar error serving %s", client_address)


class MetricsServer:
    """A running sidecar. ``port``, ``url``, ``registry``; ``close()`` stops it.

    Binding happens in the constructor: ``OSError`` (address in use, cannot assign the
    address) or ``socket.gaierror`` (a host name that does not resolve) come from here."""

    def __init__(self, store: Any, host: str = "127.0.0.1", port: int = 0,
                 name: str | None = None, tracer: Tracer | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = StoreCollector(store, name=name)
        self.registry.register(self.collector)
        self._server = _Server((host, port), store, self.registry, tracer)
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

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(store: Any, host: str = "127.0.0.1", port: int = 0, *,
          name: str | None = None, tracer: Tracer | None = None) -> MetricsServer:
    """Serve ``store``'s metrics, health and readiness on ``host:port`` (0 = a free port)."""
    return MetricsServer(store, host=host, port=port, name=name, tracer=tracer)


class SidecarView:
    """What ``ngstore serve`` shows: the store opened read-only, merged with the writer's
    stats page.

    Until the store can be opened (the sidecar may start before the application has created
    it) ``stats()`` says closed, so ``/ready`` is 503 with ``store_open`` failed,
    ``/metrics`` shows ``neurograph_store_open 0``, and ``/health`` is 200.

    Merging (``stats()``): the values a reader computes from LMDB itself
    (``statspage.READER_KEYS``: live counts, applied position, map use, readers) are the
    reader's; every other value (commits, the log, reflex lookups, the sampler, the black box,
    the limits ``token_limit``/``memory_limit_bytes``/``memory_threshold``) is the writer's,
    from its last publish, whether it is still alive or not. Added: ``writer_pid``,
    ``writer_alive``, ``writer_closed``, ``stats_age_seconds``. ``obs`` gives the writer's
    histograms. Every series carries the labels ``writer_pid`` and ``writer_alive``.
    """

    def __init__(self, path: str, *, io: FileIO = DEFAULT_IO) -> None:
        self.path = os.path.realpath(path)
        self.io = io
        self.store: Any = None
        self.error = "not opened yet"
        self._page: PublishedStats | None = None
        self._page_error: str | None = None

    def _read_page(self) -> PublishedStats | None:
        try:
            page = read_stats_page(self.path, io=self.io)
        except (OSError, ValueError) as exc:
            if str(exc) != self._page_error:
                self._page_error = str(exc)
                _log.warning("cannot read the writer's stats page: %s", exc,
                             extra={"store_path": self.path})
            return None
        self._page_error = None
        return page

    def stats(self) -> dict[str, Any]:
        if self.store is None:
            out: dict[str, Any] = {"path": self.path, "closed": True, "readonly": True}
        else:
            out = dict(self.store.stats())
        self._page = self._read_page()
        return merge_published(out, self._page)

    @property
    def obs(self) -> Any:
        return PageHistograms(self._page) if self._page is not None else None

    def metric_labels(self) -> dict[str, str]:
        return published_labels(self._page)

    def ready_checks(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        if self.store is None:
            checks["store_open"] = {"ok": False, "detail": f"cannot open {self.path}: {self.error}"}
        page = self._page
        if page is None:
            checks["writer"] = {"ok": True, "detail": "no writer has published here"}
            return checks
        if page.alive:
            checks["writer"] = {"ok": True, "detail": f"pid {page.pid} alive, published "
                                                      f"{page.age_seconds:.1f} s ago"}
            checks["log_writable"] = {"ok": not page.write_failed,
                                      "detail": "the writer refuses writes after an I/O error; "
                                                "reopen it" if page.write_failed else "ok"}
        elif page.closed:
            checks["writer"] = {"ok": True, "detail": f"pid {page.pid} closed the store"}
            checks["log_writable"] = {"ok": True, "detail": "no writer"}
        else:
            checks["writer"] = {"ok": False,
                                "detail": f"pid {page.pid} ended without closing the store; the "
                                          "next writer to open it recovers it (or run "
                                          "`ngstore recover`)"}
            checks["log_writable"] = {"ok": True, "detail": "no writer"}
        return checks

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def sidecar_tracer() -> tuple[Tracer | None, Any]:
    """The tracer of ``ngstore serve`` and the tracer provider it installed (to flush at exit),
    or ``(None, None)`` without OpenTelemetry or with ``NGSTORE_TRACING=off``. Spans go over
    OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
    is set and the ``otlp`` extra is installed; the base sampling rate is
    ``NGSTORE_SAMPLE_RATE`` (default 0.01; a request with a sampled ``traceparent`` is always
    recorded)."""
    if os.environ.get("NGSTORE_TRACING", "").strip().lower() in ("0", "off", "false", "no"):
        return None, None
    if not otel_available():
        return None, None
    provider = _setup_otlp()
    try:
        rate = float(os.environ.get("NGSTORE_SAMPLE_RATE", "0.01"))
    except ValueError:
        rate = 0.01
    return Tracer(sampler=TraceSampler(SamplerConfig(base_rate=rate))), provider


def _setup_otlp() -> Any:
    """Install an OTLP/HTTP exporter as the global tracer provider, if the standard
    OpenTelemetry environment variables ask for one and nobody installed a provider yet.
    Returns the provider installed, or None."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry import trace

    if not type(trace.get_tracer_provider()).__name__.startswith("Proxy"):
        return None   # the application (or a test) installed its own provider
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        _log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is missing (%s); "
                     "install it with: pip install 'ngstore[otlp]'", exc)
        return None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ngstore-sidecar")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def main_serve(path: str, host: str = "127.0.0.1", port: int = 9818, *,
               retry_seconds: float = 2.0, ready: threading.Event | None = None) -> int:
    """``ngstore serve PATH``: serve a :class:`SidecarView` of ``PATH`` until SIGTERM/SIGINT.

    The server binds first (``OSError``/``socket.gaierror`` from there reach the caller:
    nothing else has happened yet); opening the store is then retried every
    ``retry_seconds`` until it succeeds (so a container can start before its store exists).
    Logs JSON lines to stderr unless the application configured the ``ngstore`` logger.
    Returns the exit code (0).
    """
    import ngstore

    from .logs import enable_json_logging

    view = SidecarView(path)
    tracer, provider = sidecar_tracer()
    stop = Signal()  # set from the signal handler: an Event's set could wait for its own thread's lock

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # Before the server answers: a SIGTERM from then on is a clean exit, never the default kill.
    prev = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = serve(view, host=host, port=port, name=path, tracer=tracer)
    except BaseException:
        for sig, h in prev.items():
            signal.signal(sig, h)
        if provider is not None:
            provider.shutdown()
        raise
    if not logging.getLogger("ngstore").handlers:
        enable_json_logging()
    _log.info("serving %s on %s", path, server.url, extra={"store_path": path})
    if ready is not None:
        ready.set()
    try:
        while view.store is None and not stop.is_set():
            try:
                view.store = ngstore.open(path, readonly=True)
                _log.info("opened %s read-only", path, extra={"store_path": path})
            except Exception as exc:  # not created yet, locked by recovery, ...
                if str(exc) != view.error:
                    _log.warning("cannot open %s yet: %s", path, exc, extra={"store_path": path})
                view.error = str(exc)
                stop.wait(retry_seconds)
        stop.wait()
    finally:
        server.close()
        for sig, h in prev.items():
            signal.signal(sig, h)
        view.close()
        if provider is not None:
            provider.shutdown()   # flushes the spans still queued for the collector
    return 0
