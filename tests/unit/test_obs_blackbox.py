"""The black box: ring, counters, dump shape, file names, and crash dumps from real children."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from ngstore.obs import Observability
from ngstore.obs.blackbox import BlackBox, list_dumps, load_dump, write_dump_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ring_keeps_the_last_capacity_events_and_counts_the_dropped() -> None:
    bb = BlackBox(3)
    for i in range(5):
        bb.record("commit", i=i)
    assert len(bb) == 3
    assert [e["data"] for e in bb.get_events()] == [[["i", "2"]], [["i", "3"]], [["i", "4"]]]
    assert bb.stats() == {"capacity": 3, "current_size": 3, "total_recorded": 5,
                          "total_dropped": 2}


def test_clear_empties_the_ring_but_keeps_the_counters() -> None:
    bb = BlackBox(3)
    for i in range(5):
        bb.record("commit", i=i)
    bb.clear()
    assert bb.is_empty()
    assert bb.stats() == {"capacity": 3, "current_size": 0, "total_recorded": 5,
                          "total_dropped": 2}
    bb.record("close")
    assert bb.stats()["total_recorded"] == 6 and bb.stats()["total_dropped"] == 2


def test_concurrent_recorders_lose_no_count() -> None:
    bb = BlackBox(100)

    def work() -> None:
        for i in range(5000):
            bb.record("commit", i=i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = bb.stats()
    assert s["total_recorded"] == 20000 and s["total_dropped"] == 19900


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BlackBox(0)


def test_dump_has_the_original_shape_plus_store_stats(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs._stats_fn = lambda: {"tokens_live": 4}
    obs.event("open", version="0.1.0")
    obs.event("commit", batch_id=7, records=3)
    doc = load_dump(obs.dump("explicit"))
    assert isinstance(doc["timestamp_us"], int)
    assert set(doc["stats"]) == {"capacity", "current_size", "total_recorded", "total_dropped"}
    assert doc["stats"]["current_size"] == 2
    ev = doc["events"][1]
    assert set(ev) == {"event_type", "timestamp_us", "data"}
    assert ev["event_type"] == "commit"
    assert ev["data"] == [["batch_id", "7"], ["records", "3"]]   # ordered string pairs
    assert doc["events"][0]["timestamp_us"] <= ev["timestamp_us"]
    assert doc["store_stats"] == {"tokens_live": 4}
    assert doc["reason"] == "explicit" and doc["pid"] == os.getpid()


def test_unprintable_data_does_not_lose_the_dump(tmp_path: Any) -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    obs = Observability(str(tmp_path), tracing=False)
    obs.event("error", value=Bad())
    doc = load_dump(obs.dump())
    assert doc["events"][0]["data"][0][1].startswith("<unprintable Bad")


def test_rapid_dumps_never_share_a_name(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.event("commit")
    paths = {obs.dump() for _ in range(200)}
    assert len(paths) == 200
    assert sorted(list_dumps(str(tmp_path))) == sorted(paths)
    assert all(os.path.basename(p).startswith("blackbox-") for p in paths)


def test_zstd_dump_round_trips(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False, dump_compress=True)
    for i in range(50):
        obs.event("commit", i=i)
    path = obs.dump("compressed")
    assert path.endswith(".json.zst")
    with open(path, "rb") as f:
        assert f.read(4) == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    doc = load_dump(path)
    assert len(doc["events"]) == 50 and doc["events"][-1]["data"] == [["i", "49"]]


def test_load_dump_refuses_a_foreign_json(tmp_path: Any) -> None:
    p = tmp_path / "blackbox-x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(ValueError):
        load_dump(str(p))


def test_write_dump_file_leaves_no_temporary(tmp_path: Any) -> None:
    write_dump_file(str(tmp_path), BlackBox(2).to_dump(reason="t"))
    assert all(".tmp" not in n for n in os.listdir(tmp_path))


def test_install_and_close_restore_the_process_hooks(tmp_path: Any) -> None:
    before = (sys.excepthook, threading.excepthook)
    obs = Observability(str(tmp_path), tracing=False)
    obs.install_crash_handlers(lambda: {}, ring_flush_seconds=None, catch_signals=False)
    assert sys.excepthook is not before[0]
    obs.close()
    assert (sys.excepthook, threading.excepthook) == before
    assert list_dumps(str(tmp_path)) == []   # the empty faulthandler log was removed


def test_flush_ring_writes_only_when_events_arrived(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.install_crash_handlers(None, ring_flush_seconds=None, catch_signals=False)
    try:
        obs.event("commit", n=1)
        path = obs.flush_ring()
        assert path and load_dump(path)["events"][0]["event_type"] == "commit"
        assert obs.flush_ring() is None
    finally:
        obs.close()
    assert not os.path.exists(path)  # a clean close removes the ring flush


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_unhandled_exception_in_a_thread_also_dumps(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.install_crash_handlers(lambda: {"tokens_live": 1}, ring_flush_seconds=None,
                               catch_signals=False)
    try:
        obs.event("commit", n=1)

        def boom() -> None:
            raise RuntimeError("thread died")

        t = threading.Thread(target=boom)
        t.start()
        t.join()
        dumps = [p for p in list_dumps(str(tmp_path)) if p.endswith(".json")]
        assert len(dumps) == 1
        doc = load_dump(dumps[0])
        assert "RuntimeError" in doc["reason"]
        assert doc["exception"]["message"] == "thread died"
        assert [e["event_type"] for e in doc["events"]] == ["commit", "error"]
    finally:
        obs.close()


# --- real child processes ------------------------------------------------------------------

def run_child(code: str, store_dir: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    prelude = textwrap.dedent(f"""
        import os, sys, signal, time
        from ngstore.obs import Observability
        obs = Observability({store_dir!r}, tracing=False)
        obs.install_crash_handlers(lambda: {{"tokens_live": 42}}, ring_flush_seconds=None)
        for i in range(5):
            obs.event("commit", batch_id=i)
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_child_dying_of_an_unhandled_exception_leaves_a_dump_with_its_events(tmp_path: Any) -> None:
    r = run_child("raise ValueError('boom in child')", str(tmp_path))
    assert r.returncode == 1
    assert "ValueError: boom in child" in r.stderr        # the previous hook still ran
    dumps = [p for p in list_dumps(str(tmp_path)) if p.endswith(".json")]
    assert len(dumps) == 1, os.listdir(tmp_path)
    doc = load_dump(dumps[0])
    assert [e["data"] for e in doc["events"][:5]] == [[["batch_id", str(i)]] for i in range(5)]
    assert doc["events"][-1]["event_type"] == "error"
    assert doc["exception"]["type"] == "ValueError"
    assert "boom in child" in doc["exception"]["traceback"]
    assert doc["store_stats"] == {"tokens_live": 42}


