"""The operator's subcommands of ``ngstore``: they work on a directory whose writer is
gone, and refuse one that a live writer holds (its ``writer.lock`` is taken).

* ``ngstore wal verify PATH``  -- read-only check of the log; exit 0 if sound, 1 if not.
* ``ngstore wal dump PATH [--json]`` -- every record: position, type, sizes, file, offset.
* ``ngstore recover PATH [--mode tolerate-tail|salvage|strict]`` -- replay the log into
  LMDB, truncate a torn tail, checkpoint, and report what was kept and dropped.
* ``ngstore checkpoint PATH`` -- make LMDB durable and drop the log it covers.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import sys
from typing import Any

EXIT_UNSOUND = 1
EXIT_CANNOT_OPEN = 3


def _refuse_if_live_writer(path: str) -> None:
    """Exit 3 if a live process holds the writer lock of ``path``."""
    lock = os.path.join(path, "writer.lock")
    if not os.path.exists(os.path.join(path, "NGSTORE")):
        print(f"ngstore: {path} is not an ngstore store", file=sys.stderr)
        sys.exit(EXIT_CANNOT_OPEN)
    if not os.path.exists(lock):
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            with open(lock) as f:
                pid = f.read().strip() or "?"
            print(f"ngstore: {path} is held by a live writer (pid {pid}); the offline tools "
                  "work only on a store whose writer is gone", file=sys.stderr)
            sys.exit(EXIT_CANNOT_OPEN)
        raise
    finally:
        os.close(fd)


def cmd_wal_verify(a: argparse.Namespace) -> int:
    from . import wal

    _refuse_if_live_writer(a.path)
    report = wal.verify(os.path.join(a.path, "wal"))
    if a.json:
        print(json.dumps(_as_dict(report), indent=2, default=str))
    else:
        print(report)
    return 0 if report.ok else EXIT_UNSOUND


def cmd_wal_dump(a: argparse.Namespace) -> int:
    from . import wal

    _refuse_if_live_writer(a.path)
    rows = [_as_dict(r) for r in wal.dump(os.path.join(a.path, "wal"))]
    if a.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'position':>10} {'type':>6} {'bytes':>10} {'raw':>10} {'z':>2}  file@offset")
    for r in rows:
        print(f"{r['position']:>10} {r['type']:>6} {r['size']:>10} {r.get('raw_size', r['size']):>10} "
              f"{'z' if r.get('compressed') else '':>2}  {os.path.basename(r['file'])}@{r['offset']}")
    print(f"{len(rows)} record(s)")
    return 0


def cmd_recover(a: argparse.Namespace) -> int:
    import ngstore

    _refuse_if_live_writer(a.path)
    try:
        s = ngstore.open(a.path, create=False, recovery=a.mode, progress=not a.quiet)
    except ngstore.CorruptionError as exc:
        print(f"ngstore: recovery refused: {exc}\n"
              "  (rerun with --mode salvage to skip damaged records and report them)", file=sys.stderr)
        return EXIT_UNSOUND
    except ngstore.NgStoreError as exc:
        print(f"ngstore: cannot recover {a.path}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_OPEN
    with s:
        info = s.recovery
        report = info.log_report
        print(f"recovered {a.path} (mode {a.mode})")
        if info.power_loss_rollback:
            print(f"  LMDB rolled back to checkpoint transaction {info.rolled_back_to_txn} "
                  "(the system went down while the store was open)")
        print(f"  replayed {info.replayed_records} log record(s): positions "
              f"{info.replayed_from + 1 if info.replayed_records else '-'}..{info.replayed_to}")
        if report is not None:
            print("  log: " + str(report).replace("\n", "\n  "))
        print(f"  tokens now: {s.count():,}")
        check = s.check()
        print("  " + str(check).replace("\n", "\n  "))
    return 0 if check.ok else EXIT_UNSOUND


def cmd_checkpoint(a: argparse.Namespace) -> int:
    import ngstore

    _refuse_if_live_writer(a.path)
    try:
        s = ngstore.open(a.path, create=False)
    except ngstore.NgStoreError as exc:
        print(f"ngstore: cannot open {a.path}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_OPEN
    from . import wal

    with s:
        before = s.stats()
        s.checkpoint()
        applied = s.stats()["applied_position"]
    # the closing checkpoint seals the log, so its size is final only after close
    after = wal.verify(os.path.join(a.path, "wal"))
    print(f"checkpoint of {a.path}: applied position {applied}, "
          f"log {before.get('wal_bytes', 0)} -> {after.bytes} bytes ({after.records} records)")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .obs.http import main_serve

    return int(main_serve(a.path, a.host, a.port) or 0)


def cmd_blackbox(a: argparse.Namespace) -> int:
    from .obs.blackbox import list_dumps, load_dump

    dumps = list_dumps(a.path)
    if a.show is None:
        if not dumps:
            print(f"no black-box dumps in {a.path}")
        for d in dumps:
            print(d)
        return 0
    target = a.show if os.path.sep in a.show else os.path.join(a.path, a.show)
    if a.show == "latest":
        if not dumps:
            print(f"no black-box dumps in {a.path}", file=sys.stderr)
            return EXIT_UNSOUND
        target = dumps[-1]
    print(json.dumps(load_dump(target), indent=2, default=str))
    return 0


def _as_dict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    return obj


def register(sub: Any) -> None:
    wp = sub.add_parser("wal", help="inspect the write-ahead log")
    wsub = wp.add_subparsers(dest="walcmd", required=True)
    sp = wsub.add_parser("verify", help="check the log (exit 0 sound, 1 unsound)")
    sp.add_argument("path")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_wal_verify)
    sp = wsub.add_parser("dump", help="list the log's records")
    sp.add_argument("path")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_wal_dump)

    sp = sub.add_parser("recover", help="replay and repair a store whose writer died")
    sp.add_argument("path")
    sp.add_argument("--mode", default="tolerate-tail", choices=["tolerate-tail", "salvage", "strict"])
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(fn=cmd_recover)

    sp = sub.add_parser("serve", help="HTTP sidecar: /metrics, /health, /ready (read-only)")
    sp.add_argument("path")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=9818)
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("blackbox", help="list black-box dumps, or show one (--show NAME|latest)")
    sp.add_argument("path")
    sp.add_argument("--show", default=None)
    sp.set_defaults(fn=cmd_blackbox)

    sp = sub.add_parser("checkpoint", help="make LMDB durable and drop the log it covers")
    sp.add_argument("path")
    sp.set_defaults(fn=cmd_checkpoint)
