"""The black box after real crashes: a writer records events and dies (kill -9, SIGSEGV
through ctypes, abort, an unhandled exception), then ``ngstore blackbox`` shows the last
events it recorded. docs/observability.md §4 is the table these tests check.

Each writer prints ``ready`` once it has recorded its last event; the parent kills it then
(or it kills itself), so "the last events recorded" is known exactly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

TIMEOUT = 120

# Commits 12 batches (ids 0..59), each flushed so the applier moves it into LMDB (one
# "apply" event each); records its own marker event; then dies as argv[2] says.
WRITER = textwrap.dedent("""
    import ctypes, os, signal, sys, threading, time, ngstore
    path, how = sys.argv[1], sys.argv[2]
    s = ngstore.open(path, tracing=False)
    for i in range(12):
        s.put_tokens(ngstore.Token.create_batch(5, start=i * 5))
        s.flush()
    s.obs.event("marker", step=12, note="the last thing before the end")
    print("ready", flush=True)
    if how == "kill9":
        time.sleep(120)                               # the parent sends SIGKILL
    elif how == "segv":
        ctypes.string_at(0)                           # a real segmentation fault
    elif how == "abort":
        os.abort()
    elif how == "store-error":
        s.put_tokens(ngstore.Token.create_batch(5, start=0), durability="bogus")
    elif how == "app-thread-error":
        def app():
            import sqlite3
            sqlite3.connect(":memory:").execute("select * from nowhere")
        t = threading.Thread(target=app, name="app-worker"); t.start(); t.join()
        s.close()
    elif how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)
""")


def run_writer(path: str, how: str, cwd: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path, how], cwd=str(cwd), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=TIMEOUT)
    if how == "kill9":
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ng(*args: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ngstore", *args], cwd=str(cwd), capture_output=True,
                          text=True, timeout=TIMEOUT)


def shown_events(path: str, cwd: Any) -> tuple[str, dict[str, Any]]:
    """``ngstore blackbox PATH`` (text) and ``--show ring`` (JSON)."""
    listing = ng("blackbox", path, cwd=cwd)
    assert listing.returncode == 0, listing.stderr
    ring = ng("blackbox", path, "--show", "ring", cwd=cwd)
    assert ring.returncode == 0, ring.stderr
    return listing.stdout, json.loads(ring.stdout)


def assert_last_events(listing: str, ring: dict[str, Any]) -> None:
    types = [e["event_type"] for e in ring["events"]]
    assert types[types.index("open"):] == ["open"] + ["apply"] * 12 + ["marker"], types
    marker = dict(ring["events"][-1]["data"])
    assert marker == {"step": "12", "note": "the last thing before the end"}
    last_apply = dict(ring["events"][-2]["data"])
    assert last_apply["first"] == last_apply["last"] == "12" and last_apply["entries"] == "1"
    # the text listing shows them too, newest last
    lines = listing.splitlines()
    assert "marker" in lines[[i for i, line in enumerate(lines) if "marker" in line][-1]]
    assert "step=12 note=the last thing before the end" in listing
    assert "entries=1 first=12 last=12" in listing


def no_empty_files(path: str) -> None:
    empty = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))
             and os.path.getsize(os.path.join(path, n)) == 0
             and n != "readers.lock"]  # a lock file holds no bytes (the writer makes it at open)
    assert empty == [], empty


@pytest.mark.parametrize("how, status", [("kill9", -signal.SIGKILL), ("segv", -signal.SIGSEGV),
                                         ("abort", -signal.SIGABRT), ("sigterm", -signal.SIGTERM)])
def test_ngstore_blackbox_shows_the_last_events_of_a_writer_that_died(tmp_path: Any, how: str,
                                                                      status: int) -> None:
    path = str(tmp_path / "store")
    r = run_writer(path, how, tmp_path)
    assert r.returncode == status, r.stderr
    listing, ring = shown_events(path, tmp_path)
    assert_last_events(listing, ring)
    assert "ended without closing the store" in listing
    assert ring["ring"]["state"] == "open" and ring["ring"]["bad_records"] == 0
    if how in ("segv", "abort"):
        # faulthandler wrote every thread's traceback after the ring's records
        text = ring["fatal_error"]
        assert text.startswith("Fatal Python error: " + ("Segmentation fault" if how == "segv" else "Aborted"))
        assert 'File "<string>"' in text and ("string_at" in text or how == "abort")
        assert "fatal error text after the records: Fatal Python error" in listing
    else:
        assert ring["fatal_error"] is None
    no_empty_files(path)
    # the application restarts at once: the dead writer's ring is saved before it is reused
    r2 = subprocess.run([sys.executable, "-c", "import sys, ngstore; ngstore.open(sys.argv[1]).close()",
                         path], cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert r2.returncode == 0, r2.stderr
    assert "ended without closing the store; its black box was saved" in r2.stderr
    latest = ng("blackbox", path, cwd=tmp_path).stdout
    assert "1 dump(s)" in latest and "previous writer" in latest
    (dump_name,) = [n for n in os.listdir(path) if n.startswith("blackbox-") and n.endswith(".json")]
    saved = json.loads(ng("blackbox", path, "--show", dump_name, cwd=tmp_path).stdout)
    assert_last_events(listing, saved)
    assert saved["reason"].startswith("previous writer (pid ") and (saved["fatal_error"] is not None) == (
        how in ("segv", "abort"))
    no_empty_files(path)


def test_an_unhandled_store_error_dumps_with_the_traceback_and_the_previous_hook_still_runs(tmp_path: Any) -> None:
    path = str(tmp_path / "store")
    r = run_writer(path, "store-error", tmp_path)
    assert r.returncode == 1 and "durability must be one of" in r.stderr    # sys.__excepthook__ ran
    listing, _ring = shown_events(path, tmp_path)
    assert "1 dump(s)" in listing and "unhandled InvalidArgumentError" in listing
    doc = json.loads(ng("blackbox", path, "--show", "latest", cwd=tmp_path).stdout)
    assert doc["exception"]["type"] == "InvalidArgumentError"
    assert "durability" in doc["exception"]["traceback"]
    assert doc["store_stats"]["tokens_live"] == 60
    assert [e["event_type"] for e in doc["events"]][-2:] == ["marker", "error"]


def test_an_applications_own_thread_error_writes_nothing_into_the_store(tmp_path: Any) -> None:
    path = str(tmp_path / "store")
    r = run_writer(path, "app-thread-error", tmp_path)
    assert r.returncode == 0 and "no such table: nowhere" in r.stderr      # the default hook ran
    assert [n for n in os.listdir(path) if n.startswith("blackbox-")] == []
    listing, _ = shown_events(path, tmp_path)
    assert "closed the store" in listing and "no black-box dumps" in listing


def test_a_faulthandler_the_application_enabled_is_left_alone(tmp_path: Any) -> None:
    path = str(tmp_path / "store")
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    r = run_writer(path, "segv", tmp_path, env=env)
    assert r.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in r.stderr             # where the app sent it
    listing, ring = shown_events(path, tmp_path)
    assert ring["fatal_error"] is None
    assert_last_events(listing, ring)                                       # the events still are
