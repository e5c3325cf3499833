"""The ``ngstore`` command: the main job (``stress``) and the operator's tools.

Exit status: 0 success; 1 the checked thing is unsound (``check``, ``wal verify``);
2 usage errors; 3 the store could not be opened (locked, not a store, corrupt).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import NgStoreError, StoreLockedError

EXIT_UNSOUND = 1
EXIT_CANNOT_OPEN = 3


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def _rate(per_item_ns: float) -> str:
    return f"{1e9 / per_item_ns / 1e6:.2f}M/sec" if per_item_ns > 0 else "-"


class _Steps:
    """A progress display for the stress steps (tqdm on a terminal, plain lines otherwise)."""

    def __init__(self, names: Sequence[str], quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=len(names), desc="stress", unit="step", leave=False,
                            disable=not sys.stderr.isatty())

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        elif not self.quiet:
            print(f"... {name}", file=sys.stderr)
        result = fn()
        if self.bar is not None:
            self.bar.update(1)
        return result

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def stress(path: str | None, n: int, quiet: bool = False, repeats: int = 3) -> dict[str, Any]:
    """The original README's token stress, on a real store. Returns the figures."""
    import ngstore
    from ngstore import Token

    own_tmp = path is None
    root = tempfile.mkdtemp(prefix="ngstore-stress-") if own_tmp else path
    store_path = os.path.join(root, "store") if own_tmp else root
    rng = np.random.default_rng(42)
    res: dict[str, Any] = {"tokens": n, "path": store_path}
    steps = ["create single", "create batch", "clone", "ingest", "reopen", "read sequential",
             "column scan", "read random", "get one", "small commits", "async commits",
             "group commit", "reflexes", "learning", "memory"]
    progress = _Steps(steps, quiet)
    try:
        k_single = min(n, 200_000)
        t, _ = progress.run("create single", lambda: _best(lambda: [Token(i) for i in range(k_single)], 1))
        res["create_single_ns"] = t / k_single * 1e9
        t, batch = progress.run("create batch", lambda: _best(lambda: Token.create_batch(n), repeats))
        res["create_batch_ms"] = t * 1e3
        res["create_batch_ns"] = t / n * 1e9
        t, _ = progress.run("clone", lambda: _best(lambda: batch.data.copy(), repeats))
        res["clone_ns"] = t / n * 1e9

        def ingest() -> None:
            with ngstore.open(store_path, durability="sync", max_tokens=max(n, 10_000_000)) as s:
                s.put_tokens(batch)

        t, _ = progress.run("ingest", lambda: _best(ingest, 1))
        res["ingest_ns"] = t / n * 1e9
        res["disk_bytes_after_ingest"] = _disk_bytes(store_path)
        t, store = progress.run("reopen", lambda: _best(
            lambda: ngstore.open(store_path, max_tokens=max(n, 10_000_000)), 1))
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
            st = store.stats()
        finally:
            store.close()

        res["disk_bytes"] = progress.run("memory", lambda: _disk_bytes(store_path))
        res["disk_bytes_per_token"] = res["disk_bytes"] / n
        res["tokens_stored"] = st["tokens_live"]
        del got
    finally:
        progress.close()
        if own_tmp:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return res


def _disk_bytes(path: str) -> int:
    """Bytes allocated on disk by the store's files (LMDB and the log)."""
    total = 0
    for dp, _dn, fns in os.walk(path):
        for fn in fns:
            total += os.stat(os.path.join(dp, fn)).st_blocks * 512
    return total


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
    """One analysis cycle over ``n_events`` events of a two-action environment."""
    from ngstore import IntuitionConfig
    from ngstore.experience import new_events

    ev = new_events(n_events, event_type=1)
    ev["event_type"] = rng.integers(1, 3, size=n_events)
    ev["state"] = rng.integers(0, 4, size=(n_events, 1)).astype(np.float32) / 4 * np.ones(8, np.float32)
    ev["reward_goal"] = np.where(ev["event_type"] == 1, 1.0, 0.0) + rng.normal(0, 0.1, n_events)
    ev["action"][:, 0] = np.where(ev["event_type"] == 1, 0.5, -0.5)
    store.write_events(ev)
    engine = store.intuition(IntuitionConfig(batch_size=n_events))
    t0 = time.perf_counter()
    report = engine.analyze(rng=rng)
    return {"analyze_events": n_events, "analyze_s": time.perf_counter() - t0,
            "analyze_reflexes": report.consolidated}


