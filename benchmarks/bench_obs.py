"""What does observability cost?

* A stress workload (1000-token async ingests interleaved with gathers, point reads and
  reflex lookups, single and batch) with metrics + black box + tracing at 1 % sampling
  (an OpenTelemetry SDK provider with a batch processor and a dropping exporter) against
  ``observability=False``, alternated in the same run.
* ns per black-box event (keyword form and the typed commit event, into the mapped ring
  file) and per sampled-out span (``benchmarks/obs_overhead.py`` has the full list).
* One-token ``async`` commits into a store of 100,000 tokens, metrics + black box + tracing
  at 1 % sampling against ``observability=False``, alternated in the same run: the mean per
  commit, so the 1 % of commits whose span is exported count with their share.
* One stats-page publish, and one full scrape (collect + text exposition) of a store holding
  the largest n tokens, in the writer and through the sidecar's view.

Targets: stress with observability ≤ 1.03× without; a one-token commit with observability
≤ 1.03× without; one black-box event ≤ 500 ns; scrape ≤ 5 ms with 1M tokens.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from _harness import Bench, per_call_ns, timed
from bench_ingest import dataset, store_options
from bench_reflex import connections
from reflex_lookup import random_states

import ngstore

W = "stress with observability"
W_SMALL = "one-token async commit with observability"
#: the store size of the small-commit comparison (the commit issue's: 100,000 tokens)
N_SMALL = 100_000
_PROVIDER = None


def otel_provider():
    """A global SDK provider whose exporter drops everything (the cost is the SDK's, not I/O)."""
    global _PROVIDER
    if _PROVIDER is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        _PROVIDER = TracerProvider()
        _PROVIDER.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(_PROVIDER)
    return _PROVIDER


def stress(path: str, n: int, obs: bool, rng_seed: int = 3) -> float:
    rng = np.random.default_rng(rng_seed)
    kw = {"observability": True, "tracing": True, "sample_rate": 0.01} if obs else {"observability": False}
    s = ngstore.open(path, durability="async", reflex_capacity=16_384, crash_handlers=False,
                     **store_options(n), **kw)
    states = random_states(rng, 10_000)
    with s.batch() as bt:
        bt.put_reflexes(states, connections(10_000, rng))
    eng = s.intuition()
    batches = [ngstore.Token.create_batch(1000, start=i) for i in range(0, n, 1000)]
    gathers = [rng.integers(0, i + 1000, 1000).astype(np.uint32) for i in range(0, n, 1000)]
    q = states[rng.permutation(10_000)[:1000]]
    singles = q[:20].tolist()

    def work() -> None:
        for k, batch in enumerate(batches):
            s.put_tokens(batch)
            s.get_tokens(gathers[k])
            for i in gathers[k][:20].tolist():
                s.get_token(i)
            eng.try_fast_path_batch(q)
            for st in singles:
                eng.try_fast_path(st)
        s.flush()

    dt, _ = timed(work)
    s.close()
    return dt


def small_commits(b: Bench, tracing_note: str, reps: int) -> None:
    """Mean µs per one-token async commit, observability on and off, alternated run by run
    (each run: ``k`` commits to one store of N_SMALL tokens, then a flush outside the clock)."""
    b.log(f"## {W_SMALL}")
    n, k = N_SMALL, 20_000 if b.quick else 100_000
    base = dataset(b, "ngstore", n)
    stores = {}
    for obs in (True, False):
        path = b.tmpdir("obs", f"small-{obs}")
        shutil.rmtree(path)
        shutil.copytree(base, path)
        kw = {"observability": True, "tracing": True, "sample_rate": 0.01} if obs else {"observability": False}
        stores[obs] = ngstore.open(path, durability="async", crash_handlers=False, **store_options(n), **kw)
    toks = []
    for i in range(k):
        a = ngstore.Token.create_batch(1, start=n + i).data
        a["weight"] = 0.5
        toks.append(a)
    out: dict[bool, list[float]] = {True: [], False: []}

    def commits(s: ngstore.Store) -> None:
        put = s.put_tokens
        for t in toks:
            put(t)

    try:
        for s in stores.values():  # warm: every id exists in both stores before the clock
            commits(s)
            s.flush()
        for r in range(max(5, reps)):
            for obs in (True, False) if r % 2 == 0 else (False, True):
                dt, _ = timed(lambda obs=obs: commits(stores[obs]))
                stores[obs].flush()
                out[obs].append(dt / k * 1e6)
    finally:
        for s in stores.values():
            s.close()
    b.record(W_SMALL, "ngstore observability on", n, "µs", out[True], note=f"{tracing_note}; mean of {k:,} commits")
    b.record(W_SMALL, "ngstore observability off", n, "µs", out[False], note=f"mean of {k:,} commits")
    b.ratio_check("observability", "one-token async commit, observability on ÷ off", W_SMALL,
                  "ngstore observability on", "ngstore observability off", "<=", 1.03, n)


def run(b: Bench) -> None:
    b.log(f"## {W}")
    try:
        otel_provider()
        tracing_note = "tracing: OpenTelemetry SDK, 1 % sampling"
    except ImportError:
        tracing_note = "OpenTelemetry not installed: tracing off in the 'on' runs"
    reps = max(3, b.repeats)
    for n in b.sizes:
        if n > 1_000_000:
            continue
        on, off = [], []
        stress(b.tmpdir("obs", "warm"), min(n, 10_000), True)
        for r in range(reps):  # alternate, so drift hits both
            for obs, out in ((True, on), (False, off)) if r % 2 == 0 else ((False, off), (True, on)):
                p = b.tmpdir("obs", "run")
                out.append(stress(p, n, obs) * 1e9 / n)
        b.record(W, "ngstore observability on", n, "ns/token", on, note=tracing_note)
        b.record(W, "ngstore observability off", n, "ns/token", off)
        shutil.rmtree(os.path.join(b.root, "obs"), ignore_errors=True)
    nmax = max(x for x in b.sizes if x <= 1_000_000)
    b.ratio_check("observability", "stress workload, observability on ÷ off", W, "ngstore observability on",
                  "ngstore observability off", "<=", 1.03, nmax)

    small_commits(b, tracing_note, reps)

    # -- per-call costs, with obs_overhead's objects
    from ngstore.obs import Observability
    from ngstore.obs.tracing import otel_available

    d = b.tmpdir("obs", "calls")
    k = 100_000 if b.quick else 300_000
    o = Observability(d, tracing=False)
    o.start_writer(None)                 # the ring in <d>/blackbox.ring, as in a writer
    ev, ce = o.event, o.commit_event
    W2 = "observability per call"
    b.record(W2, "empty lambda (harness overhead)", k, "ns/call", per_call_ns(lambda: None, k, b.repeats))
    b.record(W2, "black-box event (2 fields)", k, "ns/call",
             per_call_ns(lambda: ev("commit", batch_id=7, records=100), k, b.repeats),
             note="keyword form, mapped ring file")
    b.record(W2, "commit_event (typed, 5 fields)", k, "ns/call",
             per_call_ns(lambda: ce(1, 123456, 123460, 8, "sync"), k, b.repeats),
             note="what the store records per commit")
    sp = o.span

    def span_off() -> None:
        with sp("commit", records=100):
            pass

    b.record(W2, "span, tracing off", k, "ns/call", per_call_ns(span_off, k, b.repeats))
    if otel_available():
        o2 = Observability(d, tracing=True, sample_rate=0.0, tracer_provider=otel_provider())
        sp2 = o2.span

        def span_out() -> None:
            with sp2("commit", records=100):
                pass

        b.record(W2, "span, tracing on, sampled out", k, "ns/call", per_call_ns(span_out, k, b.repeats))
    for name in ("black-box event (2 fields)", "commit_event (typed, 5 fields)"):
        m = b.get(W2, name)
        if m:
            b.check("observability", f"cost per black-box event, {name}, ns", m.median, "<=", 500,
                    "issue 12's budget; includes the ~25 ns lambda call", k)
    so = b.get(W2, "span, tracing on, sampled out")
    if so:
        b.check("observability", "cost per sampled-out span, ns", so.median, "report", 0,
                "no target given; includes the ~30 ns lambda call", k)
    o.close()

    # -- scrape
    from obs_overhead import scrape_ms

    n = nmax
    s = ngstore.open(dataset(b, "ngstore", n), **store_options(n))
    try:
        ms = [scrape_ms(s, repeat=20) for _ in range(b.repeats)]
        pub = s.obs._publisher if s.obs is not None else None
        if pub is not None:
            b.record("stats page publish", "ngstore writer (stats() + encode + copy)", n, "µs",
                     [x / 1e3 for x in per_call_ns(pub.publish, 200, b.repeats)],
                     note="once per second, in a background thread")
        from ngstore.obs.http import SidecarView

        view = SidecarView(s.path)
        view.store = ngstore.open(s.path, readonly=True)
        try:
            side = [scrape_ms(view, repeat=20) for _ in range(b.repeats)]
        finally:
            view.close()
    finally:
        s.close()
    b.record("metrics scrape", "ngstore (all metrics, text)", n, "ms", ms, note="best of 20 per sample")
    b.record("metrics scrape", "ngstore sidecar view (LMDB + stats page)", n, "ms", side,
             note="best of 20 per sample")
    b.check("observability", f"scrape of all metrics, store of {n:,} tokens, ms", float(np.median(ms)), "<=", 5.0,
            "collect + text exposition", n)
    b.check("observability", f"sidecar scrape (LMDB + the writer's stats page), {n:,} tokens, ms",
            float(np.median(side)), "<=", 5.0, "collect + text exposition", n)
    shutil.rmtree(os.path.join(b.root, "obs"), ignore_errors=True)
