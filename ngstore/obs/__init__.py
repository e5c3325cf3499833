"""Observability for one store: black box, histograms, spans, logs, crash handlers.

The Store owns one ``Observability`` and calls, on its hot path, only things that cost a
few hundred nanoseconds: ``event`` (a deque append), ``Histogram.observe`` (bisect + list
increment) and ``span`` (the shared no-op when tracing is off; a start time and an end-time
decision when on). Everything that formats, serialises or talks to Prometheus/OpenTelemetry
happens at dump, scrape or (sampled) span-end time.

Crash handlers (``install_crash_handlers``) and what a dump contains in each case
---------------------------------------------------------------------------------
* **Unhandled exception** in the main thread (``sys.excepthook``, including an unhandled
  ``KeyboardInterrupt`` from Ctrl-C) or in another thread (``threading.excepthook``): an
  ``"error"`` event is recorded, then a full dump is written (ring, stats, ``store_stats`` from
  ``stats_fn``, the exception and its traceback), then the previous hook runs.
* **SIGTERM, SIGHUP** (only if their handler is the default one when installing, and only from
  the main thread, where Python allows installing handlers): the handler writes a full dump,
  restores the default disposition and re-sends the signal, so the process still dies of it
  (exit status = killed by SIGTERM). Python runs the handler between bytecodes of the main
  thread; while the main thread is blocked inside a C call the dump waits for it to return.
* **SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT**: no Python code can run after such a signal, so
  no dump is made at the moment of the crash. What is left is (1) ``faulthandler``'s traceback
  of every thread, written by C into ``blackbox-faulthandler-<unix_ms>-<pid>.log`` in the store
  directory, and (2) the last periodic ring flush ``blackbox-ring-<pid>.json``, written every
  ``ring_flush_seconds`` (default 10 s) by a background thread, and only when events were
  recorded since the previous flush: events of the last ``ring_flush_seconds`` before the crash
  are missing from it. ``faulthandler`` is process-wide: with several stores open, the first
  store that installed handlers receives the traceback file.
* **SIGKILL / power loss**: nothing runs; the last ring flush (if any) is what remains.

``stats_fn`` is called in a helper thread with a one-second limit during a crash dump: a
signal can interrupt code holding the store's locks, and a dump must not deadlock on them.

A clean ``close()`` removes the ring flush and an empty faulthandler log: after a clean close,
only explicit and crash dumps remain.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable

from .blackbox import BlackBox, list_dumps, load_dump, write_dump_file
from .logs import StoreLoggerAdapter, enable_json_logging, store_logger
from .metrics import HISTOGRAMS, Histogram, StoreCollector, register
from .tracing import NOOP_SPAN, SamplerConfig, TraceSampler, Tracer, from_headers, noop_span, \
    otel_available

__all__ = ["Observability", "BlackBox", "Histogram", "StoreCollector", "register",
           "SamplerConfig", "TraceSampler", "from_headers", "enable_json_logging",
           "list_dumps", "load_dump", "NOOP_SPAN", "serve"]

_log = logging.getLogger("ngstore.obs")

_FATAL_SIGNALS = "SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT"
_CATCHABLE_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def serve(store: Any, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Start the HTTP sidecar (see ``ngstore.obs.http.serve``)."""
    from .http import serve as _serve

    return _serve(store, host=host, port=port)


def _tracing_env_off() -> bool:
    return os.environ.get("NGSTORE_TRACING", "").strip().lower() in ("0", "off", "false", "no")


