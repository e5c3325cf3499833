"""Ordering of the store's durability steps, checked directly (docs/design.md, invariants 1, 5, 6).

A ``TracedIO`` passed as ``io=`` records every file operation of the store (create,
write, truncate, fdatasync, fsync, rename, unlink, fsync_dir) in one sequence, and -- at
the same seam -- each LMDB commit (no fsync) and each LMDB sync (the fdatasync of data.mdb
run by checkpoints), with what the log held at that moment as the recorded syscalls
show it; the test adds the call/return of every API call. The checks then read the
sequence:

(a) a ``sync`` commit's log record is written and fdatasync'ed before the call returns;
    an ``async``/``none`` commit returns after the write and before any fdatasync, and
    ``flush()`` fdatasyncs;
(b) invariant 1: LMDB is synced only when every log write of a record it holds was
    fdatasync'ed and the log's durable position covers the applied position; an LMDB commit never holds a
    log position that was not written to the log before it;
(c) invariant 5/6: the checkpoint file is written (tmp write, fsync, rename, fsync of the
    directory) after LMDB's sync and names the synced transaction; a log segment is
    unlinked only after a durable checkpoint (rename + fsync_dir) whose applied position
    covers every record of the segment;
(d) invariant 5: every created, renamed or unlinked name is followed by an fsync of its
    directory before the next call returns.
"""
from __future__ import annotations

import os
import struct
import time
from collections import Counter

import numpy as np
import pytest
from conftest import make_tokens
from storefaults import FAST, big_mixed, workload
from walfaults import AnotherBoot, RecordingIO

import ngstore
from ngstore.layout import DB_META, decode_checkpoint

_SEGMENT_MAGIC = b"NGWAL\r\n\x1a"
_FRAME = struct.Struct("<IIQQQBBHI")  # docs/format.md §6.3: crc, length, salt, position, synced, ...


class LogModel:
    """The log's positions as the recorded syscalls show them: a frame's position is
    *written* once a write containing its frame is recorded, and *durable* once its file
    is then fdatasync'ed. Independent of the log's own bookkeeping."""

    def __init__(self, baseline: dict[str, bytes]) -> None:
        # the log files present before the recording are on disk: durable
        self.last = self.durable = max((_frame_positions(data, 0) for path, data in baseline.items()
                                        if _is_wal(path)), default=0)
        self._unsynced: dict[str, int] = {}
        self._seen = 0

    def update(self, ops) -> None:
        for op in ops[self._seen:]:
            if op.kind == "write" and _is_wal(op.path):
                top = _frame_positions(op.data, op.offset)
                if top:
                    self.last = max(self.last, top)
                    self._unsynced[op.path] = max(self._unsynced.get(op.path, 0), top)
            elif op.kind == "fdatasync" and _is_wal(op.path):
                self.durable = max(self.durable, self._unsynced.pop(op.path, 0))
        self._seen = len(ops)


def _lowest_frame_position(data: bytes, offset: int) -> int | None:
    """The lowest record position among the whole frames at the start of ``data`` (None if
    it holds none: a segment header, a preallocation)."""
    pos = 40 if offset == 0 and data[:8] == _SEGMENT_MAGIC else 0
    if pos + _FRAME.size <= len(data) and any(data[pos:pos + _FRAME.size]):
        return int(_FRAME.unpack_from(data, pos)[3])
    return None


def _frame_positions(data: bytes, offset: int) -> int:
    """The highest record position among the whole frames at the start of ``data``."""
    pos = 0
    if offset == 0 and data[:8] == _SEGMENT_MAGIC:
        pos = 40
    top = 0
    while pos + _FRAME.size <= len(data) and any(data[pos:pos + _FRAME.size]):
        _crc, length, _salt, position, _synced, *_ = _FRAME.unpack_from(data, pos)
        top = max(top, position)
        pos += _FRAME.size + length
    return top


