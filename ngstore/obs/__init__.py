"""Observability for one store: black box, stats page, histograms, spans, logs, crash hooks.

The Store owns one ``Observability`` and calls, on its hot path, only things that cost well
under a microsecond: ``event``/``commit_event`` (one record copied into the black-box ring),
``Histogram.observe`` (bisect + list increment) and ``span`` (the shared no-op when tracing is
off; a start time and an end-time decision when on). Everything that formats, serialises or
talks to Prometheus/OpenTelemetry happens at dump, scrape, publish or (sampled) span-end time.

A writer calls ``start_writer(stats_fn, io=...)`` once it holds the store: from then on the
black box is ``blackbox.ring`` in the store directory (``ngstore.obs.blackbox``) and a thread
publishes the live metrics in ``stats.page`` (``ngstore.obs.statspage``). Read-only stores
keep their black box in memory and publish nothing.

What is left after each way a writer can end (docs/observability.md §4 has the table)
-------------------------------------------------------------------------------------
* Every ending, kill -9 and power loss aside: the ring holds every event recorded before it,
  because an event is in the page cache as soon as ``event`` returns. ``ngstore blackbox``
  reads it; the next writer that opens the store saves it as a dump first if the previous
  one did not close the store.
* SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT: ``faulthandler`` also writes the traceback of
  every thread after the ring's records (if nobody else had enabled ``faulthandler``).
* An unhandled exception that involves the store (an ``NgStoreError``, a traceback through
  ngstore's code, or an exception in one of the store's own ``ngstore-*`` threads), in any
  thread: a full dump (ring, ``store_stats``, the exception and its traceback) is written
  before the previously installed hook runs. An application's own exception that does not
  involve the store only goes to the previous hook.
* SIGTERM/SIGHUP are left to the application: their default action ends the process, and the
  ring already holds everything.

``stats_fn`` is called in a helper thread with a one-second limit during a crash dump: an
exception can surface while the store's locks are held, and a dump must not deadlock on them.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from ..fileio import DEFAULT_IO, PRIVATE_MODE, FileIO
from .blackbox import BlackBox, list_dumps, load_dump, read_ring, write_dump_file
from .logs import StoreLoggerAdapter, enable_json_logging, store_logger
from .metrics import HISTOGRAMS, Histogram, StoreCollector, obs_values, register
from .statspage import PAGE_BYTES, PublishedStats, Snapshot, StatsPublisher, read_stats_page, writer_alive
from .tracing import NOOP_SPAN, SamplerConfig, Tracer, TraceSampler, from_headers, noop_span, otel_available

__all__ = [
    "NOOP_SPAN",
    "BlackBox",
    "Histogram",
    "Observability",
    "PublishedStats",
    "SamplerConfig",
    "StoreCollector",
    "TraceSampler",
    "enable_json_logging",
    "from_headers",
    "involves_store",
    "list_dumps",
    "load_dump",
    "read_ring",
    "read_stats_page",
    "register",
    "serve",
    "writer_alive",
]

_log = logging.getLogger("ngstore.obs")

#: The fields of the typed commit event (``Observability.commit_event``).
COMMIT_FIELDS = ("batches", "first", "last", "records", "durability")


def serve(store: Any, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Start the HTTP sidecar (see ``ngstore.obs.http.serve``)."""
    from .http import serve as _serve

    return _serve(store, host=host, port=port)


def _tracing_env_off() -> bool:
    return os.environ.get("NGSTORE_TRACING", "").strip().lower() in ("0", "off", "false", "no")


