"""``store.outcome(key)`` while the applier grows the map leaves the writer running.

It read LMDB in a read transaction of its own, an open reader of the process while it
lasted, and map growth refuses to remap under one: a growth in that window failed, and
the applier's failure stopped the writer. It is a point read now (``KV.read_one``), which
growth waits for. The look-up is slowed here so that the window spans the growths.
"""
from __future__ import annotations

import threading
import time

import ngstore
from ngstore import Outcome, outcomes


def test_asking_an_outcome_while_the_map_grows_does_not_stop_the_writer(tmp_path, monkeypatch):
    s = ngstore.open(str(tmp_path / "s"), map_size=2 << 20, observability=False, crash_handlers=False,
                     max_tokens=None, max_bytes=None)
    try:
        s.put_tokens(ngstore.Token.create_batch(1), key=b"k")
        s.flush()  # applied: the writer's outcome() asks LMDB, not the overlay
        real = outcomes.lookup
        entered = threading.Event()

        def slow_lookup(*args):  # type: ignore[no-untyped-def]
            entered.set()
            time.sleep(0.3)
            return real(*args)

        monkeypatch.setattr(outcomes, "lookup", slow_lookup)
        answers: list[Outcome] = []
        asker = threading.Thread(target=lambda: answers.append(s.outcome(b"k")))
        asker.start()
        assert entered.wait(10)
        size = s._kv.env.info()["map_size"]  # type: ignore[attr-defined]
        for start in range(1000, 61_000, 10_000):  # ~4 MB of chunks: the map grows meanwhile
            s.put_tokens(ngstore.Token.create_batch(10_000, start=start))
        asker.join(10)
        assert answers == [Outcome.COMMITTED]
        assert s._kv.env.info()["map_size"] > size  # type: ignore[attr-defined]
        s.put_tokens(ngstore.Token.create_batch(1, start=500))  # still writing
        assert s.count() == 60_002 and s.check().ok
    finally:
        s.close()