def _print_stress(res: dict[str, Any]) -> None:
    n = res["tokens"]
    print(f"ngstore stress: {n:,} tokens in a real store (durability=sync)\n")
    print("| Operation | ngstore | Rate | the original claimed | Notes |")
    print("|-----------|---------|------|----------------------|-------|")
    rows = [
        ("Create (single)", _fmt_ns(res["create_single_ns"]), _rate(res["create_single_ns"]),
         "677 ns", "per Token object"),
        ("Create (batch)", f"{res['create_batch_ms']:.1f} ms", _rate(res["create_batch_ns"]),
         "175 ms", f"{n:,} tokens, numpy-backed"),
        ("Clone", _fmt_ns(res["clone_ns"]), _rate(res["clone_ns"]), "54 ns", "per token, array copy"),
        ("Read (sequential)", _fmt_ns(res["read_sequential_ns"]), _rate(res["read_sequential_ns"]),
         "18.6 ns", f"zero-copy scan, {res['scan_ratio']:.2f}x an in-RAM array"),
        ("Read (random)", _fmt_ns(res["read_random_ns"]), _rate(res["read_random_ns"]),
         "53.4 ns", "get_tokens of N random ids"),
        ("Get one token", _fmt_ns(res["get_one_ns"]), _rate(res["get_one_ns"]), "-", "store.get_token(id)"),
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
         f"{res['analyze_events']:,} events -> {res['analyze_reflexes']} reflexes"),
        ("Reopen", f"{res['reopen_ms']:.1f} ms", "-", "-", "open after close"),
    ]
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\n| Memory | ngstore | the original claimed |\n|---|---|---|\n"
          f"| {n:,} tokens on disk after ingest | {res['disk_bytes_after_ingest'] / 1e6:.1f} MB "
          f"({res['disk_bytes_after_ingest'] / n:.1f} B/token; records are 64 B) | "
          f"{n * 64 / 1048576:.0f} MB computed, never measured |\n"
          f"| the store after the whole stress | {res['disk_bytes'] / 1e6:.1f} MB | - |")


def _open_store(path: str, **kw: Any):
    import ngstore

    try:
        return ngstore.open(path, create=False, **kw)
    except StoreLockedError as exc:
        print(f"ngstore: {exc}", file=sys.stderr)
        sys.exit(EXIT_CANNOT_OPEN)
    except NgStoreError as exc:
        print(f"ngstore: cannot open {path}: {exc}", file=sys.stderr)
        sys.exit(EXIT_CANNOT_OPEN)


def cmd_stress(a: argparse.Namespace) -> int:
    res = stress(a.path, a.tokens, quiet=a.json)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        _print_stress(res)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    with _open_store(a.path, readonly=True) as s:
        st = s.stats()
    if a.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"store:          {st['path']}")
    print(f"format version: {st['format_version']}")
    print(f"tokens:         {st['tokens_live']:,} (chunks of {st['chunk_slots']} ids)")
    print(f"applied log position: {st['applied_position']}")
    print(f"LMDB map:       {st['map_used_bytes'] / 1e6:.1f} MB used of {st['map_size_bytes'] / 2**30:.0f} GiB "
          f"reserved; readers {st['readers_used']}/{st['readers_max']}")
    wal_dir = os.path.join(st["path"], "wal")
    wal_bytes = sum(os.path.getsize(os.path.join(wal_dir, f)) for f in os.listdir(wal_dir)) \
        if os.path.isdir(wal_dir) else 0
    print(f"log:            {wal_bytes / 1e6:.2f} MB in {len(os.listdir(wal_dir)) if os.path.isdir(wal_dir) else 0} segment(s)")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    with _open_store(a.path, readonly=True) as s:
        report = s.check()
    print(report)
    return 0 if report.ok else EXIT_UNSOUND


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _cli_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ngstore", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("stress", help="the main job: token stress on a real store")
    sp.add_argument("path", nargs="?", default=None, help="store directory (default: a temporary one)")
    sp.add_argument("--tokens", type=_positive_int, default=1_000_000)
    sp.add_argument("--json", action="store_true", help="print the figures as JSON")
    sp.set_defaults(fn=cmd_stress)

    sp = sub.add_parser("info", help="counts, sizes, format version")
    sp.add_argument("path")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_info)

    sp = sub.add_parser("check", help="verify internal consistency (exit 1 if unsound)")
    sp.add_argument("path")
    sp.set_defaults(fn=cmd_check)

    from . import ops_cli

    ops_cli.register(sub)
    a = p.parse_args(argv)
    return int(a.fn(a) or 0)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = _cli_main(argv)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `ngstore wal dump PATH | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    main()