class TracedIO(RecordingIO):
    """A RecordingIO that also marks, in the same sequence, each LMDB commit (with the
    applied position it stores and the log's end at that moment) and each LMDB sync (with
    LMDB's applied position, the log's durable and last positions, and the transaction
    made durable) -- at the file seam, so creation and recovery are in the stream too."""

    def __init__(self, root: str, inner=None) -> None:
        super().__init__(root, **({"inner": inner} if inner is not None else {}))
        self.log = LogModel(self.baseline)
        self.applied = 0

    def lmdb_commit(self, txn, kv) -> None:
        raw = txn.get(b"applied_position", db=kv.dbs[DB_META])
        applied = struct.unpack_from("<Q", bytes(raw))[0] if raw is not None else 0  # the region (format.md §3.0)
        super().lmdb_commit(txn, kv)
        self.log.update(self.ops)
        self.applied = applied
        self.mark(("lmdb_commit", applied, self.log.last))

    def lmdb_sync(self, env, kv) -> None:
        self.log.update(self.ops)
        self.mark(("lmdb_sync", self.applied, self.log.durable, self.log.last, int(env.info()["last_txnid"])))
        super().lmdb_sync(env, kv)


class Traced:
    """A store on a TracedIO, with the call/return of every API call marked in the stream."""

    def __init__(self, path: str, inner=None, **kw) -> None:
        self.rec = rec = TracedIO(path if os.path.isdir(path) else os.path.dirname(path), inner)
        self.store = ngstore.open(path, io=rec, **FAST, **kw)
        self.path = self.store.path
        self.wal = os.path.join(self.path, "wal")

    def positions(self) -> tuple[int, int]:
        """(last, durable) log positions as the syscalls so far show them."""
        self.rec.log.update(self.rec.ops)
        return self.rec.log.last, self.rec.log.durable

    def call(self, label, fn):
        self.rec.mark(("call", label))
        fn()
        # one committing thread: the call's record (if any) is the newest one
        last, durable = self.positions()
        self.rec.mark(("ret", label, last, durable))

    def close(self) -> None:
        self.call("close", self.store.close)


def _is_wal(path: str) -> bool:
    return path.endswith(".wal")


def _wal_first(path: str) -> int:
    return int(os.path.basename(path)[:16], 16)


