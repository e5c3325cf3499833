"""A data.mdb shorter than its meta page says (a copy cut short, a truncation) was mapped
by LMDB as it was, and the first read past the end killed the process with SIGBUS -- the
application, ``ngstore check``, everything. An open now compares the file's size with the
newest meta page's last page before LMDB maps it, and raises CorruptionError naming the
file and where it ends; the CLI prints one line. A damaged checkpoint file, which only a
power-loss recovery needs, no longer stops a normal open: a new checkpoint replaces it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import make_tokens

import ngstore
from ngstore.layout import CHECKPOINT_FILE, DATA_FILE

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None)

PROBE = textwrap.dedent("""
    import sys, ngstore
    try:
        s = ngstore.open(sys.argv[1], readonly=sys.argv[2] == "ro", observability=False,
                         crash_handlers=False)
        print("opened", len(s), sum(1 for _ in s.snapshot().tokens.column("id")))
    except ngstore.CorruptionError as exc:
        print("corruption", exc.path, exc.offset)
""")


def _store(tmp_path) -> str:
    path = str(tmp_path / "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(range(60_000)), durability="sync")
    return path


def test_a_truncated_data_file_is_refused_by_every_kind_of_open(tmp_path):
    path = _store(tmp_path)
    data = os.path.join(path, DATA_FILE)
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    for mode in ("rw", "ro"):
        r = subprocess.run([sys.executable, "-c", PROBE, path, mode], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{mode}: the process died ({r.returncode}): {r.stderr}"
        assert r.stdout.split() == ["corruption", os.path.realpath(data), str(size // 2)], r.stdout
    cli = subprocess.run([sys.executable, "-m", "ngstore", "check", path], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 1
    assert cli.stdout == ""
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.mdb is truncated" in lines[0] and "backup" in lines[0], cli.stderr


def test_a_data_file_cut_inside_its_meta_pages_is_refused(tmp_path):
    path = _store(tmp_path)
    with open(os.path.join(path, DATA_FILE), "r+b") as f:
        f.truncate(4096 + 100)
    r = subprocess.run([sys.executable, "-c", PROBE, path, "rw"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("corruption"), (r.returncode, r.stdout, r.stderr)


def test_a_damaged_checkpoint_file_is_replaced_on_a_normal_open(tmp_path):
    path = _store(tmp_path)
    ckpt = os.path.join(path, CHECKPOINT_FILE)
    with open(ckpt, "r+b") as f:
        f.seek(20)
        f.write(b"\xff" * 8)
    with ngstore.open(path, **OPEN) as s:
        assert s.recovery.checkpoint_problem is not None
        assert len(s) == 60_000
        assert s.check().ok
    with ngstore.open(path, **OPEN) as s:
        assert s.recovery.checkpoint_problem is None
        assert len(s) == 60_000
