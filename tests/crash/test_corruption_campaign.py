"""The corruption campaign (issue 13): random corruptions of every file of a real store.

Two stores are made through the public API, holding one of everything (tokens, deletions,
connections, events, reflexes, learning statistics), with the black box on: one closed
cleanly (a checkpoint, a clean state), one whose writer died (``os._exit``) with its log
spread over several segments, to be replayed; and a copy of the second whose state names
another boot (a power loss: LMDB is rolled back to the checkpoint first). Then ``TRIALS`` corruptions -- bit flips,
zeroed ranges, random bytes, truncations -- each of one file of a fresh copy of one store:
``data.mdb``, ``lock.mdb``, the log segments, ``checkpoint``, ``state``, ``NGSTORE``,
``blackbox.ring``, ``stats.page`` and the lock files; and flips aimed at the bytes of
stored token records inside ``data.mdb``. Each trial opens the store read-only and for
writing, runs ``check()`` and reads everything, and runs the operator's offline readers (log
verify and dump, the black-box and stats readers) before and after the writer's open
(``tests/corruption.py``, in batches per child process, under an address-space limit).

The contract: every trial ends in a store that opens and checks clean, in ``check()``
findings, or in a named error (an ``ngstore.NgStoreError``) -- never in another
exception, and never in a process killed by a signal; and ``check()`` itself reports the
damage it finds rather than raising it. The figures (trials and outcomes
per file, record-byte corruptions that went undetected) are printed; run with ``-s``.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
from corruption import MAP_SIZE, OPEN_OPTIONS, Damage, random_damage
from fuzz import stores

import ngstore
from ngstore.kv import KV, ReadTxn
from ngstore.layout import DB_TOKENS, ChunkLayout

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("NGSTORE_CAMPAIGN_TRIALS", "1000"))
SEED = int(os.environ.get("NGSTORE_CAMPAIGN_SEED", "13"))
BATCH = 50
#: End-to-end checksums of stored records (an XXH3 per value) are not implemented yet, so a
#: bit flip inside a present token's bytes (other than its id) passes ``check()`` today. When
#: they are, set this True: the campaign then requires every such corruption to be found.
RECORD_CHECKSUMS = True

#: Trials per kind of file, out of 1,000 (scaled to TRIALS). "token records" are flips aimed
#: at the bytes of present tokens inside data.mdb, other than their id field.
QUOTAS = {"data.mdb": 250, "token records": 100, "wal segment": 200, "checkpoint": 100, "state": 70,
          "NGSTORE": 50, "blackbox.ring": 100, "stats.page": 50, "lock.mdb": 60, "lock files": 20}


def kind_of(rel: str) -> str:
    name = os.path.basename(rel)
    if rel.startswith("wal" + os.sep):
        return "wal segment"
    if name in ("writer.lock", "readers.lock"):
        return "lock files"
    return name


def _closed_store(path: str) -> None:
    with ngstore.open(path, **{**stores.OPTIONS, "crash_handlers": False}) as s:
        stores.fill(s)


def _crashed_store(path: str) -> None:
    """A store whose writer died without closing: its log (4 KiB segments) still holds
    every batch, and its state and black box say the writer was open."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.join(TESTS, "fuzz")!r})
        import ngstore, stores
        s = ngstore.open({path!r}, **{{**stores.OPTIONS, "crash_handlers": False, "segment_bytes": 4096}})
        stores.fill(s)
        s.put_tokens(stores.tokens(range(40, 60)))
        os._exit(0)
        """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _power_lost_store(crashed: str, path: str) -> None:
    """The crashed store as a power loss leaves it: its state names another boot, so a
    writer's open rolls LMDB back to the checkpoint (its saved meta page) and replays."""
    shutil.copytree(crashed, path)
    state_path = os.path.join(path, "state")
    with open(state_path) as f:
        state = json.load(f)
    assert not state["clean"]
    state["boot_id"] = "00000000-0000-4000-8000-000000000000"
    with open(state_path, "w") as f:
        json.dump(state, f)