class Observability:
    """One store's observability. See the module docstring for what survives which crash.

    ``tracing``: None = on if OpenTelemetry is importable (and ``NGSTORE_TRACING`` is not
    ``off``); False = off (``span`` is the shared no-op); True = on, ``ImportError`` if
    OpenTelemetry is missing; a ``SamplerConfig`` = on with that config.
    ``sample_rate`` is the sampler's base rate. ``logger``: the logger behind ``.logger``
    (default ``logging.getLogger("ngstore")``). ``tracer_provider``, ``clock``, ``rng``: for
    tests and custom OTel setups. ``dump_compress``: write dumps as ``.json.zst``. ``io``: the
    file seam for every file this object touches (the store passes its own).
    ``stats_interval``: seconds between two publishes of the stats page.
    """

    def __init__(self, store_path: str, *, blackbox_capacity: int = 1000,
                 tracing: bool | SamplerConfig | None = None, sample_rate: float = 0.01,
                 logger: logging.Logger | None = None, tracer_provider: Any = None,
                 clock: Callable[[], float] | None = None, rng: Any = None,
                 dump_compress: bool = False, io: FileIO | None = None,
                 stats_interval: float = 1.0) -> None:
        self.store_path = os.fspath(store_path)
        self.dump_compress = dump_compress
        self.io: FileIO = io if io is not None else DEFAULT_IO
        #: permission bits of the files it writes (the store's, from ``start_writer``)
        self.mode = PRIVATE_MODE
        self.stats_interval = float(stats_interval)
        self.blackbox = BlackBox(blackbox_capacity)
        #: ``event(event_type, **data)``: the ring's record function, no extra call layer.
        self.event: Callable[..., None] = self.blackbox.record
        #: ``commit_event(batches, first, last, records, durability)``: the same record as
        #: ``event("commit", batches=..., ...)`` at about half the cost (positional values).
        self.commit_event: Callable[..., None] = self.blackbox.recorder("commit", *COMMIT_FIELDS)
        self.logger: StoreLoggerAdapter = store_logger(self.store_path, logger)

        self.commit_seconds = Histogram(HISTOGRAMS["commit_seconds"][1])
        self.wal_write_seconds = Histogram(HISTOGRAMS["wal_write_seconds"][1])
        self.batch_records = Histogram(HISTOGRAMS["batch_records"][1])
        self.validation_seconds = Histogram(HISTOGRAMS["validation_seconds"][1])
        self.token_creation_seconds = Histogram(HISTOGRAMS["token_creation_seconds"][1])
        self.connection_creation_seconds = Histogram(HISTOGRAMS["connection_creation_seconds"][1])
        self.tracing_overhead_seconds = Histogram(HISTOGRAMS["tracing_overhead_seconds"][1])

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

        self._stats_fn: Callable[[], Mapping[str, Any]] | None = None
        self._crash_installed = False
        self._publisher: StatsPublisher | None = None
        self._closed = False
        _instances.add(self)

    # ------------------------------------------------------------------ the writer's files
    @property
    def tracing_enabled(self) -> bool:
        return self.tracer is not None and self.sampler.config.enabled

    def _rebind(self) -> None:
        self.event = self.blackbox.record
        self.commit_event = self.blackbox.recorder("commit", *COMMIT_FIELDS)

    def start_writer(self, stats_fn: Callable[[], Mapping[str, Any]] | None = None, *,
                     io: FileIO | None = None, mode: int | None = None) -> None:
        """The store now holds its directory for writing: move the black box into
        ``blackbox.ring`` (saving the previous writer's ring as a dump if it did not close the
        store) and start publishing ``stats_fn()`` and the histograms in ``stats.page``.

        A file that cannot be set up is logged (WARNING) and skipped: the black box then stays
        in memory and the sidecar sees no live metrics, but the store works."""
        if self._closed:
            raise RuntimeError("Observability is closed")
        if io is not None:
            self.io = io
        if mode is not None:
            self.mode = mode
        if stats_fn is not None:
            self._stats_fn = stats_fn
        if self.blackbox.path is None:
            try:
                salvaged = self.blackbox.attach(self.store_path, io=self.io, mode=self.mode)
            except OSError as exc:
                _log.warning("black box stays in memory: cannot set up %s: %s",
                             os.path.join(self.store_path, "blackbox.ring"), exc,
                             extra={"store_path": self.store_path})
            else:
                self._rebind()
                if salvaged is not None:
                    self._save_previous_ring(salvaged)
        if self._publisher is None and self._stats_fn is not None:
            try:
                self._publisher = StatsPublisher(self.store_path, self._collect, io=self.io,
                                                 interval=self.stats_interval, mode=self.mode)
                self._publisher.start()
            except OSError as exc:
                self._publisher = None
                _log.warning("no stats page for %s: %s", self.store_path, exc,
                             extra={"store_path": self.store_path})

    def _save_previous_ring(self, salvaged: dict[str, Any]) -> None:
        doc = {"timestamp_us": time.time_ns() // 1000, "stats": salvaged.get("stats", {}), "events": salvaged["events"],
               "format": "ngstore-blackbox/1", "reason": salvaged["reason"],
               "pid": salvaged.get("pid"), "store_path": self.store_path, "store_stats": None,
               "exception": None, "ring": salvaged.get("ring"),
               "fatal_error": salvaged.get("fatal_error")}
        try:
            path = write_dump_file(self.store_path, doc, compressed=self.dump_compress, io=self.io,
                                   mode=self.mode)
        except OSError as exc:
            _log.warning("could not save the previous writer's black box: %s", exc,
                         extra={"store_path": self.store_path})
            return
        self.event("previous_writer_ended", pid=salvaged.get("pid"), dump=os.path.basename(path))
        _log.warning("%s: %s; its black box was saved to %s", self.store_path, salvaged["reason"],
                     path, extra={"store_path": self.store_path})

    def _collect(self) -> tuple[dict[str, float], dict[str, Snapshot]]:
        """What the stats page publishes: every number of ``stats_fn()``, the sampler and
        black-box counters, and every histogram."""
        fn = self._stats_fn
        stats = dict(fn()) if fn is not None else {}
        if stats.get("closed") or "error" in stats:
            raise RuntimeError(f"stats() unavailable: {stats.get('error', 'store closed')}")
        values: dict[str, float] = {}
        for k, v in stats.items():
            if isinstance(v, bool):
                values[k] = 1.0 if v else 0.0
            elif isinstance(v, (int, float)):
                values[k] = float(v)
        values.update({k: float(v) for k, v in obs_values(self).items()})
        hists = {attr: h.snapshot() for attr, h in self.histograms().items()}
        return values, hists

    def memory_parts(self) -> dict[str, int]:
        """Its fixed allocations, for the Guardian's reservations: the black box's ring and,
        in a writer, the stats page."""
        return {"blackbox": self.blackbox.memory_bytes,
                "stats_page": PAGE_BYTES if self._publisher is not None else 0}

    def histograms(self) -> dict[str, Histogram]:
        """Every histogram of this object, by its ``HISTOGRAMS`` name."""
        return {name: getattr(self, attr) for name, (attr, _b) in HISTOGRAMS.items()}

    def publish_stats(self) -> None:
        """Publish the stats page now (the store calls it at close, before it stops
        answering ``stats()``; tests call it instead of waiting for the interval)."""
        if self._publisher is not None:
            try:
                self._publisher.publish()
            except Exception as exc:
                _log.debug("stats page publish skipped: %r", exc)

    # ------------------------------------------------------------------ dumps
    def _store_stats(self, timeout: float = 1.0) -> tuple[dict[str, Any] | None, str | None]:
        fn = self._stats_fn
        if fn is None:
            return None, None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["v"] = dict(fn())
            except BaseException as exc:
                box["e"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=run, name="ngstore-dump-stats", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            return None, f"stats() did not return within {timeout} s"
        return box.get("v"), box.get("e")

    def dump(self, reason: str = "explicit", *, compress: bool | None = None,
             exc_info: tuple[Any, Any, Any] | None = None) -> str:
        """Write a dump of the ring into the store directory (through ``io``); return its path."""
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
        path = write_dump_file(self.store_path, doc, io=self.io, mode=self.mode,
                               compressed=self.dump_compress if compress is None else compress)
        _log.log(logging.INFO if reason == "explicit" else logging.WARNING,
                 "black box dumped to %s (%s)", path, reason,
                 extra={"store_path": self.store_path})
        return path

    # ------------------------------------------------------------------ crash handlers
    def install_crash_handlers(self, stats_fn: Callable[[], Mapping[str, Any]] | None = None, *,
                               fault_handler: bool = True) -> None:
        """Dump the box on an unhandled exception that involves the store, chaining to the
        hooks installed before; send ``faulthandler``'s traceback into the ring file on a
        fatal signal (module docstring). Idempotent; ``close()`` undoes it."""
        if self._closed:
            raise RuntimeError("Observability is closed")
        if stats_fn is not None:
            self._stats_fn = stats_fn
        if self._crash_installed:
            return
        self._crash_installed = True
        _hooks.add(self, fault_handler)

    def _crash_dump(self, reason: str, exc_info: tuple[Any, Any, Any] | None = None) -> None:
        try:
            if exc_info is not None and exc_info[1] is not None:
                self.event("error", where="crash handler", type=exc_info[0].__name__,
                           message=str(exc_info[1]))
            self.dump(reason, exc_info=exc_info)
        except BaseException as exc:
            try:
                sys.stderr.write(f"ngstore: black box dump failed: {exc!r}\n")
            except Exception:
                pass

    def close(self) -> None:
        """Uninstall hooks, stop the publisher (the page keeps its last values, flagged
        closed), mark the ring closed and unmap it. Idempotent: a close an interrupt stopped
        (the store's close runs again) does what it left."""
        if self._closed and self._publisher is None and not self._crash_installed and self.blackbox.path is None:
            return
        self._closed = True
        if self._crash_installed:
            _hooks.remove(self)
            self._crash_installed = False
        if self._publisher is not None:
            try:
                self._publisher.close()
            except OSError as exc:
                _log.warning("closing the stats page failed: %s", exc)
            self._publisher = None
        self.blackbox.detach()
        self._rebind()

    def inherited_in_child(self) -> None:
        """In a child made by fork(): the ring, the stats page and faulthandler's descriptor
        are the parent's (the mappings are shared). Uninstalls the crash hooks here and goes
        on in memory, writing neither file (``close`` would mark both closed)."""
        if self._closed:
            return
        self._closed = True
        if self._crash_installed:
            _hooks.forget(self)
            self._crash_installed = False
        if self._publisher is not None:
            self._publisher.inherited_in_child()
            self._publisher = None
        self.blackbox.inherited_in_child()
        self._rebind()

    def __repr__(self) -> str:
        return (f"Observability({self.store_path!r}, tracing={self.tracing_enabled}, "
                f"events={len(self.blackbox)}, ring={self.blackbox.path or 'memory'})")


# ------------------------------------------------------------------------------ crash hooks
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def involves_store(exc: BaseException | None, tb: TracebackType | None,
                   thread: threading.Thread | None = None) -> bool:
    """Whether an unhandled exception is the store's business (and so worth a dump): an
    ``NgStoreError``, a traceback (or a chained one) through a frame of the ``ngstore``
    package, or any exception in one of the store's own threads (named ``ngstore-*``)."""
    from ..errors import NgStoreError

    if thread is not None and thread.name.startswith("ngstore-"):
        return True
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NgStoreError):
            return True
        t = tb if len(seen) == 1 else exc.__traceback__
        while t is not None:
            if t.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
                return True
            t = t.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


