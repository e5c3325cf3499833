"""The operator's subcommands of ``ngstore`` (docs/operations.md §3).

Offline tools -- they work on a directory whose writer is gone, and refuse one that a live
writer holds (its ``writer.lock`` is taken):

* ``ngstore wal verify PATH`` -- read-only check of the log; exit 0 if sound, 1 if not.
* ``ngstore wal dump PATH [--json]`` -- every record: position, type, sizes, file, offset.
* ``ngstore recover PATH [--mode tolerate-tail|salvage|strict]`` -- replay the log into
  LMDB, truncate a torn tail, checkpoint, and report what was kept and dropped.
* ``ngstore checkpoint PATH`` -- make LMDB durable and drop the log it covers.

Tools that run next to a live writer:

* ``ngstore serve PATH`` -- the read-only HTTP sidecar (``ngstore.obs.http``).
* ``ngstore blackbox PATH`` -- the black-box ring and the dumps (``ngstore.obs.blackbox``).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import time
from typing import Any

from .cliutil import (
    EXIT_CANNOT_OPEN,
    EXIT_FAILED,
    EXIT_UNSOUND,
    EXIT_USAGE,
    CliError,
    Formatter,
    Progress,
    add_debug,
    add_path,
    fmt_bytes,
    fmt_positions,
    store_error,
)
from .directory import Directory
from .errors import CorruptionError, InvalidArgumentError, NgStoreError
from .fileio import DEFAULT_IO


def refuse_if_live_writer(path: str) -> None:
    """Raise a ``CliError`` (exit 3) unless ``path`` is a store whose writer is gone.

    The probe tries ``writer.lock`` for an instant (``directory.Directory.live_writer_pid``):
    refused means a live writer."""
    if not DEFAULT_IO.exists(path):
        raise CliError(f"{path} does not exist", "give the directory of an ngstore store",
                       EXIT_CANNOT_OPEN)
    if not DEFAULT_IO.is_dir(path):
        raise CliError(f"{path} is a file, not an ngstore store",
                       "give the directory of an ngstore store", EXIT_CANNOT_OPEN)
    if not DEFAULT_IO.exists(os.path.join(path, "NGSTORE")):
        raise CliError(f"{path} is not an ngstore store (no NGSTORE file)",
                       "give the directory of an ngstore store", EXIT_CANNOT_OPEN)
    pid = Directory(path, DEFAULT_IO).live_writer_pid()
    if pid is not None:
        raise CliError(f"{path} is held by a live writer (pid {pid}); the offline tools work only on "
                       "a store whose writer is gone",
                       "stop the writer first; `ngstore info` and `ngstore serve` run next to it",
                       EXIT_CANNOT_OPEN)


# ------------------------------------------------------------------------------ wal
def _log_summary(records: int, first: int, last: int, segments: int, size: int | None = None) -> str:
    parts = [f"{records:,} record{'s' if records != 1 else ''}", fmt_positions(first, last),
             f"{segments} segment{'s' if segments != 1 else ''}"]
    if size is not None:
        parts.append(fmt_bytes(size))
    return ", ".join(parts)


def cmd_wal_verify(a: argparse.Namespace) -> int:
    from . import waltools

    refuse_if_live_writer(a.path)
    report = waltools.verify(os.path.join(a.path, "wal"))
    if a.json:
        print(json.dumps(_as_dict(report), indent=2, default=str))
        return 0 if report.ok else EXIT_UNSOUND
    print(f"log: {'SOUND' if report.sound else 'UNSOUND'}; "
          + _log_summary(report.records, report.first_position, report.last_position,
                         report.segments, report.bytes))
    for p in report.problems:
        lost = f" (positions {p.lost[0]:,}..{p.lost[1]:,} lost)" if p.lost else ""
        at = f" at offset {p.offset:,}" if p.offset is not None else ""
        print(f"  {p.kind}: {p.path}{at}: {p.reason}{lost}")
    return 0 if report.ok else EXIT_UNSOUND


def cmd_wal_dump(a: argparse.Namespace) -> int:
    from . import waltools

    refuse_if_live_writer(a.path)
    rows = [_as_dict(r) for r in waltools.dump(os.path.join(a.path, "wal"))]
    if a.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'position':>10} {'type':>6} {'bytes':>10} {'raw':>10} {'z':>2}  file@offset")
    for r in rows:
        print(f"{r['position']:>10} {r['type']:>6} {r['size']:>10} {r.get('raw_size', r['size']):>10} "
              f"{'z' if r.get('compressed') else '':>2}  {os.path.basename(r['file'])}@{r['offset']}")
    print(f"{len(rows)} record(s)")
    return 0


# ------------------------------------------------------------------------------ recover
def cmd_recover(a: argparse.Namespace) -> int:
    import ngstore

    refuse_if_live_writer(a.path)
    progress = Progress("recover", ["open and replay the log", "check"], quiet=a.quiet)
    try:
        # a tqdm bar over the replayed records only on a terminal (Progress prints lines else)
        s = progress.run("open and replay the log", lambda: ngstore.open(
            a.path, create=False, recovery=a.mode, progress=progress.bar is not None))
    except ngstore.CorruptionError as exc:
        progress.close()
        hint = {"strict": "the default mode, tolerate-tail, truncates a torn tail; --mode salvage "
                          "also skips damaged records and reports them",
                "tolerate-tail": "rerun with --mode salvage to skip damaged records and report them "
                                 "(docs/operations.md §4.3)",
                "salvage": "restore the store from a backup"}[a.mode]
        raise CliError(f"recovery refused ({a.mode} mode) for {a.path}: {exc}", hint, EXIT_UNSOUND) from exc
    except NgStoreError as exc:
        progress.close()
        raise store_error(a.path, exc, doing="recover") from exc
    with s:
        check = progress.run("check", s.check)
        progress.close()
        info = s.recovery
        report = info.log_report
        print(f"recovered {a.path} (mode {a.mode})")
        if info.power_loss_rollback:
            print(f"  LMDB rolled back to checkpoint transaction {info.rolled_back_to_txn} "
                  "(the system went down while the store was open)")
        if info.replayed_records:
            print(f"  replayed {info.replayed_records:,} log record(s): "
                  f"{fmt_positions(info.replayed_from + 1, info.replayed_to)}")
        else:
            print(f"  replayed 0 log records: LMDB already held everything up to position "
                  f"{info.replayed_to:,}")
        if report is not None:
            print("  log: " + _log_summary(report.records, report.first_position,
                                           report.last_position, report.segments)
                  + f" (mode {report.mode})")
            t = report.torn_tail
            if t is not None:
                print(f"  torn tail dropped: {fmt_bytes(t.bytes_dropped)} from {t.path} at offset "
                      f"{t.offset:,} ({t.reason}; {t.discarded_records} unsynced record(s))")
            for p in report.skipped:
                lost = f" (positions {p.lost[0]:,}..{p.lost[1]:,} lost)" if p.lost else ""
                print(f"  skipped {p.kind}: {p.path} at {p.offset}..{p.end}: {p.reason}{lost}")
            for f in report.foreign_files:
                print(f"  foreign file ignored: {f}")
        print(f"  tokens now: {s.count():,}")
        print("  " + str(check).replace("\n", "\n  "))
    return 0 if check.ok else EXIT_UNSOUND


# ------------------------------------------------------------------------------ checkpoint
def cmd_checkpoint(a: argparse.Namespace) -> int:
    import ngstore

    from . import waltools

    refuse_if_live_writer(a.path)
    before = waltools.verify(os.path.join(a.path, "wal"))
    try:
        s = ngstore.open(a.path, create=False)
    except NgStoreError as exc:
        raise store_error(a.path, exc, doing="checkpoint") from exc
    with s:
        s.checkpoint()
        applied = s.stats()["applied_position"]
    # the closing checkpoint empties the log: its size is final only after close
    after = waltools.verify(os.path.join(a.path, "wal"))
    print(f"checkpoint of {a.path}: applied position {applied:,}; log {fmt_bytes(before.bytes)} "
          f"({before.records:,} records) -> {fmt_bytes(after.bytes)} ({after.records:,} records)")
    return 0


# ------------------------------------------------------------------------------ serve
def port_number(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {v}")
    return v


def cmd_serve(a: argparse.Namespace) -> int:
    from .obs.http import main_serve

    if DEFAULT_IO.exists(a.path) and not DEFAULT_IO.is_dir(a.path):
        raise CliError(f"{a.path} is a file, not a store directory",
                       "give the store's directory (it may not exist yet)", EXIT_USAGE)
    where = f"{a.host}:{a.port}"
    try:
        return int(main_serve(a.path, a.host, a.port) or 0)
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {where}: the host {a.host!r} does not resolve ({exc.strerror})",
                       "give an address of this machine, e.g. 127.0.0.1 (the default) or 0.0.0.0",
                       EXIT_USAGE) from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"cannot listen on {where}: the port is already in use",
                           "another `ngstore serve` or service has it: stop it or pick another --port",
                           EXIT_FAILED) from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise CliError(f"cannot listen on {where}: {a.host} is not an address of this machine",
                           "use 127.0.0.1 (the default), 0.0.0.0 or an address of an interface",
                           EXIT_USAGE) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CliError(f"cannot listen on {where}: permission denied",
                           "ports below 1024 need privileges: pick a --port of 1024 or more",
                           EXIT_FAILED) from exc
        raise CliError(f"cannot listen on {where}: {exc.strerror or exc}", None, EXIT_FAILED) from exc


# ------------------------------------------------------------------------------ blackbox
def _ring_state(info: Any, path: str) -> str:
    from .obs.statspage import writer_alive

    if info.closed:
        return f"writer pid {info.pid} closed the store"
    alive = writer_alive(path)
    if alive:
        return f"writer pid {info.pid} is alive"
    return f"writer pid {info.pid} ended without closing the store (crashed or killed)"


def _event_line(e: dict[str, Any]) -> str:
    t = e["timestamp_us"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1e6)) + f".{t % 1_000_000:06d}Z"
    data = " ".join(f"{k}={v}" for k, v in e["data"])
    return f"  {stamp}  {e['event_type']:<16} {data}".rstrip()


def _ring_doc(path: str) -> dict[str, Any] | None:
    from .obs.blackbox import DUMP_FORMAT, read_ring

    try:
        info, events, text = read_ring(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CliError(str(exc), "the file is from another ngstore version, or damaged",
                       EXIT_FAILED) from exc
    return {"timestamp_us": int(time.time() * 1e6),
            "stats": {"capacity": info.capacity, "current_size": len(events),
                      "bad_records": info.bad_records},
            "events": events, "format": DUMP_FORMAT, "reason": "ring: " + _ring_state(info, path),
            "pid": info.pid, "store_path": os.path.realpath(path), "store_stats": None,
            "exception": None, "ring": info.as_json(), "fatal_error": text}


def cmd_blackbox(a: argparse.Namespace) -> int:
    from .obs.blackbox import RING_FILE, list_dumps, load_dump

    if not DEFAULT_IO.is_dir(a.path):
        what = "does not exist" if not DEFAULT_IO.exists(a.path) else "is not a directory"
        raise CliError(f"{a.path} {what}", "give a store directory", EXIT_CANNOT_OPEN)
    dumps = list_dumps(a.path)
    if a.show is None:
        return _list_blackbox(a, dumps)
    names = [os.path.basename(d) for d in dumps]
    if a.show == "ring":
        doc = _ring_doc(a.path)
        if doc is None:
            raise CliError(f"no black-box ring in {a.path}",
                           "a writer creates blackbox.ring when it opens the store", EXIT_UNSOUND)
    elif a.show == "latest":
        # the newer by the clock of the events: the ring's newest event against the time the
        # newest dump was made (file times are too coarse); a tie goes to the dump, which also
        # holds the exception and the store's stats
        ring = _ring_doc(a.path)
        if ring is None and not dumps:
            raise CliError(f"no black-box dumps and no ring in {a.path}",
                           "a writer creates blackbox.ring when it opens the store", EXIT_UNSOUND)
        newest = load_dump(dumps[-1]) if dumps else None
        ring_t = max((e["timestamp_us"] for e in ring["events"]), default=0) if ring else -1
        dump_t = int(newest.get("timestamp_us") or 0) if newest is not None else -1
        doc = ring if ring is not None and (newest is None or ring_t > dump_t) else newest
        assert doc is not None
    else:
        target = a.show if os.path.sep in a.show else os.path.join(a.path, a.show)
        if not DEFAULT_IO.is_file(target):
            listed = ", ".join(names[-3:]) + (" ..." if len(names) > 3 else "") if names else "none"
            raise CliError(f"no black-box file {a.show!r} in {a.path}",
                           f"`--show ring`, `--show latest` or a dump name (dumps: {listed}); "
                           f"`ngstore blackbox {a.path}` lists them", EXIT_USAGE)
        if os.path.basename(target) == RING_FILE:
            doc = _ring_doc(os.path.dirname(target) or ".")
        else:
            try:
                doc = load_dump(target)
            except ValueError as exc:
                raise CliError(str(exc), "give a blackbox-*.json or .json.zst dump", EXIT_FAILED) from exc
    print(json.dumps(doc, indent=2, default=str, ensure_ascii=False))
    return 0


def _list_blackbox(a: argparse.Namespace, dumps: list[str]) -> int:
    from .obs.blackbox import load_dump

    ring = _ring_doc(a.path)
    if a.json:
        out = {"ring": ring, "dumps": [{"path": d, "bytes": DEFAULT_IO.size_of(d) or 0} for d in dumps]}
        print(json.dumps(out, indent=2, default=str, ensure_ascii=False))
        return 0
    if ring is None:
        print(f"no black-box ring in {a.path}")
    else:
        ev = ring["events"]
        info = ring["ring"]
        seqs = f", {len(ev):,} event(s)" if ev else ", no events"
        bad = f", {info['bad_records']} damaged record(s) skipped" if info["bad_records"] else ""
        print(f"ring {os.path.join(a.path, 'blackbox.ring')}: {ring['reason'][6:]}; capacity "
              f"{info['capacity']:,}{seqs}{bad}")
        shown = ev[-a.events:] if a.events > 0 else []
        if shown:
            print(f"last {len(shown)} event(s), oldest first:")
            for e in shown:
                print(_event_line(e))
        if ring["fatal_error"]:
            first = ring["fatal_error"].strip().splitlines()[0]
            print(f"fatal error text after the records: {first} (`--show ring` prints it all)")
    if not dumps:
        print(f"no black-box dumps in {a.path}")
        return 0
    print(f"{len(dumps)} dump(s), oldest first:")
    for d in dumps:
        try:
            doc = load_dump(d)
            what = f"{doc.get('reason', '?')}; {len(doc.get('events', []))} event(s)"
        except (OSError, ValueError) as exc:
            what = f"unreadable: {exc}"
        print(f"  {d}  ({fmt_bytes(DEFAULT_IO.size_of(d) or 0, exact=False)}; {what})")
    return 0


# ------------------------------------------------------------------------------ backup / restore
def cmd_backup(a: argparse.Namespace) -> int:
    import ngstore

    from . import backup

    if not DEFAULT_IO.is_dir(a.src) or not DEFAULT_IO.exists(os.path.join(a.src, "NGSTORE")):
        what = "does not exist" if not DEFAULT_IO.exists(a.src) else "is not an ngstore store"
        raise CliError(f"{a.src} {what}", "give the directory of an ngstore store (the writer may be running)",
                       EXIT_CANNOT_OPEN)
    progress = Progress("backup", ["log", "base", "pieces", "manifest"], quiet=a.quiet or a.json)
    try:
        s = ngstore.open(a.src, readonly=True)
    except NgStoreError as exc:
        raise store_error(a.src, exc, doing="back up") from exc
    try:
        with s:
            r = backup.backup(s, a.dest, incremental=a.incremental,
                              on_step=lambda name: progress.run(name, lambda: None))
    except ImportError as exc:
        raise CliError(str(exc), "local destinations need nothing; URLs need the backup extra",
                       EXIT_USAGE) from exc
    except InvalidArgumentError as exc:
        raise CliError(f"cannot back up {a.src} to {a.dest}: {exc}",
                       "an existing DEST must hold an earlier backup (BACKUP.json) or be empty",
                       EXIT_USAGE) from exc
    except (NgStoreError, ValueError) as exc:
        raise CliError(f"backup of {a.src} to {a.dest} failed: {exc}",
                       "retry; `--debug` shows where it failed", EXIT_FAILED) from exc
    finally:
        progress.close()
    if a.json:
        print(json.dumps(_as_dict(r), indent=2, default=str))
        return 0
    how = f" (an incremental backup was asked: {r.reason})" if r.reason else ""
    print(f"{r.kind} backup of {a.src} to {a.dest}{how}: generation {r.generation}, restores to log "
          f"position {r.end_position:,} (base at {r.applied_position:,}); wrote {fmt_bytes(r.bytes)} "
          f"({r.pieces} log piece(s)) in {r.seconds:.2f} s")
    return 0


def cmd_restore(a: argparse.Namespace) -> int:
    from . import backup

    progress = Progress("restore", ["base", "log"] + ([] if a.no_replay else ["replay"]),
                        quiet=a.quiet or a.json)
    try:
        r = backup.restore(a.backup, a.path, replay=not a.no_replay,
                           on_step=lambda name: progress.run(name, lambda: None))
    except ImportError as exc:
        raise CliError(str(exc), "local backups need nothing; URLs need the backup extra", EXIT_USAGE) from exc
    except CorruptionError as exc:
        raise CliError(f"restore of {a.backup} refused: {exc}",
                       "the backup is damaged: restore an older one; nothing was made durable as a store",
                       EXIT_UNSOUND) from exc
    except InvalidArgumentError as exc:
        raise CliError(f"cannot restore into {a.path}: {exc}", "give a new or empty directory",
                       EXIT_USAGE) from exc
    except (NgStoreError, ValueError) as exc:
        raise CliError(f"restore of {a.backup} into {a.path} failed: {exc}",
                       "BACKUP must be a directory or URL holding BACKUP.json", EXIT_FAILED) from exc
    finally:
        progress.close()
    if a.json:
        print(json.dumps(_as_dict(r), indent=2, default=str))
        return 0 if r.check_ok is not False else EXIT_UNSOUND
    print(f"restored {a.backup} into {a.path}: {fmt_bytes(r.bytes)}, base at log position "
          f"{r.applied_position:,}, backup ends at {r.end_position:,}")
    if r.check_ok is None:
        print("  not replayed: the first open replays the log (--no-replay)")
        return 0
    print(f"  replayed {r.replayed_records:,} log record(s); tokens now: {r.tokens:,}")
    print("  check: OK" if r.check_ok else "  check: PROBLEMS FOUND")
    for p in r.problems:
        print(f"  problem: {p}")
    return 0 if r.check_ok else EXIT_UNSOUND


def _as_dict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    return obj


def _walcmd_missing(a: argparse.Namespace) -> int:
    raise CliError("which one? `verify` or `dump`", "`ngstore wal --help` lists them", EXIT_USAGE,
                   where="ngstore wal")


def register(sub: Any) -> None:
    """Add the operator's subcommands to ``sub`` (the ``ngstore`` subparsers)."""
    wp = sub.add_parser("wal", help="inspect the write-ahead log (offline)", formatter_class=Formatter,
                        description="Read-only tools for the log of a store whose writer is gone.")
    add_debug(wp)
    wp.set_defaults(fn=_walcmd_missing)
    wsub = wp.add_subparsers(dest="walcmd", metavar="SUBCOMMAND", title="subcommands",
                             parser_class=type(wp))
    sp = wsub.add_parser("verify", help="check every record (exit 0 sound, 1 unsound)",
                         formatter_class=Formatter,
                         description="Reads every segment: CRCs, compressed payloads, continuity. "
                                     "A torn tail is sound (opening the store truncates it).")
    add_path(sp)
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    add_debug(sp)
    sp.set_defaults(fn=cmd_wal_verify)
    sp = wsub.add_parser("dump", help="list the log's records", formatter_class=Formatter,
                         description="One line per valid record: position, type, sizes, file@offset.")
    add_path(sp)
    sp.add_argument("--json", action="store_true", help="print the records as a JSON list")
    add_debug(sp)
    sp.set_defaults(fn=cmd_wal_dump)

    sp = sub.add_parser("recover", help="replay and repair a store whose writer died (offline)",
                        formatter_class=Formatter,
                        description="Opens the store for writing with the given recovery mode, replays "
                                    "the log, checkpoints, runs check() and closes.")
    add_path(sp)
    sp.add_argument("--mode", default="tolerate-tail", choices=["tolerate-tail", "salvage", "strict"],
                    help="tolerate-tail: drop a torn tail, refuse mid-log damage; salvage: also skip "
                         "damaged records; strict: refuse any damage")
    sp.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_debug(sp)
    sp.set_defaults(fn=cmd_recover)

    sp = sub.add_parser("serve", help="HTTP sidecar: /metrics, /health, /ready (read-only)",
                        formatter_class=Formatter,
                        description="Serves the store read-only, merged with the writer's published "
                                    "metrics, until SIGTERM or SIGINT. The store may not exist yet: "
                                    "opening is retried every 2 s.",
                        epilog="example:\n  ngstore serve /data --host 0.0.0.0 --port 9818")
    add_path(sp, "the store directory (it may not exist yet)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; there is no authentication, so keep it local "
                         "unless something in front provides it")
    sp.add_argument("--port", type=port_number, default=9818, help="TCP port (0: any free port)")
    add_debug(sp)
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("blackbox", help="the black box: its ring and its dumps (read-only)",
                        formatter_class=Formatter,
                        description="Without --show: the ring's state and last events, then the dumps. "
                                    "Works next to a live writer and after any crash.",
                        epilog="examples:\n  ngstore blackbox /data\n  ngstore blackbox /data --show ring\n"
                               "  ngstore blackbox /data --show latest")
    add_path(sp)
    sp.add_argument("--show", default=None, metavar="WHAT",
                    help="print one as JSON: `ring`, `latest` (the newest of the ring and the dumps) "
                         "or a dump's file name")
    sp.add_argument("--events", type=int, default=10, metavar="N",
                    help="how many of the ring's last events to list")
    sp.add_argument("--json", action="store_true", help="list as JSON (the ring in full)")
    add_debug(sp)
    sp.set_defaults(fn=cmd_blackbox)

    sp = sub.add_parser("backup", help="copy a live store to a directory or URL (online)",
                        formatter_class=Formatter,
                        description="Takes a consistent copy while the writer runs: LMDB's compacting copy "
                                    "of one read transaction, plus the log records after it. DEST is a "
                                    "directory or an fsspec URL (s3://..., needs ngstore[backup]); an "
                                    "existing DEST must hold an earlier backup, which a full backup replaces "
                                    "only once the new one is complete.",
                        epilog="examples:\n  ngstore backup /data /backups/data\n"
                               "  ngstore backup /data /backups/data --incremental")
    sp.add_argument("src", metavar="SRC", help="the store directory")
    sp.add_argument("dest", metavar="DEST", help="the backup directory or URL")
    sp.add_argument("--incremental", action="store_true",
                    help="ship only the log written since the backup in DEST (a full backup when that "
                         "cannot continue; the output says why)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_debug(sp)
    sp.set_defaults(fn=cmd_backup)

    sp = sub.add_parser("restore", help="make a store from a backup", formatter_class=Formatter,
                        description="Checks every file of the backup against its digest, lays down the base "
                                    "and the log, then opens the store once for writing (which replays the "
                                    "log after the base and checkpoints) and runs check(). Exit 1 if the "
                                    "backup is damaged or the check fails.",
                        epilog="example:\n  ngstore restore /backups/data /data-restored")
    sp.add_argument("backup", metavar="BACKUP", help="the backup directory or URL")
    add_path(sp, "the store directory to make (new, or an empty directory)")
    sp.add_argument("--no-replay", action="store_true",
                    help="leave the replay to the first open (no check)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_debug(sp)
    sp.set_defaults(fn=cmd_restore)

    sp = sub.add_parser("checkpoint", help="make LMDB durable and drop the log it covers (offline)",
                        formatter_class=Formatter,
                        description="Opens the store for writing, checkpoints and closes; the log is "
                                    "emptied.")
    add_path(sp)
    add_debug(sp)
    sp.set_defaults(fn=cmd_checkpoint)

