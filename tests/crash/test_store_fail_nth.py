"""Fail the Nth I/O call of the store (SQLite style) for N = 1, 2, … until the operation
completes without reaching N.

Every store here runs on ``FaultyIO`` (``tests/walfaults.py``), passed as ``io=``: every
write/pwrite(v), fdatasync, fsync, fsync_dir, rename, unlink, truncate and open of the
store's own files goes through it. For each operation -- (a) small ``sync`` commits,
(b) batches of tokens + deletes + connections + events, (c) ``checkpoint()``, (d) a large
direct commit, (e) ``close()``, and (f) ``async`` commits with ``flush()`` -- and each kind
of call, the Nth call of that kind *counted from the start of the operation* raises EIO.

After each injected failure:

* the call that hit it raised the OSError as its named ``StorageError`` (``StorageIOError``
  for EIO: an ``NgStoreError`` that is also the ``OSError``, with the file's path), or a
  clear ``NgStoreError`` saying the store must be reopened (a failure inside an automatic
  checkpoint is reported by the next call); never a raw ``OSError`` or ``lmdb.Error``;
* the live store either refuses further writes with such an ``NgStoreError`` -- for a
  failure of the store's files, the same named leaf in state "stopped" (mandatory
  after a failed write/fdatasync/truncate of the log: fsyncgate), or is still consistent
  (``check().ok``) and a further batch is kept;
* after ``close()`` (which may raise) a reopen with the real file system passes
  ``check()``, holds every acknowledged batch, and holds the failing batch entirely or
  not at all: its state equals the reference state (the same batches on a healthy store)
  after exactly the acknowledged prefix, or that prefix plus the failing batch.
"""
from __future__ import annotations

import errno
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import make_tokens
from storefaults import FAST, big_mixed, describe, state_of, workload
from walfaults import FaultyIO, NoSyncIO

import ngstore
from ngstore.directory import Directory
from ngstore.errors import NgStoreError, StorageError, StoreClosedError, StoreState
from ngstore.fileio import DEFAULT_IO

REOPEN = re.compile(r"reopen|open it again", re.I)
#: what a store / log that stopped after an earlier I/O error says (nothing was written)
REFUSED = re.compile(r"stopped accepting writes|refuses writes")
KINDS = [("open", False), ("write", False), ("write", True), ("fdatasync", False),
         ("fsync", False), ("fsync_dir", False), ("rename", False), ("unlink", False),
         ("truncate", False)]
#: LMDB's two durability points go through the same seam: its fdatasync of data.mdb (run by
#: checkpoints) and its commits (pwrite of the pages, no fsync); FaultyIO fails them with what
#: py-lmdb raises for EIO.
LMDB_KINDS = ("lmdb_sync", "lmdb_commit")
PROBE_IDS = np.arange(900_000, 900_004, dtype=np.uint32)


@dataclass
class Action:
    label: str
    run: Callable            # run(store)
    batch: bool = True       # changes the data (a reference state follows it)


@dataclass
class Scenario:
    kwargs: dict
    prelude: list            # (Step, durability)
    actions: list[Action]
    must_hit: tuple          # kinds this operation must issue (so nothing tests nothing)
    ref: list = field(default_factory=list)


def _sync_puts() -> list[Action]:
    out = []
    for i in range(9):
        ids = np.arange(20) + 37 * i
        out.append(Action(f"put{i}", lambda s, ids=ids, i=i: s.put_tokens(
            make_tokens(ids, weight=np.float32(1 + i)), durability="sync")))
    return out


def _mixed_batches() -> list[Action]:
    steps = workload(14, seed=3)[6:14]  # every kind of change, mixed batches included
    return [Action(st.name, lambda s, st=st: st.run(s, "sync")) for st in steps]


def _async_then_flush() -> list[Action]:
    steps = workload(10, seed=5)[4:10]
    acts = []
    for j, st in enumerate(steps):
        acts.append(Action(st.name, lambda s, st=st, j=j: st.run(s, "async" if j % 2 else "none")))
        if j % 3 == 2:
            acts.append(Action(f"flush{j}", lambda s: s.flush(), batch=False))
    return acts


def _close(s) -> None:
    s.close()