def _tokens_after_recovery(path: str, scratch: str) -> np.ndarray:
    """The tokens a writer's open of (a copy of) the store at ``path`` reads."""
    copy = os.path.join(scratch, "expected")
    shutil.copytree(path, copy)
    try:
        with ngstore.open(copy, **OPEN_OPTIONS) as s, s.snapshot() as snap:
            return snap.tokens.to_array()
    finally:
        shutil.rmtree(copy)


def _token_record_ranges(path: str) -> list[tuple[int, int]]:
    """Byte ranges of data.mdb holding the present tokens of the current tree, without
    their id fields (a flip of an id is found by check() already)."""
    layout = ChunkLayout(stores.CHUNK_SLOTS)
    out: list[tuple[int, int]] = []
    kv = KV(path, readonly=True, map_size=MAP_SIZE)
    try:
        with ReadTxn(kv) as txn:
            for _key, value in txn.cursor(db=kv.dbs[DB_TOKENS]):
                address = np.frombuffer(value, dtype=np.uint8).ctypes.data
                span = kv.map_span(address)
                assert span is not None
                off = address - span[0]
                for slot in range(layout.slots):
                    if layout.present(value, slot):
                        out += [(off + 64 * slot, off + 64 * slot + 48), (off + 64 * slot + 52, off + 64 * slot + 64)]
        with open(os.path.join(path, "data.mdb"), "rb") as f:
            data = f.read()
        assert all(data[a:b] for a, b in out)
    finally:
        kv.close()
    return out


def _plan(bases: dict[str, str], record_ranges: list[tuple[int, int]]) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    files: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for base, root in bases.items():
        for d, _dirs, names in os.walk(root):
            for n in names:
                rel = os.path.relpath(os.path.join(d, n), root)
                files[kind_of(rel)].append((base, rel))
    missing = set(QUOTAS) - set(files) - {"token records"}
    assert not missing, f"the stores lack files of kinds {missing}"
    trials = []
    scale = TRIALS / sum(QUOTAS.values())
    for kind, quota in QUOTAS.items():
        for _ in range(max(1, round(quota * scale))):
            if kind == "token records":
                base, rel = "closed", "data.mdb"
                damage = random_damage(rng, 0, within=record_ranges)
            else:
                base, rel = rng.choice(files[kind])
                damage = random_damage(rng, os.path.getsize(os.path.join(bases[base], rel)))
            trials.append({"id": len(trials), "kind": kind, "base": base, "file": rel, "damage": damage.as_json()})
    return trials


def _run_batch(trials: list[dict[str, Any]], common: dict[str, Any], scratch: str) -> dict[int, Any]:
    """Runs ``trials`` in children until each has an outcome; a child killed by a signal
    marks the trial it was running and a new child takes the rest."""
    results: dict[int, Any] = {}
    todo = list(trials)
    while todo:
        plan_path = os.path.join(scratch, f"plan-{todo[0]['id']}.json")
        with open(plan_path, "w") as f:
            json.dump({**common, "trials": todo}, f)
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        p = subprocess.run([sys.executable, os.path.join(TESTS, "corruption.py"), plan_path],
                           capture_output=True, text=True, env=env, timeout=600)
        started = None
        for line in p.stdout.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[msg["id"]] = msg["stages"]
                started = None
        if p.returncode != 0:
            how = f"signal {signal.Signals(-p.returncode).name}" if p.returncode < 0 else f"status {p.returncode}"
            assert started is not None, f"a campaign child failed outside any trial ({how}):\n{p.stderr[-3000:]}"
            results[started] = {"process": {"outcome": "breach", "detail": f"the child died of {how}:\n"
                                            f"{p.stderr[-3000:]}", "changed": False}}
        todo = [t for t in todo if t["id"] not in results]
    return results


def _verdict(base: str, stages: dict[str, Any]) -> str:
    # A power-lost store refuses read-only opens until a writer recovered it, damaged or not.
    outcomes = {s["outcome"] for name, s in stages.items()
                if not (base == "power-lost" and name == "read-only" and "needs recovery" in s["detail"])}
    for o in ("breach", "error", "findings"):
        if o in outcomes:
            return o
    return "ok"


