"""The ``ngstore`` command, run for real in subprocesses (``python -m ngstore``).

Exit codes (ngstore/cli.py): 0 ok, 1 unsound, 2 usage, 3 cannot open / locked, 4 failed.
Every error is one line on stderr with a hint; a traceback only with ``--debug``.
Every subprocess runs with ``cwd`` set to the test's temporary directory; stores whose
writer "died" are made by a child that commits and leaves with ``os._exit(0)``.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

import ngstore

TIMEOUT = 120

# A writer that commits ``n`` batches of 10 tokens (ids 0 .. 10n-1) and dies without closing.
# A huge checkpoint_bytes/interval keeps every record in the log.
DEAD_WRITER = textwrap.dedent("""
    import os, sys, ngstore
    from ngstore import Token
    path, n = sys.argv[1], int(sys.argv[2])
    s = ngstore.open(path, checkpoint_bytes=1 << 40, checkpoint_interval=1e9)
    for i in range(n):
        s.put_tokens(Token.create_batch(10, start=i * 10))
    os._exit(0)
""")

# A writer that holds the store open until its stdin closes.
LIVE_WRITER = textwrap.dedent("""
    import sys, ngstore
    s = ngstore.open(sys.argv[1])
    s.put_tokens(ngstore.Token.create_batch(10))
    print("ready", flush=True)
    sys.stdin.readline()
    s.close()
