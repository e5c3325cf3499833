"""Backups and restores of a store in this process (docs/operations.md §6, format.md §9).

Each restore is checked against the model of tests/backupmodel.py: the restored store must
hold exactly the state after the backup's end position, byte for byte, and pass check()."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from backupmodel import commit, state_after

import ngstore
from ngstore import backup as ngbackup
from ngstore.fileio import FileIO

pytest.importorskip("fsspec")


def _open(path, **kw):
    kw.setdefault("segment_bytes", 64 << 10)
    return ngstore.open(path, **kw)


def _restored(backup_dir, tmp_path, name="restored", **kw):
    target = str(tmp_path / name)
    report = ngbackup.restore(backup_dir, target, **kw)
    return report, target


def _assert_state(path, end):
    with ngstore.open(path, readonly=True) as s:
        assert s.check().ok
        assert s.stats()["applied_position"] == end
        with s.snapshot() as snap:
            assert snap.tokens.to_array().tobytes() == state_after(end).tobytes()


def test_a_backup_restores_to_exactly_the_state_at_its_end_position(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src) as s:
        for i in range(1, 61):
            commit(s, i)
        r = ngbackup.backup(s, dest)
    assert (r.kind, r.end_position, r.generation, r.attempts) == ("full", 60, 1, 1)
    rr, target = _restored(dest, tmp_path)
    assert rr.check_ok and rr.end_position == 60 and rr.tokens == state_after(60).shape[0]
    _assert_state(target, 60)


def test_without_replay_the_first_open_replays_to_the_same_state(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src) as s:
        for i in range(1, 21):
            commit(s, i)
        ngbackup.backup(s, dest)
    rr, target = _restored(dest, tmp_path, replay=False)
    assert rr.check_ok is None and not os.path.exists(os.path.join(target, "checkpoint"))
    with ngstore.open(target) as s:
        assert s.check().ok
    _assert_state(target, 20)


def test_an_incremental_backup_ships_only_the_log_written_since_the_last(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src) as s:
        for i in range(1, 41):
            commit(s, i)
        full = ngbackup.backup(s, dest)
        base = os.path.join(dest, "g000001", "data.mdb")
        mtime = os.stat(base).st_mtime_ns
        for i in range(41, 101):
            commit(s, i)
        inc = ngbackup.backup(s, dest, incremental=True)
        again = ngbackup.backup(s, dest, incremental=True)
    assert (inc.kind, inc.reason, inc.end_position, inc.base_bytes) == ("incremental", "", 100, 0)
    assert os.stat(base).st_mtime_ns == mtime  # the base was not rewritten
    assert 0 < inc.log_bytes < full.bytes
    assert (again.kind, again.pieces, again.end_position) == ("incremental", 0, 100)
    m = ngbackup.read_manifest(dest)
    assert m is not None
    assert [h["kind"] for h in m["history"]] == ["full", "incremental", "incremental"]
    rr, target = _restored(dest, tmp_path)
    assert rr.check_ok
    _assert_state(target, 100)


def test_an_incremental_after_the_writer_reopened_is_a_full_backup_that_says_why(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src) as s:
        for i in range(1, 11):
            commit(s, i)
        ngbackup.backup(s, dest)
    with _open(src) as s:  # closing dropped the log; a new writer
        for i in range(11, 21):
            commit(s, i)
        r = ngbackup.backup(s, dest, incremental=True)
    assert r.kind == "full" and "writer" in r.reason and r.generation == 2
    assert sorted(os.listdir(dest)) == ["BACKUP.json", "g000002"]  # the old generation is gone
    _rr, target = _restored(dest, tmp_path)
    _assert_state(target, 20)


def test_a_batch_that_skipped_the_log_makes_the_next_incremental_a_full_one(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src, direct_threshold=1 << 16) as s:
        for i in range(1, 11):
            commit(s, i)
        ngbackup.backup(s, dest)
        big = state_after(10).copy()
        extra = np.zeros(2000, big.dtype)
        extra["id"] = np.arange(10_000, 12_000)
        s.put_tokens(extra)  # 128 KB sync batch: applied directly, no log record
        assert s.stats()["direct_commits_total"] == 1
        commit(s, 11)
        import time
        time.sleep(1.2)  # the stats page shows the direct commit
        r = ngbackup.backup(s, dest, incremental=True)
        want = s.snapshot().tokens.to_array()
    assert r.kind == "full" and "skipped the log" in r.reason
    _rr, target = _restored(dest, tmp_path)
    with ngstore.open(target, readonly=True) as t, t.snapshot() as snap:
        assert snap.tokens.to_array().tobytes() == want.tobytes()


class _DirectDuringLogRead(FileIO):
    """Runs ``action`` once, the first time the backup reads a log segment."""

    def __init__(self, action):
        self.action = action

    def pread(self, fd, n, offset):
        if self.action is not None and n > 40 and offset == 0:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if path.endswith(".wal") and "/src/" in path:
                act, self.action = self.action, None
                act()
        return super().pread(fd, n, offset)


def test_a_full_backup_starts_over_when_a_batch_skips_the_log_while_it_reads(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src, direct_threshold=1 << 16, apply_interval=3600.0, overlay_bytes=1 << 30) as s:
        for i in range(1, 11):
            commit(s, i)
        extra = np.zeros(2000, state_after(0).dtype)
        extra["id"] = np.arange(10_000, 12_000)

        def direct_then_log():
            s.put_tokens(extra)
            commit(s, 11)

        r = ngbackup.backup(s, dest, io=_DirectDuringLogRead(direct_then_log))
        want = s.snapshot().tokens.to_array()
    assert r.attempts == 2 and r.end_position == 11
    _rr, target = _restored(dest, tmp_path)
    with ngstore.open(target, readonly=True) as t, t.snapshot() as snap:
        assert snap.tokens.to_array().tobytes() == want.tobytes()


def test_a_damaged_backup_is_refused_before_a_store_is_made(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src) as s:
        for i in range(1, 6):
            commit(s, i)
        ngbackup.backup(s, dest)
    piece = os.path.join(dest, "g000001", "wal", sorted(os.listdir(os.path.join(dest, "g000001", "wal")))[0])
    with open(piece, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ngstore.CorruptionError, match="damaged"):
        ngbackup.restore(dest, str(tmp_path / "r"))
    assert not os.path.exists(os.path.join(tmp_path, "r", "NGSTORE"))


def test_a_newer_backup_format_is_refused(tmp_path):
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / "BACKUP.json").write_text(json.dumps({"format": "ngstore-backup", "version": 2}))
    with pytest.raises(ngstore.FormatVersionError):
        ngbackup.restore(str(dest), str(tmp_path / "r"))


def test_a_foreign_destination_and_a_non_empty_restore_target_are_refused(tmp_path):
    src = str(tmp_path / "src")
    with _open(src) as s:
        commit(s, 1)
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "file").write_text("x")
        with pytest.raises(ngstore.InvalidArgumentError):
            ngbackup.backup(s, str(tmp_path / "junk"))
        ngbackup.backup(s, str(tmp_path / "b"))
    with pytest.raises(ngstore.InvalidArgumentError):
        ngbackup.restore(str(tmp_path / "b"), str(tmp_path / "junk"))


def test_an_fsspec_url_is_a_destination_and_a_source(tmp_path):
    src = str(tmp_path / "src")
    url = f"memory://ngbackup-{os.getpid()}/b"
    with _open(src) as s:
        for i in range(1, 31):
            commit(s, i)
        ngbackup.backup(s, url)
        for i in range(31, 41):
            commit(s, i)
        inc = ngbackup.backup(s, url, incremental=True)
    assert inc.kind == "incremental"
    rr, target = _restored(url, tmp_path)
    assert rr.check_ok
    _assert_state(target, 40)


def test_a_path_source_is_opened_read_only_next_to_its_writer(tmp_path):
    src, dest = str(tmp_path / "src"), str(tmp_path / "backup")
    with _open(src) as s:
        for i in range(1, 16):
            commit(s, i)
        r = ngbackup.backup(src, dest)
    assert r.end_position == 15
    _rr, target = _restored(dest, tmp_path)
    _assert_state(target, 15)


def test_the_cli_backs_up_and_restores_with_one_line_reports(tmp_path):
    src = str(tmp_path / "src")
    with _open(src) as s:
        for i in range(1, 11):
            commit(s, i)

    def ng(*args):
        return subprocess.run([sys.executable, "-m", "ngstore", *args], cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=120)

    p = ng("backup", src, "b", "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"full backup of {src} to b: generation 1, restores to log position 10")
    p = ng("restore", "b", "r", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "check: OK" in p.stdout and "tokens now:" in p.stdout
    p = ng("restore", "b", "r", "--quiet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "(hint: " in p.stderr
    p = ng("backup", str(tmp_path / "nothing"), "b2")
    assert p.returncode == 3 and "does not exist" in p.stderr
    _assert_state(str(tmp_path / "r"), 10)
