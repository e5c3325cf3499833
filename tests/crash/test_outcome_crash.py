"""Known outcomes across a process crash (issue 13, item 9).

A child commits keyed batches with ``durability="sync"`` and is killed with SIGKILL from
inside the file seam at a chosen moment of one commit: right after the log's fdatasync
returned (the record is durable, the commit has not returned: the caller would see no
answer), or right before the log write (nothing of the record exists). The parent reopens
the store and asks ``outcome(key)``, then retries the batch, and counts the events -- a
second apply of a batch would append its events again.

A kill -9 loop then kills writers at random moments while they commit keyed batches and
retries every key afterwards: whatever was killed where, each key's events are in the store
exactly once, and ``check()`` finds the outcomes database rebuilt by replay consistent.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ngstore
from ngstore import Outcome

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)

#: The child: an IO whose armed log write or log fdatasync kills the process (``when``:
#: "after-sync" kills right after the fdatasync returned, "before-write" right before the
#: write). Batches k0..k2 commit normally; k3 is the one killed.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import ngstore
    from ngstore.experience import new_events
    from ngstore.fileio import FileIO

    path, when = sys.argv[1], sys.argv[2]

    class KillAtTheLog(FileIO):
        armed = False
        paths = {}

        def open(self, p, flags, mode=0o644):
            fd = super().open(p, flags, mode)
            self.paths[fd] = p
            return fd

        def _log(self, fd):
            return self.armed and self.paths.get(fd, "").endswith(".wal")

        def pwritev(self, fd, buffers, offset):
            if when == "before-write" and self._log(fd):
                os.kill(os.getpid(), signal.SIGKILL)
            super().pwritev(fd, buffers, offset)

        def fdatasync(self, fd):
            super().fdatasync(fd)
            if when == "after-sync" and self._log(fd):
                os.kill(os.getpid(), signal.SIGKILL)

    def events(n, step):
        return new_events(n, event_type=3, step=step, timestamp_us=step, event_id=np.arange(n) + 100 * step + 1)

    io = KillAtTheLog()
    s = ngstore.open(path, io=io, durability="sync", observability=False, crash_handlers=False,
                     max_tokens=None, max_bytes=None, map_size=1 << 28,
                     checkpoint_bytes=1 << 40, checkpoint_interval=1e9)
    for i in range(3):
        s.write_events(events(5, i), key=f"k{i}")
    print("committed k0..k2", flush=True)
    io.armed = True
    s.write_events(events(5, 3), key="k3")
    print("k3 returned", flush=True)
""")