def check_invariants(t: Traced) -> Counter:
    """Checks (b), (c), (d) over the whole recording; returns counts of what it checked."""
    ops = t.rec.ops
    n = Counter()
    # wal file -> the lowest record position among its writes since its last fdatasync
    # (0 for a cut into its written bytes: every record counts then)
    dirty: dict[str, int] = {}
    written_end = {p: len(data.rstrip(b"\0")) for p, data in t.rec.baseline.items()
                   if _is_wal(p)}  # end of the non-zero bytes written to each wal file
    live_segments = {p for p in t.rec.baseline if _is_wal(p)}  # wal files that exist
    last_lmdb_sync = None            # index of the last lmdb_sync mark
    synced_txnid = None
    ckpt_data: bytes | None = None   # content written to checkpoint.tmp (current attempt)
    ckpt_after_sync = False
    ckpt_tmp_synced = False            # checkpoint.tmp fsynced since its last write
    renamed_ckpt = None              # (applied, txnid) of a checkpoint renamed, not yet dir-synced
    durable_ckpt_applied = 0         # applied position of the last durable checkpoint file
    undirsynced: dict[str, list[tuple[str, str]]] = {}  # dir -> (thread, name) changed since its last fsync_dir
    ckpt_path = os.path.join(t.path, "checkpoint")
    for i, op in enumerate(ops):
        if op.kind == "mark":
            what = op.label[0]
            if what == "lmdb_sync":
                _, applied, durable, _last, txnid = op.label
                # (b) invariant 1, in the log's terms and in syscall terms
                assert durable >= applied, f"op {i}: LMDB synced at applied {applied} > log durable {durable}"
                # Records past `applied` may be in flight: the committing thread goes on
                # writing while the applier checkpoints. Every write holding a record LMDB
                # has applied must have been fdatasync'ed.
                unsynced = {p: top for p, top in dirty.items() if top <= applied}
                assert not unsynced, (f"op {i}: LMDB synced at applied {applied} while log writes of records "
                                      f"up to {unsynced} were not fdatasync'ed")
                last_lmdb_sync, synced_txnid, ckpt_after_sync = i, txnid, False
                n["lmdb syncs"] += 1
            elif what == "lmdb_commit":
                _, applied, log_last = op.label
                assert applied <= log_last, \
                    f"op {i}: LMDB committed position {applied} before the log held it ({log_last})"
                n["lmdb commits"] += 1
            elif what == "ret":
                # (d) every name change the call made is durable before it returns (an fsync
                # of the directory covers every earlier change in it, whoever made it)
                pending = {d: [name for th, name in v if th == op.thread] for d, v in undirsynced.items()}
                pending = {d: v for d, v in pending.items() if v}
                assert not pending, f"op {i}: {op.label[1]} returned with name changes not dir-synced: {pending}"
            continue
        d = os.path.dirname(op.path)
        if op.kind in ("create", "unlink"):
            undirsynced.setdefault(d, []).append((op.thread, f"{op.kind} {os.path.basename(op.path)}"))
        if op.kind == "rename":
            undirsynced.setdefault(os.path.dirname(op.dst), []).append(
                (op.thread, f"rename {os.path.basename(op.dst)}"))
        if op.kind == "fsync_dir":
            if undirsynced.get(op.path):
                n["dir fsyncs after name changes"] += 1
            undirsynced[op.path] = []
        if _is_wal(op.path):
            if op.kind == "create":
                live_segments.add(op.path)
                n["segments created"] += 1
            elif op.kind == "write":
                low = _lowest_frame_position(op.data, op.offset)
                if low is not None:
                    dirty[op.path] = min(dirty.get(op.path, low), low)
                content = len(op.data.rstrip(b"\0"))  # a preallocation's zeros are no content
                if content:
                    written_end[op.path] = max(written_end.get(op.path, 0), op.offset + content)
            elif op.kind == "truncate":
                # Cutting the unused end of a segment (its preallocation, when the writer
                # moves to the next) changes no record; a cut into written bytes does.
                if op.size < written_end.get(op.path, 0):
                    dirty[op.path] = 0
                    written_end[op.path] = op.size
            elif op.kind == "fdatasync":
                dirty.pop(op.path, None)
                n["log fdatasyncs"] += 1
            elif op.kind == "unlink":
                # (c) invariant 6: a durable checkpoint covers every record of the segment
                later = sorted((p for p in live_segments if _wal_first(p) > _wal_first(op.path)), key=_wal_first)
                assert later, f"op {i}: the active segment {op.path} was unlinked"
                last_in_seg = _wal_first(later[0]) - 1
                assert renamed_ckpt is None, f"op {i}: segment unlinked before the checkpoint rename was dir-synced"
                assert durable_ckpt_applied >= last_in_seg, (
                    f"op {i}: unlinked {os.path.basename(op.path)} (records ≤ {last_in_seg}) but the durable "
                    f"checkpoint covers only ≤ {durable_ckpt_applied}")
                live_segments.discard(op.path)
                n["segments unlinked after a durable checkpoint"] += 1
        elif op.path == ckpt_path + ".tmp":
            if op.kind == "write":
                # (c) the checkpoint file is written after LMDB's sync, naming the synced txn
                assert last_lmdb_sync is not None and not ckpt_after_sync, \
                    f"op {i}: checkpoint file written without an LMDB sync before it"
                txnid = decode_checkpoint(op.data, ckpt_path).txnid
                assert txnid == synced_txnid, f"op {i}: checkpoint names txn {txnid}, LMDB synced {synced_txnid}"
                ckpt_data, ckpt_after_sync, ckpt_tmp_synced = op.data, True, False
            elif op.kind == "fsync":
                assert ckpt_data is not None
                ckpt_tmp_synced = True
                n["checkpoint tmp fsyncs"] += 1
            elif op.kind == "rename":
                assert ckpt_data is not None and op.dst == ckpt_path
                # (other threads' operations may come between; the tmp's own order may not)
                assert ckpt_tmp_synced, f"op {i}: rename of an unsynced checkpoint.tmp"
                ck = decode_checkpoint(ckpt_data, ckpt_path)
                renamed_ckpt = (ck.applied_position, ck.txnid)
                ckpt_data = None
        elif op.kind == "fsync_dir" and op.path == t.path and renamed_ckpt is not None:
            durable_ckpt_applied = max(durable_ckpt_applied, renamed_ckpt[0])
            renamed_ckpt = None
            n["durable checkpoints"] += 1
    # background threads (the applier's checkpoints) must have made theirs durable too
    assert not {d: v for d, v in undirsynced.items() if v}, f"name changes never dir-synced: {undirsynced}"
    return n