SCENARIOS: dict[str, Scenario] = {
    # (a) small sync commits; small segments and checkpoint_bytes, and an applier that
    # runs at once, so the commits also rotate segments and make the applier run automatic
    # checkpoints (whose failures are reported later)
    "sync_commit": Scenario(dict(segment_bytes=2048, checkpoint_bytes=5000, apply_interval=1e-4),
                            [(st, "sync") for st in workload(4)], _sync_puts(),
                            ("open", "write", "fdatasync", "fsync", "fsync_dir", "rename",
                             "unlink", "truncate")),
    # (b) batches with tokens + deletes + connections + events
    "mixed_batch": Scenario(dict(segment_bytes=2048),
                            [(st, "sync") for st in workload(4, seed=3)], _mixed_batches(),
                            ("open", "write", "fdatasync", "fsync_dir", "truncate")),
    # (c) checkpoint: unsynced "none" batches first (the log must be synced) and several
    # segments to drop
    "checkpoint": Scenario(dict(segment_bytes=2048),
                           [(st, "none" if i >= 10 else "sync") for i, st in enumerate(workload(12))],
                           [Action("checkpoint", lambda s: s.checkpoint(), batch=False)],
                           ("open", "write", "fdatasync", "fsync", "fsync_dir", "rename", "unlink")),
    # (d) a large direct commit (after an unsynced batch), then a small one through the log
    "direct_commit": Scenario(dict(segment_bytes=2048, direct_threshold=64 << 10),
                              [(st, "none" if i == 7 else "sync") for i, st in enumerate(workload(8))],
                              [Action("direct", lambda s: big_mixed(0)(s, "sync")),
                               Action("after", lambda s: s.put_tokens(make_tokens([3, 4, 5], weight=0.75)))],
                              ("open", "write", "fdatasync", "fsync", "fsync_dir", "rename", "unlink")),
    # (e) close after async / none batches
    "close": Scenario(dict(segment_bytes=2048, flush_interval=3600.0),
                      [(st, ("sync", "async", "none")[i % 3]) for i, st in enumerate(workload(9))],
                      [Action("close", _close, batch=False)],
                      ("open", "write", "fdatasync", "fsync", "fsync_dir", "rename", "unlink")),
    # (f) async / none commits and explicit flushes
    "async_flush": Scenario(dict(segment_bytes=2048, flush_interval=3600.0),
                            [(st, "sync") for st in workload(4)], _async_then_flush(),
                            ("write", "fdatasync", "fsync_dir", "truncate")),
}


def _reference(name: str, tmp_path) -> list:
    """States of a healthy store: after the prelude, then after each batch action."""
    sc = SCENARIOS[name]
    if sc.ref:
        return sc.ref
    path = str(tmp_path / f"ref-{name}")
    s = ngstore.open(path, io=NoSyncIO(), **FAST, **sc.kwargs)
    try:
        for st, d in sc.prelude:
            st.run(s, d)
        ref = [state_of(s)]
        for a in sc.actions:
            if a.batch:
                a.run(s)
                ref.append(state_of(s))
    finally:
        s.close()
    sc.ref = ref
    return ref


def _strip_probe(state: tuple) -> tuple:
    tokens, conns, rconns, events, counters = state
    kept = tuple(t for t in tokens if t[0] < PROBE_IDS[0])
    n = len(tokens) - len(kept)
    c = list(counters)
    c[0] -= n
    c[1] -= n
    return kept, conns, rconns, events, tuple(c)


def _settle(s) -> None:
    """Waits for the applier to finish what the operation left it (applying the overlay,
    and a checkpoint that made due), so that a failure injected into that work has been
    noticed before the probe. ``stats()`` waits for the applier and raises nothing."""
    try:
        s.stats()
    except NgStoreError:
        pass


def _run_once(name: str, kind: str, partial: bool, n: int, tmp_path) -> tuple[bool, str]:
    """One run with the Nth ``kind`` call of the operation failing. Returns (fired, what)."""
    sc = SCENARIOS[name]
    ref = _reference(name, tmp_path)
    path = str(tmp_path / f"{name}-{kind}{'-p' if partial else ''}-{n}")
    io = FaultyIO(partial_write=partial, inner=NoSyncIO())
    s = ngstore.open(path, io=io, **FAST, **sc.kwargs)
    for st, d in sc.prelude:
        st.run(s, d)
    io.fail_on = {kind: io.counts[kind] + n}

    acked_batches = 0
    error: BaseException | None = None
    failing: Action | None = None
    for a in sc.actions:
        try:
            a.run(s)
        except Exception as exc:
            error, failing = exc, a
            break
        if a.batch:
            acked_batches += 1
    _settle(s)
    fired = bool(io.fired)
    io.fail_on = {}  # the operation is over: the probe and close run on a healthy FileIO
    probe_acked = False
    if not fired:
        assert error is None, f"{name}: {error!r} raised without an injected failure"
        s.close()
    else:
        fired_kind, fired_path = io.fired[0]
        if error is not None:
            assert (isinstance(error, StorageError) and error.errno == errno.EIO) or \
                (isinstance(error, NgStoreError) and REOPEN.search(str(error))), \
                f"{name}, {kind} #{n}: unclear error {error!r}"
        # the live store: refuses writes (fsyncgate) or is consistent and keeps writing
        # fsyncgate: after a failed write/fdatasync/truncate of the log, or a failed fdatasync
        # of data.mdb, a later "successful" sync proves nothing: no more writes
        must_refuse = ((fired_kind in ("write", "fdatasync", "truncate") and fired_path.endswith(".wal"))
                       or fired_kind == "lmdb_sync")
        try:
            s.put_tokens(make_tokens(PROBE_IDS, weight=0.5), durability="sync")
            probe_acked = True
        except StoreClosedError:
            assert name == "close" or (failing is not None and failing.label == "close")
        except NgStoreError as exc:
            if isinstance(exc, OSError):  # refused after an error of the store's files
                assert isinstance(exc, StorageError) and exc.state is StoreState.STOPPED, repr(exc)
                assert exc.outcome_known is True and exc.errno == errno.EIO, repr(exc)
            assert REOPEN.search(str(exc)), f"refusal without saying what to do: {exc}"
        if must_refuse:
            assert not probe_acked, f"{name}: store kept writing after a failed {fired_kind} of {fired_path}"
        if probe_acked:
            report = s.check()
            assert report.ok, str(report)
        try:
            s.close()
        except Exception:
            pass
    assert repr(s).endswith("closed>") and Directory(path, DEFAULT_IO).live_writer_pid() is None

    with ngstore.open(path, **FAST, **sc.kwargs) as r:
        report = r.check()
        assert report.ok, f"{name}, {kind} #{n}: {report}"
        got = state_of(r)
        # the reopened store is healthy
        r.put_tokens(make_tokens([PROBE_IDS[-1] + 1]))
    probe_present = any(t[0] in set(PROBE_IDS.tolist()) for t in got[0])
    assert probe_present == probe_acked, f"{name}, {kind} #{n}: probe acked={probe_acked} present={probe_present}"
    got = _strip_probe(got)
    allowed = [ref[acked_batches]]
    refused_upfront = isinstance(error, NgStoreError) and REFUSED.search(str(error))
    if failing is not None and failing.batch and not refused_upfront:
        allowed.append(ref[acked_batches + 1])  # the failing batch: whole or absent
    assert got in allowed, (
        f"{name}, {kind}{' (partial)' if partial else ''} #{n} ({io.fired}, {error!r}): recovered "
        f"{describe(got)}; acknowledged {acked_batches} batches = {describe(ref[acked_batches])}"
        + (f"; with the failing one = {describe(ref[acked_batches + 1])}" if len(allowed) > 1 else ""))
    shutil.rmtree(path, ignore_errors=True)
    return fired, ("present" if len(allowed) > 1 and got == allowed[1] else "absent")


