"""Power loss at every point of a recorded workload, in every way the page cache can lose it.

RecordingIO records each write/fdatasync/create/unlink; ``simulate_power_loss`` builds the
directory states a power loss after each prefix of those operations can leave (unsynced
writes dropped, kept, torn with nothing/zeros/garbage after the tear, landing out of order;
unsynced name operations undone). Every state must recover (tolerate-tail) to exactly a
prefix of the appended records that contains every acknowledged one (sync had returned).
"""
from __future__ import annotations

import os
import random
import shutil

import pytest
from walfaults import NoSyncIO, RecordingIO, simulate_power_loss

from ngstore import wal

B = wal.BATCH


@pytest.fixture(autouse=True)
def reproducible_salts(monkeypatch):
    """Seeded salts: the number of distinct crash states then never varies between runs."""
    rng = random.Random(1234)
    monkeypatch.setattr(wal, "new_salt", lambda: rng.getrandbits(64) | 1)


def run_workload(root: str, *, checkpoints: bool, seed: int) -> tuple[RecordingIO, list[bytes]]:
    """Appends ~60 records in groups of 1..3 appends per sync (the async-mode pattern), with
    rotation every few records; optionally checkpoints (drop_through) along the way."""
    rng = random.Random(seed)
    os.makedirs(root)
    rec = RecordingIO(root, inner=NoSyncIO())
    d = os.path.join(root, "wal")
    log, _ = wal.Log.open(d, io=rec, segment_bytes=420, preallocate_bytes=96)
    appended: list[bytes] = []
    while len(appended) < 60:
        for _ in range(rng.randint(1, 3)):
            batch = [rng.randbytes(rng.randint(5, 120)) for _ in range(rng.choice((1, 1, 2)))]
            log.append([(B, p) for p in batch])
            appended += batch
        durable = log.sync()
        rec.mark(("acked", durable))
        if checkpoints and len(appended) % 3 == 0 and durable > 10:
            rec.mark(("checkpoint", durable - 5))  # LMDB durably holds through here
            log.drop_through(durable - 5)
    log.close()
    return rec, appended


def check_states(rec: RecordingIO, appended: list[bytes], scratch: str) -> tuple[int, int]:
    expected = list(enumerate(appended, start=1))
    states = torn_tails = 0
    old_root = rec.root
    for st in simulate_power_loss(rec, seed=1):
        acked = max((m[1] for m in st.marks if m[0] == "acked"), default=0)
        applied = max((m[1] for m in st.marks if m[0] == "checkpoint"), default=0)
        if os.path.exists(scratch):
            shutil.rmtree(scratch)
        st.materialize(old_root, scratch)
        log, rep = wal.Log.open(os.path.join(scratch, "wal"), io=NoSyncIO(), start_after=applied)
        got = [(r.position, r.payload) for r in log.iter_records(applied)]
        log.close()
        assert got == expected[applied:applied + len(got)], st.description
        assert applied + len(got) >= acked, f"{st.description}: acknowledged record lost"
        # and the recovered log is clean and appendable: a second open changes nothing
        log, rep2 = wal.Log.open(os.path.join(scratch, "wal"), io=NoSyncIO(), start_after=applied,
                                 recovery="strict")
        assert rep2.clean and log.last_position == max(applied, rep.last_position)
        log.close()
        states += 1
        torn_tails += rep.torn_tail is not None
    return states, torn_tails


def test_every_power_loss_state_recovers_a_prefix_containing_every_acknowledged_record(tmp_path, capsys):
    rec, appended = run_workload(str(tmp_path / "run"), checkpoints=False, seed=7)
    assert sum(o.kind == "create" for o in rec.ops) >= 4  # rotation happened
    states, torn = check_states(rec, appended, str(tmp_path / "state"))
    with capsys.disabled():
        print(f"\n[wal power loss] {states} crash states recovered ({torn} with a torn tail), "
              f"{len(rec.ops)} recorded operations")
    assert (states, torn) == (1282, 1103)  # deterministic: seeded workload, salts and garbage


def test_power_loss_during_checkpoints_never_loses_a_record_the_store_lacks(tmp_path, capsys):
    rec, appended = run_workload(str(tmp_path / "run"), checkpoints=True, seed=11)
    assert sum(o.kind == "unlink" for o in rec.ops) >= 2  # segments were dropped
    states, torn = check_states(rec, appended, str(tmp_path / "state"))
    with capsys.disabled():
        print(f"\n[wal power loss + checkpoints] {states} crash states recovered ({torn} torn)")
    assert (states, torn) == (1320, 1140)