@pytest.mark.slow
def test_random_corruptions_of_every_file_end_in_a_named_error_or_a_finding(tmp_path):
    bases = {"closed": str(tmp_path / "closed"), "crashed": str(tmp_path / "crashed"),
             "power-lost": str(tmp_path / "power-lost")}
    _closed_store(bases["closed"])
    _crashed_store(bases["crashed"])
    _power_lost_store(bases["crashed"], bases["power-lost"])
    record_ranges = _token_record_ranges(bases["closed"])
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    scratch = tempfile.mkdtemp(prefix="ngstore-campaign-", dir=shm)
    try:
        expected = {name: _tokens_after_recovery(path, scratch).tobytes().hex() for name, path in bases.items()}
        trials = _plan(bases, record_ranges)
        common = {"bases": bases, "expected_tokens": expected, "work": scratch}
        batches = [trials[i:i + BATCH] for i in range(0, len(trials), BATCH)]
        results: dict[int, Any] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for r in pool.map(lambda b: _run_batch(b, common, scratch), batches):
                results.update(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if os.environ.get("NGSTORE_CAMPAIGN_RESULTS"):  # every trial and its stages, for a post-mortem
        with open(os.environ["NGSTORE_CAMPAIGN_RESULTS"], "w") as f:
            json.dump([{**t, "stages": results[t["id"]]} for t in trials], f, indent=1)
    table: dict[str, Counter[str]] = defaultdict(Counter)
    breaches, touched, undetected, silent = [], 0, 0, 0
    for t in trials:
        stages = results[t["id"]]
        verdict = _verdict(t["base"], stages)
        table[t["kind"]][verdict] += 1
        # Tokens read that differ from those written: after recovery, or in a store that
        # needs none (a read-only open of the crashed store sees LMDB before replay).
        changed = any(s["changed"] for name, s in stages.items() if t["base"] == "closed" or "writer" in name)
        if verdict == "ok" and changed:
            table[t["kind"]]["ok, tokens differ"] += 1
        if verdict == "breach":
            bad = next(s for s in stages.values() if s["outcome"] == "breach")
            breaches.append(f"trial {t['id']} ({t['kind']} {t['base']}/{t['file']}, {t['damage']}):\n{bad['detail']}")
        size = os.path.getsize(os.path.join(bases["closed"], "data.mdb"))
        hits = t["base"] == "closed" and t["file"] == "data.mdb" and any(
            a < d and c < b for a, b in Damage.from_json(t["damage"]).ranges(size) for c, d in record_ranges)
        if hits:
            touched += 1
            if verdict == "ok":
                undetected += 1
                silent += changed
    lines = [f"corruption campaign: {len(trials)} trials (seed {SEED})",
             f"{'file':<16}{'trials':>7}{'ok':>6}{'findings':>10}{'error':>7}{'breach':>8}"
             f"   ok, but the tokens read differ from those written"]
    for kind in QUOTAS:
        c = table[kind]
        n = c["ok"] + c["findings"] + c["error"] + c["breach"]
        lines.append(f"{kind:<16}{n:>7}{c['ok']:>6}{c['findings']:>10}{c['error']:>7}{c['breach']:>8}"
                     f"   {c['ok, tokens differ']}")
    raised = sum(1 for t in trials for s in results[t["id"]].values() if s["detail"].startswith("check() raised"))
    lines.append(f"check() raised instead of reporting findings: {raised} time(s)")
    lines.append(f"corruptions of stored token record bytes: {touched}; undetected by check(): {undetected} "
                 f"(of which a reader saw changed tokens: {silent}); record checksums: "
                 f"{'on' if RECORD_CHECKSUMS else 'not implemented'}")
    report = "\n".join(lines)
    print("\n" + report)
    assert not breaches, report + "\n\n" + "\n\n".join(breaches[:10])
    assert raised == 0, report  # check() describes damage as findings (ngstore/check.py)
    assert table["token records"]["ok"] + table["token records"]["findings"] + table["token records"]["error"] > 0
    assert touched >= sum(1 for t in trials if t["kind"] == "token records")
    if RECORD_CHECKSUMS:
        assert undetected == 0, report
