"""The ``ngstore`` command: the main job (``stress``) and the operator's tools.

Exit status (docs/operations.md §1): 0 success; 1 the checked thing is unsound (``check``,
``wal verify``, a refused ``recover``, ``blackbox --show latest`` with nothing to show);
2 usage errors; 3 the store could not be opened (not a store, locked, needs recovery);
4 the command failed while working (an OS error, a port that cannot be bound, an
unexpected error); 130 interrupted.

Every error is one line on stderr, ``ngstore: <what happened> (hint: <what to do>)``. A
traceback is printed only with ``--debug`` (or ``NGSTORE_DEBUG=1``).
"""
from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from .cliutil import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNSOUND,
    EXIT_USAGE,
    CliError,
    Formatter,
    Parser,
    Progress,
    add_debug,
    add_path,
    fmt_bytes,
    open_store,
    positive_int,
    storage_cli_error,
    store_error,
)
from .errors import NgStoreError, StorageError
from .fileio import DEFAULT_IO


# ------------------------------------------------------------------------------ formatting
def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def _rate(per_item_ns: float) -> str:
    return f"{1e9 / per_item_ns / 1e6:.2f}M/sec" if per_item_ns > 0 else "-"


class _OneSlot:
    """The baseline of "Create (single)": the cheapest Python object holding one value."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def _no_gc(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with the garbage collector paused (re-enabled after, if it was on)."""
    def run() -> Any:
        was = gc.isenabled()
        gc.disable()
        try:
            return fn()
        finally:
            if was:
                gc.enable()
    return run


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def stress_limits(n: int) -> tuple[int, int]:
    """``(max_tokens, max_bytes)`` for a stress run of ``n`` tokens: room for what the run
    writes (the ``n`` tokens, a few thousand commit and asyncio tokens above them, 100 000
    experience events, up to 100 000 reflexes, 200 000 connections) with a wide margin, and
    never below the defaults. The Guardian refuses writes from ``memory_threshold`` (80 %)
    of ``max_bytes``."""
    tokens = n + 10_000
    accounted = 64 * tokens + 128 * 100_000 + 128 * min(n, 100_000) + 64 * 200_000
    return max(10_000_000, 2 * tokens), max(1_024_000_000, int(accounted / 0.8 * 2))