def _calls_between(ops, label):
    """The ops between ("call", label) and ("ret", label, ...), and the ret mark."""
    start = next(i for i, o in enumerate(ops) if o.kind == "mark" and o.label == ("call", label))
    end = next(i for i, o in enumerate(ops) if i > start and o.kind == "mark" and o.label[:2] == ("ret", label))
    return ops[start + 1:end], ops[end].label


def _check_sync_commit(t: Traced, label) -> None:
    inside, ret = _calls_between(t.rec.ops, label)
    _, _, pos, durable = ret
    writes = [j for j, o in enumerate(inside) if o.kind == "write" and _is_wal(o.path)]
    assert writes, f"{label}: no log write"
    w = writes[-1]
    syncs = [o for o in inside[w + 1:] if o.kind == "fdatasync" and o.path == inside[w].path]
    assert syncs, f"{label}: returned without an fdatasync of {inside[w].path} after its write"
    assert durable >= pos, f"{label}: returned position {pos} but the log is durable only to {durable}"


def _check_unsynced_commit(t: Traced, label) -> None:
    inside, ret = _calls_between(t.rec.ops, label)
    _, _, pos, durable = ret
    assert any(o.kind == "write" and _is_wal(o.path) for o in inside), f"{label}: returned before the log write"
    assert not any(o.kind == "fdatasync" for o in inside), f"{label}: an async/none commit waited for an fdatasync"
    assert durable < pos, f"{label}: durable {durable} ≥ {pos} without an fdatasync"


def test_sync_commits_checkpoints_direct_commits_and_close_keep_the_durability_order(tmp_path, capsys):
    t = Traced(str(tmp_path / "s"), segment_bytes=2048, direct_threshold=64 << 10, flush_interval=3600.0)
    steps = workload(36)
    sync_labels = []
    for i, st in enumerate(steps):
        d = ("sync", "sync", "async", "none")[i % 4]
        t.call(st.name, lambda st=st, d=d: st.run(t.store, d))
        (sync_labels if d == "sync" else []).append(st.name)
        if i % 9 == 8:
            t.call(f"checkpoint{i}", t.store.checkpoint)
        if i == 20:
            t.call("direct", lambda: big_mixed(0)(t.store, "sync"))
    assert t.store.stats()["direct_commits_total"] == 1
    t.close()
    for label in sync_labels:
        _check_sync_commit(t, label)
    n = check_invariants(t)
    with capsys.disabled():
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(n.items()))
        print(f"\n[store ordering] {len(sync_labels)} sync commits; {counts}")
    assert n["lmdb syncs"] >= 6          # creation, 4 checkpoints, the direct commit, close
    assert n["durable checkpoints"] == n["lmdb syncs"]
    assert n["segments created"] >= 5 and n["segments unlinked after a durable checkpoint"] >= 4
    assert 1 <= n["lmdb commits"] <= len(steps)  # the applier groups commits


def test_automatic_checkpoints_inside_commits_keep_the_durability_order(tmp_path, capsys):
    t = Traced(str(tmp_path / "s"), segment_bytes=2048, checkpoint_bytes=5000, flush_interval=3600.0,
               apply_interval=1e-4)
    steps = workload(40, seed=9)
    for i, st in enumerate(steps):
        d = "sync" if i % 3 else "none"
        t.call(st.name, lambda st=st, d=d: st.run(t.store, d))
        if d == "sync":
            _check_sync_commit(t, st.name)
    auto = t.store.stats()["checkpoints_total"]
    t.close()
    n = check_invariants(t)
    with capsys.disabled():
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(n.items()))
        print(f"\n[store ordering] automatic: {auto} checkpoints; {counts}")
    assert auto >= 3
    assert n["segments unlinked after a durable checkpoint"] >= 3


def test_async_and_none_commits_return_after_the_write_and_flush_fdatasyncs(tmp_path):
    t = Traced(str(tmp_path / "s"), durability="async", segment_bytes=1 << 20, flush_interval=3600.0)
    steps = workload(12, seed=2)
    for i, st in enumerate(steps):
        d = "none" if i % 2 else None
        t.call(st.name, lambda st=st, d=d: st.run(t.store, d or "async"))
        _check_unsynced_commit(t, st.name)
        if i % 4 == 3:
            t.call(f"flush{i}", t.store.flush)
            inside, _ret = _calls_between(t.rec.ops, f"flush{i}")
            assert any(o.kind == "fdatasync" and _is_wal(o.path) for o in inside), "flush() did not fdatasync the log"
            last, durable = t.positions()
            assert durable == last
    t.call("sync", lambda: t.store.put_tokens(make_tokens([1, 2]), durability="sync"))
    _check_sync_commit(t, "sync")
    t.close()
    check_invariants(t)


