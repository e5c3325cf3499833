"""Corrupt reflex table bytes give CorruptionError (or a clean answer), never a crash.

Every scenario runs in a child process, so a segfault or a hang in the C table is a
test failure (return code / timeout) rather than the end of the test run. Header
surgery re-fixes the CRC, LevelDB-style, to reach the check behind it.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent('''
    import struct, zlib
    import numpy as np
    from ngstore.errors import CorruptionError, FormatVersionError, NgStoreError
    from ngstore.records import CONNECTION_DTYPE
    from ngstore.reflex import ReflexTable, SLOT_SIZE

    def build(capacity=200, n=150, sps=16, seed=0):
        rng = np.random.default_rng(seed)
        t = ReflexTable.create(capacity, slots_per_segment=sps)
        states = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        conns = np.zeros(n, CONNECTION_DTYPE)
        conns["token_a"] = np.arange(n)
        conns["confidence"] = rng.integers(150, 256, n)
        conns["mutability"] = rng.integers(0, 3, n)
        t.insert_batch(states, conns)
        return t, states

    def refix(h):
        h = bytearray(h)
        h[124:128] = struct.pack("<I", zlib.crc32(bytes(h[:124])))
        return bytes(h)

    def patch(h, fmt, off, value):
        h = bytearray(h)
        struct.pack_into(fmt, h, off, value)
        return refix(h)

    def exercise(t, states):
        """Every read and write path; only CorruptionError may come out."""
        for call in (lambda: t.lookup_batch(states), lambda: t.lookup(states[0]),
                     lambda: t.entries(), lambda: t.check(), lambda: t.stats(), lambda: len(t)):
            try:
                call()
            except CorruptionError:
                pass
        if t.writable:
            c = np.zeros(1, CONNECTION_DTYPE)[0]
            c["confidence"] = 240
            for s in states[:20]:
                for call in (lambda: t.insert(s, c), lambda: t.delete(s)):
                    try:
                        call()
                    except (CorruptionError, KeyError):
                        pass
''')


def run_child(body: str, timeout: float = 60) -> None:
    code = PRELUDE + textwrap.dedent(body) + "\nprint('CHILD OK')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and "CHILD OK" in proc.stdout, (
        f"child exited with {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}")


def test_header_fields_out_of_range_are_corruption_even_with_a_valid_crc():
    run_child('''
        t, states = build()
        h, segs = t.header(), [bytes(b) for b in t.all_segments()]
        nseg = t.segment_count
        bad = [
            ("magic", bytes(b"NGREFLEY") + h[8:]),
            ("crc", h[:124] + bytes([h[124] ^ 1]) + h[125:]),
            ("header size", patch(h, "<H", 10, 64)),
            ("slot size", patch(h, "<H", 12, 64)),
            ("max candidates", patch(h, "<H", 14, 1000)),
            ("sps zero", patch(h, "<I", 16, 0)),
            ("sps not a power of two", patch(h, "<I", 16, 24)),
            ("sps huge", patch(h, "<I", 16, 1 << 31)),
            ("segment count zero", patch(h, "<I", 20, 0)),
            ("segment count absurd", patch(h, "<I", 20, 0xFFFFFFFF)),
            ("capacity zero", patch(h, "<Q", 24, 0)),
            ("capacity above 3/4 of the slots", patch(h, "<Q", 24, t.slot_count)),
            ("capacity absurd", patch(h, "<Q", 24, 2**64 - 1)),
            ("live above capacity", patch(h, "<Q", 32, t.capacity + 1)),
            ("shift 16", patch(h, "<B", 48 + 3, 16)),
            ("flags", patch(h, "<I", 56, 1)),
            ("reserved", patch(h, "<B", 100, 1)),
            ("short header", h[:100]),
        ]
        for name, hh in bad:
            try:
                ReflexTable.attach(hh, segs)
            except CorruptionError:
                continue
            raise SystemExit(f"accepted a header with a bad {name}")
        try:
            ReflexTable.attach(patch(h, "<H", 8, 2), segs)
            raise SystemExit("accepted version 2")
        except FormatVersionError:
            pass
    ''')


def test_missing_truncated_or_oversized_segments_are_corruption():
    run_child('''
        t, states = build()
        h, segs = t.header(), [bytes(b) for b in t.all_segments()]
        cases = {
            "one segment missing": segs[:-1],
            "an extra segment": segs + [segs[0]],
            "no segments": [],
            "a truncated segment": segs[:3] + [segs[3][:-1]] + segs[4:],
            "an empty segment": segs[:3] + [b""] + segs[4:],
            "an oversized segment": segs[:3] + [segs[3] + b"\\0"] + segs[4:],
        }
        for name, ss in cases.items():
            try:
                ReflexTable.attach(h, ss)
            except CorruptionError:
                continue
            raise SystemExit(f"accepted {name}")
        image = t.to_bytes()
        for cut in (0, 50, 128, 129, len(image) - 1):
            try:
                ReflexTable.from_bytes(image[:cut])
            except CorruptionError:
                continue
            raise SystemExit(f"from_bytes accepted an image cut at {cut}")
    ''')


def test_random_byte_flips_in_segments_never_crash_reads_or_writes():
    run_child('''
        t, states = build(capacity=300, n=220)
        h = t.header()
        clean = [bytes(b) for b in t.all_segments()]
        rng = np.random.default_rng(123)
        queries = np.concatenate([states, rng.uniform(-1, 1, (50, 8)).astype(np.float32)])
        for trial in range(300):
            segs = [bytearray(s) for s in clean]
            for _ in range(int(rng.integers(1, 40))):
                k = int(rng.integers(len(segs)))
                segs[k][int(rng.integers(len(segs[k])))] ^= 1 << int(rng.integers(8))
            exercise(ReflexTable.attach(h, [bytes(s) for s in segs]), queries)
            exercise(ReflexTable.attach(h, segs, writable=True), queries)
    ''', timeout=120)


def test_garbage_segments_every_slot_live_terminate_and_report_corruption():
    run_child('''
        t, states = build(capacity=700, n=10, sps=64)
        h = t.header()
        rng = np.random.default_rng(5)
        n_seg, seg_len = t.segment_count, t.slots_per_segment * SLOT_SIZE
        patterns = {
            "random bytes": [rng.integers(0, 256, seg_len, dtype=np.uint8) for _ in range(n_seg)],
            "all 0xFF": [np.full(seg_len, 0xFF, np.uint8) for _ in range(n_seg)],
        }
        # every slot LIVE with one and the same grid hash: the longest possible probe
        same = np.zeros((n_seg, t.slots_per_segment, SLOT_SIZE), np.uint8)
        same[:, :, 24] = 1
        patterns["every slot live, one hash"] = list(same.reshape(n_seg, -1))
        rnd = rng.integers(0, 256, (n_seg, t.slots_per_segment, SLOT_SIZE), dtype=np.uint8)
        rnd[:, :, 24] = 1
        patterns["every slot live, random keys"] = list(rnd.reshape(n_seg, -1))
        for name, segs in patterns.items():
            for writable in (False, True):
                tt = ReflexTable.attach(h, [np.array(s) for s in segs], writable=writable)
                exercise(tt, states)
                try:
                    tt.check()
                except CorruptionError:
                    continue
                raise SystemExit(f"check() accepted {name}")
    ''', timeout=120)


def test_a_bad_state_byte_is_reported_with_its_segment_and_offset():
    run_child('''
        t, states = build(capacity=200, n=150, sps=16)
        h = t.header()
        segs = [bytearray(b) for b in t.all_segments()]
        e = t.entries()[0]
        slot = int(e["slot"])
        segs[slot // 16][(slot % 16) * SLOT_SIZE + 24] = 7
        tt = ReflexTable.attach(h, segs)
        try:
            tt.check()
            raise SystemExit("check() accepted state byte 7")
        except CorruptionError as exc:
            assert exc.path == f"reflex segment {slot // 16}", exc.path
            assert exc.offset == (slot % 16) * SLOT_SIZE, exc.offset
        try:
            tt.entries()
            raise SystemExit("entries() read through state byte 7")
        except CorruptionError:
            pass
    ''')


def test_a_live_count_that_disagrees_with_the_slots_fails_check():
    run_child('''
        t, states = build()
        h = patch(t.header(), "<Q", 32, len(t) - 1)
        tt = ReflexTable.attach(h, [bytes(b) for b in t.all_segments()])
        assert tt.lookup_batch(states).found.any()  # lookups still work
        try:
            tt.check()
            raise SystemExit("check() accepted a wrong live count")
        except CorruptionError as exc:
            assert "live count" in str(exc)
    ''')


@pytest.mark.parametrize("seed", range(3))
def test_header_byte_flips_are_caught_by_the_crc(seed):
    run_child(f'''
        t, states = build()
        h, segs = t.header(), [bytes(b) for b in t.all_segments()]
        rng = np.random.default_rng({seed})
        for _ in range(200):
            hh = bytearray(h)
            hh[int(rng.integers(128))] ^= 1 << int(rng.integers(8))
            try:
                ReflexTable.attach(bytes(hh), segs)
            except (CorruptionError, FormatVersionError):
                continue
            raise SystemExit("a flipped header bit went unnoticed")
    ''')