class _ProcessHooks:
    """The process-wide hooks, installed once for all live ``Observability`` objects.

    Hooks are process state; installing one per store would chain N copies and make the
    order of uninstalls matter. Here the first store installs, every live store is dumped,
    and the last one to close restores the previous hooks (if nobody replaced ours since;
    if somebody did, ours stays in their chain and does nothing).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._members: weakref.WeakSet[Observability] = weakref.WeakSet()
        self._prev_excepthook: Any = None
        self._prev_threading_hook: Any = None
        self._fault_owner: Observability | None = None
        self._active = False

    def add(self, obs: Observability, fault_handler: bool) -> None:
        with self._lock:
            self._members.add(obs)
            if fault_handler and self._fault_owner is None:
                self._install_faulthandler(obs)
            if self._active:
                return
            self._active = True
            self._prev_excepthook = sys.excepthook
            sys.excepthook = self._excepthook
            self._prev_threading_hook = threading.excepthook
            threading.excepthook = self._threading_hook

    def _install_faulthandler(self, obs: Observability) -> bool:
        """faulthandler writes into the ring file (after its records) of one store, unless
        something else enabled faulthandler already: there is one per process, and taking it
        over would silence whoever installed it (pytest, ``PYTHONFAULTHANDLER``). Returns
        whether it did."""
        fd = obs.blackbox.fault_fd
        if fd is None or faulthandler.is_enabled():
            return False
        faulthandler.enable(file=fd, all_threads=True)
        obs.blackbox.set_fault_text_flag(True)
        self._fault_owner = obs
        return True

    def remove(self, obs: Observability) -> None:
        with self._lock:
            self._members.discard(obs)
            if self._fault_owner is obs:
                faulthandler.disable()
                obs.blackbox.set_fault_text_flag(False)
                self._fault_owner = None
                for other in list(self._members):   # hand it to another open writer
                    if self._install_faulthandler(other):
                        break
            self._uninstall_if_unused()

    def forget(self, obs: Observability) -> None:
        """``remove`` for a child made by fork() (``Observability.inherited_in_child``): the
        ring's header is the parent's, so it is not written; faulthandler, which writes into
        the parent's ring, is turned off here."""
        self._lock = threading.RLock()  # a thread of the parent may have held it
        self._members.discard(obs)
        if self._fault_owner is obs:
            faulthandler.disable()
            self._fault_owner = None
        self._uninstall_if_unused()

    def _uninstall_if_unused(self) -> None:
        """The exception hooks restored once no store is a member (if nobody replaced ours)."""
        if not self._active or len(self._members):
            return
        self._active = False
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_excepthook
        if threading.excepthook == self._threading_hook:
            threading.excepthook = self._prev_threading_hook

    def _dump_all(self, reason: str, exc_info: tuple[Any, Any, Any]) -> None:
        if not self._active:
            return
        for obs in list(self._members):
            obs._crash_dump(reason, exc_info)

    def _excepthook(self, et: Any, ev: Any, tb: Any) -> None:
        try:
            if involves_store(ev, tb):
                self._dump_all(f"unhandled {getattr(et, '__name__', et)}", (et, ev, tb))
        finally:
            prev = self._prev_excepthook or sys.__excepthook__
            prev(et, ev, tb)

    def _threading_hook(self, args: Any) -> None:
        try:
            if args.exc_type is not SystemExit and involves_store(args.exc_value, args.exc_traceback,
                                                                  args.thread):
                name = getattr(args.thread, "name", "?")
                self._dump_all(f"unhandled {args.exc_type.__name__} in thread {name}",
                               (args.exc_type, args.exc_value, args.exc_traceback))
        finally:
            prev = self._prev_threading_hook or threading.__excepthook__
            prev(args)


_hooks = _ProcessHooks()
#: Every Observability of this process, weakly: a child made by fork() turns them off.
_instances: weakref.WeakSet[Observability] = weakref.WeakSet()


def _inherited_in_child() -> None:
    for obs in list(_instances):
        obs.inherited_in_child()


os.register_at_fork(after_in_child=_inherited_in_child)