def stress(path: str | None, n: int, quiet: bool = False, repeats: int = 3) -> dict[str, Any]:
    """The original README's token stress, on a real store. Returns the figures.

    With a ``path`` the store is opened (or created) for writing *first*, so that a path that
    is a file, a foreign directory or a store held by another writer is refused before any
    work is done."""
    import ngstore
    from ngstore import Token

    own_tmp = path is None
    root = tempfile.mkdtemp(prefix="ngstore-stress-") if path is None else path
    store_path = os.path.join(root, "store") if own_tmp else root
    max_tokens, max_bytes = stress_limits(n)
    rng = np.random.default_rng(42)
    res: dict[str, Any] = {"tokens": n, "path": store_path, "max_tokens": max_tokens,
                           "max_bytes": max_bytes}
    steps = ["create single", "create batch", "clone", "ingest", "reopen", "read sequential",
             "read random", "get one", "column scan", "small commits", "async commits",
             "group commit", "reflexes", "learning", "nearest tokens", "graph walk", "check",
             "asyncio commits", "memory"]
    try:
        writer = ngstore.open(store_path, durability="sync", max_tokens=max_tokens, max_bytes=max_bytes)
    except BaseException:
        if own_tmp:
            DEFAULT_IO.remove_tree(root)
        raise
    progress = Progress("stress", steps, quiet)
    try:
        try:
            k_single = min(n, 200_000)
            # The garbage collector paused (as timeit does): its passes over the growing list
            # made these figures vary 3x from run to run.
            t, _ = progress.run("create single", lambda: _best(_no_gc(lambda: [Token(i) for i in range(k_single)]), 3))
            res["create_single_ns"] = t / k_single * 1e9
            t, _ = _best(_no_gc(lambda: [_OneSlot(i) for i in range(k_single)]), 3)  # its baseline, measured alike
            res["one_slot_object_ns"] = t / k_single * 1e9
            t, batch = progress.run("create batch", lambda: _best(lambda: Token.create_batch(n), repeats))
            res["create_batch_ms"] = t * 1e3
            res["create_batch_ns"] = t / n * 1e9
            t, _ = progress.run("clone", lambda: _best(lambda: batch.data.copy(), repeats))
            res["clone_ns"] = t / n * 1e9
            t, _ = progress.run("ingest", lambda: _best(lambda: writer.put_tokens(batch), 1))
            res["ingest_ns"] = t / n * 1e9
        finally:
            writer.close()
        res["disk_bytes_after_ingest"] = _disk_bytes(store_path)
        t, store = progress.run("reopen", lambda: _best(
            lambda: ngstore.open(store_path, max_tokens=max_tokens, max_bytes=max_bytes), 1))
        res["reopen_ms"] = t * 1e3
        try:
            def scan() -> float:
                total = 0.0
                with store.snapshot() as snap:
                    for _first, arr in snap.tokens.chunks():
                        total += float(arr["weight"].sum())
                return total

            t, _ = progress.run("read sequential", lambda: _best(scan, repeats))
            res["read_sequential_ns"] = t / n * 1e9
            ids = rng.integers(0, n, size=n, dtype=np.uint32)
            t, got = progress.run("read random", lambda: _best(lambda: store.get_tokens(ids), repeats))
            res["read_random_ns"] = t / n * 1e9
            k_get = 20_000
            one = rng.integers(0, n, size=k_get).tolist()
            t, _ = progress.run("get one", lambda: _best(lambda: [store.get_token(i) for i in one], 1))
            res["get_one_ns"] = t / k_get * 1e9
            ram = batch.data
            t_ram, _ = _best(lambda: float(ram["weight"].sum()), repeats)
            res["scan_in_ram_ns"] = t_ram / n * 1e9
            res["scan_ratio"] = res["read_sequential_ns"] / res["scan_in_ram_ns"]

            def column() -> float:
                with store.snapshot() as snap:
                    return float(snap.tokens.column("weight").sum())

            t, _ = progress.run("column scan", lambda: _best(column, repeats))
            res["column_scan_ns"] = t / n * 1e9
            res["column_ratio"] = res["column_scan_ns"] / res["scan_in_ram_ns"]
            res.update(progress.run("small commits", lambda: _commit_latency(store, n, "sync", 200)))
            res.update(progress.run("async commits", lambda: _commit_latency(store, n, "async", 2000)))
            res.update(progress.run("group commit", lambda: _group_commit(store, n)))
            res.update(progress.run("reflexes", lambda: _reflexes(store, min(n, 100_000), rng)))
            res.update(progress.run("learning", lambda: _learning(store, rng)))
            res.update(progress.run("nearest tokens", lambda: _nearest(store, rng)))
            res.update(progress.run("graph walk", lambda: _graph_walk(store, n, rng)))
            t, report = progress.run("check", lambda: _best(store.check, 1))
            res["check_s"], res["check_ok"] = t, report.ok
        finally:
            store.close()
        res.update(progress.run("asyncio commits", lambda: _asyncio_commits(store_path, n, max_tokens, max_bytes)))

        res["disk_bytes"] = progress.run("memory", lambda: _disk_bytes(store_path))
        res["disk_bytes_per_token"] = res["disk_bytes"] / n
        with ngstore.open(store_path, readonly=True) as after:  # the asyncio tokens included
            res["tokens_stored"] = after.stats()["tokens_live"]
        del got
    finally:
        progress.close()
        if own_tmp:
            DEFAULT_IO.remove_tree(root)
    return res


