"""The stats page (docs/format.md §8.2): read byte by byte, torn copies refused, liveness from
the lock, and what the writer publishes."""
from __future__ import annotations

import fcntl
import math
import os
import struct
import zlib
from typing import Any

import pytest

import ngstore
from ngstore.obs.metrics import HISTOGRAMS
from ngstore.obs.statspage import PAGE_BYTES, PAGE_FILE, StatsPublisher, read_stats_page, writer_alive

HEAD = struct.Struct("<8sIIIIQqqIII")
ENTRY = struct.Struct("<40sB7xdd")


def _publisher(d: Any, values: dict[str, float], hists: dict[str, Any] | None = None) -> StatsPublisher:
    pub = StatsPublisher(str(d), lambda: (values, hists or {}), interval=60)
    pub.publish()
    return pub


def _raw(d: Any) -> bytes:
    with open(os.path.join(str(d), PAGE_FILE), "rb") as f:
        return f.read()


def test_the_page_is_laid_out_as_documented(tmp_path: Any) -> None:
    snap = ([(0.001, 2), (0.01, 3), (math.inf, 4)], 4, 0.5)
    pub = _publisher(tmp_path, {"commits_total": 7.0, "token_limit": 1000.0}, {"commit_seconds": snap})
    raw = _raw(tmp_path)
    assert len(raw) == PAGE_BYTES == 32768
    (magic, version, page_bytes, count, pid, gen, published, opened, flags, interval_ms,
     reserved) = HEAD.unpack_from(raw, 0)
    assert (magic, version, page_bytes, pid, flags, interval_ms, reserved) == (
        b"NGSTATS\0", 1, 32768, os.getpid(), 0, 60_000, 0)
    assert gen == 2 and published >= opened > 0
    assert count == 2 + 3 + 2
    entries = [ENTRY.unpack_from(raw, 64 + 64 * i) for i in range(count)]
    assert [(n.rstrip(b"\0"), k, le, v) for n, k, le, v in entries] == [
        (b"commits_total", 1, 0.0, 7.0), (b"token_limit", 1, 0.0, 1000.0),
        (b"commit_seconds", 2, 0.001, 2.0), (b"commit_seconds", 2, 0.01, 3.0),
        (b"commit_seconds", 2, math.inf, 4.0), (b"commit_seconds", 3, 0.0, 0.5),
        (b"commit_seconds", 4, 0.0, 4.0)]
    crc = zlib.crc32(raw[0:24] + raw[32:60] + raw[64:64 + 64 * count])
    assert struct.unpack_from("<I", raw, 60)[0] == crc
    got = read_stats_page(str(tmp_path))
    assert got is not None and got.values == {"commits_total": 7.0, "token_limit": 1000.0}
    assert got.histograms == {"commit_seconds": snap}
    assert got.alive is True and not got.closed
    pub.close()
    closed = read_stats_page(str(tmp_path))
    assert closed is not None and closed.closed and closed.alive is False
    assert closed.values["commits_total"] == 7.0 and closed.generation == 4


def test_a_copy_torn_between_two_publishes_is_refused(tmp_path: Any) -> None:
    pub = _publisher(tmp_path, {"commits_total": 7.0})
    pub.close()
    path = os.path.join(str(tmp_path), PAGE_FILE)
    with open(path, "r+b") as f:
        f.seek(64 + 56)
        f.write(struct.pack("<d", 8.0))           # a value changed, the CRC not (yet)
    with pytest.raises(ValueError, match="no consistent copy"):
        read_stats_page(str(tmp_path), attempts=3)
    with open(path, "r+b") as f:                 # mid-publish: an odd generation
        f.seek(64 + 56)
        f.write(struct.pack("<d", 7.0))
        f.seek(24)
        f.write(struct.pack("<Q", 5))
    with pytest.raises(ValueError, match="no consistent copy"):
        read_stats_page(str(tmp_path), attempts=3)


def test_a_file_that_is_not_a_page_is_refused_and_a_missing_one_is_none(tmp_path: Any) -> None:
    assert read_stats_page(str(tmp_path)) is None and writer_alive(str(tmp_path)) is None
    with open(os.path.join(str(tmp_path), PAGE_FILE), "wb") as f:
        f.write(b"x" * 100)
    with pytest.raises(ValueError, match="not a stats page"):
        read_stats_page(str(tmp_path))


def test_liveness_is_the_writers_lock(tmp_path: Any) -> None:
    pub = _publisher(tmp_path, {"a": 1.0})
    assert writer_alive(str(tmp_path)) is True
    # a probe never blocks another probe, and takes nothing from the writer
    fd = os.open(os.path.join(str(tmp_path), PAGE_FILE), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    pub.close()
    assert writer_alive(str(tmp_path)) is False
    again = _publisher(tmp_path, {"a": 2.0})            # a new writer continues the count
    got = read_stats_page(str(tmp_path))
    assert got is not None and got.alive and got.generation == 6 and got.values == {"a": 2.0}
    again.close()


def test_names_that_do_not_fit_are_left_out_not_truncated(tmp_path: Any, caplog: Any) -> None:
    pub = _publisher(tmp_path, {"ok": 1.0, "x" * 41: 2.0, "é": 3.0})
    got = read_stats_page(str(tmp_path))
    assert got is not None and got.values == {"ok": 1.0}
    assert "not published" in caplog.text
    pub.close()


def test_a_writer_publishes_every_number_of_stats_and_every_histogram(tmp_path: Any) -> None:
    path = str(tmp_path / "s")
    with ngstore.open(path, max_tokens=1234, max_bytes=10_000_000, memory_threshold=0.5,
                      tracing=False) as s:
        s.put_tokens(ngstore.Token.create_batch(10))
        s.obs.publish_stats()
        got = read_stats_page(path)
        assert got is not None and got.alive and got.pid == os.getpid()
        st = s.stats()
        for k, v in st.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "last_checkpoint_unix":
                assert got.values[k] == pytest.approx(float(v)), k
        assert got.values["token_limit"] == 1234 and got.values["memory_limit_bytes"] == 10_000_000
        assert got.values["memory_threshold"] == 0.5 and got.values["write_failed"] == 0
        assert got.values["blackbox_total_recorded"] >= 2 and "tracing_sample_rate" in got.values
        assert set(got.histograms) == set(HISTOGRAMS)
        cum, count, _total = got.histograms["commit_seconds"]
        assert count == s.obs.commit_seconds.count == 1 and cum[-1] == (math.inf, 1)
    after = read_stats_page(path)
    assert after is not None and after.closed and after.alive is False
    assert after.values["commits_total"] == 1
