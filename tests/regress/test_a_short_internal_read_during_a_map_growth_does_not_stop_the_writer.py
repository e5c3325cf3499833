"""A short internal read (``kv.ReadTxn``: learning statistics, a check section, a meta
reread) that was open when the applier had to grow the map made the growth fail, as a
snapshot does, and the applier's failure stopped the writer. Growth now waits for such
reads to end (``GROW_WAIT_SECONDS`` at most); a snapshot, which may live for hours,
still makes it refuse. The read is held open here so that the window spans the growth."""
from __future__ import annotations

import threading

import pytest

import ngstore
from ngstore.kv import KV, ReadTxn

MAP = 2 << 20


def test_growth_waits_for_a_short_internal_read_and_still_refuses_under_a_snapshot(tmp_path):
    path = str(tmp_path / "s")
    ngstore.open(path, map_size=MAP).close()
    kv = KV(path, readonly=False, map_size=MAP)
    try:
        kv.pin()
        size = int(kv.env.info()["map_size"])
        inside, release = threading.Event(), threading.Event()

        def short_read() -> None:
            with ReadTxn(kv) as txn:
                inside.set()
                release.wait(10)
                txn.get(b"no such key")

        reader = threading.Thread(target=short_read)
        reader.start()
        assert inside.wait(10)
        threading.Timer(0.2, release.set).start()  # the read ends while the growth waits
        kv._grow()
        reader.join(10)
        assert int(kv.env.info()["map_size"]) == 2 * size
        snapshot = kv.begin_read()  # a reader that is not a short internal read
        try:
            with pytest.raises(ngstore.NgStoreError, match="cannot grow while 1 snapshot"):
                kv._grow()
        finally:
            kv.end_read(snapshot)
    finally:
        kv.unpin()
        kv.close()


def test_learning_statistics_while_commits_grow_the_map_leave_the_writer_running(tmp_path, monkeypatch):
    from ngstore import kv as kv_module

    s = ngstore.open(str(tmp_path / "s"), map_size=MAP, observability=False, crash_handlers=False,
                     max_tokens=None, max_bytes=None)
    try:
        entered, release = threading.Event(), threading.Event()
        real_enter = kv_module.ReadTxn.__enter__

        def held_enter(self):  # type: ignore[no-untyped-def]
            txn = real_enter(self)
            if threading.current_thread().name == "stats":
                entered.set()
                release.wait(10)
            return txn

        monkeypatch.setattr(kv_module.ReadTxn, "__enter__", held_enter)
        stats = threading.Thread(target=lambda: s.learning_statistics(), name="stats")
        stats.start()
        assert entered.wait(10)
        threading.Timer(0.3, release.set).start()
        size = s._kv.env.info()["map_size"]  # type: ignore[attr-defined]
        for start in range(1000, 61_000, 10_000):  # ~4 MB of chunks: the map grows meanwhile
            s.put_tokens(ngstore.Token.create_batch(10_000, start=start))
        stats.join(10)
        assert s._kv.env.info()["map_size"] > size  # type: ignore[attr-defined]
        assert s.count() == 60_000 and s.check().ok
    finally:
        s.close()
