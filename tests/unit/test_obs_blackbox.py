"""The black box: ring, counters, record encoding, the ring file read byte by byte (docs/format.md
§8.1), dump shape and names, and the crash hooks (which failures dump, chaining).

Crashes of real writer processes are in tests/crash/test_blackbox_crash.py."""
from __future__ import annotations

import json
import marshal
import os
import struct
import sys
import threading
import zlib
from typing import Any

import pytest

from ngstore.obs import Observability
from ngstore.obs.blackbox import (
    HEADER_BYTES,
    PAYLOAD_MAX,
    RING_FILE,
    BlackBox,
    decode_payload,
    list_dumps,
    load_dump,
    read_ring,
    write_dump_file,
)

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


# --- record encoding -------------------------------------------------------------------------

def test_a_typed_recorder_writes_the_same_record_as_the_keyword_form() -> None:
    a, b = BlackBox(4), BlackBox(4)
    a.record("commit", batches=2, first=7, last=8, records=40, durability="sync")
    b.recorder("commit", "batches", "first", "last", "records", "durability")(2, 7, 8, 40, "sync")
    ea, eb = a.get_events(), b.get_events()
    assert [e["data"] for e in ea] == [e["data"] for e in eb]
    assert ea[0]["data"] == [["batches", "2"], ["first", "7"], ["last", "8"], ["records", "40"],
                             ["durability", "sync"]]
    # byte for byte: the payloads are equal (the heads differ only in their timestamp)
    pa = bytes(a._buf[HEADER_BYTES + 24:HEADER_BYTES + 256])
    pb = bytes(b._buf[HEADER_BYTES + 24:HEADER_BYTES + 256])
    assert pa == pb


def test_the_payload_is_marshal_version_2_of_type_keys_values() -> None:
    bb = BlackBox(2)
    bb.record("x", a=1, b="two", c=2.5, d=None, e=True, f=b"\x00\xff", g=-(2 ** 70), h=(1, [2]))
    n = int.from_bytes(bb._buf[HEADER_BYTES + 4:HEADER_BYTES + 6], "little")
    payload = bytes(bb._buf[HEADER_BYTES + 24:HEADER_BYTES + 24 + n])
    expected = ("x", ("a", "b", "c", "d", "e", "f", "g", "h"),
                (1, "two", 2.5, None, True, b"\x00\xff", -(2 ** 70), (1, [2])))
    assert payload == marshal.dumps(expected, 2)
    assert decode_payload(payload) == expected           # our reader, not marshal.loads


@pytest.mark.parametrize("bad", [b"", b"(", b"c\x00\x00\x00\x00", b"(\x03\x00\x00\x00N",
                                 marshal.dumps(("x", ("a",), (1,)), 2)[:-2],
                                 marshal.dumps(("x", ("a",), ((lambda: 0).__code__,)), 2),
                                 marshal.dumps(("x", ("a",), (1,)), 2) + b"\x00"])
