"""Tracing: spans whose sampling is decided after the operation, and a no-op when off.

The original (``tracing_sampling.rs``, §9.3) had the right rules and the wrong moment: its
``sample_span!`` decided *before* the body ran, so the "slow operations are sampled at 50 %"
rule could never fire. Here a span object only notes the start time when entered; when it exits
the sampler sees the elapsed time and whether an error happened, and only then, for a sampled
operation, is a real OpenTelemetry span created with the recorded start time
(``tracer.start_span(name, start_time=t0_ns)`` … ``span.end(end_time=t1_ns)``). A sampled-out
operation creates no OTel object at all.

Decision order (first match wins), as the original states it:

1. kill switch (``SamplerConfig.enabled = False``) → skip;
2. force flag (``x-force-trace: true|1``) → record;
3. parent ``traceparent`` with the sampled flag (bit 0 of the flags byte) → record
   (a parent *not* sampled falls through to the rules below, as upstream);
4. custom rate (``x-sampling-rate``, clamped to [0, 1]) → sample at it;
5. error → ``error_rate`` (1.0);
6. elapsed ≥ ``slow_threshold_s`` (0.1 s) → ``slow_rate`` (0.5);
7. otherwise ``base_rate`` (0.01), scaled by ``x-sampling-priority`` high ×10 (max 1) / low ×0.1.

Rules 5 and 6 take the larger of their rate and rule 7's (a deviation: upstream's order
would sample slow operations *less* than fast ones whenever ``base_rate`` > 0.5).

The OTel SDK's own sampler should be left at its default (``ParentBased(ALWAYS_ON)``): the
decision is made here, and a recorded child of an unsampled remote parent is given a parent
context flagged sampled so the SDK keeps it. A ratio sampler configured in the SDK would
sample a second time.

A rate ≥ 1 always records, ≤ 0 always skips, else ``rng.random() < rate``.

Counters ``total, recorded, skipped, error_operations, slow_operations`` are exported as the
original's ``neurograph_tracing_*_total`` metrics. ``error_operations`` and
``slow_operations`` count every error/slow operation seen while enabled, whichever rule decided
(upstream counted them only when their branch decided, which hides errors under a force flag).

When tracing is off (``tracing=False``, or OpenTelemetry not importable) ``span()`` returns one
shared no-op object and nothing is counted.
"""
from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "NOOP_SPAN",
    "SamplerConfig",
    "TraceSampler",
    "Tracer",
    "from_headers",
    "noop_span",
    "otel_available",
    "parse_traceparent",
]


@dataclass
class SamplerConfig:
    """The original's ``TraceSamplingConfig`` defaults; ``enabled`` is the kill switch."""

    base_rate: float = 0.01
    error_rate: float = 1.0
    slow_rate: float = 0.5
    slow_threshold_s: float = 0.1
    enabled: bool = True


