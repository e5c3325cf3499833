"""Backups of a store whose writer is another process: while it commits, rotates and
checkpoints, and when it is killed with SIGKILL in the middle of a backup.

The writer child is tests/backupmodel.py: commit i is log position i, so every backup must
restore to exactly ``state_after(end_position)`` of the model, and pass check()."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from backupmodel import state_after

import ngstore
from ngstore import backup as ngbackup

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Small segments and checkpoints: the writer rotates and drops segments during backups.
BUSY = {"segment_bytes": 64 << 10, "checkpoint_bytes": 128 << 10, "durability": "async"}


def _writer(path, **opts):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, os.path.join(HERE, "backupmodel.py"), path, json.dumps(opts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(child, commits):
    for line in child.stdout:
        if line.strip() == "done" or (line.strip().isdigit() and int(line) >= commits):
            return
    raise AssertionError(f"the writer ended early: {child.stderr.read()}")


def _kill(child):
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    child.stderr.close()


def _check_restore(backup_dir, target, end, **kw):
    rr = ngbackup.restore(backup_dir, target, **kw)
    if kw.get("replay", True):
        assert rr.check_ok, rr.problems
    with ngstore.open(target, readonly=True) as s:
        assert s.check().ok
        assert s.stats()["applied_position"] == end
        with s.snapshot() as snap:
            assert snap.tokens.to_array().tobytes() == state_after(end).tobytes()
    return rr


def test_commits_in_the_log_but_not_yet_in_lmdb_are_replayed_from_the_backup(tmp_path):
    src = str(tmp_path / "src")
    child = _writer(src, commits=40, hold=True, apply_interval=3600.0, overlay_bytes=1 << 30)
    try:
        _wait_for(child, 40)
        r = ngbackup.backup(src, str(tmp_path / "b"))
    finally:
        _kill(child)
    assert r.end_position == 40 and r.applied_position < 40  # the base lags the log
    rr = _check_restore(str(tmp_path / "b"), str(tmp_path / "r1"), 40)
    assert rr.replayed_records == 40 - r.applied_position
    rr = ngbackup.restore(str(tmp_path / "b"), str(tmp_path / "r2"), replay=False)
    with ngstore.open(str(tmp_path / "r2")) as s:  # the first open replays
        assert s.recovery.replayed_records == 40 - r.applied_position and s.check().ok
    _check_restore(str(tmp_path / "b"), str(tmp_path / "r3"), 40)


def test_backups_taken_while_a_writer_commits_rotates_and_checkpoints_restore_exactly(tmp_path):
    """Checkpoints every 128 KiB of log drop segments between (and during) backups: an
    incremental backup then cannot continue and takes a full one, saying why."""
    src, dest = str(tmp_path / "src"), str(tmp_path / "b")
    child = _writer(src, **BUSY)
    reports = []
    try:
        _wait_for(child, 50)
        for k in range(6):
            reports.append(ngbackup.backup(src, dest, incremental=k % 3 != 0))
            _check_restore(dest, str(tmp_path / f"r{k}"), reports[-1].end_position)
            time.sleep(0.2)
    finally:
        _kill(child)
    ends = [r.end_position for r in reports]
    assert ends == sorted(ends) and ends[-1] > ends[0]
    for k, r in enumerate(reports):
        if k % 3:  # asked for an incremental one
            assert r.kind == "incremental" or "gone" in r.reason or "writer" in r.reason, r


def test_incremental_backups_follow_a_writer_across_segment_rotations(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "b")
    child = _writer(src, segment_bytes=64 << 10, checkpoint_bytes=1 << 30, checkpoint_interval=3600.0)
    reports = []
    try:
        _wait_for(child, 50)
        for k in range(4):
            reports.append(ngbackup.backup(src, dest, incremental=k > 0))
            time.sleep(0.3)
    finally:
        _kill(child)
    assert [r.kind for r in reports] == ["full"] + ["incremental"] * 3, [(r.kind, r.reason) for r in reports]
    m = ngbackup.read_manifest(dest)
    assert m is not None and len({p["segment"] for p in m["pieces"]}) > 1  # it crossed rotations
    _check_restore(dest, str(tmp_path / "r"), reports[-1].end_position)


@pytest.mark.parametrize("at", ["log", "base", "pieces"])
def test_a_writer_killed_mid_backup_leaves_a_backup_of_a_state_it_passed_through(tmp_path, at):
    src, dest = str(tmp_path / "src"), str(tmp_path / "b")
    child = _writer(src, **BUSY)
    try:
        _wait_for(child, 80)

        def kill_at(step):
            if step == at:
                _kill(child)

        r = ngbackup.backup(src, dest, on_step=kill_at)
    finally:
        _kill(child)
    _check_restore(dest, str(tmp_path / "r"), r.end_position)
    # the dead writer's store recovers, and holds at least what the backup holds
    with ngstore.open(src) as s:
        assert s.check().ok and s.stats()["applied_position"] >= r.end_position
    inc = ngbackup.backup(src, dest, incremental=True)
    assert inc.kind == "full" and inc.reason
