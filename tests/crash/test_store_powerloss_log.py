"""Power loss through the log, at store level.

A store runs on a ``RecordingIO`` (``tests/walfaults.py``): after a prelude and a
``checkpoint()``, a copy of the store directory is taken (data.mdb, checkpoint, state,
NGSTORE: LMDB as a power loss leaves it once the store rolls it back to the checkpoint)
and the recording is re-based there (everything in ``wal/`` is durable at that moment).
Then a sequence of batches (tokens, deletes, connections, connection deletes, events,
mixed batches) is committed, under ``sync``, or under ``async``/``none`` with explicit
``flush()`` points and one ``sync`` commit, marking in the recording which batches were
acknowledged (the sync call / the flush returned).

``simulate_power_loss`` then yields every log directory state a power loss could leave
(every prefix of the operations; unsynced writes dropped, torn short/zero/garbage,
reordered; undirsynced names undone). Each is combined with the checkpoint copy -- with
data.mdb as of the checkpoint, or (alternately) as of the end of the run, i.e. with every
later LMDB page written, which the rollback must ignore -- and opened with another boot
id. Recovery must roll LMDB back to the checkpoint, replay, pass ``check()``, and hold
exactly the state after some prefix of the batches that contains every acknowledged one
(and no batch that had not begun).
"""
from __future__ import annotations

import os
import shutil
import time

from storefaults import FAST, ResettableRecordingIO, describe, state_of, workload
from walfaults import AnotherBoot, NoSyncIO, simulate_power_loss

import ngstore

CKPT_FILES = ("data.mdb", "checkpoint", "state", "NGSTORE")
OPEN = dict(segment_bytes=4096, flush_interval=3600.0, **FAST)


def _record(tmp_path, mode: str, n_batches: int, seed: int):
    live = str(tmp_path / "live")
    rec = ResettableRecordingIO(os.path.join(live, "wal"))
    s = ngstore.open(live, io=rec, durability="sync" if mode == "sync" else "async", **OPEN)
    for st in workload(6, seed=seed + 100):
        st.run(s, "sync")
    s.checkpoint()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in CKPT_FILES:
        shutil.copyfile(os.path.join(live, name), ckpt / name)
    rec.rebase()
    ref = [state_of(s)]
    acks = 0
    for i, st in enumerate(workload(n_batches, seed=seed)):
        rec.mark(("begin", i + 1))
        if mode == "sync":
            st.run(s, "sync")
            ref.append(state_of(s))
            rec.mark(("acked", i + 1))
            acks += 1
        else:
            d = "sync" if i == n_batches // 2 else ("async", "none")[i % 2]
            st.run(s, d)
            ref.append(state_of(s))
            if d == "sync":
                rec.mark(("acked", i + 1))
                acks += 1
            elif i % 4 == 3:
                s.flush()
                rec.mark(("acked", i + 1))
                acks += 1
    shutil.copyfile(os.path.join(live, "data.mdb"), tmp_path / "data.mdb.late")
    n_ops = len(rec.ops)
    segments = s.stats()["wal_segments"]
    s.close()
    rec.ops = rec.ops[:n_ops]  # the power loss comes before close (close checkpoints)
    return live, rec, ref, str(ckpt), str(tmp_path / "data.mdb.late"), acks, segments


