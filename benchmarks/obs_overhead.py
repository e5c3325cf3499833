"""What does observability cost on the hot path, and how long does a scrape take?

Question: the original's tracing cost 17x per span and its "adaptive" sampling was measured on a
different baseline (reference §9.2-9.4). Here: ns per black-box event, per sampled-out span
(tracing off = shared no-op, and tracing on with OpenTelemetry = decision after the operation),
per histogram observe, and the time of one full scrape (collect + text exposition) for a fake
store and, with ``--store PATH``, for a real one (target <= 5 ms with 1M tokens).

    python benchmarks/obs_overhead.py [--n 200000] [--store PATH]

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

from ngstore.obs import Observability  # noqa: E402
from ngstore.obs.tracing import otel_available  # noqa: E402


def per_call_ns(stmt: Any, n: int, repeat: int = 5) -> float:
    return min(timeit.repeat(stmt, number=n, repeat=repeat)) / n * 1e9


class FakeStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.obs = Observability(path, tracing=False)
        keys = ("tokens_live tokens_created_total tokens_deleted_total commits_total "
                "wal_bytes map_size_bytes map_used_bytes reflex_hits_total").split()
        self.values = {k: 1000 for k in keys}

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
    ap.add_argument("--store", help="a real store to scrape (opened read-only)")
    args = ap.parse_args()
    n = args.n

    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.machine()}, {platform.system()} {platform.release()}")
    print(f"opentelemetry importable: {otel_available()}; n={n}, best of 5")

    d = tempfile.mkdtemp(prefix="ngstore-obs-bench-")
    obs_off = Observability(d, tracing=False)
    base = per_call_ns(lambda: None, n)
    print(f"\nbaseline: empty lambda call                 {base:8.1f} ns")

    ev = obs_off.event
    t = per_call_ns(lambda: ev("commit", batch_id=7, records=100), n)
    print(f"black-box event (2 data fields)             {t:8.1f} ns")
    t = per_call_ns(lambda: ev("commit"), n)
    print(f"black-box event (no data)                   {t:8.1f} ns")

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
    if args.store:
        import ngstore

        store = ngstore.open(args.store, readonly=True)
        try:
            st = store.stats()
            print(f"scrape, real store {args.store} "
                  f"({st.get('tokens_live', '?')} tokens)  {scrape_ms(store):8.3f} ms")
            t0 = time.perf_counter()
            store.stats()
            print(f"  of which store.stats()                    "
                  f"{(time.perf_counter() - t0) * 1e3:8.3f} ms")
        finally:
            store.close()


if __name__ == "__main__":
    main()
