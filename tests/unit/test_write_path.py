"""The log-first write path: commits land in the log and the overlay, LMDB follows in
groups; reads through the writer's handle see every commit at once, other processes
within the applier's interval or after ``flush()``; the overlay is bounded; quotas count
it (docs/design.md, "the write path")."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import make_tokens
from walfaults import _Delegating

import ngstore
from ngstore.connections import new_connections
from ngstore.experience import new_events

#: Nothing reaches LMDB unless something asks for it.
LAZY = dict(apply_interval=3600.0, observability=False, crash_handlers=False)


def _reader_sees(path: str, token_id: int) -> bool:
    """Whether a read-only handle in another process sees token ``token_id``."""
    code = textwrap.dedent(f"""
        import ngstore
        with ngstore.open({path!r}, readonly=True) as r:
            print(r.contains({token_id}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def test_a_commit_is_in_the_log_and_the_overlay_and_reaches_lmdb_only_when_applied(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **LAZY) as s:
        s.put_tokens(make_tokens([7]))
        assert s.stats()["overlay_entries"] == 0  # stats() brings LMDB up to date...
        s.put_tokens(make_tokens([8]))
        assert s.contains(8)                      # ...a point read does not need to
        assert not _reader_sees(path, 8)          # another process reads LMDB: not there yet
        s.flush()
        assert _reader_sees(path, 8)


def test_the_writer_sees_its_own_writes_in_every_read_before_the_applier_runs(tmp_path):
    with ngstore.open(str(tmp_path / "s"), **LAZY) as s:
        s.put_tokens(make_tokens(np.arange(100)))
        s.delete_tokens([5])
        s.put_tokens(make_tokens([6], weight=np.float32(0.5)))
        conns = new_connections(np.array([1, 2], np.uint32), np.array([3, 4], np.uint32), 0x50, now=1_700_000_000)
        s.put_connections(conns)
        first = s.write_events(new_events(3, event_type=2))
        # point reads: from the overlay
        assert s.get_token(6).weight == pytest.approx(0.5)
        assert 5 not in s and 6 in s
        with pytest.raises(ngstore.NotFoundError):
            s.get_token(5)
        # everything else: after the applier caught up, as the commits left it
        assert s.count() == 99 and len(s) == 99
        assert s.get_tokens([6, 99]).data["weight"][0] == pytest.approx(0.5)
        with s.snapshot() as snap:
            assert snap.tokens.count() == 99 and 5 not in snap.tokens
            assert snap.events.next_sequence() == first + 3
        assert len(s.neighbors(1)) == 1 and len(s.connections_between(4, 2)) == 1
        assert s.count_connections() == 2
        assert s.experience().total_written == first + 3
        st = s.stats()
        assert st["tokens_live"] == 99 and st["connections_live"] == 2 and st["events_live"] == 3
        assert s.check().ok


def test_events_are_in_the_experience_stream_as_soon_as_their_commit_returns(tmp_path):
    with ngstore.open(str(tmp_path / "s"), **LAZY) as s:
        stream = s.experience()
        first = s.write_events(new_events(4, event_type=5, event_id=np.arange(4) + 100))
        assert [int(stream.read(first + i).event_id) for i in range(4)] == [100, 101, 102, 103]


def test_a_reflex_commit_returns_once_lookups_see_it(tmp_path):
    from ngstore.connections import Connection

    with ngstore.open(str(tmp_path / "s"), **LAZY) as s:
        c = Connection(1, 2)
        c.pull_strength = 1.0
        c.confidence_raw = 240
        c.evidence_count = 50
        c.target_vector = [100, 0, 0, 0, 0, 0, 0, 0]
        state = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], np.float32)
        engine = s.intuition()
        engine.consolidate_reflex(state, c.record)
        assert engine.try_fast_path(state) is not None


def test_a_large_batch_is_applied_before_its_commit_returns(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **LAZY) as s:
        s.put_tokens(make_tokens(np.arange(10_000)))  # more than the overlay indexes
        assert _reader_sees(path, 9_999)


