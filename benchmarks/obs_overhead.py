"""What does observability cost on the hot path, and how long does a scrape take?

Question: the original's tracing cost 17x per span and its "adaptive" sampling was measured on a
different baseline (reference §9.2-9.4). Here: ns per black-box event (in memory and in the
mapped ring file, keyword and typed forms; a bare deque append, the shape of the previous
in-memory ring, as a reference), per sampled-out span (tracing off = shared no-op, and tracing
on with OpenTelemetry = decision after the operation), per histogram observe; the writer's
stats-page publish (``store.stats()`` + encoding + copy; the background thread does it once per
interval); and the time of one full scrape (collect + text exposition) for a fake store, for a
real store in-process and through the sidecar's view (LMDB + the stats page).

    python benchmarks/obs_overhead.py [--n 200000] [--tokens 1000000]

Prints the environment first. Timings are the best of 5 repeats of ``n`` calls (per-call ns).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import timeit
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ngstore.obs import Observability
from ngstore.obs.tracing import otel_available


def per_call_ns(stmt: Any, n: int, repeat: int = 5) -> float:
    return min(timeit.repeat(stmt, number=n, repeat=repeat)) / n * 1e9


class FakeStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.obs = Observability(path, tracing=False)
        keys = ["tokens_live", "tokens_created_total", "tokens_deleted_total", "commits_total",
                "wal_bytes", "map_size_bytes", "map_used_bytes", "reflex_hits_total"]
        self.values = dict.fromkeys(keys, 1000)

    def stats(self) -> dict[str, Any]:
        return dict(self.values)


def scrape_ms(store: Any, repeat: int = 50) -> float:
    from prometheus_client import CollectorRegistry, generate_latest

    from ngstore.obs.metrics import StoreCollector

    reg = CollectorRegistry()
    reg.register(StoreCollector(store))
    generate_latest(reg)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        generate_latest(reg)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--tokens", type=int, default=1_000_000,
                    help="tokens in the real store that is published and scraped (0: skip it)")
    args = ap.parse_args()
    n = args.n

    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.machine()}, {platform.system()} {platform.release()}")
    print(f"opentelemetry importable: {otel_available()}; n={n}, best of 5")

    d = tempfile.mkdtemp(prefix="ngstore-obs-bench-")
    obs_off = Observability(d, tracing=False)
    base = per_call_ns(lambda: None, n)
    print(f"\nbaseline: empty lambda call                 {base:8.1f} ns")
    from collections import deque
    from itertools import count

    ring, seq = deque(maxlen=1000), count()
    t = per_call_ns(lambda: ring.append((next(seq), time.time_ns(), "commit", {"a": 1, "b": 2})), n)
    print(f"reference: deque append of a tuple          {t:8.1f} ns")

    for where in ("memory", "ring file"):
        if where == "ring file":
            obs_off.start_writer(None)      # the ring moves into <dir>/blackbox.ring
        ev = obs_off.event
        t = per_call_ns(lambda: ev("commit", batch_id=7, records=100), n)
        print(f"black-box event, {where:9}, 2 fields      {t:8.1f} ns")
        t = per_call_ns(lambda: ev("commit"), n)
        print(f"black-box event, {where:9}, no data       {t:8.1f} ns")
        t = per_call_ns(lambda: ev("commit", batches=1, first=123456, last=123460, records=8,
                                   durability="sync"), n)
        print(f"black-box event, {where:9}, 5 fields      {t:8.1f} ns")
        ce = obs_off.commit_event
        t = per_call_ns(lambda: ce(1, 123456, 123460, 8, "sync"), n)
        print(f"commit_event (typed), {where:9}, 5 fields {t:8.1f} ns")

    h = obs_off.commit_seconds
    t = per_call_ns(lambda: h.observe(0.00042), n)
    print(f"histogram observe                           {t:8.1f} ns")

    sp = obs_off.span

    def span_off() -> None:
        with sp("commit", records=100):
            pass

    t = per_call_ns(span_off, n)
    print(f"span, tracing off (shared no-op)            {t:8.1f} ns")

    if otel_available():
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        obs_on = Observability(d, tracing=True, sample_rate=0.0, tracer_provider=provider)
        sp_on = obs_on.span

        def span_on() -> None:
            with sp_on("commit", records=100):
                pass

        t = per_call_ns(span_on, n)
        print(f"span, tracing on, sampled out               {t:8.1f} ns")
        obs_on.sampler.config.base_rate = 1.0
        t = per_call_ns(span_on, max(n // 20, 1000))
        print(f"span, tracing on, recorded (in-memory exp.) {t:8.1f} ns")
        obs_on.sampler.config.base_rate = 0.01
        exporter.clear()
        t = per_call_ns(span_on, n)
        print(f"span, tracing on, 1 % sampled (default)     {t:8.1f} ns")
        exporter.clear()

    fake = FakeStore(d)
    print(f"\nscrape, fake store (all families, text)     {scrape_ms(fake):8.3f} ms")
    if args.tokens:
        real_store(args.tokens)


def real_store(tokens: int) -> None:
    """Publish and scrape a real store of ``tokens`` tokens: in the writer, and as the sidecar
    sees it (another handle, read-only, merged with the stats page)."""
    import ngstore
    from ngstore.obs.http import SidecarView

    d = tempfile.mkdtemp(prefix="ngstore-obs-bench-store-")
    path = os.path.join(d, "s")
    w = ngstore.open(path, tracing=False, max_tokens=None, max_bytes=None)
    try:
        w.put_tokens(ngstore.Token.create_batch(tokens))
        for i in range(100):
            w.put_tokens(ngstore.Token.create_batch(10, start=tokens + 10 * i))
        pub = w.obs._publisher
        assert pub is not None
        t = per_call_ns(lambda: pub.publish(), 200) / 1e3
        print(f"\nstats page publish ({tokens:,} tokens)       {t:8.1f} µs   "
              f"({t / 1e6 * 100:.4f} % of one core at the default 1 s interval)")
        t = per_call_ns(w.stats, 200) / 1e3
        print(f"  of which store.stats()                    {t:8.1f} µs")
        print(f"scrape, writer in-process                   {scrape_ms(w):8.3f} ms")
        view = SidecarView(path)
        view.store = ngstore.open(path, readonly=True)
        try:
            print(f"scrape, sidecar view (LMDB + stats page)    {scrape_ms(view):8.3f} ms")
            from ngstore.obs.statspage import read_stats_page

            t = per_call_ns(lambda: read_stats_page(path), 200) / 1e3
            print(f"  of which reading the stats page           {t:8.1f} µs")
        finally:
            view.close()
    finally:
        w.close()


if __name__ == "__main__":
    main()