def _disk_bytes(path: str) -> int:
    """Bytes allocated on disk by the store's files (LMDB and the log)."""
    return DEFAULT_IO.disk_usage(path)


def _commit_latency(store: Any, n: int, durability: str, k: int) -> dict[str, float]:
    from ngstore import Token

    small = Token.create_batch(8, start=n).data
    for _ in range(10):
        store.put_tokens(small, durability=durability)
    lat = []
    for _ in range(k):
        t0 = time.perf_counter()
        store.put_tokens(small, durability=durability)
        lat.append(time.perf_counter() - t0)
    store.flush()
    a = np.array(lat) * 1e6
    return {f"{durability}_commit_p50_us": float(np.percentile(a, 50)),
            f"{durability}_commit_p99_us": float(np.percentile(a, 99)),
            f"{durability}_commits_per_s": float(k / a.sum() * 1e6)}


def _group_commit(store: Any, n: int, threads: int = 8, per_thread: int = 60) -> dict[str, float]:
    """Commits/s with ``threads`` concurrent sync committers vs one (group commit)."""
    import threading

    from ngstore import Token

    def run(t: int) -> None:
        small = Token.create_batch(8, start=n + 1000 + t * 8).data
        for _ in range(per_thread):
            store.put_tokens(small)

    t0 = time.perf_counter()
    run(0)
    one = per_thread / (time.perf_counter() - t0)
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    many = threads * per_thread / (time.perf_counter() - t0)
    return {"group_commit_1_thread_per_s": one, f"group_commit_{threads}_threads_per_s": many,
            "group_commit_ratio": many / one}


def _reflexes(store: Any, k: int, rng: Any) -> dict[str, float]:
    """A table of ``k`` reflexes written through one batch, then lookups."""
    from ngstore.connections import as_connection_array, new_connections

    states = rng.uniform(-1, 1, size=(k, 8)).astype(np.float32)
    conns = new_connections(np.arange(k, dtype=np.uint32) * 2, np.arange(k, dtype=np.uint32) * 2 + 1)
    conns = np.array(as_connection_array(conns))
    conns["pull_strength"], conns["rigidity"], conns["confidence"], conns["evidence_count"] = 1.0, 200, 240, 20
    conns["target_vector"] = rng.integers(-1000, 1000, size=(k, 8), dtype=np.int16)
    t0 = time.perf_counter()
    with store.batch() as b:
        b.put_reflexes(states, conns)
    load = time.perf_counter() - t0
    engine = store.intuition()
    queries = np.concatenate([states, rng.uniform(-1, 1, size=(k, 8)).astype(np.float32)])
    rng.shuffle(queries)
    t_batch, r = _best(lambda: engine.try_fast_path_batch(queries, with_connections=False), 3)
    single = queries[:20_000].tolist()
    t0 = time.perf_counter()
    for q in single:
        engine.try_fast_path(q)
    t_single = (time.perf_counter() - t0) / len(single)
    return {"reflexes": k, "reflex_load_ns": load / k * 1e9,
            "reflex_batch_ns": t_batch / len(queries) * 1e9,
            "reflex_single_ns": t_single * 1e9, "reflex_hit_fraction": float(r.found.mean())}


def _learning(store: Any, rng: Any, n_events: int = 100_000) -> dict[str, float]:
    """One analysis cycle (the default learning: it folds every event written since the
    last cycle) over ``n_events`` events of a two-action environment."""
    from ngstore.experience import new_events

    ev = new_events(n_events, event_type=1)
    ev["event_type"] = rng.integers(1, 3, size=n_events)
    ev["state"] = rng.integers(0, 4, size=(n_events, 1)).astype(np.float32) / 4 * np.ones(8, np.float32)
    ev["reward_goal"] = np.where(ev["event_type"] == 1, 1.0, 0.0) + rng.normal(0, 0.1, n_events)
    ev["action"][:, 0] = np.where(ev["event_type"] == 1, 0.5, -0.5)
    store.write_events(ev)
    engine = store.intuition()
    t0 = time.perf_counter()
    report = engine.analyze(rng=rng)
    return {"analyze_events": report.events_sampled, "analyze_s": time.perf_counter() - t0,
            "analyze_reflexes": report.consolidated}