def test_a_read_only_handle_in_another_process_sees_a_commit_within_the_apply_interval(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, apply_interval=0.05) as s:
        s.put_tokens(make_tokens([1]))
        deadline = time.monotonic() + 60  # liveness only: the lag is measured in benchmarks
        while not _reader_sees(path, 1):
            assert time.monotonic() < deadline, "the applier never moved the commit into LMDB"
            time.sleep(0.05)


class StalledLMDB(_Delegating):
    """LMDB commits wait until ``go`` is set: an applier that cannot drain the overlay."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.go.set()

    def lmdb_commit(self, txn, kv) -> None:
        self.go.wait()
        super().lmdb_commit(txn, kv)


def test_a_full_overlay_makes_committers_wait_for_the_applier(tmp_path):
    io = StalledLMDB()
    batch = make_tokens(np.arange(10))  # 640 bytes of records, ~700 bytes logged
    with ngstore.open(str(tmp_path / "s"), io=io, overlay_bytes=4096, **LAZY) as s:
        io.go.clear()
        done: list[int] = []

        def commit_many() -> None:
            for i in range(40):
                s.put_tokens(batch)
                done.append(i)

        t = threading.Thread(target=commit_many)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(done) < 40:  # until the committer stops moving
            before = len(done)
            time.sleep(0.3)
            if len(done) == before:
                break
        # the overlay is full and the applier is stuck: the committer waits, bounded
        assert 3 <= len(done) < 40, len(done)
        io.go.set()
        t.join(60)
        assert not t.is_alive() and len(done) == 40
        assert s.count() == 10 and s.check().ok


def test_quotas_count_the_overlay(tmp_path):
    with ngstore.open(str(tmp_path / "s"), max_tokens=100, max_bytes=None, **LAZY) as s:
        s.put_tokens(make_tokens(np.arange(60)))
        with pytest.raises(ngstore.QuotaExceededError):
            s.put_tokens(make_tokens(np.arange(60, 120)))   # 120 live would pass 100
        s.put_tokens(make_tokens(np.arange(60)))           # overwrites add nothing
        s.put_tokens(make_tokens(np.arange(60, 100)))      # exactly 100
        assert s.count() == 100


def test_snapshots_never_see_part_of_a_batch_while_the_applier_runs(tmp_path):
    """Batch v writes tokens 0..99 with weight v: any snapshot shows one weight for all."""
    with ngstore.open(str(tmp_path / "s"), apply_interval=0.001, durability="none",
                      observability=False, crash_handlers=False) as s:
        s.put_tokens(make_tokens(np.arange(100), weight=np.float32(0)))
        stop = threading.Event()
        seen: set[float] = set()
        errors: list[str] = []

        def read() -> None:
            while not stop.is_set():
                with s.snapshot() as snap:
                    w = snap.tokens.column("weight")
                if len(set(w.tolist())) != 1:
                    errors.append(f"a snapshot held weights {sorted(set(w.tolist()))[:5]}")
                    return
                seen.add(float(w[0]))

        readers = [threading.Thread(target=read) for _ in range(2)]
        for r in readers:
            r.start()
        for v in range(1, 300):
            s.put_tokens(make_tokens(np.arange(100), weight=np.float32(v)))
        stop.set()
        for r in readers:
            r.join()
        assert not errors, errors[0]
        assert len(seen) >= 2  # the readers did run between applies


def test_a_read_only_process_never_sees_part_of_a_batch(tmp_path):
    path = str(tmp_path / "s")
    reader = textwrap.dedent(f"""
        import time, ngstore
        with ngstore.open({path!r}, readonly=True) as r:
            seen, t_end = set(), time.monotonic() + 2.0
            while time.monotonic() < t_end:
                with r.snapshot() as snap:
                    w = set(snap.tokens.column("weight").tolist())
                assert len(w) == 1, sorted(w)[:5]
                seen |= w
        print(len(seen))
    """)
    with ngstore.open(path, apply_interval=0.001, durability="none", observability=False,
                      crash_handlers=False) as s:
        s.put_tokens(make_tokens(np.arange(3000), weight=np.float32(0)))
        s.flush()
        proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        v = 0
        while proc.poll() is None:
            v += 1
            s.put_tokens(make_tokens(np.arange(3000), weight=np.float32(v)))
        out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert int(out) >= 2