def test_the_async_flusher_makes_commits_durable_without_a_flush(tmp_path):
    rec = TracedIO(str(tmp_path))
    with ngstore.open(str(tmp_path / "s"), durability="async", flush_interval=0.005, io=rec, **FAST) as s:
        pos = s.put_tokens(make_tokens(np.arange(10)))
        deadline = time.monotonic() + 20.0  # liveness only: generous
        while time.monotonic() < deadline:
            rec.log.update(list(rec.ops))
            if rec.log.durable >= pos:
                break
            time.sleep(0.005)
        assert rec.log.durable >= pos, "the flusher never fdatasync'ed an async commit"


class SlowLogSyncIO(TracedIO):
    """A TracedIO whose log fdatasyncs take ``seconds`` (a slow disk), each marked where it
    starts as well as (by RecordingIO) where it ends."""

    def __init__(self, root: str, seconds: float) -> None:
        super().__init__(root)
        self.seconds = seconds

    def fdatasync(self, fd: int) -> None:
        if _is_wal(self._paths.get(fd, "")):
            self.mark(("log_sync_start",))
            time.sleep(self.seconds)
        super().fdatasync(fd)


@pytest.mark.parametrize("sync_seconds", [0.002, 0.03], ids=["fast-disk", "sync-slower-than-interval"])
def test_the_async_loss_window_is_closed_by_the_first_log_sync_that_starts_after_the_commit(
        tmp_path, sync_seconds):
    """The loss window of ``async`` (docs/api.md): a batch acknowledged at t is durable by
    t + flush_interval + one fdatasync. Its two parts are checked here in order, not in
    time: the flusher alone (no later commit, flush or close) syncs it, and the first log
    fdatasync that *starts* after the commit returned covers it (the sync in progress
    when it was written may not, and is the only one that may not)."""
    rec = SlowLogSyncIO(str(tmp_path), sync_seconds)
    rng = np.random.default_rng(3)
    acked: list[tuple[int, int]] = []  # (index in the recording of the return, position)
    with ngstore.open(str(tmp_path / "s"), durability="async", flush_interval=0.01, io=rec, **FAST) as s:
        for i in range(40):
            pos = s.put_tokens(make_tokens(np.array([i])))
            acked.append((len(rec.ops), pos))
            rec.mark(("ret", pos))
            time.sleep(float(rng.uniform(0, 0.02)))
        deadline = time.monotonic() + 20.0  # liveness only: generous
        while time.monotonic() < deadline:
            rec.log.update(list(rec.ops))
            if rec.log.durable >= acked[-1][1]:
                break
            time.sleep(0.005)
        assert rec.log.durable >= acked[-1][1], "the flusher never fdatasync'ed the last async commit"
        ops = list(rec.ops)
    first = acked[0][0]  # the open's own syncs come before
    log_syncs = [(i, o) for i, o in enumerate(ops) if i > first and o.kind == "fdatasync" and _is_wal(o.path)]
    starts = [i for i, o in enumerate(ops) if i > first and o.kind == "mark" and o.label == ("log_sync_start",)]
    assert log_syncs and all(o.thread == "ngstore-flusher" for _, o in log_syncs), \
        {o.thread for _, o in log_syncs}
    model = LogModel(rec.baseline)
    for ret_index, pos in acked:
        # The fdatasync the first start after the return begins ends at the first log
        # fdatasync recorded after that start (the flusher is the only thread syncing the
        # log here). With no start after it (a sync in progress covered it) or no end (the
        # recording stopped meanwhile), the whole recording is the bound.
        first_start = next((j for j in starts if j > ret_index), None)
        end = next((j for j, _ in log_syncs if first_start is not None and j > first_start), len(ops) - 1)
        model.update(ops[:end + 1])
        assert model.durable >= pos, (f"the commit at position {pos} was not durable after the first log "
                                      f"fdatasync started after it returned (durable {model.durable})")