def _nearest(store: Any, rng: Any, queries: int = 100, k: int = 10) -> dict[str, float]:
    """Exact k nearest tokens (all 24 coordinates) for a batch of random queries."""
    q = rng.integers(-32768, 32767, size=(queries, 24)).astype(np.int16)
    with store.snapshot() as snap:
        t, _ = _best(lambda: snap.tokens.knn(q, k), 1)
    return {"knn_queries": queries, "knn_ms": t * 1e3}


def _graph_walk(store: Any, n: int, rng: Any, edges: int = 200_000, seeds: int = 1000) -> dict[str, float]:
    """Random connections among the tokens (one batch), then a 2-hop walk from many seeds."""
    from ngstore.connections import new_connections
    from ngstore.records import ASSOCIATED_WITH

    a = rng.integers(0, n, size=edges, dtype=np.uint32)
    b = rng.integers(0, n, size=edges, dtype=np.uint32)
    keep = a != b
    store.put_connections(new_connections(a[keep], b[keep]))
    store.flush()  # in LMDB, where walks read: not timed below
    start = rng.integers(0, n, size=seeds, dtype=np.uint32)
    t, hops = _best(lambda: store.k_hop(start, 2), 1)
    # one connection at a time, by its key (new_connections' default type), in either order
    pairs = list(zip(b[keep][:10_000].tolist(), a[keep][:10_000].tolist(), strict=True))
    t_one, _ = _best(lambda: [store.get_connection(x, y, ASSOCIATED_WITH) for x, y in pairs], 3)
    return {"graph_edges": int(keep.sum()), "k_hop_seeds": seeds, "k_hop_ms": t * 1e3,
            "k_hop_reached": len(hops.ids), "get_connection_ns": t_one / len(pairs) * 1e9}


def _asyncio_commits(path: str, n: int, max_tokens: int, max_bytes: int, tasks: int = 1000) -> dict[str, float]:
    """``tasks`` concurrent asyncio tasks, each committing one token (durability sync)
    through ngstore.aio, while a ticker measures the longest stall of the event loop."""
    import asyncio

    import ngstore.aio
    from ngstore import Token

    async def run() -> dict[str, float]:
        async with await ngstore.aio.open(path, max_tokens=max_tokens, max_bytes=max_bytes) as db:
            toks = [Token.create_batch(1, start=n + 2_000_000 + i) for i in range(tasks)]
            stall = 0.0
            done = False

            async def ticker() -> None:
                nonlocal stall
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    stall = max(stall, now - last - 0.001)
                    last = now

            tick = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            await asyncio.gather(*(db.put_tokens(t) for t in toks))
            took = time.perf_counter() - t0
            done = True
            await tick
        return {"aio_tasks": tasks, "aio_commits_per_s": tasks / took, "aio_loop_stall_ms": stall * 1e3}

    return asyncio.run(run())


