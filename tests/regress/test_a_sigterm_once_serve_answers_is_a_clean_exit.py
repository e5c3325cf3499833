"""``ngstore serve`` answered HTTP requests before it installed its SIGTERM handler, so a
SIGTERM sent as soon as it answered (what an orchestrator does to a sidecar that just
started) killed it by the default action: exit status -15, and the spans queued for the
OpenTelemetry collector were lost. The handlers are now installed before the server
starts. The child sends itself SIGTERM the moment the server is up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from ngstore.obs import http

    real_serve = http.serve

    def serve_then_sigterm(*args, **kwargs):
        server = real_serve(*args, **kwargs)  # answering from here on
        os.kill(os.getpid(), signal.SIGTERM)
        return server

    http.serve = serve_then_sigterm
    sys.exit(http.main_serve(sys.argv[1], port=0, retry_seconds=0.05))
''')


def test_a_sigterm_right_after_the_server_starts_exits_cleanly(tmp_path):
    env = dict(os.environ, NGSTORE_SAMPLE_RATE="0")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "store")], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.returncode != -signal.SIGTERM