class TraceSampler:
    """Makes the record/skip decision and keeps its counters.

    The counters are plain ``+= 1`` without a lock: under CPython's GIL (3.10+) a thread
    switch is only taken at calls and backward jumps, never between the load and the store of
    an integer ``+=``, so no update is lost; a lock measured ~40 % of a sampled-out span."""

    def __init__(self, config: SamplerConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config or SamplerConfig()
        self._rng = rng or random.Random()
        self._total = self._recorded = self._skipped = self._errors = self._slow = 0
        #: The base-rate decisions of :meth:`base_sampled`: calls left until the next one
        #: recorded, drawn for the rate ``_gap_rate`` (drawn again when the rate changes).
        self._gap = 0
        self._gap_rate = -1.0

    def base_sampled(self) -> bool:
        """Record this ordinary operation (no error, not slow) at ``base_rate``? Updates the
        counters. The same decisions as one ``random() < base_rate`` per call, but drawn
        as the gaps between recorded calls (geometric: the number of independent trials up
        to the first success), so a skipped call costs a decrement, not a random number:
        the commit path asks this once per commit."""
        self._total += 1
        p = self.config.base_rate
        if p != self._gap_rate:  # the first call, or the rate changed: a fresh gap
            self._gap_rate = p
            self._gap = self._draw_gap(p)
        self._gap -= 1
        if self._gap > 0:
            self._skipped += 1
            return False
        self._gap = self._draw_gap(p)
        self._recorded += 1
        return True

    def sample_many(self, elapsed_s: np.ndarray) -> list[int]:
        """The indices of the operations to record among finished ones that took
        ``elapsed_s`` seconds (none an error), in order: the decisions :meth:`Tracer.due`
        would make for them one after another, counters included. The runs under
        ``slow_threshold_s`` take their base-rate gaps in one step (no call each); a slow
        one is decided alone. For operations timed in bulk, after the fact (the commit
        path's, ``metrics.CommitTimings``)."""
        cfg = self.config
        n = len(elapsed_s)
        if not cfg.enabled:
            self._total += n
            self._skipped += n
            return []
        chosen: list[int] = []
        start = 0
        for i in [*np.flatnonzero(elapsed_s >= cfg.slow_threshold_s).tolist(), n]:
            self._base_run(start, i, chosen)
            if i < n and self.decide(float(elapsed_s[i])):
                chosen.append(i)
            start = i + 1
        return chosen

    def _base_run(self, start: int, end: int, chosen: list[int]) -> None:
        """:meth:`base_sampled` for the operations ``start`` to ``end`` - 1; appends the
        recorded ones to ``chosen``."""
        m = end - start
        if m <= 0:
            return
        p = self.config.base_rate
        if p != self._gap_rate:
            self._gap_rate = p
            self._gap = self._draw_gap(p)
        used = picked = 0
        while self._gap <= m - used:  # the _gap-th operation from here is recorded
            used += self._gap
            chosen.append(start + used - 1)
            picked += 1
            self._gap = self._draw_gap(p)
        self._gap -= m - used
        self._total += m
        self._recorded += picked
        self._skipped += m - picked

    def _draw_gap(self, p: float) -> int:
        """Trials up to and including the next success, each a success with probability p."""
        if p >= 1.0:
            return 1
        if p <= 0.0:
            return 1 << 62  # never, until the rate changes
        return 1 + int(math.log(1.0 - self._rng.random()) / math.log1p(-p))

    def decide(self, elapsed_s: float, *, is_error: bool = False, force: bool = False,
               parent_sampled: bool = False, rate: float | None = None,
               priority: str | None = None) -> bool:
        """Record this finished operation? Updates the counters."""
        cfg = self.config
        self._total += 1
        if not cfg.enabled:
            self._skipped += 1
            return False
        slow = elapsed_s >= cfg.slow_threshold_s
        self._errors += is_error
        self._slow += slow
        if force or parent_sampled:
            p = 1.0
        elif rate is not None:
            p = min(max(rate, 0.0), 1.0)
        else:
            p = cfg.base_rate
            if priority == "high":
                p = min(p * 10.0, 1.0)
            elif priority == "low":
                p = p * 0.1
            # The boosts never lower the rate: with base_rate 1.0 a slow operation is
            # still always recorded (upstream's order would sample it at 50 %).
            if is_error:
                p = max(p, cfg.error_rate)
            elif slow:
                p = max(p, cfg.slow_rate)
        record = p >= 1.0 or (p > 0.0 and self._rng.random() < p)
        if record:
            self._recorded += 1
        else:
            self._skipped += 1
        return record

    def counters(self) -> dict[str, int]:
        return {"total": self._total, "recorded": self._recorded, "skipped": self._skipped,
                "error_operations": self._errors, "slow_operations": self._slow}

    def actual_rate(self) -> float:
        c = self.counters()
        return c["recorded"] / c["total"] if c["total"] else 0.0


class _NoopSpan:
    """The shared span used when tracing is off: every method does nothing."""

    __slots__ = ()
    trace_id = None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        return None

    def set(self, key: str, value: Any) -> None:
        pass

    def error(self, exc: BaseException) -> None:
        pass


NOOP_SPAN = _NoopSpan()


def noop_span(name: str, **attributes: Any) -> _NoopSpan:
    """``Observability.span`` when tracing is off."""
    return NOOP_SPAN


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """W3C ``00-<32 hex trace>-<16 hex parent>-<2 hex flags>`` → (trace_id, span_id, sampled).
    Returns None for anything malformed (an all-zero id is invalid too)."""
    if not value:
        return None
    parts = value.strip().lower().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    ver, trace_id, span_id, flags = parts[:4]
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        return None
    try:
        int(ver, 16)
        t, s, f = int(trace_id, 16), int(span_id, 16), int(flags, 16)
    except ValueError:
        return None
    if t == 0 or s == 0 or (ver == "00" and len(parts) != 4):
        return None
    return trace_id, span_id, bool(f & 1)


def from_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """Span keyword arguments from request headers (case-insensitive names):
    ``traceparent``, ``x-force-trace: true|1``, ``x-sampling-rate: <float>``,
    ``x-sampling-priority: high|normal|low``. Use as ``obs.span("x", **from_headers(h))``."""
    h = {k.lower(): v for k, v in headers.items()}
    out: dict[str, Any] = {}
    if h.get("traceparent"):
        out["traceparent"] = h["traceparent"]
    if str(h.get("x-force-trace", "")).strip().lower() in ("true", "1"):
        out["force"] = True
    if "x-sampling-rate" in h:
        try:
            out["rate"] = float(h["x-sampling-rate"])
        except ValueError:
            pass
    pr = str(h.get("x-sampling-priority", "")).strip().lower()
    if pr in ("high", "low"):
        out["priority"] = pr
    return out


def otel_available() -> bool:
    """True if ``opentelemetry.trace`` imports (tests simulate its absence via sys.modules)."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


class _Span:
    """A span whose fate is decided at exit. Cheap while it runs: a start time, a dict.

    Only the monotonic clock is read at entry; the wall-clock start given to OpenTelemetry is
    computed at exit (now − elapsed), so a sampled-out span reads two clocks in all."""

    __slots__ = ("_exc", "_opts", "_t0", "_tracer", "attributes", "kind", "name")

    def __init__(self, tracer: Tracer, name: str, *, traceparent: str | None = None,
                 force: bool = False, rate: float | None = None, priority: str | None = None,
                 kind: str | None = None, **attributes: Any) -> None:
        self._tracer = tracer
        self.name = name
        self.kind = kind   # None (internal) or "server", "client", "producer", "consumer"
        self.attributes = attributes
        # (traceparent, force, rate, priority), or None in the usual case
        self._opts = (None if traceparent is None and not force and rate is None
                      and priority is None else (traceparent, force, rate, priority))
        self._exc: BaseException | None = None

    @property
    def traceparent(self) -> str | None:
        return self._opts[0] if self._opts else None

    @property
    def trace_id(self) -> str | None:
        """The parent's trace id (hex) when a traceparent was given, for log correlation."""
        p = parse_traceparent(self.traceparent)
        return p[0] if p else None

    def __enter__(self) -> _Span:
        self._t0 = self._tracer.clock()
        return self

    def set(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def error(self, exc: BaseException) -> None:
        """Mark the operation failed (also implied by an exception leaving the ``with``)."""
        self._exc = exc

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        tr = self._tracer
        elapsed = tr.clock() - self._t0
        exc = self._exc if self._exc is not None else ev
        opts = self._opts
        sampler = tr.sampler
        cfg = sampler.config
        if opts is None and exc is None and cfg.enabled and elapsed < cfg.slow_threshold_s:
            # The common case, inlined (a method call costs as much as the decision).
            p = cfg.base_rate
            record = p >= 1.0 or (p > 0.0 and sampler._rng.random() < p)
            sampler._total += 1
            if record:
                sampler._recorded += 1
            else:
                sampler._skipped += 1
        elif opts is None:
            record = sampler.decide(elapsed, is_error=exc is not None)
        else:
            traceparent, force, rate, priority = opts
            parent = parse_traceparent(traceparent) if traceparent else None
            record = tr.sampler.decide(elapsed, is_error=exc is not None, force=force,
                                       parent_sampled=bool(parent and parent[2]), rate=rate,
                                       priority=priority)
        if record:
            tr._emit(self, elapsed, exc)
        return None


class Tracer:
    """Creates ``_Span`` objects and turns sampled ones into OpenTelemetry spans.

    ``tracer_provider``: an OTel ``TracerProvider`` (default: the global one).
    ``clock``: seconds, monotonic (default ``time.perf_counter``; tests inject a fake one).
    ``rng``: the sampler's random source (tests seed it).
    """

    def __init__(self, *, sampler: TraceSampler | None = None, tracer_provider: Any = None,
                 clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None,
                 on_overhead: Callable[[float], None] | None = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.sampler = sampler or TraceSampler(rng=rng)
        provider = tracer_provider or trace.get_tracer_provider()
        self._otel = provider.get_tracer("ngstore")
        self.clock = clock or time.perf_counter
        self._on_overhead = on_overhead

        #: ``span(name, *, traceparent=None, force=False, rate=None, priority=None, **attrs)``
        #: — a C-level partial, so creating a span is one Python call (``_Span.__init__``).
        self.span: Callable[..., _Span] = functools.partial(_Span, self)

    def record(self, name: str, elapsed_s: float, exc: BaseException | None = None,
               attributes: Callable[[], dict[str, Any]] | None = None) -> None:
        """An operation that already ran (``elapsed_s`` seconds, ending now), with no span
        object made while it ran: the sampler decides, and only a recorded operation costs
        more than the decision -- ``attributes()`` is called only then. For hot paths that
        time themselves anyway."""
        chosen = self.due(elapsed_s) if exc is None else self.sampler.decide(elapsed_s, is_error=True)
        if chosen:
            self.emit(name, elapsed_s, exc, attributes() if attributes is not None else {})

    def due(self, elapsed_s: float) -> bool:
        """:meth:`record`'s decision for an operation without an error that took
        ``elapsed_s`` (counted): a caller that asks first builds the attributes only for
        an operation to record, then calls :meth:`emit`."""
        sampler = self.sampler
        cfg = sampler.config
        if cfg.enabled and elapsed_s < cfg.slow_threshold_s:
            return sampler.base_sampled()
        return sampler.decide(elapsed_s)

    def emit(self, name: str, elapsed_s: float, exc: BaseException | None, attributes: dict[str, Any],
             end_ns: int | None = None) -> None:
        """Records an operation the sampler chose (:meth:`due`), which ended now or at
        ``end_ns`` (``time.time_ns()`` units)."""
        self._emit(_Span(self, name, **attributes), elapsed_s, exc, end_ns)

    def _parent_context(self, traceparent: str | None) -> Any:
        """An OTel context whose remote parent is the ``traceparent``, flagged *sampled*.

        The flag is forced because the decision is already made (ours, after the operation):
        the SDK's default ``ParentBased`` sampler would otherwise drop a child of an unsampled
        parent that our rules chose to record (an error, a slow operation)."""
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return None
        trace = self._trace
        ctx = trace.SpanContext(int(parsed[0], 16), int(parsed[1], 16), is_remote=True,
                                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
        return trace.set_span_in_context(trace.NonRecordingSpan(ctx))

    def _emit(self, sp: _Span, elapsed_s: float, exc: BaseException | None, end_ns: int | None = None) -> None:
        t_start = time.perf_counter()
        if end_ns is None:
            end_ns = time.time_ns()
        start_ns = end_ns - max(int(elapsed_s * 1e9), 0)
        attrs = {k: (v if isinstance(v, (str, bool, int, float)) else str(v))
                 for k, v in sp.attributes.items()}
        kind = self._trace.SpanKind[sp.kind.upper()] if sp.kind else self._trace.SpanKind.INTERNAL
        otel_span = self._otel.start_span(sp.name, context=self._parent_context(sp.traceparent),
                                          kind=kind, attributes=attrs, start_time=start_ns)
        if exc is not None:
            otel_span.record_exception(exc)
            otel_span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(exc)))
        otel_span.end(end_time=end_ns)
        if self._on_overhead is not None:
            self._on_overhead(time.perf_counter() - t_start)