def test_a_checkpoint_after_unsynced_commits_syncs_the_log_before_lmdb(tmp_path):
    t = Traced(str(tmp_path / "s"), durability="none", flush_interval=3600.0)
    for i, st in enumerate(workload(6)):
        t.call(st.name, lambda st=st: st.run(t.store, "none"))
    last, durable = t.positions()
    assert durable < last
    t.call("checkpoint", t.store.checkpoint)
    inside, _ = _calls_between(t.rec.ops, "checkpoint")
    kinds = [(o.kind, o.label[0] if o.kind == "mark" else os.path.basename(o.path)) for o in inside]
    i_sync = next(j for j, k in enumerate(kinds) if k[0] == "fdatasync" and k[1].endswith(".wal"))
    i_lmdb = next(j for j, k in enumerate(kinds) if k == ("mark", "lmdb_sync"))
    i_rename = next(j for j, o in enumerate(inside) if o.kind == "rename")
    i_dir = next(j for j, o in enumerate(inside) if o.kind == "fsync_dir" and j > i_rename)
    assert i_sync < i_lmdb < i_rename < i_dir
    t.close()
    check_invariants(t)


def test_the_checker_catches_an_lmdb_sync_ahead_of_the_log(tmp_path):
    """The checker is not vacuous: the same workload, with the log's fdatasyncs made
    invisible to it (as if the store skipped them), fails invariant (b)."""
    t = Traced(str(tmp_path / "s"), durability="none", flush_interval=3600.0)
    for st in workload(6):
        t.call(st.name, lambda st=st: st.run(t.store, "none"))
    t.call("checkpoint", t.store.checkpoint)
    t.close()
    t.rec.ops[:] = [o for o in t.rec.ops if not (o.kind == "fdatasync" and _is_wal(o.path))]
    with pytest.raises(AssertionError, match="were not fdatasync'ed"):
        check_invariants(t)


@pytest.mark.parametrize("power_loss", [False, True], ids=["process-crash", "power-loss"])
def test_recovery_restores_lmdb_and_checkpoints_before_accepting_writes(tmp_path, power_loss):
    src = str(tmp_path / "live")
    s = ngstore.open(src, segment_bytes=2048, **FAST)
    for st in workload(8):
        st.run(s, "sync")
    s.checkpoint()
    for st in workload(14)[8:]:
        st.run(s, "sync")
    s.flush()  # the applier has moved every batch into LMDB
    dst = tmp_path / "crashed"
    dst.mkdir()
    for name in ("data.mdb", "checkpoint", "state", "NGSTORE"):  # the directory as kill -9 leaves it
        with open(os.path.join(src, name), "rb") as f, open(dst / name, "wb") as g:
            g.write(f.read())
    os.mkdir(dst / "wal")
    for name in os.listdir(os.path.join(src, "wal")):
        with open(os.path.join(src, "wal", name), "rb") as f, open(dst / "wal" / name, "wb") as g:
            g.write(f.read())
    s.close()
    t = Traced(str(dst), AnotherBoot() if power_loss else None, segment_bytes=2048)
    assert t.store.recovery.power_loss_rollback is power_loss
    # after a process crash LMDB's newest transaction is trusted: nothing to replay
    assert (t.store.recovery.replayed_records >= 1) is power_loss
    ops = t.rec.ops
    first_commit = next((i for i, o in enumerate(ops) if o.kind == "mark" and o.label[0] == "lmdb_commit"), 0)
    if power_loss:
        meta_writes = [i for i, o in enumerate(ops) if o.kind == "write" and o.path.endswith("data.mdb")]
        meta_sync = [i for i, o in enumerate(ops) if o.kind == "fsync" and o.path.endswith("data.mdb")]
        assert len(meta_writes) == 2 and meta_sync and max(meta_writes) < meta_sync[0] < first_commit, \
            "the checkpoint's meta page must be durably restored before LMDB is written"
    # the recovered state is checkpointed before open returns
    assert any(o.kind == "mark" and o.label[0] == "lmdb_sync" for o in ops[first_commit:])
    assert t.store.check().ok
    t.call("after", lambda: t.store.put_tokens(make_tokens([1])))
    _check_sync_commit(t, "after")
    t.close()
    check_invariants(t)
