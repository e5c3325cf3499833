"""``check()`` let LMDB's own errors escape: a damaged B-tree page made its cursor loops
raise ``lmdb.CorruptedError``, so ``ngstore check`` printed a traceback instead of a report;
and it never ran the reflex table's structural scan, so zeroed reflex pages passed as OK
while reflexes stopped answering. Each part of the check now runs on its own: damage it
can describe is a finding (file, database and key, offset, reason), and the other parts
still run; the reflex table is scanned in C."""
from __future__ import annotations

import os
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from conftest import make_tokens
from lmdbpages import F_BIGDATA, leaf_pages, page_size

import ngstore
from ngstore.connections import Connection
from ngstore.experience import new_events
from ngstore.layout import DB_REFLEXES, reflex_segment_key

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30)


def _store(path: str) -> None:
    with ngstore.open(path, chunk_slots=64, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(64 * 400)))  # 400 chunks of 4 KiB + 8: overflow values
        s.write_events(new_events(300))
        c = Connection(1, 2)
        c.pull_strength = 1.0
        c.confidence_raw = 230
        c.evidence_count = 20
        with s.batch() as b:
            b.put_reflexes(np.random.default_rng(0).uniform(-1, 1, (12, 8)).astype(np.float32),
                           np.concatenate([c.record] * 12))


def test_a_damaged_tokens_page_is_a_finding_and_the_rest_is_still_checked(tmp_path):
    path = str(tmp_path / "s")
    _store(path)
    data_path = os.path.join(path, "data.mdb")
    with open(data_path, "rb") as f:
        data = f.read()
    leaves = leaf_pages(data, key_size=4, node_flags=F_BIGDATA)  # the tokens database's leaves
    assert leaves
    ps = page_size(data)
    with open(data_path, "r+b") as f:  # the flags of one leaf: "not a leaf" to LMDB
        f.seek(leaves[len(leaves) // 2] * ps + 10)
        f.write(b"\x00\x00")
    with ngstore.open(path, readonly=True, **OPEN) as s:
        report = s.check()
        with pytest.raises(ngstore.CorruptionError, match="tokens"):  # not LMDB following the page
            s.get_token(5)
        with s.snapshot() as snap:
            assert len(snap.events.since(0)[1]) == 300  # the undamaged databases still read
    with pytest.raises(ngstore.CorruptionError, match="LMDB page damage in tokens"):
        ngstore.open(path, **OPEN)  # a writer must not write into a damaged tree
    assert not report.ok
    tokens = [f for f in report.findings if f.where and f.where.startswith("tokens")]
    assert tokens and tokens[0].file == "data.mdb" and tokens[0].reason, report
    assert report.facts["events"] == 300, report  # later sections ran
    assert report.facts["reflexes"] == 12, report
    cli = subprocess.run([sys.executable, "-m", "ngstore", "check", path], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert "PROBLEMS FOUND" in cli.stdout


def test_zeroed_reflex_pages_are_a_finding(tmp_path):
    path = str(tmp_path / "s")
    _store(path)
    env = lmdb.open(path, max_dbs=32, map_size=1 << 30)
    db = env.open_db(DB_REFLEXES)
    with env.begin(write=True, db=db) as txn:
        seg = bytearray(txn.get(reflex_segment_key(0)))
        seg[: len(seg) // 2] = bytes(len(seg) // 2)
        txn.put(reflex_segment_key(0), bytes(seg))
    env.close()
    # the segment's checksum (format.md §3.0) refuses a verifying open at once
    with pytest.raises(ngstore.CorruptionError, match="reflexes key 5300000000: checksum mismatch"):
        ngstore.open(path, readonly=True, verify="read", **OPEN)
    with ngstore.open(path, readonly=True, **OPEN) as s:  # verify="off", the default
        report = s.check()
    assert not report.ok
    assert any(f.where and f.where.startswith("reflexes") for f in report.findings), report
    structural = [f for f in report.findings if (f.where or "").startswith("reflexes") and "checksum" not in f.reason]
    assert structural, report  # and C's scan still runs over the zeroed records
