"""A new writer taking over ``blackbox.ring`` copied each valid record from the slot its
sequence number names (``seq mod capacity``), not from where it found it: a ring whose
header's capacity had been damaged (CRC re-computed) made records of a wrapped ring point
past the end of the file, and ``BlackBox.attach`` -- which never fails on the file's
content -- raised ``struct.error`` out of the store's open. A record away from its slot is
now damaged, like one whose CRC fails (format §8.1). Found by atheris on the
``blackbox_ring`` fuzz target."""
from __future__ import annotations

import os
import struct
import zlib

from ngstore.obs import blackbox


def _ring_of_a_wrapped_box(d: str) -> None:
    box = blackbox.BlackBox(capacity=8)
    box.attach(d)
    for i in range(20):  # sequence numbers 0..19: slot k holds 16 + k or 8 + k
        box.record("step", i=i)
    box.detach()


def _set_capacity(path: str, capacity: int) -> None:
    with open(path, "r+b") as f:
        head = bytearray(f.read(blackbox.FILE_HEAD_BYTES))
        struct.pack_into("<I", head, 20, capacity)
        struct.pack_into("<I", head, 68, zlib.crc32(head[:68]))
        f.seek(0)
        f.write(head)


def test_a_ring_whose_capacity_was_damaged_is_taken_over(tmp_path):
    d = str(tmp_path)
    _ring_of_a_wrapped_box(d)
    _set_capacity(os.path.join(d, blackbox.RING_FILE), 655_368)
    before = blackbox.read_ring(d)[0]
    box = blackbox.BlackBox(capacity=8)
    box.attach(d)  # never fails on the file's content
    box.record("after", n=1)
    assert box.get_events()[-1]["event_type"] == "after"
    box.detach()
    _info, events, _text = blackbox.read_ring(d)
    assert events[-1]["event_type"] == "after"
    # slots 0..7 held sequence numbers 16..19 and 12..15: none at its slot under 655,368
    assert before.bad_records == 8