def _spread(n: int) -> list[int]:
    """0 .. n-1 in bit-reversal order: every prefix of the list is spread evenly over the range."""
    bits = max(1, (n - 1).bit_length())
    return sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def _recover_all(tmp_path, mode: str, n_batches: int, seed: int, budget: float, capsys) -> None:
    live, rec, ref, ckpt, late, acks, segments = _record(tmp_path, mode, n_batches, seed)
    # every recovery runs after "a reboot": the state file names the recording's boot
    index: dict[tuple, list[int]] = {}
    for k, st in enumerate(ref):
        index.setdefault(st, []).append(k)
    assert len(index) >= n_batches // 2, "the workload must change the state"
    wal_root = os.path.join(live, "wal")
    t0 = time.monotonic()
    checked = 0
    recovered_to: dict[int, int] = {}
    lost_unacked = 0
    # Cuts in bit-reversal order: whatever part of them the time budget covers is spread
    # over the whole recording (in order, a slow machine only reached its first batches).
    for cs in simulate_power_loss(rec, seed=seed, torn_points=(1, 8, 41, -1), cuts=_spread(len(rec.ops) + 1)):
        acked = max((m[1] for m in cs.marks if m[0] == "acked"), default=0)
        begun = max((m[1] for m in cs.marks if m[0] == "begin"), default=0)
        d = str(tmp_path / "state")
        os.mkdir(d)
        for name in CKPT_FILES:
            src = late if name == "data.mdb" and checked % 2 else os.path.join(ckpt, name)
            shutil.copyfile(src, os.path.join(d, name))
        os.mkdir(os.path.join(d, "wal"))
        cs.materialize(wal_root, os.path.join(d, "wal"))
        try:
            with ngstore.open(d, io=NoSyncIO(AnotherBoot()), **OPEN) as s:
                assert s.recovery.power_loss_rollback, cs.description
                report = s.check()
                assert report.ok, f"{cs.description}: {report}"
                got = state_of(s)
        except Exception as exc:
            raise AssertionError(f"{mode}, {cs.description}: recovery failed: {exc!r}") from exc
        ks = [k for k in index.get(got, []) if acked <= k <= begun]
        assert ks, (f"{mode}, {cs.description}: recovered {describe(got)}, which is not the state after "
                    f"any prefix of {acked}..{begun} batches (acknowledged {acked}); states after each "
                    f"prefix with that content: {index.get(got)}")
        recovered_to[max(ks)] = recovered_to.get(max(ks), 0) + 1
        lost_unacked += max(ks) < begun
        shutil.rmtree(d)
        checked += 1
        enough = checked >= 200 and len(recovered_to) >= n_batches // 2 and lost_unacked >= 10
        if time.monotonic() - t0 > (budget if enough else 4 * budget):
            break
    elapsed = time.monotonic() - t0
    with capsys.disabled():
        print(f"\n[store power loss] {mode}: {checked} log states recovered in {elapsed:.1f}s "
              f"({len(rec.ops)} recorded ops, {n_batches} batches, {acks} acknowledgement points, "
              f"{segments} segments); {lost_unacked} lost unacknowledged batches; "
              f"recovered prefix lengths seen: {len(recovered_to)}")
    assert checked >= 200, f"only {checked} states checked"
    assert len(recovered_to) >= n_batches // 2  # recoveries ended at many different prefixes
    assert lost_unacked >= 10  # the model really dropped unsynced writes


def test_power_loss_under_sync_keeps_every_acknowledged_batch_and_no_partial_one(
        tmp_path, capsys):
    _recover_all(tmp_path, "sync", 36, seed=1, budget=28.0, capsys=capsys)


def test_power_loss_under_async_keeps_every_flushed_batch_and_a_prefix_of_the_rest(
        tmp_path, capsys):
    _recover_all(tmp_path, "async", 36, seed=2, budget=28.0, capsys=capsys)


