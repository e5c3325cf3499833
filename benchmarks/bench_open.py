"""How long does opening take, cleanly and after a crash (log replay)?

* Clean open of a store holding n tokens (and the first read), against the peers.
* Recovery: a child process commits n tokens as 1000-token batches (async, with
  ``checkpoint_bytes`` and ``direct_threshold`` huge so everything stays in the log), syncs
  the log and leaves with ``os._exit(0)`` without closing. The parent then simulates a
  power loss (the store sees another boot id, as tests/crash does, so LMDB is rolled back
  to its checkpoint) and times ``ngstore.open``, which replays the whole log.
  A process crash alone replays nothing here: the batches were already applied to LMDB
  through the page cache. Each timed open works on a fresh copy of the crashed store,
  synced before the clock starts (warm in the page cache, nothing dirty).

Target: replay of a ~100 MB log ≥ 300 MB/s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
from _harness import Bench, repeat
from bench_ingest import LMDB_MAP, dataset, rocks_open, rocksdict_available, sqlite_connect, store_options

import ngstore
from ngstore import ops
from ngstore.fileio import FileIO

W_OPEN = "open (clean) + first read"
W_REPLAY = "recovery: log replay"

CHILD = textwrap.dedent("""
    import os, sys
    import ngstore
    path, n = sys.argv[1], int(sys.argv[2])
    s = ngstore.open(path, durability="async", checkpoint_bytes=1 << 40, direct_threshold=1 << 40,
                     checkpoint_interval=1e9, map_size=8 << 30, max_tokens=None, max_bytes=None,
                     crash_handlers=False)
    step = 1000
    for i in range(0, n, step):
        s.put_tokens(ngstore.Token.create_batch(min(step, n - i), start=i))
    s.flush()
    os._exit(0)
""")


def build_crashed(path: str, n: int) -> None:
    subprocess.run([sys.executable, "-c", CHILD, path, str(n)], check=True, timeout=600)


def frame_bytes(tokens: int) -> int:
    arr = ngstore.Token.create_batch(tokens).data
    return 40 + len(ops.encode_ops([ops.Op(ops.OP_TOKEN_PUT, arr)]))


class _AfterPowerLoss(FileIO):
    """The real file system, on a machine that has booted since the store was written."""

    def boot_id(self) -> str | None:
        return "benchmark-simulated-power-loss"


def time_replay(b: Bench, n: int, reps: int) -> None:
    src = b.tmpdir("open", f"crashed-{n}")
    build_crashed(src, n)
    records = (n + 999) // 1000
    log_mb = (frame_bytes(1000) * (n // 1000) + (frame_bytes(n % 1000) if n % 1000 else 0)) / 1e6
    work = os.path.join(b.root, "open", f"replay-{n}")
    secs: list[float] = []
    replayed = []
    for _ in range(reps):
        if os.path.exists(work):
            shutil.rmtree(work)
        shutil.copytree(src, work)
        # The copy's pages are dirty in the page cache; after a real power loss nothing is.
        # Unsynced, the first fsync of the open (the rollback's, of data.mdb) wrote back the
        # whole copy inside the timed open: 170-200 ms of a ~690 ms open here.
        os.sync()
        holder = {}

        def do_open() -> None:
            holder["s"] = ngstore.open(work, max_tokens=None, max_bytes=None, crash_handlers=False,
                                       io=_AfterPowerLoss())

        secs += repeat(do_open, 1)
        s = holder["s"]
        replayed.append(s.recovery.replayed_records)
        assert s.count() == n, (s.count(), n)
        s.close()
    if min(replayed) != records:
        b.notes.append(f"replay at n={n}: replayed {min(replayed)} of {records} records")
    b.record(W_REPLAY, "ngstore open (replay)", n, "MB/s", [log_mb / s for s in secs], higher_is_better=True,
             note=f"log {log_mb:.0f} MB, {records} records; open time median {np.median(secs) * 1e3:.0f} ms",
             open_ms=float(np.median(secs) * 1e3))
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def run(b: Bench) -> None:
    b.log(f"## {W_OPEN}")
    reps = b.repeats
    for n in b.sizes:
        p = dataset(b, "ngstore", n)

        def ng() -> None:
            s = ngstore.open(p, **store_options(n))
            s.get_token(n // 2)
            holder.append(s)

        holder: list = []

        def close_all() -> None:
            while holder:
                holder.pop().close()

        out = []
        for _ in range(reps):
            out += repeat(ng, 1, scale=1e3)
            close_all()
        b.record(W_OPEN, "ngstore", n, "ms", out)

        def lm() -> None:
            env = lmdb.open(dataset(b, "lmdb 64 KiB chunks", n), map_size=LMDB_MAP)
            with env.begin() as txn:
                txn.get((n // 2 // 1024).to_bytes(8, "big"))
            env.close()

        b.record(W_OPEN, "lmdb 64 KiB chunks", n, "ms", repeat(lm, reps, scale=1e3, warmup=True),
                 note="open + get + close")
        if n <= 1_000_000:
            def sq() -> None:
                con = sqlite_connect(dataset(b, "sqlite3 WAL FULL", n))
                con.execute("SELECT data FROM t WHERE id=?", (n // 2,)).fetchone()
                con.close()

            b.record(W_OPEN, "sqlite3 WAL FULL", n, "ms", repeat(sq, reps, scale=1e3, warmup=True),
                     note="open + select + close")
        npy = os.path.join(dataset(b, "numpy .npy + fsync", n), "tokens.npy")
        b.record(W_OPEN, "numpy memmap .npy", n, "ms",
                 repeat(lambda: np.load(npy, mmap_mode="r")[n // 2], reps, scale=1e3, warmup=True))
        if rocksdict_available() and n <= 1_000_000:
            def rk() -> None:
                db = rocks_open(dataset(b, "rocksdict sync batch", n))
                db.get((n // 2).to_bytes(8, "big"))
                db.close()

            b.record(W_OPEN, "rocksdict", n, "ms", repeat(rk, reps, scale=1e3, warmup=True),
                     note="open + get + close")

    b.log(f"## {W_REPLAY}")
    for n in b.sizes:
        if n > 1_000_000:
            continue
        time_replay(b, n, max(2, reps - 2))
    # the target's ~100 MB log: 1.6M tokens of 64 B in 1000-token records
    n100 = 1_600_000
    time_replay(b, n100, 2 if b.quick else 3)
    m = b.get(W_REPLAY, "ngstore open (replay)", n100)
    if m:
        b.check("log", f"replay of a {m.note.split()[1]} MB log, MB/s", m.median, ">=", 300,
                f"open with replay {m.extra['open_ms']:.0f} ms (median)", n100)
