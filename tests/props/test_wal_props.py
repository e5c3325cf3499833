"""Property: any prefix truncation of a log's files recovers (tolerate-tail) to a prefix.

A power loss can only shorten what was written after the last sync, but byte-level
truncation of any file at any point is a superset of that, and the answer must always be
either a prefix of the records or a CorruptionError (when a sealed segment is shortened,
which no crash can do), never different or reordered records.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from walfaults import NoSyncIO

from ngstore import wal
from ngstore.errors import CorruptionError

IO = NoSyncIO()


@st.composite
def logs_and_cuts(draw):
    records = draw(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=25))
    segment_bytes = draw(st.integers(min_value=200, max_value=2000))
    prealloc = draw(st.sampled_from([0, 64, 1024]))
    sync_every = draw(st.integers(min_value=1, max_value=4))
    cut_last_only = draw(st.booleans())
    fraction = draw(st.floats(min_value=0.0, max_value=1.0))
    which = draw(st.integers(min_value=0, max_value=100))
    return records, segment_bytes, prealloc, sync_every, cut_last_only, fraction, which


@settings(max_examples=150, deadline=None)
@given(logs_and_cuts())
def test_any_prefix_truncation_of_any_segment_recovers_a_prefix_of_the_records(case):
    records, segment_bytes, prealloc, sync_every, cut_last_only, fraction, which = case
    root = tempfile.mkdtemp()
    try:
        d = os.path.join(root, "wal")
        log, _ = wal.Log.open(d, io=IO, segment_bytes=segment_bytes, preallocate_bytes=prealloc)
        for i, r in enumerate(records):
            log.append([(wal.BATCH, r)])
            if i % sync_every == 0:
                log.sync()
        log.close()
        names = sorted(os.listdir(d))
        name = names[-1] if cut_last_only else names[which % len(names)]
        path = os.path.join(d, name)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(int(size * fraction))
        try:
            log, rep = wal.Log.open(d, io=IO)
        except CorruptionError as e:
            assert name != names[-1], "shortening the newest segment is always a torn tail"
            assert e.path is not None and e.offset is not None
            return
        got = [r.payload for r in log.iter_records()]
        assert got == records[:len(got)]
        assert rep.last_position == len(got)
        # the repaired log is clean and continues where it ends
        assert log.append([(wal.BATCH, b"next")]) == [len(got) + 1]
        log.close()
        log, rep2 = wal.Log.open(d, io=IO, recovery="strict")
        assert rep2.clean and [r.payload for r in log.iter_records()] == [*got, b"next"]
        log.close()
    finally:
        shutil.rmtree(root)
