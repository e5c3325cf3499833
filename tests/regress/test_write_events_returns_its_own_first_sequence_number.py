"""``write_events`` worked its first sequence number out from the shared counters after
the commit returned: with concurrent committers grouped into one commit, it returned
another batch's number."""
from __future__ import annotations

import threading

import numpy as np

import ngstore
from ngstore.experience import new_events


def test_concurrent_writers_each_get_the_sequence_numbers_of_their_own_events(tmp_path):
    with ngstore.open(str(tmp_path / "s"), durability="sync") as s:
        got: list[tuple[int, int, int]] = []  # (first sequence, writer, batch)
        lock = threading.Lock()

        def writer(w: int) -> None:
            for k in range(40):
                ev = new_events(3, event_type=1, event_id=np.arange(3) + (w * 1000 + k) * 10)
                first = s.write_events(ev)
                with lock:
                    got.append((first, w, k))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stream = s.experience()
        for first, w, k in got:
            ids = [int(stream.read(first + i).event_id) for i in range(3)]
            assert ids == [(w * 1000 + k) * 10 + i for i in range(3)], (first, w, k, ids)
