"""Power loss on the LMDB side: every page written after the checkpoint is garbage.

LMDB runs without fsync (invariant 7 of docs/design.md: a power loss can then corrupt it). The
store's answer (docs/format.md §4): a checkpoint makes transaction C durable, saves C's
meta page, and pins C so no later commit overwrites a page of C. This test takes the
worst case literally: a child commits, checkpoints, snapshots ``data.mdb`` as it is at
the checkpoint, commits more (acknowledged, ``sync``), and dies without closing. The
parent then replaces **every page of data.mdb that differs from the checkpoint copy**
(including both meta pages and everything appended) with random bytes, and sets a new
boot id. Recovery must roll LMDB back to C and replay the log to exactly the
acknowledged batches. If the pin failed, some page of C would have changed, been
garbled, and the check (run in a subprocess, so a crash is a failure, not a hang) fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import json, os, shutil, sys, numpy as np, ngstore
    from ngstore.records import TOKEN_DTYPE
    path, before, after, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(seed)
    # No automatic checkpoint may move the rollback point past the copy taken below.
    s = ngstore.open(path, chunk_slots=64, max_tokens=None, max_bytes=None,
                     checkpoint_bytes=1 << 40, checkpoint_interval=1e9)

    def batch(b):
        k = int(rng.integers(1, 200))
        ids = rng.choice(20000, size=k, replace=False).astype(np.uint32)
        a = np.zeros(k, dtype=TOKEN_DTYPE)
        a["id"] = ids; a["weight"] = b; a["flags"] = 1
        s.put_tokens(a)
        if b % 3 == 0:
            s.delete_tokens(rng.choice(20000, size=20, replace=False))
        return ids.tolist()

    for b in range(before):
        batch(b)
    s.checkpoint()
    shutil.copyfile(os.path.join(path, "data.mdb"), os.path.join(path, "..", "data.ckpt"))
    for b in range(before, before + after):
        batch(b)
    snap = s.snapshot()
    state = {int(i): float(w) for i, w in zip(snap.tokens.column("id"), snap.tokens.column("weight"))}
    with open(os.path.join(path, "..", "expected.json"), "w") as f:
        json.dump(state, f)
    os._exit(0)
""")

VERIFY = textwrap.dedent("""
    import json, os, sys, ngstore
    from walfaults import AnotherBoot
    path = sys.argv[1]
    with ngstore.open(path, max_tokens=None, max_bytes=None, io=AnotherBoot()) as s:
        assert s.recovery.power_loss_rollback, "expected a rollback"
        report = s.check()
        assert report.ok, str(report)
        with s.snapshot() as snap:
            got = {int(i): float(w) for i, w in zip(snap.tokens.column("id"), snap.tokens.column("weight"))}
    with open(os.path.join(path, "..", "expected.json")) as f:
        want = {int(k): v for k, v in json.load(f).items()}
    assert got == want, f"{len(got)} tokens recovered, {len(want)} expected"
    print("ok", s.recovery.replayed_records)
""")


def _garble_changed_pages(data_path: str, ckpt_path: str, seed: int) -> int:
    rng = np.random.default_rng(seed)
    ps = 4096
    with open(ckpt_path, "rb") as f:
        ckpt = f.read()
    with open(data_path, "r+b") as f:
        now = f.read()
        changed = 0
        for off in range(0, len(now), ps):
            if now[off:off + ps] != ckpt[off:off + ps]:
                f.seek(off)
                f.write(rng.integers(0, 256, size=min(ps, len(now) - off), dtype=np.uint8).tobytes())
                changed += 1
    return changed


@pytest.mark.parametrize("before, after", [(5, 1), (20, 30), (50, 200)])
def test_garbage_in_every_page_written_after_the_checkpoint_recovers_exactly(tmp_path, before, after):
    path = str(tmp_path / "store")
    r = subprocess.run([sys.executable, "-c", CHILD, path, str(before), str(after), str(before + after)],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    changed = _garble_changed_pages(os.path.join(path, "data.mdb"), str(tmp_path / "data.ckpt"), seed=after)
    assert changed >= 2  # at least the meta page and the new data pages
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))
    v = subprocess.run([sys.executable, "-c", VERIFY, path], capture_output=True, text=True,
                       cwd=str(tmp_path), timeout=300, env=env)
    assert v.returncode == 0, f"recovery failed (exit {v.returncode}):\n{v.stdout}\n{v.stderr}"
    assert v.stdout.split()[0] == "ok" and int(v.stdout.split()[1]) >= after
    print(f"\n{changed} garbled pages; {v.stdout.split()[1]} log records replayed")