def test_power_loss_across_checkpoints_never_loses_a_record_lmdb_does_not_durably_hold(
        tmp_path, capsys):
    """The same, with checkpoints (and their log segment unlinks) inside the recorded window.

    The whole store directory is recorded except data.mdb, which LMDB writes itself: its
    content is captured after every LMDB sync (what a power loss keeps at least) and after
    every LMDB commit (what it keeps at most), and marked in the stream. A state at a cut
    gets the checkpoint file, state file and log the simulator built, and data.mdb as of the
    last LMDB sync before the cut or (alternately) as of the last commit before it."""
    live = str(tmp_path / "live")
    rec = ResettableRecordingIO(live)
    s = ngstore.open(live, io=rec, **OPEN)
    for st in workload(6, seed=7):
        st.run(s, "sync")
    s.checkpoint()
    kv = s._kv
    data_path = os.path.join(live, "data.mdb")
    mdb: list[bytes] = []

    def snap(kind: str) -> None:
        with open(data_path, "rb") as f:
            mdb.append(f.read())
        rec.mark((kind, len(mdb) - 1))

    real_sync, real_write = kv.sync, kv.write

    def sync():
        real_sync()
        snap("lmdb_durable")

    def write(fn):
        out = real_write(fn)
        snap("lmdb_now")
        return out

    kv.sync, kv.write = sync, write
    rec.rebase()
    for p in list(rec.baseline):  # not FileIO's files: LMDB's own and the lock files
        if os.path.basename(p) in ("data.mdb", "lock.mdb", "writer.lock", "readers.lock"):
            del rec.baseline[p]
    snap("lmdb_durable")
    ref = [state_of(s)]
    n_batches = 30
    checkpoints = 0
    for i, st in enumerate(workload(n_batches, seed=8)):
        rec.mark(("begin", i + 1))
        st.run(s, "sync" if i % 3 else "none")
        ref.append(state_of(s))
        if i % 3:
            rec.mark(("acked", i + 1))
        if i % 7 == 6:
            s.checkpoint()
            checkpoints += 1
            rec.mark(("acked", i + 1))  # a checkpoint makes every earlier batch durable
    n_ops = len(rec.ops)
    unlinks = sum(1 for o in rec.ops if o.kind == "unlink" and o.path.endswith(".wal"))
    s.close()
    rec.ops = rec.ops[:n_ops]
    index: dict[tuple, list[int]] = {}
    for k, stt in enumerate(ref):
        index.setdefault(stt, []).append(k)
    t0 = time.monotonic()
    checked = 0
    for cs in simulate_power_loss(rec, seed=3, torn_points=(8, -1)):
        acked = max((m[1] for m in cs.marks if m[0] == "acked"), default=0)
        begun = max((m[1] for m in cs.marks if m[0] == "begin"), default=0)
        durable = max((m[1] for m in cs.marks if m[0] == "lmdb_durable"), default=0)
        now = max((m[1] for m in cs.marks if m[0] in ("lmdb_now", "lmdb_durable")), default=0)
        d = str(tmp_path / "state")
        cs.materialize(live, d)
        with open(os.path.join(d, "data.mdb"), "wb") as f:
            f.write(mdb[now if checked % 2 else durable])
        try:
            with ngstore.open(d, io=NoSyncIO(AnotherBoot()), **OPEN) as r:
                assert r.recovery.power_loss_rollback
                report = r.check()
                assert report.ok, f"{cs.description}: {report}"
                got = state_of(r)
        except Exception as exc:
            raise AssertionError(f"{cs.description}: recovery failed: {exc!r}") from exc
        ks = [k for k in index.get(got, []) if acked <= k <= begun]
        assert ks, (f"{cs.description}: recovered {describe(got)}, not the state after any prefix of "
                    f"{acked}..{begun} batches; it is the state after {index.get(got)}")
        shutil.rmtree(d)
        checked += 1
        if time.monotonic() - t0 > 25.0:
            break
    with capsys.disabled():
        print(f"\n[store power loss] across {checkpoints} checkpoints ({unlinks} segment unlinks): "
              f"{checked} store states recovered in {time.monotonic() - t0:.1f}s ({n_ops} recorded ops)")
    assert checkpoints >= 4 and unlinks >= 3
    assert checked >= 200