def test_a_malformed_payload_is_refused_not_crashed_on(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode_payload(bad)


def test_values_marshal_refuses_are_kept_as_strings_and_flagged() -> None:
    import numpy as np

    bb = BlackBox(2)
    bb.record("error", count=np.int64(5), exc=ValueError("bad"), ok=1)
    (ev,) = bb.get_events()
    assert ev["data"] == [["count", "5"], ["exc", "bad"], ["ok", "1"], ["truncated", "True"]]


def test_a_long_event_is_cut_to_fit_its_slot_and_flagged() -> None:
    bb = BlackBox(2)
    bb.record("error", message="x" * 5000, where="commit")
    (ev,) = bb.get_events()
    data = dict(ev["data"])
    assert data["where"] == "commit" and data["truncated"] == "True"
    assert data["message"].startswith("xxx") and data["message"].endswith("…")
    assert len(data["message"]) < PAYLOAD_MAX
    bb.record("many", **{f"k{i}": i for i in range(200)})   # too many fields even for empty values
    assert bb.get_events()[-1]["event_type"] == "many"


def test_a_typed_recorder_called_with_the_wrong_number_of_values_still_records() -> None:
    bb = BlackBox(4)
    rec = bb.recorder("commit", "a", "b")
    rec(1)
    rec(1, 2, 3)
    ev = bb.get_events()
    assert ev[0]["data"] == [["a", "1"], ["b", "<missing>"]]
    assert ev[1]["data"] == [["a", "1"], ["b", "2"], ["_2", "3"]]


# --- the ring file, read directly (docs/format.md §8.1) ---------------------------------------

def _ring_bytes(d: Any) -> bytes:
    with open(os.path.join(str(d), RING_FILE), "rb") as f:
        return f.read()


def test_the_ring_file_is_laid_out_as_documented(tmp_path: Any) -> None:
    bb = BlackBox(8)
    bb.attach(str(tmp_path))
    bb.record("open", n=1)
    bb.record("commit", batches=1)
    raw = _ring_bytes(tmp_path)
    assert len(raw) == 4096 + 8 * 256
    (magic, version, header_bytes, record_bytes, capacity, pid, state, attached_ns, first_seq,
     cleared_before, cleared_dropped, flags) = struct.unpack_from("<8sIIIIIIqQQQI", raw, 0)
    assert (magic, version, header_bytes, record_bytes, capacity) == (b"NGBLKBOX", 1, 4096, 256, 8)
    assert pid == os.getpid() and state == 1 and attached_ns > 0 and first_seq == 0
    assert (cleared_before, cleared_dropped, flags) == (0, 0, 0)
    assert struct.unpack_from("<I", raw, 68)[0] == zlib.crc32(raw[:68])
    assert raw[72:4096] == bytes(4096 - 72)
    for seq, (etype, keys, values) in enumerate([("open", ("n",), (1,)), ("commit", ("batches",), (1,))]):
        off = 4096 + seq * 256
        crc, n, rflags, rseq, unix_ns = struct.unpack_from("<IHHQq", raw, off)
        assert (rseq, rflags) == (seq, 0) and unix_ns > 0
        assert crc == zlib.crc32(raw[off + 4:off + 24 + n])
        assert raw[off + 24:off + 24 + n] == marshal.dumps((etype, keys, values), 2)
        assert raw[off + 24 + n:off + 256] == bytes(232 - n)   # zero padding
    assert raw[4096 + 2 * 256:] == bytes(6 * 256)                # never written: all zero
    bb.detach()
    assert struct.unpack_from("<I", _ring_bytes(tmp_path), 28)[0] == 2   # closed cleanly


def test_a_torn_record_is_skipped_and_counted_and_its_neighbours_survive(tmp_path: Any) -> None:
    bb = BlackBox(4)
    bb.attach(str(tmp_path))
    for i in range(3):
        bb.record("commit", i=i)
    bb.detach()
    path = os.path.join(str(tmp_path), RING_FILE)
    with open(path, "r+b") as f:          # a crash in the middle of copying record 1
        f.seek(4096 + 256 + 30)
        f.write(b"\xff\xff")
    info, events, text = read_ring(str(tmp_path))
    assert [e["data"] for e in events] == [[["i", "0"]], [["i", "2"]]]
    assert info.bad_records == 1 and text is None


def test_a_new_writer_continues_the_ring_and_keeps_the_last_ones_events(tmp_path: Any) -> None:
    first = BlackBox(4)
    first.attach(str(tmp_path))
    for i in range(6):
        first.record("commit", i=i)
    first.detach()                                   # closed cleanly: nothing to save
    second = BlackBox(4)
    second.record("open")                            # recorded before attaching: carried over
    assert second.attach(str(tmp_path)) is None
    second.record("commit", i=99)
    ev = second.get_events()
    assert [e["event_type"] for e in ev] == ["commit", "commit", "open", "commit"]
    assert [dict(e["data"]).get("i") for e in ev] == ["4", "5", None, "99"]
    assert second.stats() == {"capacity": 4, "current_size": 4, "total_recorded": 2,
                              "total_dropped": 0}
    seqs = [struct.unpack_from("<Q", _ring_bytes(tmp_path), 4096 + i * 256 + 8)[0] for i in range(4)]
    assert sorted(seqs) == [4, 5, 6, 7]
    second.detach()


def test_a_ring_left_open_by_a_dead_writer_is_handed_back_for_saving(tmp_path: Any) -> None:
    first = BlackBox(16)
    first.attach(str(tmp_path))
    for i in range(3):
        first.record("commit", i=i)
    with open(os.path.join(str(tmp_path), RING_FILE), "ab") as f:
        f.write(b"Fatal Python error: Segmentation fault\n")   # what faulthandler appends
    # the "process" dies: no detach, the header still says open
    second = BlackBox(8)                                     # another capacity, too
    saved = second.attach(str(tmp_path))
    assert saved is not None and "ended without closing the store" in saved["reason"]
    assert [dict(e["data"])["i"] for e in saved["events"]] == ["0", "1", "2"]
    assert saved["fatal_error"].startswith("Fatal Python error: Segmentation fault")
    assert len(_ring_bytes(tmp_path)) == 4096 + 8 * 256      # the fault text is gone from the ring
    assert [dict(e["data"])["i"] for e in second.get_events()] == ["0", "1", "2"]
    second.detach()


def test_clear_survives_in_the_file(tmp_path: Any) -> None:
    bb = BlackBox(4)
    bb.attach(str(tmp_path))
    bb.record("a")
    bb.clear()
    bb.record("b")
    assert [e["event_type"] for e in read_ring(str(tmp_path))[1]] == ["b"]
    bb.detach()


def test_read_ring_refuses_a_file_that_is_not_a_ring(tmp_path: Any) -> None:
    with open(os.path.join(str(tmp_path), RING_FILE), "wb") as f:
        f.write(b"hello" * 100)
    with pytest.raises(ValueError, match="not a black-box ring"):
        read_ring(str(tmp_path))


# --- Observability in a store directory --------------------------------------------------------

def test_start_writer_moves_the_ring_into_the_directory_and_close_leaves_no_empty_file(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.event("early")
    obs.start_writer(lambda: {"tokens_live": 3})
    obs.install_crash_handlers()
    obs.event("commit", n=1)
    assert obs.blackbox.path == os.path.join(str(tmp_path), RING_FILE)
    obs.close()
    assert sorted(os.listdir(tmp_path)) == [RING_FILE, "stats.page"]
    assert all(os.path.getsize(os.path.join(str(tmp_path), n)) > 0 for n in os.listdir(tmp_path))
    info, events, _ = read_ring(str(tmp_path))
    assert info.closed and [e["event_type"] for e in events] == ["early", "commit"]


def test_install_and_close_restore_the_process_hooks(tmp_path: Any) -> None:
    before = (sys.excepthook, threading.excepthook)
    obs = Observability(str(tmp_path), tracing=False)
    obs.install_crash_handlers(lambda: {})
    assert sys.excepthook is not before[0]
    obs.close()
    assert (sys.excepthook, threading.excepthook) == before
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_only_thread_failures_that_involve_the_store_dump(tmp_path: Any) -> None:
    from ngstore.errors import NgStoreError

    seen: list[str] = []
    prev = threading.excepthook
    threading.excepthook = lambda args: seen.append(str(args.exc_value))
    obs = Observability(str(tmp_path), tracing=False)
    obs.install_crash_handlers(lambda: {"tokens_live": 1})
    try:
        obs.event("commit", n=1)

        def run(target: Any, name: str = "app-worker") -> None:
            t = threading.Thread(target=target, name=name)
            t.start()
            t.join()

        def app_error() -> None:      # the case: an application's own sqlite error
            import sqlite3
            sqlite3.connect(":memory:").execute("select * from nowhere")

        def store_error() -> None:
            raise NgStoreError("the store refused")

        def through_ngstore() -> None:
            BlackBox(0)               # raises ValueError inside ngstore's code

        def our_thread() -> None:
            raise RuntimeError("in a store thread")

        run(app_error)
        assert list_dumps(str(tmp_path)) == [] and "no such table" in seen[-1]   # chained
        run(store_error)
        run(through_ngstore)
        run(our_thread, name="ngstore-applier")
        docs = [load_dump(p) for p in list_dumps(str(tmp_path))]
        assert [d["exception"]["type"] for d in docs] == ["NgStoreError", "ValueError", "RuntimeError"]
        assert len(seen) == 4                        # the previous hook saw every one of them
        assert [e["event_type"] for e in docs[0]["events"]] == ["commit", "error"]
        assert docs[0]["store_stats"] == {"tokens_live": 1}
    finally:
        obs.close()
        threading.excepthook = prev


def test_involves_store_follows_chained_exceptions() -> None:
    from ngstore.obs import involves_store

    try:
        try:
            BlackBox(0)
        except ValueError as inner:
            raise KeyError("app") from inner
    except KeyError as exc:
        assert involves_store(exc, exc.__traceback__)
    try:
        raise KeyError("app alone")
    except KeyError as exc:
        assert not involves_store(exc, exc.__traceback__)


def test_dump_json_is_pretty_printed_like_the_original(tmp_path: Any) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.event("open")
    with open(obs.dump()) as f:
        text = f.read()
    assert text.startswith("{\n  ") and json.loads(text)["events"][0]["event_type"] == "open"
