"""A log opened again over an active segment an earlier process wrote took the written path
(a pwrite per record) for every small record until its write offset passed the zero runway
that process had left: about 8,000 one-token commits after every open, each about 2 µs
slower, since only a runway the log wrote itself is stored into through the mapping. The
open now writes that runway again (so its blocks are allocated, even where a copy of the
directory left holes) and maps it from the first record on."""
from __future__ import annotations

import os

from walfaults import mapped_paths

from ngstore import wal

B = wal.BATCH


def active_segment(directory) -> str:
    return os.path.join(directory, sorted(os.listdir(directory))[-1])


def test_a_reopened_log_maps_its_active_segment_from_the_first_small_record(tmp_path):
    d = str(tmp_path / "wal")
    log, _ = wal.Log.open(d, preallocate_bytes=64 << 10)
    for i in range(10):
        log.append_one(B, bytes([i]) * 50)
    log.sync()
    log.close()
    assert mapped_paths(d) == set()
    log, rep = wal.Log.open(d, recovery="strict", preallocate_bytes=64 << 10)
    assert rep.clean and rep.last_position == 10
    log.append_one(B, b"x" * 50)
    assert mapped_paths(d) == {os.path.realpath(active_segment(d))}
    assert [r.payload for r in log.iter_records(10)] == [b"x" * 50]
    log.close()


def test_a_runway_left_as_a_hole_is_allocated_and_zero_before_it_is_stored_into(tmp_path):
    d = str(tmp_path / "wal")
    log, _ = wal.Log.open(d, preallocate_bytes=64 << 10)
    data = [os.urandom(40) for _ in range(5)]
    for x in data:
        log.append_one(B, x)
    log.sync()
    end = log._write_off
    log.close()
    seg = active_segment(d)
    size = os.path.getsize(seg)
    assert size > end
    with open(seg, "r+b") as f:  # what a sparse copy makes of the runway: a hole
        f.truncate(end)
        f.truncate(size)
    holed = os.stat(seg).st_blocks * 512
    log, rep = wal.Log.open(d, recovery="strict", preallocate_bytes=64 << 10)
    assert rep.clean and rep.last_position == 5
    st = os.stat(seg)
    assert st.st_size == size
    assert st.st_blocks * 512 >= size > holed  # every byte of the runway has its blocks now
    with open(seg, "rb") as f:
        f.seek(end)
        assert f.read() == bytes(size - end)
    more = [os.urandom(60) for _ in range(100)]
    for x in more:
        log.append_one(B, x)
    assert mapped_paths(d) == {os.path.realpath(seg)}
    log.sync()
    log.close()
    log, rep = wal.Log.open(d, recovery="strict")
    assert rep.clean and [r.payload for r in log.iter_records()] == data + more
    log.close()