def _print_stress(res: dict[str, Any]) -> None:
    n = res["tokens"]
    print(f"ngstore stress: {n:,} tokens in a real store (durability=sync)\n")
    print("| Operation | ngstore | Rate | the original claimed | Notes |")
    print("|-----------|---------|------|----------------------|-------|")
    rows = [
        ("Create (single)", _fmt_ns(res["create_single_ns"]), _rate(res["create_single_ns"]),
         "677 ns", f"per Token object, {res['create_single_ns'] / res['one_slot_object_ns']:.1f}x a "
         "one-slot Python object (no gc pass in either)"),
        ("Create (batch)", f"{res['create_batch_ms']:.1f} ms", _rate(res["create_batch_ns"]),
         "175 ms", f"{n:,} tokens, numpy-backed"),
        ("Clone", _fmt_ns(res["clone_ns"]), _rate(res["clone_ns"]), "54 ns", "per token, array copy"),
        ("Read (sequential)", _fmt_ns(res["read_sequential_ns"]), _rate(res["read_sequential_ns"]),
         "18.6 ns", f"zero-copy scan, {res['scan_ratio']:.2f}x an in-RAM array"),
        ("Read (random)", _fmt_ns(res["read_random_ns"]), _rate(res["read_random_ns"]),
         "53.4 ns", "get_tokens of N random ids"),
        ("Get one token", _fmt_ns(res["get_one_ns"]), _rate(res["get_one_ns"]), "-", "store.get_token(id)"),
        ("Get one connection", _fmt_ns(res["get_connection_ns"]), _rate(res["get_connection_ns"]), "-",
         "store.get_connection(a, b, type)"),
        ("Durable ingest", _fmt_ns(res["ingest_ns"]), _rate(res["ingest_ns"]), "-",
         "put_tokens, fsync'd before return"),
        ("Column scan", _fmt_ns(res["column_scan_ns"]), _rate(res["column_scan_ns"]), "-",
         f"snapshot column('weight'), {res['column_ratio']:.2f}x an in-RAM array"),
        ("Durable commit (sync)", f"{res['sync_commit_p50_us']:.0f} µs p50", f"{res['sync_commits_per_s']:.0f}/sec",
         "-", f"8 tokens; p99 {res['sync_commit_p99_us']:.0f} µs"),
        ("Commit (async)", f"{res['async_commit_p50_us']:.0f} µs p50", f"{res['async_commits_per_s']:.0f}/sec",
         "-", f"{res['async_commits_per_s'] / res['sync_commits_per_s']:.1f}x sync"),
        ("Group commit, 8 threads", f"{res['group_commit_8_threads_per_s']:.0f}/sec", "-", "-",
         f"{res['group_commit_ratio']:.1f}x one thread"),
        ("Reflex lookup (batch)", _fmt_ns(res["reflex_batch_ns"]), _rate(res["reflex_batch_ns"]), "30-50 ns",
         f"{res['reflexes']:,} persistent reflexes, hash included"),
        ("Reflex lookup (single)", _fmt_ns(res["reflex_single_ns"]), _rate(res["reflex_single_ns"]), "30-50 ns",
         "try_fast_path from Python"),
        ("Analysis cycle", f"{res['analyze_s'] * 1e3:.0f} ms", "-", "-",
         f"{res['analyze_events']:,} events folded -> {res['analyze_reflexes']} reflexes"),
        ("Nearest tokens (knn)", f"{res['knn_ms']:.0f} ms", "-", "-",
         f"{res['knn_queries']} queries, k=10, exact over 24 coordinates"),
        ("Graph walk (k_hop, k=2)", f"{res['k_hop_ms']:.0f} ms", "-", "-",
         f"{res['k_hop_seeds']:,} seeds over {res['graph_edges']:,} connections, "
         f"{res['k_hop_reached']:,} tokens reached"),
        ("check()", f"{res['check_s']:.2f} s", "-", "-",
         f"every page and record verified: {'OK' if res['check_ok'] else 'PROBLEMS FOUND'}"),
        ("asyncio commits", f"{res['aio_commits_per_s']:.0f}/sec", "-", "-",
         f"{res['aio_tasks']:,} concurrent tasks, durable; longest loop stall "
         f"{res['aio_loop_stall_ms']:.1f} ms"),
        ("Reopen", f"{res['reopen_ms']:.1f} ms", "-", "-", "open after close"),
    ]
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\n| Memory | ngstore | the original claimed |\n|---|---|---|\n"
          f"| {n:,} tokens on disk after ingest | {res['disk_bytes_after_ingest'] / 1e6:.1f} MB "
          f"({res['disk_bytes_after_ingest'] / n:.1f} B/token; records are 64 B) | "
          f"{n * 64 / 1048576:.0f} MB computed, never measured |\n"
          f"| the store after the whole stress | {res['disk_bytes'] / 1e6:.1f} MB | - |")


