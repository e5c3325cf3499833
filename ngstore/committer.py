"""The committer: one thread per writer that does, for submitted batches, what a blocking
committer does in its own thread.

A blocking ``Writer.commit`` queues its batch and, when no commit is in progress, leads the
group commit itself -- the log append, the fdatasync, the overlay -- in the calling thread,
and waits in it. ``Writer.submit`` (what ``ngstore.aio`` commits through) must do neither:
its caller is an event loop. So a submitted batch is queued the same way, and when the
group commit asks it to lead, or it is done but must wait for the applier (reflex writes,
large token batches), that work comes here:

* :meth:`Committer.request_lead`: lead the group commit now (``lead``: ``Writer._lead``,
  which commits everything queued, submitted and blocking batches alike, in one append and
  one fdatasync per group, and hands over or gives up leadership);
* :meth:`Committer.after_apply`: call ``fn`` once the applier has applied ``position`` --
  one wait covers every batch done by then.

One thread for all submitted batches, however many are in flight: a batch waiting for its
commit holds no thread, and 1,000 of them share the group commits a leader makes. (A
thread per waiting commit -- ``run_in_executor`` around ``commit`` -- was rejected: it caps
the group at the executor's size and costs a thread switch per batch.) The thread starts at
the first submitted batch and stops at :meth:`close`, after what was asked of it.

The fdatasync and the waits for the applier run here, never in the submitter's thread.
While this thread leads or waits, requests queue; none is lost.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

_log = logging.getLogger("ngstore")

#: Called once the applier reached a position: with None, or with the error that stopped it.
AfterApply = Callable[[BaseException | None], None]


class Committer:
    """The thread that leads and finishes submitted batches (see the module docstring)."""

    def __init__(self, lead: Callable[[], None], wait_applied: Callable[[int], None], name: str) -> None:
        self._lead = lead
        self._wait_applied = wait_applied
        self._name = name
        # Entered through its lock from the submitting threads, waited on with a bound
        # (a notification an interrupt cut short delays this thread, never strands it).
        self._mutex = threading.Lock()
        self._cv = threading.Condition(self._mutex)
        self._lead_requested = False
        self._waiting: list[tuple[int, AfterApply]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request_lead(self) -> None:
        """Asks the thread to lead the group commit (the caller made it the leader)."""
        with self._mutex:
            self._lead_requested = True
            self._start()
            self._cv.notify()

    def after_apply(self, position: int, fn: AfterApply) -> None:
        """Calls ``fn`` in this thread once the applier has applied ``position``."""
        with self._mutex:
            self._waiting.append((position, fn))
            self._start()
            self._cv.notify()

    def _start(self) -> None:
        """With ``_mutex`` held: a thread runs (again, after :meth:`close`: a hand-over that
        races a close is still led; the thread ends once nothing is asked)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._mutex:
                while not (self._lead_requested or self._waiting or self._stopping):
                    self._cv.wait(1.0)
                lead, self._lead_requested = self._lead_requested, False
                waiting, self._waiting = self._waiting, []
                if not lead and not waiting:
                    return  # stopping, and nothing asked
            if lead:
                try:
                    self._lead()
                except BaseException as exc:  # each batch of the group got its error already
                    _log.error("%s: leading a group commit failed: %r", self._name, exc)
            if waiting:
                error: BaseException | None = None
                try:
                    self._wait_applied(max(pos for pos, _fn in waiting))
                except BaseException as exc:
                    error = exc
                for _pos, fn in waiting:
                    try:
                        fn(error)
                    except BaseException as exc:  # a callback's failure is its own
                        _log.error("%s: a commit callback failed: %r", self._name, exc)

    def close(self) -> None:
        """Stops the thread once it has done what was asked of it."""
        with self._mutex:
            self._stopping = True
            thread = self._thread
            self._cv.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