def test_a_child_killed_by_sigterm_dumps_then_still_dies_of_sigterm(tmp_path: Any) -> None:
    r = run_child("os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)", str(tmp_path))
    assert r.returncode == -signal.SIGTERM
    dumps = [p for p in list_dumps(str(tmp_path)) if p.endswith(".json")]
    assert len(dumps) == 1
    doc = load_dump(dumps[0])
    assert doc["reason"] == "signal SIGTERM"
    assert len(doc["events"]) == 5


def test_a_child_killed_by_sigsegv_leaves_faulthandler_output_and_the_last_ring_flush(tmp_path: Any) -> None:
    code = """
        obs.flush_ring()                      # what the periodic flusher does every 10 s
        obs.event("commit", batch_id=99)      # after the last flush: the documented loss
        import ctypes
        ctypes.string_at(0)                   # a real segmentation fault
    """
    r = run_child(code, str(tmp_path))
    assert r.returncode == -signal.SIGSEGV
    files = list_dumps(str(tmp_path))
    logs = [p for p in files if p.endswith(".log")]
    assert len(logs) == 1
    text = load_dump(logs[0])["text"]
    assert "Segmentation fault" in text and "string_at" in text
    rings = [p for p in files if os.path.basename(p).startswith("blackbox-ring-")]
    assert len(rings) == 1
    doc = load_dump(rings[0])
    assert [e["data"][0][1] for e in doc["events"]] == ["0", "1", "2", "3", "4"]


def test_the_periodic_flusher_writes_the_ring_without_being_asked(tmp_path: Any) -> None:
    code = """
        obs.close()
        obs = Observability(obs.store_path, tracing=False)
        obs.install_crash_handlers(None, ring_flush_seconds=0.05)
        obs.event("commit", batch_id=1)
        ring = os.path.join(obs.store_path, f"blackbox-ring-{os.getpid()}.json")
        deadline = time.monotonic() + 30
        while not os.path.exists(ring) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    r = run_child(code, str(tmp_path))
    assert r.returncode == -signal.SIGKILL
    rings = [p for p in list_dumps(str(tmp_path)) if "blackbox-ring-" in p]
    assert len(rings) == 1
    assert load_dump(rings[0])["events"][0]["data"] == [["batch_id", "1"]]


def test_an_existing_sigterm_handler_is_left_alone(tmp_path: Any) -> None:
    code = """
        obs.close()
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(3))
        obs = Observability(obs.store_path, tracing=False)
        obs.install_crash_handlers(None, ring_flush_seconds=None)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    """
    r = run_child(code, str(tmp_path))
    assert r.returncode == 3
    assert [p for p in list_dumps(str(tmp_path)) if p.endswith(".json")] == []


def test_dump_json_is_pretty_printed_like_the_original(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.event("open")
    with open(obs.dump()) as f:
        text = f.read()
    assert text.startswith("{\n  ") and json.loads(text)["events"][0]["event_type"] == "open"
