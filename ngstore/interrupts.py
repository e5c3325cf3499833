"""What an interrupt may do to the writer's threads, and the one primitive it needs.

Python runs a signal handler -- the default SIGINT handler raises ``KeyboardInterrupt`` --
in the main thread, between two bytecodes: on entering a Python function, after a call
returns, at the back edge of a loop. A call into C (a lock's ``acquire``/``release``, a
``pwrite``) is atomic against it; a sequence of Python statements is not, nor is a
``finally`` clause, nor a method written in Python. The writer keeps its state sound
against one interrupt anywhere in a commit, ``flush`` or ``close`` run by the main thread
(a Ctrl-C; a second one microseconds later is not covered) with four rules:

* **Locks shared with the background threads are entered in C.** ``with lock:`` on a
  ``threading.Lock``/``RLock`` calls its C ``__enter__``, and the block's exit runs
  whatever is raised inside it. A ``threading.Condition`` is entered through the lock it
  was made with (``with cond:`` runs ``Condition.__enter__``, Python code that an
  interrupt can leave after the acquire and before the ``with`` owns it: the lock stays
  held for good). Waits on a Condition are bounded, so a notification an interrupt cut
  short delays the waiter, never strands it.
* **No ``threading.Event`` or ``Condition.wait`` on a path a committing thread runs**: an
  Event's methods enter its Condition in Python, and ``Condition.wait`` releases the lock
  in Python code that an interrupt can leave before the wait owns the release (the
  ``with`` block then releases the lock a second time). :class:`Signal` and :class:`Gate`
  take their places.
* **State moves in statements without calls between them** (attribute and item stores,
  integer arithmetic), so an interrupt finds it before or after the move.
* **A leader that is interrupted hands over**: the commit leadership passes on in an
  ``except``/``finally`` that runs before the interrupt propagates, and a batch whose
  record reached the log is finished (in the overlay, synced as its mode says) before it
  does -- a process goes on with the state recovery would find. A committer waiting for
  its group defers the interrupt until its batch is done, then raises it.

A close is made of steps that may run again (each layer's release is idempotent, and a
lock's descriptor is unlocked before it is forgotten, forgotten before it is closed), so
the next ``close()`` finishes one an interrupt stopped.

An interrupted commit raises the interrupt, and its outcome is unknown to the caller, as
after an ``OutcomeUnknownError``, but the store is not stopped: it stays writable, and the
batch is either wholly committed or not at all, in this process and after a reopen alike.
A batch with an idempotency key answers ``store.outcome(key)``.
"""
from __future__ import annotations

import threading


class Signal:
    """A flag set once, which a thread waits for: ``threading.Event``'s use by the writer,
    safe to set from a thread an interrupt may stop (see the module docstring). It is a
    lock held until :meth:`set` releases it."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True  # an interrupt before the release below: waiters see this at their timeout
            try:
                self._lock.release()
            except RuntimeError:  # released already: a concurrent set
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until :meth:`set` (or ``timeout`` seconds); returns whether it is set."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()  # for the next waiter
            return True
        return self._set


class Gate:
    """Waiting for a state guarded by a lock, as ``Condition.wait`` does, in a way an
    interrupt cannot break (see the module docstring). A waiter registers a lock of its
    own while it holds the guarding lock and waits on it after leaving; :meth:`notify_all`,
    called with the guarding lock held, releases every registered one::

        while True:
            with lock:
                if ready():
                    break
                waiter = gate.add_waiter()
            waiter.acquire(timeout=bound)

    An interrupt leaves at worst a registered lock nobody waits on (released and dropped
    by the next :meth:`notify_all`), or a waiter not notified (it looks again after
    ``bound``). ``waiters`` is the registered locks: non-empty when someone may wait."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[threading.Lock] = []

    def add_waiter(self) -> threading.Lock:
        """With the guarding lock held: a new held lock, released by :meth:`notify_all`."""
        waiter = threading.Lock()
        waiter.acquire()
        self.waiters.append(waiter)
        return waiter

    def notify_all(self) -> None:
        """With the guarding lock held: wakes every waiter."""
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.release()  # each is released once: it leaves the list here