class Observability:
    """One store's observability. See the module docstring for the crash-handler contract.

    ``tracing``: None = on if OpenTelemetry is importable (and ``NGSTORE_TRACING`` is not
    ``off``); False = off (``span`` is the shared no-op); True = on, ``ImportError`` if
    OpenTelemetry is missing; a ``SamplerConfig`` = on with that config.
    ``sample_rate`` is the sampler's base rate. ``logger``: the logger behind ``.logger``
    (default ``logging.getLogger("ngstore")``). ``tracer_provider``, ``clock``, ``rng``: for
    tests and custom OTel setups. ``dump_compress``: write dumps as ``.json.zst``.
    """

    def __init__(self, store_path: str, *, blackbox_capacity: int = 1000,
                 tracing: bool | SamplerConfig | None = None, sample_rate: float = 0.01,
                 logger: logging.Logger | None = None, tracer_provider: Any = None,
                 clock: Callable[[], float] | None = None, rng: Any = None,
                 dump_compress: bool = False) -> None:
        self.store_path = os.fspath(store_path)
        self.dump_compress = dump_compress
        self.blackbox = BlackBox(blackbox_capacity)
        #: ``event(event_type, **data)``: the ring's bound ``record``, no extra call layer.
        self.event: Callable[..., None] = self.blackbox.record
        self.logger: StoreLoggerAdapter = store_logger(self.store_path, logger)

        for attr, (_, buckets) in HISTOGRAMS.items():
            setattr(self, attr, Histogram(buckets))
        self.commit_seconds: Histogram
        self.wal_write_seconds: Histogram
        self.batch_records: Histogram
        self.validation_seconds: Histogram
        self.token_creation_seconds: Histogram
        self.connection_creation_seconds: Histogram
        self.tracing_overhead_seconds: Histogram

        config = tracing if isinstance(tracing, SamplerConfig) else SamplerConfig()
        if not isinstance(tracing, SamplerConfig):
            config.base_rate = sample_rate
        self.sampler = TraceSampler(config, rng=rng)
        want = tracing is not False and not (tracing is None and _tracing_env_off())
        self.tracer: Tracer | None = None
        if want and (tracing is not None or otel_available()):
            # tracing=True (or a config) with OpenTelemetry missing raises ImportError here.
            self.tracer = Tracer(sampler=self.sampler, tracer_provider=tracer_provider,
                                 clock=clock, rng=rng,
                                 on_overhead=self.tracing_overhead_seconds.observe)
        #: ``span(name, **attributes)`` → context manager with ``.set(k, v)``, ``.error(exc)``.
        self.span: Callable[..., Any] = self.tracer.span if self.tracer else noop_span

        self._stats_fn: Callable[[], dict[str, Any]] | None = None
        self._crash_installed = False
        self._flusher: threading.Thread | None = None
        self._flush_stop = threading.Event()
        self._last_flushed = -1
        self._flush_error_logged = False
        self._closed = False

    # ------------------------------------------------------------------ dumps
    @property
    def tracing_enabled(self) -> bool:
        return self.tracer is not None and self.sampler.config.enabled

    def _store_stats(self, timeout: float = 1.0) -> tuple[dict[str, Any] | None, str | None]:
        fn = self._stats_fn
        if fn is None:
            return None, None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["v"] = dict(fn())
            except BaseException as exc:  # noqa: BLE001 - reported in the dump
                box["e"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=run, name="ngstore-dump-stats", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            return None, f"stats() did not return within {timeout} s"
        return box.get("v"), box.get("e")

    def dump(self, reason: str = "explicit", *, compress: bool | None = None,
             exc_info: tuple[Any, Any, Any] | None = None) -> str:
        """Write a dump of the ring into the store directory; return its path."""
        stats, stats_err = self._store_stats()
        exception = None
        if exc_info is not None and exc_info[0] is not None:
            et, ev, tb = exc_info
            exception = {"type": getattr(et, "__qualname__", str(et)), "message": str(ev),
                         "traceback": "".join(traceback.format_exception(et, ev, tb))}
        doc = self.blackbox.to_dump(reason=reason, store_path=self.store_path,
                                    store_stats=stats, exception=exception)
        if stats_err:
            doc["store_stats_error"] = stats_err
        path = write_dump_file(self.store_path, doc,
                               compressed=self.dump_compress if compress is None else compress)
        _log.log(logging.INFO if reason == "explicit" else logging.WARNING,
                 "black box dumped to %s (%s)", path, reason,
                 extra={"store_path": self.store_path})
        return path

    def flush_ring(self) -> str | None:
        """Write ``blackbox-ring-<pid>.json`` now if events arrived since the last flush.

        Plain writes, not the file seam: the periodic flush runs on its own thread and must
        not perturb fault-injection tests that count the store's I/O calls."""
        recorded = self.blackbox.stats()["total_recorded"]
        if recorded == self._last_flushed:
            return None
        doc = self.blackbox.to_dump(reason="periodic ring flush", store_path=self.store_path)
        path = _ring_path(self.store_path)
        _plain_atomic_write(path, doc)
        self._last_flushed = recorded
        return path

    def _flush_loop(self, interval: float) -> None:
        while not self._flush_stop.wait(interval):
            try:
                self.flush_ring()
            except Exception as exc:  # read-only directory, disk full: note once, go on
                if not self._flush_error_logged:
                    self._flush_error_logged = True
                    _log.warning("black box ring flush failed: %s", exc,
                                 extra={"store_path": self.store_path})

    # ------------------------------------------------------------------ crash handlers
    def install_crash_handlers(self, stats_fn: Callable[[], dict[str, Any]] | None = None, *,
                               ring_flush_seconds: float | None = 10.0,
                               catch_signals: bool = True) -> None:
        """Dump the box on an unhandled exception or a catchable fatal signal, and leave a
        faulthandler traceback plus the last ring flush on a fatal signal (module docstring).
        Idempotent; ``close()`` undoes it."""
        if self._closed:
            raise RuntimeError("Observability is closed")
        self._stats_fn = stats_fn
        if self._crash_installed:
            return
        self._crash_installed = True
        _hooks.add(self, catch_signals)
        if ring_flush_seconds:
            self._flush_stop.clear()
            self._flusher = threading.Thread(target=self._flush_loop, args=(ring_flush_seconds,),
                                             name="ngstore-blackbox-flush", daemon=True)
            self._flusher.start()

    def _crash_dump(self, reason: str, exc_info: tuple[Any, Any, Any] | None = None) -> None:
        try:
            if exc_info is not None and exc_info[1] is not None:
                self.event("error", where="crash handler", type=exc_info[0].__name__,
                           message=str(exc_info[1]))
            self.dump(reason, exc_info=exc_info)
        except BaseException as exc:  # noqa: BLE001 - a failing dump must not mask the crash
            try:
                sys.stderr.write(f"ngstore: black box dump failed: {exc!r}\n")
            except Exception:
                pass

    def close(self) -> None:
        """Uninstall hooks, stop the flusher, remove the ring flush. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._flush_stop.set()
            self._flusher.join(timeout=5)
            self._flusher = None
        if self._crash_installed:
            _hooks.remove(self)
            self._crash_installed = False
            try:
                os.unlink(_ring_path(self.store_path))
            except OSError:
                pass

    def __repr__(self) -> str:
        return (f"Observability({self.store_path!r}, tracing={self.tracing_enabled}, "
                f"events={len(self.blackbox)})")


def _ring_path(store_path: str) -> str:
    return os.path.join(store_path, f"blackbox-ring-{os.getpid()}.json")


def _plain_atomic_write(path: str, doc: dict[str, Any]) -> None:
    from .blackbox import encode_dump

    tmp = f"{path}.tmp-{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(encode_dump(doc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _ProcessHooks:
    """The process-wide hooks, installed once for all live ``Observability`` objects.

    Hooks are process state; installing one per store would chain N copies and make the
    order of uninstalls matter. Here the first store installs, every live store is dumped,
    and the last one to close restores the previous hooks (if nobody replaced ours since;
    if somebody did, ours stays in their chain and does nothing).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._members: "weakref.WeakSet[Observability]" = weakref.WeakSet()
        self._prev_excepthook: Any = None
        self._prev_threading_hook: Any = None
        self._prev_signals: dict[int, Any] = {}
        self._fh_file: Any = None
        self._fh_path: str | None = None
        self._fh_was_enabled = False
        self._active = False

    def add(self, obs: Observability, catch_signals: bool) -> None:
        with self._lock:
            self._members.add(obs)
            if self._active:
                return
            self._active = True
            self._prev_excepthook = sys.excepthook
            sys.excepthook = self._excepthook
            self._prev_threading_hook = threading.excepthook
            threading.excepthook = self._threading_hook
            self._install_faulthandler(obs.store_path)
            if catch_signals and threading.current_thread() is threading.main_thread():
                for sig in _CATCHABLE_SIGNALS:
                    try:
                        if signal.getsignal(sig) is signal.SIG_DFL:
                            self._prev_signals[sig] = signal.signal(sig, self._signal_handler)
                    except (ValueError, OSError):
                        pass

    def _install_faulthandler(self, store_path: str) -> None:
        self._fh_was_enabled = faulthandler.is_enabled()
        path = os.path.join(store_path,
                            f"blackbox-faulthandler-{time.time_ns() // 1_000_000}-{os.getpid()}.log")
        try:
            f = open(path, "w")
        except OSError as exc:  # read-only store directory: keep whatever was there
            _log.info("no faulthandler log in %s: %s", store_path, exc)
            return
        faulthandler.enable(file=f, all_threads=True)
        self._fh_file, self._fh_path = f, path

    def remove(self, obs: Observability) -> None:
        with self._lock:
            self._members.discard(obs)
            if not self._active or len(self._members):
                return
            self._active = False
            if sys.excepthook == self._excepthook:
                sys.excepthook = self._prev_excepthook
            if threading.excepthook == self._threading_hook:
                threading.excepthook = self._prev_threading_hook
            for sig, prev in self._prev_signals.items():
                try:
                    if signal.getsignal(sig) == self._signal_handler:
                        signal.signal(sig, prev)
                except (ValueError, OSError):
                    pass
            self._prev_signals.clear()
            if self._fh_file is not None:
                faulthandler.disable()
                if self._fh_was_enabled:  # e.g. pytest's own faulthandler, back to stderr
                    faulthandler.enable(file=sys.__stderr__, all_threads=True)
                self._fh_file.close()
                try:
                    if self._fh_path and os.path.getsize(self._fh_path) == 0:
                        os.unlink(self._fh_path)
                except OSError:
                    pass
                self._fh_file = self._fh_path = None

    def _dump_all(self, reason: str, exc_info: tuple[Any, Any, Any] | None) -> None:
        if not self._active:
            return
        for obs in list(self._members):
            obs._crash_dump(reason, exc_info)

    def _excepthook(self, et: Any, ev: Any, tb: Any) -> None:
        self._dump_all(f"unhandled {getattr(et, '__name__', et)}", (et, ev, tb))
        prev = self._prev_excepthook or sys.__excepthook__
        prev(et, ev, tb)

    def _threading_hook(self, args: Any) -> None:
        if args.exc_type is not SystemExit:
            name = getattr(args.thread, "name", "?")
            self._dump_all(f"unhandled {args.exc_type.__name__} in thread {name}",
                           (args.exc_type, args.exc_value, args.exc_traceback))
        prev = self._prev_threading_hook or threading.__excepthook__
        prev(args)

    def _signal_handler(self, signum: int, frame: Any) -> None:
        self._dump_all(f"signal {signal.Signals(signum).name}", None)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_hooks = _ProcessHooks()