def cmd_stress(a: argparse.Namespace) -> int:
    if a.path is not None and DEFAULT_IO.is_file(a.path):
        raise CliError(f"{a.path} is a file, not a store directory",
                       "give a new or empty directory, or an existing ngstore store", EXIT_USAGE)
    try:
        res = stress(a.path, a.tokens, quiet=a.quiet)
    except NgStoreError as exc:
        if a.path is not None:
            raise store_error(a.path, exc, doing="stress") from exc
        raise
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        _print_stress(res)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .obs.statspage import read_stats_page

    with open_store(a.path, readonly=True) as s:
        st = s.stats()
    try:
        page = read_stats_page(st["path"])
    except (OSError, ValueError):
        page = None
    if a.json:
        if page is not None:
            st["writer"] = {"pid": page.pid, "alive": page.alive, "closed": page.closed,
                            "published_unix_ns": page.published_unix_ns}
        print(json.dumps(st, indent=2, default=str))
        return 0
    wal_dir = os.path.join(st["path"], "wal")
    names = DEFAULT_IO.listdir(wal_dir) if DEFAULT_IO.is_dir(wal_dir) else []
    wal_bytes = sum(DEFAULT_IO.size_of(os.path.join(wal_dir, f)) or 0 for f in names)
    print(f"store:          {st['path']}")
    print(f"format version: {st['format_version']}")
    print(f"tokens:         {st['tokens_live']:,} (chunks of {st['chunk_slots']} ids)")
    print(f"applied log position: {st['applied_position']:,}")
    print(f"LMDB map:       {fmt_bytes(st['map_used_bytes'])} used of "
          f"{fmt_bytes(st['map_size_bytes'], exact=False)} "
          f"reserved; readers {st['readers_used']}/{st['readers_max']}")
    print(f"log:            {fmt_bytes(wal_bytes)} in {len(names)} segment file(s)")
    if page is None:
        print("writer:         none has published here")
    else:
        state = ("alive" if page.alive else "closed the store" if page.closed
                 else "ended without closing the store")
        limit = page.values.get("token_limit", 0)
        print(f"writer:         pid {page.pid} {state}; last published {page.age_seconds:.1f} s ago; "
              f"{int(page.values.get('commits_total', 0)):,} commits; "
              f"max_tokens {int(limit):,}" if limit else
              f"writer:         pid {page.pid} {state}; last published {page.age_seconds:.1f} s ago; "
              f"{int(page.values.get('commits_total', 0)):,} commits; no token limit")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    with open_store(a.path, readonly=True) as s:
        report = s.check()
    print(report)
    return 0 if report.ok else EXIT_UNSOUND


# ------------------------------------------------------------------------------ arguments
def stress_tokens(text: str) -> int:
    v = positive_int(text)
    if v > 1 << 32:
        raise argparse.ArgumentTypeError(f"at most {1 << 32:,} tokens (32-bit ids), got {v:,}")
    return v