def _loop(name: str, kinds, tmp_path, label: str) -> Counter:
    per_kind: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for kind, partial in kinds:
        n = 0
        while True:
            n += 1
            assert n < 200, f"{name}: {kind} still failing at N={n}"
            fired, outcome = _run_once(name, kind, partial, n, tmp_path)
            if not fired:
                break
            per_kind[kind + ("(short)" if partial else "")] += 1
            outcomes[outcome] += 1
    total = sum(per_kind.values())
    print(f"\n[store fail-nth{label}] {name}: {total} failure points "
          f"({', '.join(f'{k}={v}' for k, v in sorted(per_kind.items()))}); "
          f"failing batch afterwards: {dict(outcomes)}")
    return per_kind


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_failing_the_nth_call_keeps_every_acknowledged_batch_and_no_partial_one(name, tmp_path):
    per_kind = _loop(name, KINDS, tmp_path, "")
    for k in SCENARIOS[name].must_hit:
        assert per_kind[k] >= 1, f"{name}: no {k} call was ever failed (per kind: {dict(per_kind)})"
    assert sum(per_kind.values()) >= 8



@pytest.mark.parametrize("name", SCENARIOS)
def test_failing_the_nth_lmdb_sync_or_commit_keeps_every_acknowledged_batch(name, tmp_path):
    """LMDB's own durability points: its fdatasync of data.mdb at checkpoints and its
    commits. Same rules; a failed data.mdb sync is fsyncgate too."""
    per_kind = _loop(name, [(k, False) for k in LMDB_KINDS], tmp_path, " lmdb")
    assert sum(per_kind.values()) >= 1


def test_lmdb_io_errors_reach_the_caller_as_clear_ngstore_errors(tmp_path):
    """kv.py's essay: LMDB's exceptions are translated into ngstore's in one place. A failed
    LMDB commit or sync must reach the caller as an NgStoreError saying to reopen (or an
    OSError), not as a bare ``lmdb.Error``."""
    seen = {}
    # the applier commits LMDB after the put returned: the read that waits for it reports it
    for kind, action in (("lmdb_commit", lambda s: (s.put_tokens(make_tokens([1, 2])), s.get_tokens([1]))),
                         ("lmdb_sync", lambda s: s.checkpoint())):
        path = str(tmp_path / kind)
        io = FaultyIO(inner=NoSyncIO())
        s = ngstore.open(path, io=io, **FAST)
        io.fail_on = {kind: io.counts[kind] + 1}
        try:
            action(s)
        except Exception as exc:
            seen[kind] = exc
        finally:
            io.fail_on = {}
            try:
                s.close()
            except Exception:
                pass
    assert set(seen) == {"lmdb_commit", "lmdb_sync"}
    bad = {k: e for k, e in seen.items()
           if not (isinstance(e, StorageError) and e.errno == errno.EIO and REOPEN.search(str(e))
                   and str(e.filename).endswith("data.mdb"))}
    assert not bad, f"LMDB errors reach the caller unnamed: {bad!r}"
