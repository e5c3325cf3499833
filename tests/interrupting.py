"""What the Ctrl-C tests' child processes share: a SIGALRM handler that raises
KeyboardInterrupt -- what Ctrl-C's default handler does -- once per arming, between two
bytecodes of the main thread wherever it then is. ``PRELUDE`` goes first in a child's
script; the script then calls ``arm(seconds)`` before the call it interrupts and
``disarm()`` after it (in a ``finally``)."""
from __future__ import annotations

import textwrap

PRELUDE = textwrap.dedent('''
    import signal

    _armed = []

    def _on_alarm(signum, frame):
        if _armed:
            _armed.clear()
            raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, _on_alarm)

    def arm(seconds):
        _armed.append(True)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    # A C method, not a function: a Python function could itself be interrupted on entry,
    # before it disarmed anything. A late alarm after it finds nothing armed.
    disarm = _armed.clear
''')
