"""An ``async`` commit starts the flusher thread. A KeyboardInterrupt arriving while it
started (after the thread object was kept, before it ran) left the writer holding a thread
that never started, and close() then failed with ``RuntimeError: cannot join thread before
it is started`` instead of closing the store. The writer now keeps the thread only once it
has started. The interrupted commit raises the interrupt; its record reached the log, so
the writer finishes it (interrupts.py): the batch is there, the store stays writable, and
a reopen finds what the process saw."""
from __future__ import annotations

import threading

import pytest

import ngstore


def test_close_after_a_commit_interrupted_in_the_flusher_start(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    s = ngstore.open(path, durability="async", crash_handlers=False)
    s.put_tokens(ngstore.Token.create_batch(3, start=1).data, durability="sync")
    real_start = threading.Thread.start

    def interrupted(thread: threading.Thread) -> None:
        if thread.name == "ngstore-flusher":
            raise KeyboardInterrupt  # what Ctrl-C does at this point of the commit
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", interrupted)
    token = ngstore.Token.create_batch(1, start=10).data
    with pytest.raises(KeyboardInterrupt):
        s.put_tokens(token)
    monkeypatch.undo()
    assert s.contains(10)  # finished: its record is in the log
    s.put_tokens(ngstore.Token.create_batch(1, start=11).data)  # the writer did not stop
    s.close()  # raised RuntimeError before the fix

    with ngstore.open(path, crash_handlers=False) as r:
        assert r.count() == 5 and all(r.contains(i) for i in (1, 2, 3, 10, 11))