def _run_child(path: str, when: str) -> str:
    child = subprocess.run([sys.executable, "-c", CHILD, path, when], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "committed k0..k2" in child.stdout and "k3 returned" not in child.stdout
    return child.stdout


def _events_of(s: ngstore.Store) -> list[int]:
    """The step of every stored event, in order (each batch's events carry its step)."""
    with s.snapshot() as snap:
        _first, rows = snap.events.since(0)
    return rows["step"].tolist()


def test_a_commit_killed_between_its_log_sync_and_its_return_is_committed_after_reopen(tmp_path):
    path = str(tmp_path / "store")
    _run_child(path, "after-sync")
    with ngstore.open(path, **OPEN) as s:
        assert s.recovery.replayed_records >= 1  # k3 came back from the log
        assert [s.outcome(f"k{i}") for i in range(4)] == [Outcome.COMMITTED] * 4
        assert _events_of(s) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
        from ngstore.experience import new_events

        retry = new_events(5, event_type=3, step=3, timestamp_us=3)
        assert s.write_events(retry, key="k3") == 15  # the original's first event: not applied again
        assert _events_of(s).count(3) == 5
        assert s.stats()["commits_already_committed_total"] == 1
        assert s.check().ok


def test_a_commit_killed_before_its_log_write_is_absent_and_not_committed(tmp_path):
    path = str(tmp_path / "store")
    _run_child(path, "before-write")
    with ngstore.open(path, **OPEN) as s:
        assert [s.outcome(f"k{i}") for i in range(3)] == [Outcome.COMMITTED] * 3
        assert s.outcome("k3") is Outcome.NOT_COMMITTED  # no key was ever forgotten here
        assert 3 not in _events_of(s)
        from ngstore.experience import new_events

        retry = new_events(5, event_type=3, step=3, timestamp_us=3)
        assert s.write_events(retry, key="k3") == 15  # applied now, once
        assert s.write_events(retry, key="k3") == 15
        assert _events_of(s).count(3) == 5 and s.outcome("k3") is Outcome.COMMITTED
        assert s.check().ok


#: The kill -9 loop's child: threads commit keyed batches of events (each batch's events
#: carry its number in ``step``), in every durability mode, and print each acknowledged key.
LOOP_CHILD = textwrap.dedent("""
    import sys, threading, numpy as np, ngstore
    from ngstore.experience import new_events
    path, start, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = ngstore.open(path, segment_bytes=64 << 10, checkpoint_bytes=128 << 10, apply_interval=interval,
                     max_tokens=None, max_bytes=None, remember_keys=%(remember)d, observability=False,
                     crash_handlers=False)
    print("open", flush=True)
    lock = threading.Lock()

    def work(t):
        rng = np.random.default_rng(start + t)
        j = 0
        while True:
            b = start + j * 4 + t
            j += 1
            n = int(rng.choice([1, 7, 60]))
            ev = new_events(n, event_type=1, step=b, timestamp_us=b, event_id=np.arange(n) + b * 1000 + 1)
            s.write_events(ev, key=f"batch-{b}", durability=("sync", "async", "none")[int(rng.integers(3))])
            with lock:
                sys.stdout.write(f"ack {b} {n}\\n"); sys.stdout.flush()

    for t in range(4):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
""") % {"remember": 1 << 20}
#: More keys than the loop commits: none is forgotten, so every answer can be checked.
REMEMBER = 1 << 20


@pytest.mark.timeout(600)
def test_kill9_keyed_retries_never_duplicate_and_replay_rebuilds_the_outcomes(tmp_path):
    from ngstore.experience import new_events

    path = str(tmp_path / "store")
    ngstore.open(path, **OPEN).close()
    rng = random.Random(20261201)
    start = 0
    total_acked = 0
    for _ in range(int(os.environ.get("NGSTORE_OUTCOME_KILLS", "10"))):
        interval = rng.choice([0.001, 0.05, 0.5])
        child = subprocess.Popen([sys.executable, "-c", LOOP_CHILD, path, str(start), str(interval)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.0))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        assert child.returncode == -signal.SIGKILL, err
        acked = {int(b): int(n) for _a, b, n in (line.split() for line in out.splitlines() if line.startswith("ack "))}
        total_acked += len(acked)
        with ngstore.open(path, **OPEN, remember_keys=REMEMBER) as s:
            stored = [b for b in _events_of(s) if b >= start]  # this child's batches
            counts = {b: stored.count(b) for b in set(stored)}
            for b, n in acked.items():
                assert s.outcome(f"batch-{b}") is Outcome.COMMITTED, f"acknowledged batch {b} is not committed"
                assert counts.get(b) == n, f"acknowledged batch {b}: {counts.get(b)} of its {n} events"
            for b in counts:  # committed without an answer (killed before it): known all the same
                assert s.outcome(f"batch-{b}") is Outcome.COMMITTED
            report = s.check()
            assert report.ok, str(report)
            # The caller retries everything it sent: applied again nowhere.
            for b, n in {**counts, **acked}.items():
                ev = new_events(n, event_type=1, step=b, timestamp_us=b, event_id=np.arange(n) + b * 1000 + 1)
                s.write_events(ev, key=f"batch-{b}", durability="none")
            again = [b for b in _events_of(s) if b >= start]
            assert {b: again.count(b) for b in set(again)} == counts, "a retried batch was applied twice"
        start = max([*counts, *acked, start]) + 100  # batches in flight at the kill never reuse a number
    assert total_acked > 0