""")


def ng(*args: str, cwd: Any, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ngstore", *args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)


def dead_writer(path: str, cwd: Any, batches: int = 20) -> None:
    r = subprocess.run([sys.executable, "-c", DEAD_WRITER, path, str(batches)], cwd=str(cwd),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr


def wal_records(path: str, cwd: Any) -> list[dict[str, Any]]:
    r = ng("wal", "dump", path, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def flip_byte_in_record(path: str, cwd: Any, index: int) -> dict[str, Any]:
    """Flip one byte in the middle of the ``index``-th log record (CRC will not match)."""
    rec = wal_records(path, cwd)[index]
    f_path = rec["file"] if os.path.isabs(rec["file"]) else os.path.join(str(cwd), rec["file"])
    with open(f_path, "r+b") as f:
        off = rec["offset"] + rec["size"] // 2
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    return rec


def simulate_system_crash(path: str) -> None:
    """Make the store look as if the machine went down while it was open: a new boot id.
    (The writer then rolls LMDB back to the checkpoint and replays the log.)"""
    sp = os.path.join(path, "state")
    with open(sp) as f:
        st = json.load(f)
    assert st["clean"] is False
    st["boot_id"] = "a-boot-after-the-crash"
    with open(sp, "w") as f:
        json.dump(st, f)


@pytest.fixture
def sound_store(tmp_path) -> str:
    path = str(tmp_path / "store")
    with ngstore.open(path) as s:
        s.put_tokens(ngstore.Token.create_batch(1000))
        s.delete_tokens([5, 6, 7])
    return path


# ------------------------------------------------------------------------------ stress

def test_stress_prints_the_table_and_the_memory_table(tmp_path):
    r = ng("stress", "--tokens", "20000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "20,000 tokens in a real store" in out
    for row in ("Create (single)", "Create (batch)", "Clone", "Read (sequential)", "Read (random)",
                "Get one token", "Durable ingest", "Column scan", "Durable commit (sync)",
                "Commit (async)", "Group commit, 8 threads", "Reflex lookup (batch)",
                "Reflex lookup (single)", "Analysis cycle", "Get one connection", "Reopen"):
        assert f"| {row} |" in out, row
    assert "| Memory | ngstore | the original claimed |" in out
    assert "20,000 tokens on disk after ingest" in out
    assert "the store after the whole stress" in out
    # no PATH: the temporary store is removed, nothing is left in cwd
    assert os.listdir(tmp_path) == []


def test_stress_json_with_a_path_leaves_a_store_info_and_check_accept(tmp_path):
    path = str(tmp_path / "st")
    r = ng("stress", path, "--tokens", "20000", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["tokens"] == 20000 and res["path"] == path
    for key in ("create_single_ns", "create_batch_ms", "clone_ns", "read_sequential_ns",
                "read_random_ns", "ingest_ns", "column_scan_ns", "sync_commit_p50_us",
                "async_commit_p50_us", "group_commit_ratio", "reflex_batch_ns", "analyze_s",
                "reopen_ms", "disk_bytes", "disk_bytes_per_token"):
        assert isinstance(res[key], (int, float)) and res[key] >= 0, key
    assert res["tokens_stored"] >= 20000
    info = ng("info", path, "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["tokens_live"] == res["tokens_stored"]
    chk = ng("check", path, cwd=tmp_path)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    assert "check: OK" in chk.stdout


def test_stress_shows_plain_step_lines_when_stderr_is_not_a_terminal(tmp_path):
    r = ng("stress", "--tokens", "2000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "stress: step 1/19: create single" and lines[-1] == "stress: step 19/19: memory"
    assert len(lines) == 19 and "\r" not in r.stderr and "%|" not in r.stderr   # no tqdm bar
    quiet = ng("stress", "--tokens", "2000", "--quiet", "--json", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["tokens"] == 2000


def test_progress_is_a_tqdm_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    import pty

    path = str(tmp_path / "s")
    dead_writer(path, tmp_path, batches=3)
    plain = ng("recover", path, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stderr.splitlines()
    assert [x for x in lines if "step" in x] == ["recover: step 1/2: open and replay the log",
                                                 "recover: step 2/2: check"]
    # the library's warnings (the dead writer; what recovery replayed), plain lines of the command
    others = [x for x in lines if "step" not in x]
    assert others and all(x.startswith("ngstore: WARNING: ") for x in others)
    assert any("ended without closing" in x for x in others)
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a real size
    try:
        r = subprocess.run([sys.executable, "-m", "ngstore", "stress", "--tokens", "2000", "--quiet"],
                           cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=slave, text=True,
                           timeout=TIMEOUT)
        quiet_out = os.read(master, 65536) if _readable(master) else b""
        r = subprocess.run([sys.executable, "-m", "ngstore", "stress", "--tokens", "2000"],
                           cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=slave, text=True,
                           timeout=TIMEOUT)
        assert r.returncode == 0
        out = b""
        while _readable(master):
            out += os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
    assert quiet_out == b""
    assert b"stress:" in out and b"%|" in out and b"\r" in out, out[:300]
    assert b"step 1/19" not in out                      # a bar, not lines


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0.2)[0])


def test_stress_scales_its_limits_to_any_token_count():
    from ngstore.cli import stress_limits

    for n in (1, 20_000, 10_000_000, 13_000_000, 1 << 32):
        max_tokens, max_bytes = stress_limits(n)
        assert max_tokens >= n + 2_000 and max_tokens >= 10_000_000
        # what the run stores, against the Guardian's refusal point (80 % of max_bytes)
        stored = 64 * (n + 2_000) + 128 * 100_000 + 128 * min(n, 100_000)
        assert stored <= 0.8 * max_bytes / 1.5 and max_bytes >= 1_024_000_000


def test_stress_refuses_a_store_held_by_a_writer_before_doing_any_work(tmp_path):
    path = str(tmp_path / "s")
    child = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, path], cwd=str(tmp_path),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        before = sorted(os.listdir(path))
        r = ng("stress", path, "--tokens", "1000", cwd=tmp_path)
        assert r.returncode == 3, r.stderr
        assert r.stderr.splitlines()[-1].startswith(f"ngstore: {path} is held by a live writer (pid {child.pid})")
        assert "step " not in r.stderr                    # refused before the first step
        assert sorted(os.listdir(path)) == before
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0


# ------------------------------------------------------------------------------ info / check

def test_info_shows_counts_sizes_and_format_version(tmp_path, sound_store):
    r = ng("info", sound_store, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"format version: {ngstore.layout.FORMAT_VERSION}" in r.stdout
    assert "tokens:         997 (chunks of 1024 ids)" in r.stdout
    assert "LMDB map:" in r.stdout and "log:" in r.stdout
    j = ng("info", sound_store, "--json", cwd=tmp_path)
    assert j.returncode == 0
    st = json.loads(j.stdout)
    assert st["tokens_live"] == 997 and st["tokens_deleted_total"] == 3
    assert st["format_version"] == ngstore.layout.FORMAT_VERSION and st["readonly"] is True
    assert st["map_used_bytes"] > 0 and st["path"] == os.path.realpath(sound_store)


def test_check_is_0_on_a_sound_store_and_1_on_a_corrupt_one(tmp_path, sound_store):
    import lmdb

    r = ng("check", sound_store, cwd=tmp_path)
    assert r.returncode == 0 and "check: OK" in r.stdout
    env = lmdb.open(sound_store, max_dbs=8)
    db = env.open_db(b"tokens")
    with env.begin(write=True, db=db) as txn:
        v = bytearray(txn.get((0).to_bytes(4, "big")))
        v[64 + 48] = 77  # slot 1's id field
        txn.put((0).to_bytes(4, "big"), bytes(v))
    env.close()
    r = ng("check", sound_store, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "check: PROBLEMS FOUND" in r.stdout
    problems = [x for x in r.stdout.splitlines() if "problem:" in x]
    assert any("tokens key 00000000): checksum mismatch" in x for x in problems), problems
    line = next(x for x in problems if "slot 1 holds id" in x)  # the structural checks still run
    assert "data.mdb [tokens chunk 0] at offset " in line and "slot 1 holds id 77, expected 1" in line, line
    offset = int(line.split(" at offset ")[1].split(":")[0])
    with open(os.path.join(sound_store, "data.mdb"), "rb") as f:  # the offset names the damaged byte
        f.seek(offset)
        assert f.read(1) == bytes([77])


# ------------------------------------------------------------------------------ wal

def test_wal_verify_is_0_on_a_sound_log_and_1_after_mid_log_corruption(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    r = ng("wal", "verify", path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("log: SOUND; 20 records, positions 1..20, 1 segment, ")
    rec = flip_byte_in_record(path, tmp_path, 10)  # position 11 of 20
    assert rec["position"] == 11
    r = ng("wal", "verify", path, cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    j = json.loads(ng("wal", "verify", path, "--json", cwd=tmp_path).stdout)
    assert j["sound"] is False and j["records"] == 19
    (p,) = j["problems"]
    assert p["kind"] == "corruption" and p["offset"] == rec["offset"]
    assert p["lost"] == [11, 11] and p["end"] == rec["offset"] + rec["size"]


def test_wal_dump_json_lists_every_record_with_its_position(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path, batches=7)
    rows = wal_records(path, tmp_path)
    assert [r["position"] for r in rows] == list(range(1, 8))
    offs = [r["offset"] for r in rows]
    assert offs == sorted(offs) and all(a["offset"] + a["size"] == b["offset"]
                                        for a, b in itertools.pairwise(rows))
    assert all(r["type"] == 1 and r["raw_size"] > 0 for r in rows)


def test_wal_dump_text_lists_every_record(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path, batches=7)
    r = ng("wal", "dump", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "7 record(s)" in r.stdout and "0000000000000001.wal@40" in r.stdout


def test_recover_after_a_process_crash_keeps_everything(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    r = ng("recover", path, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # The writer died before the applier moved its last commits into LMDB: recovery
    # replays them from the log, and every acknowledged batch is there.
    assert f"recovered {path} (mode tolerate-tail)" in r.stdout
    assert "log record" in r.stdout and "positions -.." not in r.stdout
    assert "tokens now: 200" in r.stdout and "check: OK" in r.stdout
    assert ng("check", path, cwd=tmp_path).returncode == 0


def test_recover_after_a_system_crash_rolls_back_replays_and_drops_a_torn_tail(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    flip_byte_in_record(path, tmp_path, -1)  # the last record (position 20): a torn tail
    simulate_system_crash(path)
    v = ng("wal", "verify", path, cwd=tmp_path)
    assert v.returncode == 0, v.stdout  # a torn tail is repairable, not unsound
    assert "torn-tail" in v.stdout
    r = ng("recover", path, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "LMDB rolled back to checkpoint transaction" in r.stdout
    assert "replayed 19 log record(s): positions 1..19" in r.stdout
    assert "torn tail dropped" in r.stdout and "checksum mismatch" in r.stdout
    assert "tokens now: 190" in r.stdout and "check: OK" in r.stdout
    assert ng("wal", "verify", path, cwd=tmp_path).returncode == 0
    info = json.loads(ng("info", path, "--json", cwd=tmp_path).stdout)
    assert info["tokens_live"] == 190


def test_recover_strict_refuses_a_torn_tail(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    flip_byte_in_record(path, tmp_path, -1)
    r = ng("recover", path, "--mode", "strict", "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "recovery refused" in r.stderr and "torn tail" in r.stderr
    assert "--mode salvage" in r.stderr
    # the default mode then repairs it
    r = ng("recover", path, "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and "check: OK" in r.stdout


def test_recover_default_refuses_mid_log_corruption_and_salvage_reports_the_skipped_range(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    rec = flip_byte_in_record(path, tmp_path, 10)  # position 11, valid records after it
    simulate_system_crash(path)  # so the log must really be replayed
    r = ng("recover", path, "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "recovery refused" in r.stderr and "not a torn tail" in r.stderr
    r = ng("recover", path, "--mode", "salvage", "--quiet", cwd=tmp_path)
    # salvage skips the damaged record, reports it, and exits with the check's verdict (0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(mode salvage)" in r.stdout
    assert f"at {rec['offset']}..{rec['offset'] + rec['size']}" in r.stdout
    assert "positions 11..11 lost" in r.stdout
    assert "tokens now: 190" in r.stdout and "check: OK" in r.stdout
    with ngstore.open(path, readonly=True) as s, s.snapshot() as snap:
        ids = snap.tokens.ids().tolist()
    assert 100 not in ids and 109 not in ids and 99 in ids and 110 in ids  # batch 11 is gone


def test_read_only_tools_refuse_a_store_that_needs_recovery_after_a_system_crash(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    simulate_system_crash(path)
    for cmd in ("info", "check"):
        r = ng(cmd, path, cwd=tmp_path)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "needs recovery" in r.stderr and "ngstore recover" in r.stderr
    r = ng("recover", path, "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and "replayed 20 log record(s): positions 1..20" in r.stdout
    assert "tokens now: 200" in r.stdout
    assert ng("info", path, cwd=tmp_path).returncode == 0


def test_a_refused_recovery_still_marks_the_store_as_needing_recovery(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    flip_byte_in_record(path, tmp_path, -1)
    simulate_system_crash(path)
    before = ng("info", path, cwd=tmp_path)
    assert before.returncode == 3 and "needs recovery" in before.stderr
    assert ng("recover", path, "--mode", "strict", "--quiet", cwd=tmp_path).returncode == 1
    after = ng("info", path, cwd=tmp_path)
    assert after.returncode == 3 and "needs recovery" in after.stderr, after.stdout


def test_checkpoint_shrinks_the_log(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    assert len(wal_records(path, tmp_path)) == 20
    r = ng("checkpoint", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "applied position 20" in r.stdout
    assert wal_records(path, tmp_path) == []
    v = ng("wal", "verify", path, "--json", cwd=tmp_path)
    j = json.loads(v.stdout)
    assert j["records"] == 0 and j["bytes"] < 100
    assert ng("check", path, cwd=tmp_path).returncode == 0


def test_checkpoint_reports_the_shrink(tmp_path):
    path = str(tmp_path / "s")
    dead_writer(path, tmp_path)
    r = ng("checkpoint", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "(20 records) -> 40 bytes (0 records)" in r.stdout, r.stdout
    v = ng("wal", "verify", path, cwd=tmp_path)
    # an empty log reads as empty, not as the range 21..20
    assert v.stdout.startswith("log: SOUND; 0 records, none (the next record will be position 21), "
                               "1 segment, 40 bytes"), v.stdout


# ------------------------------------------------------------------------------ locking / usage

def test_offline_tools_refuse_a_live_writer_with_exit_3_naming_its_pid(tmp_path):
    path = str(tmp_path / "s")
    child = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, path], cwd=str(tmp_path),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        for cmd in (["wal", "verify"], ["wal", "dump"], ["wal", "dump", "--json"], ["recover"],
                    ["recover", "--mode", "salvage"], ["checkpoint"]):
            args = cmd[:2] if cmd[0] == "wal" else cmd[:1]
            r = ng(*args, path, *cmd[len(args):], cwd=tmp_path)
            assert r.returncode == 3, (cmd, r.stdout, r.stderr)
            assert f"held by a live writer (pid {child.pid})" in r.stderr, cmd
        # read-only tools may run next to a writer (LMDB readers)
        assert ng("info", path, cwd=tmp_path).returncode == 0
        assert ng("check", path, cwd=tmp_path).returncode == 0
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    assert ng("wal", "verify", path, cwd=tmp_path).returncode == 0  # writer gone


# Bad inputs, each: (arguments, exit status, a piece of the one line it must print).
# In the arguments, FILE is a regular file, FOREIGN a non-empty directory that is not a store,
# MISSING a path that does not exist, STORE a sound store, BUSY a port something listens on.
BAD_INPUTS = [
    ([], 2, "no command given"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
    (["info"], 2, "the following arguments are required: PATH"),
    (["wal"], 2, "which one? `verify` or `dump`"),
    (["wal", "nope", "x"], 2, "invalid choice: 'nope'"),
    (["recover", "x", "--mode", "bad"], 2, "invalid choice: 'bad'"),
    (["stress", "--tokens", "abc"], 2, "not an integer: 'abc'"),
    (["stress", "--tokens", "0"], 2, "must be at least 1, got 0"),
    (["stress", "--tokens", "-5"], 2, "must be at least 1, got -5"),
    (["stress", "--tokens", "99999999999"], 2, "at most 4,294,967,296 tokens"),
    (["stress", "FILE"], 2, "is a file, not a store directory"),
    (["stress", "FOREIGN", "--tokens", "100"], 3, "is a directory that is not an ngstore store"),
    (["stress", "--bogus-option"], 2, "unrecognized arguments: --bogus-option"),
    (["info", "MISSING"], 3, "MISSING does not exist"),
    (["info", "FILE"], 3, "is a file, not a store directory"),
    (["check", "FOREIGN"], 3, "not an ngstore store"),
    (["wal", "verify", "FILE"], 3, "is a file, not an ngstore store"),
    (["wal", "dump", "MISSING"], 3, "does not exist"),
    (["recover", "FOREIGN"], 3, "not an ngstore store"),
    (["checkpoint", "MISSING"], 3, "does not exist"),
    (["serve", "STORE", "--port", "99999"], 2, "a port is 0..65535, got 99999"),
    (["serve", "STORE", "--port", "notaport"], 2, "not a port number: 'notaport'"),
    (["serve", "STORE", "--host", "999.1.1.1", "--port", "0"], 2, "the host '999.1.1.1' does not resolve"),
    (["serve", "STORE", "--port", "BUSY"], 4, "the port is already in use"),
    (["serve", "FILE"], 2, "is a file, not a store directory"),
    (["blackbox", "STORE", "--show", "nope"], 2, "no black-box file 'nope'"),
    (["blackbox", "MISSING"], 3, "does not exist"),
    (["blackbox", "STORE", "--events", "many"], 2, "invalid int value: 'many'"),
]


@pytest.mark.parametrize("args, code, says", BAD_INPUTS, ids=[" ".join(a) or "(nothing)" for a, _, _ in BAD_INPUTS])
def test_a_bad_input_is_one_line_with_a_hint_and_no_traceback(tmp_path, sound_store, args, code, says):
    (tmp_path / "FILE").write_text("not a store")
    (tmp_path / "FOREIGN").mkdir()
    (tmp_path / "FOREIGN" / "notes.txt").write_text("hello")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    subst = {"STORE": sound_store, "BUSY": str(busy.getsockname()[1])}
    try:
        r = ng(*[subst.get(a, a) for a in args], cwd=tmp_path, timeout=60)
    finally:
        busy.close()
    assert r.returncode == code, (args, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ngstore") and says in lines[0], lines[0]
    assert "(hint: " in lines[0] and lines[0].endswith(")"), lines[0]
    assert "Traceback" not in r.stderr and "walcmd" not in r.stderr and "usage:" not in r.stderr
    assert not (tmp_path / "MISSING").exists()           # nothing was created


def test_debug_shows_the_traceback_of_the_same_error(tmp_path):
    r = ng("--debug", "info", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback (most recent call last)" in r.stderr
    r = ng("info", str(tmp_path / "nothing"), "--debug", cwd=tmp_path)   # after the command too
    assert "Traceback (most recent call last)" in r.stderr


def test_version_and_python_dash_m(tmp_path):
    for argv in ([sys.executable, "-m", "ngstore", "--version"],
                 [os.path.join(os.path.dirname(sys.executable), "ngstore"), "--version"]):
        r = subprocess.run(argv, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        fmt = ngstore.layout.FORMAT_VERSION
        assert r.stdout.startswith(f"ngstore {ngstore.__version__} (store format {fmt}; Python ")


def test_every_argument_has_help_and_help_shows_its_default():
    import argparse

    from ngstore.cli import build_parser

    def parsers(p: argparse.ArgumentParser, name: str = "ngstore"):
        yield name, p
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for sub, sp in act.choices.items():
                    yield from parsers(sp, f"{name} {sub}")

    seen = 0
    for name, p in parsers(build_parser()):
        text = p.format_help()
        assert p.description or name == "ngstore", name
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                continue
            assert act.help, (name, act.dest)
            seen += 1
            meaningful = act.default not in (None, False, argparse.SUPPRESS)
            if meaningful and act.option_strings:
                assert f"(default: {act.default})" in " ".join(text.split()), (name, act.dest)
    assert seen > 30
    stress_help = " ".join(build_parser()._subparsers._group_actions[0].choices["stress"].format_help().split())
    assert "(default: 1000000)" in stress_help and "(default: a temporary directory" in stress_help


@pytest.mark.parametrize("cmd", [["info"], ["check"], ["wal", "verify"], ["wal", "dump"],
                                 ["recover"], ["checkpoint"]])
@pytest.mark.parametrize("what", ["missing", "empty", "other"])
def test_a_path_that_is_not_a_store_exits_3(tmp_path, cmd, what):
    path = tmp_path / "x"
    if what == "empty":
        path.mkdir()
    elif what == "other":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    r = ng(*cmd, str(path), cwd=tmp_path)
    assert r.returncode == 3, (cmd, r.stdout, r.stderr)
    assert "not an ngstore store" in r.stderr or "does not exist" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    if what == "missing":
        assert not path.exists()  # nothing was created


# ------------------------------------------------------------------------------ blackbox

def test_blackbox_shows_the_ring_and_the_dumps_and_the_latest(tmp_path):
    path = str(tmp_path / "s")
    r = ng("blackbox", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0 and "no black-box ring" in r.stdout and "no black-box dumps" in r.stdout
    none = ng("blackbox", str(tmp_path), "--show", "latest", cwd=tmp_path)
    assert none.returncode == 1 and "no black-box dumps and no ring" in none.stderr
    child = textwrap.dedent("""
        import sys, ngstore
        s = ngstore.open(sys.argv[1])
        s.put_tokens(ngstore.Token.create_batch(5))
        s.flush()               # the commit reaches LMDB: an "apply" event
        s.get_token(12345)      # an unhandled NotFoundError: the store's business, so a dump
    """)
    c = subprocess.run([sys.executable, "-c", child, path], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert c.returncode == 1 and "NotFoundError" in c.stderr
    r = ng("blackbox", path, cwd=tmp_path)
    assert r.returncode == 0
    assert "ended without closing the store" in r.stdout and "1 dump(s)" in r.stdout
    assert "unhandled NotFoundError" in r.stdout
    (dump,) = [n for n in os.listdir(path) if n.startswith("blackbox-")]
    doc = json.loads(ng("blackbox", path, "--show", dump, cwd=tmp_path).stdout)
    assert doc["format"] == "ngstore-blackbox/1" and doc["reason"] == "unhandled NotFoundError"
    assert [e["event_type"] for e in doc["events"]][-3:] == ["open", "apply", "error"]
    assert doc["exception"]["type"] == "NotFoundError"
    ring = json.loads(ng("blackbox", path, "--show", "ring", cwd=tmp_path).stdout)
    assert [e["event_type"] for e in ring["events"]][-3:] == ["open", "apply", "error"]
    assert ring["ring"]["state"] == "open" and ring["reason"].startswith("ring: writer pid ")
    latest = json.loads(ng("blackbox", path, "--show", "latest", cwd=tmp_path).stdout)
    assert latest["exception"]["type"] == "NotFoundError"  # the dump: made after the last event
    assert latest["events"] == ring["events"]
    listing = json.loads(ng("blackbox", path, "--json", cwd=tmp_path).stdout)
    assert listing["ring"]["events"] == ring["events"] and len(listing["dumps"]) == 1


# ------------------------------------------------------------------------------ serve

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _metric(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    raise KeyError(name)


def test_serve_answers_health_metrics_and_ready_and_follows_the_writer(tmp_path, sound_store):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ngstore", "serve", sound_store,
                             "--port", str(port)], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "sidecar did not come up in 20 s"
            time.sleep(0.1)
        deadline = time.monotonic() + 20
        while True:  # the store is opened right after the server starts
            code, body = _get(base + "/ready")
            if code == 200:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        ready = json.loads(body)
        assert ready["status"] == "ready" and ready["checks"]["store_open"]["ok"]
        code, text = _get(base + "/metrics")
        assert code == 200
        text_s = text.decode()
        assert _metric(text_s, "neurograph_tokens_active") == 997
        assert _metric(text_s, "neurograph_store_readonly") == 1
        # a writer next to the read-only sidecar: the sidecar follows it
        with ngstore.open(sound_store) as w:
            w.put_tokens(ngstore.Token.create_batch(10, start=5000))
            w.flush()  # applied to LMDB, where another process sees it
            text_s = _get(base + "/metrics")[1].decode()
            assert _metric(text_s, "neurograph_tokens_active") == 1007
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("serving" in d["message"] and d.get("store_path") == sound_store for d in logs)
