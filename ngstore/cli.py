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
    from ngstore import Token, TokenArray

    own_tmp = path is None
    root = tempfile.mkdtemp(prefix="ngstore-stress-") if own_tmp else path
    store_path = os.path.join(root, "store") if own_tmp else root
    rng = np.random.default_rng(42)
    res: dict[str, Any] = {"tokens": n, "path": store_path}
    steps = ["create single", "create batch", "clone", "ingest", "reopen", "read sequential",
             "read random", "get one", "scan", "small commits", "memory"]
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
            progress.run("scan", lambda: None)
            k_commit = 200
            small = Token.create_batch(8, start=n)

            def commits() -> None:
                for _ in range(k_commit):
                    store.put_tokens(small)

            t, _ = progress.run("small commits", lambda: _best(commits, 1))
            res["small_commit_us"] = t / k_commit * 1e6
            st = store.stats()
        finally:
            store.close()

        def disk() -> int:
            total = 0
            for dp, _dn, fns in os.walk(store_path):
                for fn in fns:
                    if fn.endswith(".mdb") or dp.endswith("wal"):
                        total += os.stat(os.path.join(dp, fn)).st_blocks * 512
            return total

        res["disk_bytes"] = progress.run("memory", disk)
        res["disk_bytes_per_token"] = res["disk_bytes"] / n
        res["tokens_stored"] = st["tokens_live"]
        del got
    finally:
        progress.close()
        if own_tmp:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return res


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
        ("Small durable commit", f"{res['small_commit_us']:.0f} µs", "-", "-", "8 tokens, sync"),
        ("Reopen", f"{res['reopen_ms']:.1f} ms", "-", "-", "open after close"),
    ]
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\n| Memory | ngstore | the original claimed |\n|---|---|---|\n"
          f"| {n:,} tokens on disk | {res['disk_bytes'] / 1e6:.1f} MB "
          f"({res['disk_bytes_per_token']:.1f} B/token) | {n * 64 / 1048576:.0f} MB computed, never measured |")


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


def _cli_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ngstore", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("stress", help="the main job: token stress on a real store")
    sp.add_argument("path", nargs="?", default=None, help="store directory (default: a temporary one)")
    sp.add_argument("--tokens", type=int, default=1_000_000)
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
    sys.exit(_cli_main(argv))


if __name__ == "__main__":
    main()
