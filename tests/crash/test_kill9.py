"""kill -9 a writing child at random moments; nothing acknowledged is lost, nothing is partial.

The child commits batches from several threads, each in a durability mode drawn per batch
(``sync``, ``async`` or ``none``: all of them survive a process crash once acknowledged),
and prints one line per acknowledged batch. Settings make the interesting moments
frequent: tiny log segments (rotation), a tiny checkpoint threshold (checkpoints), a low
direct-commit threshold (large batches bypass the log), and an applier interval drawn per
child (1 ms to 0.3 s), so kills land with commits in the log and the overlay but not yet
in LMDB, during group applies, and during the applier's checkpoints. Some kills land
while the child is still opening the store, i.e. during recovery itself. The map starts
at 1 MiB, so LMDB's map grows (a checkpoint, then a remap) many times under the kills;
and the first child creates the store, killed a few times during the creation itself.

Batch ``b`` writes ``k`` tokens with ids ``region(b) .. region(b)+k-1``, weight ``b`` and
timestamp ``k``: after recovery a batch is either absent or whole, which the parent checks
from the stored tokens alone.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import ngstore

REGION = 8192  # ids per batch region (> the largest batch)
THREADS = 4

CHILD = textwrap.dedent("""
    import os, sys, threading, numpy as np, ngstore
    from ngstore.records import TOKEN_DTYPE
    path, start, seed, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    print("opening", flush=True)
    s = ngstore.open(path, durability="sync", segment_bytes=64 << 10, checkpoint_bytes=256 << 10,
                     direct_threshold=192 << 10, max_tokens=None, max_bytes=None, apply_interval=interval,
                     map_size=1 << 20)
    print("open", flush=True)
    out_lock = threading.Lock()

    def work(t):
        rng = np.random.default_rng(seed * 100 + t)
        j = 0
        while True:
            b = start + j * %(threads)d + t
            j += 1
            k = int(rng.choice([1, 3, 40, 300, 1000, 4000]))
            a = np.zeros(k, dtype=TOKEN_DTYPE)
            a["id"] = b * %(region)d + np.arange(k)
            a["weight"] = b
            a["timestamp"] = k
            a["flags"] = 1
            s.put_tokens(a, durability=("sync", "async", "none")[int(rng.integers(3))])
            with out_lock:
                sys.stdout.write(f"ack {b} {k}\\n"); sys.stdout.flush()

    for t in range(%(threads)d):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
""") % {"threads": THREADS, "region": REGION}


def _verify(path: str, acked: dict[int, int]) -> tuple[int, int]:
    """Reopens the store and checks wholeness; returns (batches present, tokens present)."""
    with ngstore.open(path, max_tokens=None, max_bytes=None) as s:
        report = s.check()
        assert report.ok, str(report)
        with s.snapshot() as snap:
            arr = snap.tokens.to_array()
    batch_of = arr["id"] // REGION
    ids_off = arr["id"] % REGION
    assert np.all(arr["weight"] == batch_of.astype(np.float32)), "a token carries another batch's weight"
    present = {}
    for b in np.unique(batch_of).tolist():
        sel = batch_of == b
        k = int(arr["timestamp"][sel][0])
        offs = np.sort(ids_off[sel])
        assert np.array_equal(offs, np.arange(k)), f"batch {b} is partial: {offs.size} of {k} tokens"
        present[b] = k
    for b, k in acked.items():
        assert present.get(b) == k, f"acknowledged batch {b} ({k} tokens) was lost"
    return len(present), int(arr.size)


def _read_until(child: subprocess.Popen, word: str) -> str:
    """The child's output up to and including the line ``word`` (all of it if it ends first)."""
    assert child.stdout is not None
    got = ""
    while True:
        line = child.stdout.readline()
        got += line
        if not line or line.strip() == word:
            return got


def _progress(capsys, line: str) -> None:
    """One line on the terminal even under pytest's capture: a 3-minute test must not look hung."""
    with capsys.disabled():
        print(line, flush=True)


def test_kill9_never_loses_an_acknowledged_batch_nor_keeps_part_of_one(tmp_path, capsys):
    path = str(tmp_path / "store")
    creation_kills = 0
    # Kills during the child's creation of the store: at a few moments after its
    # directory appears (creation then takes 10 to 40 ms).
    for delay in (0.0, 0.001, 0.003, 0.006, 0.01, 0.015, 0.02, 0.03, 0.05):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, "0", "0", "0.02"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        first = _read_until(child, "opening")
        deadline = time.monotonic() + 30.0
        while not os.path.exists(path) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        if "open" not in (first + out).splitlines() and os.path.exists(path):
            creation_kills += 1  # killed while creating the store
        if os.path.exists(path):  # whatever the kill left opens, and checks sound
            _verify(path, {})
        shutil.rmtree(path, ignore_errors=True)
    budget = float(os.environ.get("NGSTORE_CRASH_SECONDS", "200"))
    max_iter = int(os.environ.get("NGSTORE_CRASH_ITERATIONS", "300"))
    rng = random.Random(12345)
    acked: dict[int, int] = {}
    start = 0
    t_end = time.monotonic() + budget
    iterations = kills_before_open = 0
    t_start = next_report = time.monotonic()
    _progress(capsys, f"\nkill -9: up to {max_iter} kills or {budget:.0f} s (NGSTORE_CRASH_ITERATIONS, "
                      "NGSTORE_CRASH_SECONDS); a line every 15 s")
    while iterations < max_iter and time.monotonic() < t_end:
        if time.monotonic() >= next_report + 15:
            next_report = time.monotonic()
            _progress(capsys, f"kill -9: {iterations} kills in {next_report - t_start:.0f} s, "
                              f"{len(acked)} batches acknowledged, none lost so far")
        iterations += 1
        interval = rng.choice([0.001, 0.02, 0.3])
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(start), str(iterations), str(interval)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        # Kill at a random moment: a fifth of the time anywhere from the start (so often
        # while it is still opening, i.e. recovering), else while it commits (its start
        # takes from 0.3 s to over 1 s as the machine is loaded: wait for it).
        first = ""
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            first = _read_until(child, "open")
            time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        lines = (first + out).splitlines()
        if "open" not in lines:
            kills_before_open += 1
        for line in lines:
            if line.startswith("ack "):
                _, b, k = line.split()
                acked[int(b)] = int(k)
        # Never reuse a region. A thread prints its ack right after its commit returns, so
        # a kill leaves at most one committed-but-unacknowledged batch per thread: either
        # just past its last ack, or its first batch (start + t) if it acked nothing.
        # (Regions must also stay below 2**32 / REGION over hundreds of iterations.)
        start = max(start, max(acked) + 1 if acked else 0) + 2 * THREADS
        # Half the time the next child finds the store dirty and recovers it itself, so
        # kills also land during replay and the checkpoint that follows it.
        if rng.random() < 0.5:
            _verify(path, acked)
    batches, tokens = _verify(path, acked)
    _progress(capsys, f"kill -9: {creation_kills} kills during creation; "
                      f"{iterations} iterations ({kills_before_open} during open/recovery), "
                      f"{len(acked)} acknowledged batches, {batches} batches / {tokens} tokens present, "
                      "0 lost, 0 partial")
    assert iterations >= 20 and len(acked) > 0
    assert (max(acked) + 2 * THREADS) * REGION < 2**32  # no id overflowed