def version_text() -> str:
    from importlib import metadata

    try:
        v = metadata.version("ngstore")
    except metadata.PackageNotFoundError:
        from . import __version__ as v
    from .layout import FORMAT_VERSION

    return (f"ngstore {v} (store format {FORMAT_VERSION}; Python "
            f"{sys.version.split()[0]}; {sys.platform})")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ngstore", formatter_class=Formatter,
                description="ngstore: an embedded, crash-safe store of the NeuroGraph data model.\n"
                            "Operator's guide: docs/operations.md.",
                epilog="exit status: 0 ok, 1 unsound, 2 usage, 3 cannot open, 4 failed, 130 interrupted")
    p.add_argument("--version", action="version", version=version_text(),
                   help="print the version and exit")
    add_debug(p)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", title="commands", parser_class=Parser)

    sp = sub.add_parser("stress", help="the main job: the original README's token stress on a real store",
                        formatter_class=Formatter,
                        description="Runs the original NeuroGraph README's token stress on a real, durable "
                                    "store and prints it beside the original's claims.",
                        epilog="example:\n  ngstore stress --tokens 100000\n  ngstore stress /data/bench --json")
    sp.add_argument("path", metavar="PATH", nargs="?", default=None,
                    help="store directory: new, empty or an ngstore store; left in place "
                         "(default: a temporary directory, removed afterwards)")
    sp.add_argument("--tokens", type=stress_tokens, default=1_000_000, metavar="N",
                    help="tokens to create, ingest and read; the store's max_tokens and max_bytes "
                         "are raised to fit")
    sp.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    sp.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_debug(sp)
    sp.set_defaults(fn=cmd_stress)

    sp = sub.add_parser("info", help="counts, sizes, format version, the writer (read-only)",
                        formatter_class=Formatter,
                        description="Opens the store read-only (next to a live writer is fine) and prints "
                                    "its counts and sizes, and the writer's state from its stats page.")
    add_path(sp)
    sp.add_argument("--json", action="store_true", help="print store.stats() as JSON")
    add_debug(sp)
    sp.set_defaults(fn=cmd_info)

    sp = sub.add_parser("check", help="verify internal consistency (exit 1 if unsound; read-only)",
                        formatter_class=Formatter,
                        description="Opens the store read-only and runs Store.check(): exit 0 if sound, 1 "
                                    "if not.")
    add_path(sp)
    add_debug(sp)
    sp.set_defaults(fn=cmd_check)

    from . import ops_cli

    ops_cli.register(sub)
    return p


def _cli_main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.cmd is None:
        raise CliError("no command given", "`ngstore --help` lists the commands "
                       "(stress, info, check, wal, recover, checkpoint, serve, blackbox)", EXIT_USAGE)
    if a.cmd != "serve":   # serve logs JSON lines (ngstore.obs.http.main_serve)
        _plain_warnings()
    fn: Callable[[argparse.Namespace], int] = a.fn
    return int(fn(a) or 0)


def _plain_warnings() -> None:
    """The library's warnings (e.g. "the previous writer ended without closing the store") as
    ``ngstore: warning: ...`` lines on stderr, instead of Python's bare last-resort format."""
    import logging

    logger = logging.getLogger("ngstore")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ngstore: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)


def _one_line(exc: BaseException) -> CliError:
    """Anything a command raised, as the one-line error to print."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, StorageError):
        return storage_cli_error(exc)
    if isinstance(exc, NgStoreError):
        return CliError(str(exc), "rerun with --debug for the traceback", EXIT_FAILED)
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        hint = {errno.EACCES: "check the permissions of the store directory and its files",
                errno.EPERM: "check the permissions of the store directory and its files",
                errno.ENOSPC: "free disk space",
                errno.EROFS: "the file system is read-only",
                errno.EIO: "the disk reported an I/O error: check the system log (dmesg)"}.get(
            exc.errno or 0, "rerun with --debug for the traceback")
        return CliError(f"{where}{what}", hint, EXIT_FAILED)
    return CliError(f"unexpected {type(exc).__name__}: {exc}",
                    "this is a bug in ngstore: rerun with --debug and report the traceback",
                    EXIT_FAILED)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``ngstore`` entry point: runs the command, prints errors as one line, exits."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("NGSTORE_DEBUG", "") not in ("", "0")
    try:
        code = _cli_main(args)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `ngstore wal dump PATH | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    except KeyboardInterrupt:
        if debug:
            raise
        print("ngstore: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:
        if debug:
            raise
        err = _one_line(exc)
        print(err.line(), file=sys.stderr)
        code = err.code
    sys.exit(code)


if __name__ == "__main__":
    main()
