"""kill -9 a child that moves and deletes tokens at random coordinates; after each crash the
spatial index, replayed from the log with the tokens, agrees with them (``check()``) and
answers box queries exactly as a scan of the tokens does."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import ngstore

CHILD = textwrap.dedent("""
    import sys, numpy as np, ngstore
    from ngstore.records import TOKEN_DTYPE
    path, seed, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = ngstore.open(path, durability="async", segment_bytes=64 << 10, checkpoint_bytes=256 << 10,
                     direct_threshold=96 << 10, apply_interval=interval, chunk_slots=64)
    rng = np.random.default_rng(seed)
    while True:
        n = int(rng.choice([1, 5, 60, 900, 2500]))
        a = np.zeros(n, TOKEN_DTYPE)
        a["id"] = rng.integers(0, 20000, n)
        a["flags"] = 1
        a["coordinates"] = rng.integers(-400, 400, size=(n, 8, 3)) * int(rng.choice([1, 80]))
        s.put_tokens(a)
        s.delete_tokens(rng.integers(0, 20000, int(rng.integers(0, 200))))
        print("ack", flush=True)
""")


def _verify(path: str, rng: np.random.Generator) -> int:
    with ngstore.open(path) as s:
        report = s.check()
        assert report.ok, str(report)
        with s.snapshot() as snap:
            arr = snap.tokens.to_array()
            for layer in range(8):
                lo = rng.integers(-20000, 20000, 3)
                hi = lo + rng.integers(0, 20000, 3)
                c = arr["coordinates"][:, layer, :]
                want = np.sort(arr["id"][np.all((c >= lo) & (c <= np.minimum(hi, 32767)), axis=1)])
                assert np.array_equal(snap.tokens.box(lo, np.minimum(hi, 32767), layer=layer), want)
        return int(arr.size)


def test_the_spatial_index_survives_kill9_with_its_tokens(tmp_path):
    path = str(tmp_path / "store")
    ngstore.open(path).close()
    budget = float(os.environ.get("NGSTORE_CRASH_SECONDS", "200")) / 5
    rng = random.Random(99)
    nrng = np.random.default_rng(99)
    t_end = time.monotonic() + budget
    kills = acked = 0
    while kills < 40 and time.monotonic() < t_end:
        kills += 1
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(kills), str(rng.choice([0.001, 0.05]))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        time.sleep(rng.uniform(0.2, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        acked += out.count("ack")
        if rng.random() < 0.5:
            _verify(path, nrng)
    _verify(path, nrng)
    assert kills >= 5 and acked > 0
