"""After a salvage that skipped damage, a log whose active segment was an intact empty one
(a rotation just before the crash) reopened that segment without taking its zero runway as
its own: every small record then took the written path (a pwrite per record) until the
segment rotated. The salvage now writes that runway again and maps it, as a clean open
does, and the records stored through the mapping read back after the next open."""
from __future__ import annotations

import os

from walfaults import mapped_paths

from ngstore import wal

B = wal.BATCH


def test_a_salvaged_log_maps_the_empty_segment_it_goes_on_with(tmp_path):
    d = str(tmp_path / "wal")
    log, _ = wal.Log.open(d, preallocate_bytes=64 << 10)
    for i in range(10):
        log.append_one(B, bytes([i]) * 50)
    log.sync()
    log.rotate()  # the new active segment holds no record
    log.close()
    first, empty = (os.path.join(d, n) for n in sorted(os.listdir(d)))
    with open(first, "r+b") as f:  # one flipped byte inside the fourth record's payload
        at = wal.SEGMENT_HEADER_SIZE + 3 * (wal.FRAME_HEADER_SIZE + 50) + wal.FRAME_HEADER_SIZE + 5
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))

    log, rep = wal.Log.open(d, recovery="salvage", preallocate_bytes=64 << 10)
    assert not rep.clean and rep.last_position == 10 and sorted(os.listdir(d))[-1] == os.path.basename(empty)
    more = [os.urandom(60) for _ in range(20)]
    for x in more:
        log.append_one(B, x)
    assert mapped_paths(d) == {os.path.realpath(empty)}
    log.sync()
    log.close()

    log, rep = wal.Log.open(d, recovery="salvage")
    assert [r.payload for r in log.iter_records(10)] == more
    log.close()