VERIFY = """
import sys, ngstore
sys.path.insert(0, sys.argv[3])
from storefaults import FAST, state_of
from walfaults import AnotherBoot
with ngstore.open(sys.argv[1], segment_bytes=4096, flush_interval=3600.0, io=AnotherBoot("a-third-boot"),
                  **FAST) as s:
    assert s.recovery.power_loss_rollback
    report = s.check()
    assert report.ok, str(report)
    toks = dict(state_of(s)[0])
import pickle
with open(sys.argv[2], "rb") as f:
    want = pickle.load(f)
assert toks == want, f"{len(toks)} tokens recovered, {len(want)} expected"
print("ok")
"""


def _garble_changed_pages(path: str, ckpt_copy: bytes, seed: int) -> int:
    import random
    rng = random.Random(seed)
    ps = 4096
    with open(path, "r+b") as f:
        now = f.read()
        changed = 0
        for off in range(2 * ps, len(now), ps):  # the meta pages are rewritten by the rollback
            if now[off:off + ps] != ckpt_copy[off:off + ps]:
                f.seek(off)
                f.write(rng.randbytes(min(ps, len(now) - off)))
                changed += 1
    return changed


def test_a_power_loss_during_recovery_replay_finds_the_checkpoint_pages_intact(tmp_path):
    """The pin (docs/format.md §4.1) must hold the checkpointed transaction C from the moment
    anything is written -- including the commits recovery's replay makes before its own
    checkpoint. Sequence: checkpoint C; more commits (they free pages of C's tree, which the
    pin keeps from reuse); a process crash leaves the last batch in the log only; reopen
    (same boot) replays it and -- before its checkpoint is written -- the power fails, with
    every page written since C on disk as garbage. The next open must roll back to C and
    replay; if the replay reused a page of C, C is corrupt."""
    import pickle
    import subprocess
    import sys

    live = str(tmp_path / "live")
    s = ngstore.open(live, **OPEN)
    for st in workload(12, seed=11):
        st.run(s, "sync")
    s.checkpoint()
    with open(os.path.join(live, "data.mdb"), "rb") as f:
        at_checkpoint = f.read()
    for st in workload(24, seed=12)[12:]:
        st.run(s, "sync")
    crash = tmp_path / "crash"
    crash.mkdir()
    s.flush()  # every batch so far in LMDB
    shutil.copyfile(os.path.join(live, "data.mdb"), crash / "data.mdb")  # LMDB lacks the last batch
    workload(25, seed=12)[24].run(s, "sync")
    want = dict(state_of(s)[0])
    for name in ("checkpoint", "state", "NGSTORE"):
        shutil.copyfile(os.path.join(live, name), crash / name)
    shutil.copytree(os.path.join(live, "wal"), crash / "wal")
    s.close()
    before_open = tmp_path / "before-open"
    shutil.copytree(crash, before_open)

    after_replay = str(tmp_path / "data.mdb.after-replay")

    class CaptureAtFirstLmdbSync(NoSyncIO):
        """The page cache as recovery's first checkpoint begins to make LMDB durable."""

        def lmdb_sync(self, env, kv):
            if not os.path.exists(after_replay):
                shutil.copyfile(os.path.join(kv.path, "data.mdb"), after_replay)
            super().lmdb_sync(env, kv)

    with ngstore.open(str(crash), io=CaptureAtFirstLmdbSync(), **OPEN) as r:  # same boot: no rollback
        assert not r.recovery.power_loss_rollback and r.recovery.replayed_records == 1

    pl = tmp_path / "power-lost"
    shutil.copytree(before_open, pl)  # the checkpoint file, state and log as before recovery
    shutil.copyfile(after_replay, pl / "data.mdb")
    changed = _garble_changed_pages(str(pl / "data.mdb"), at_checkpoint, seed=1)
    assert changed >= 1
    with open(tmp_path / "want.pkl", "wb") as f:
        pickle.dump(want, f)
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", VERIFY, str(pl), str(tmp_path / "want.pkl"), tests_dir],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, (
        f"recovery after a power loss during recovery's replay failed ({changed} pages garbled): "
        f"rc={res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
