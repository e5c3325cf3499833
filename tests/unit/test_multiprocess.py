"""Writer and read-only readers in other processes; a second writer process is refused."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import make_tokens

import ngstore

READER = textwrap.dedent("""
    import sys, time, ngstore
    path, want = sys.argv[1], int(sys.argv[2])
    deadline = time.time() + 60
    with ngstore.open(path, readonly=True) as s:
        while s.count() < want and time.time() < deadline:
            time.sleep(0.01)
        with s.snapshot() as snap:
            ids = snap.tokens.ids()
        print(s.count(), int(ids.sum()), flush=True)
""")

WRITER = textwrap.dedent("""
    import sys, ngstore
    try:
        ngstore.open(sys.argv[1])
    except ngstore.StoreLockedError as e:
        print("locked:", e)
        sys.exit(0)
    sys.exit(5)
""")


def test_readers_in_other_processes_see_every_committed_write(store):
    readers = [subprocess.Popen([sys.executable, "-c", READER, store.path, "3000"],
                                stdout=subprocess.PIPE, text=True, cwd=store.path) for _ in range(3)]
    for k in range(3):
        store.put_tokens(make_tokens(range(k * 1000, (k + 1) * 1000)))
    for r in readers:
        out, _ = r.communicate(timeout=120)
        assert r.returncode == 0
        count, total = map(int, out.split())
        assert count == 3000 and total == sum(range(3000))


def test_a_second_writer_process_gets_store_locked_error(store):
    r = subprocess.run([sys.executable, "-c", WRITER, store.path], capture_output=True, text=True,
                       timeout=60, cwd=store.path)
    assert r.returncode == 0, r.stderr
    assert "locked" in r.stdout


def test_the_lock_is_released_when_the_writer_closes(store_path):
    s = ngstore.open(store_path)
    s.close()
    r = subprocess.run([sys.executable, "-c", WRITER, store_path], capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(store_path))
    assert r.returncode == 5  # it opened fine


def test_a_reader_process_opens_a_store_while_the_writer_runs(store):
    store.put_tokens(make_tokens([1, 2]))
    r = subprocess.run([sys.executable, "-c", READER, store.path, "2"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "2"
