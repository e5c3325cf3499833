"""Point reads (``get_token``, ``contains``) reuse one read transaction, and the chunk
values read in it, while a writer of the process is open (``KV.read_one``). These tests
hold the rules that make the reuse invisible: every LMDB commit ends the shared
transaction, map growth is not refused for it, a closed store leaves no reader behind, and
without a writer in the process every read begins afresh (another process may commit)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import make_tokens

import ngstore
from ngstore import kv as kvmod

TESTS_DIR = str(Path(__file__).resolve().parents[1])


def _weight(s: ngstore.Store, token_id: int) -> float:
    return float(s.get_token(token_id).weight)


def test_a_point_read_after_an_apply_sees_the_applied_state_not_the_reused_snapshot(store_path):
    with ngstore.open(store_path) as s:
        s.put_tokens(make_tokens([5, 6], weight=0.25))
        s.flush()  # in LMDB, out of the overlay
        assert _weight(s, 5) == 0.25  # begins (and keeps) the shared transaction
        shared = s._kv._shared
        assert shared.point_txn is not None and shared.point_values
        s.put_tokens(make_tokens([5], weight=0.75))
        s.flush()  # applied: the overlay forgets it, so the read must come from LMDB
        assert shared.point_txn is None  # the commit ended it
        assert _weight(s, 5) == 0.75
        assert _weight(s, 6) == 0.25
        s.delete_tokens([6])
        s.flush()
        assert not s.contains(6)


def test_every_commit_of_the_writer_ends_the_shared_transaction(store_path):
    with ngstore.open(store_path) as s:
        for round_ in range(20):
            s.put_tokens(make_tokens(np.arange(round_ * 10, round_ * 10 + 10), weight=round_ / 100))
            s.flush()
            for i in range(0, round_ * 10 + 10, 7):
                assert _weight(s, i) == np.float32((i // 10) / 100)


def test_map_growth_is_not_refused_for_the_shared_point_read(store_path):
    ngstore.open(store_path, map_size=1 << 20).close()
    with ngstore.open(store_path, map_size=1 << 20) as s:
        s.put_tokens(make_tokens([0]))
        s.flush()
        size = s._kv.info()["map_size_bytes"]
        s.get_token(0)  # the shared transaction is open and idle
        s.put_tokens(make_tokens(np.arange(1, 60_000)))  # ~4 MB: the map must grow
        s.flush()
        assert s._kv.info()["map_size_bytes"] > size
        assert s.get_token(59_999).id == 59_999


GROW = """
import sys, ngstore
sys.path.insert(0, sys.argv[2])
from conftest import make_tokens
with ngstore.open(sys.argv[1], map_size=1 << 20) as s:
    s.put_tokens(make_tokens(range(2048)))
    s.flush()
    before = s.get_token(7).to_bytes()  # its chunk value is kept, an address in the map
    size = s._kv.info()["map_size_bytes"]
    s._kv._grow()  # remaps: nothing kept may point into the old map
    assert s._kv.info()["map_size_bytes"] == 2 * size
    assert s.get_token(7).to_bytes() == before
print("ok")
"""


def test_map_growth_ends_the_values_kept_for_point_reads(store_path):
    # In a child: a value kept across the remap would point into unmapped memory.
    tests_dir = TESTS_DIR
    r = subprocess.run([sys.executable, "-c", GROW, store_path, tests_dir], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_closing_the_store_ends_the_shared_transaction_and_the_environment(store_path):
    s = ngstore.open(store_path)
    s.put_tokens(make_tokens([1]))
    s.flush()
    s.get_token(1)
    shared = s._kv._shared
    assert shared.point_txn is not None
    s.close()
    assert shared.point_txn is None and not shared.point_values
    assert s._kv.path not in kvmod._registry  # the environment closed: nothing held it


WRITER = """
import sys, numpy as np, ngstore
sys.path.insert(0, sys.argv[2])
from conftest import make_tokens
with ngstore.open(sys.argv[1]) as s:
    s.put_tokens(make_tokens([3], weight=float(sys.argv[3])))
"""


def test_a_handle_without_a_writer_in_its_process_reads_each_commit_of_another(store_path):
    with ngstore.open(store_path) as s:
        s.put_tokens(make_tokens([3], weight=0.5))
    tests_dir = TESTS_DIR
    with ngstore.open(store_path, readonly=True) as ro:
        assert _weight(ro, 3) == 0.5
        for w in (0.125, 0.875):
            subprocess.run([sys.executable, "-c", WRITER, store_path, tests_dir, str(w)], check=True, timeout=120)
            assert _weight(ro, 3) == w  # a reused transaction would still show the old weight
        assert ro._kv._shared.point_txn is None


def test_point_values_are_bounded(store_path, monkeypatch):
    monkeypatch.setattr(kvmod, "POINT_VALUES_KEPT", 4)
    with ngstore.open(store_path, chunk_slots=8) as s:
        s.put_tokens(make_tokens(np.arange(200)))
        s.flush()
        for i in range(0, 200, 8):
            assert s.get_token(i).id == i
            assert len(s._kv._shared.point_values) <= 4


def test_threads_reading_while_the_writer_applies_see_only_committed_versions(store_path):
    import threading

    ids = np.arange(1024)
    with ngstore.open(store_path, apply_interval=0.001) as s:
        s.put_tokens(make_tokens(ids, weight=0.0))
        s.flush()
        done = threading.Event()
        seen: list[float] = []
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                while not done.is_set():
                    i = int(rng.integers(0, ids.size))
                    seen.append(float(s.get_token(i).weight))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            for version in range(1, 17):  # each version rewrites every token, applied in groups
                s.put_tokens(make_tokens(ids, weight=version / 64))
                if version % 4 == 0:
                    s.flush()
        finally:
            done.set()
            for t in threads:
                t.join()
        assert not errors, errors[0]
        assert seen and set(seen) <= {v / 64 for v in range(17)}
        assert all(float(s.get_token(int(i)).weight) == 16 / 64 for i in ids[::97])
