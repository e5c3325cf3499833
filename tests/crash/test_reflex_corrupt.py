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
    from ngstore.reflex import ReflexTable, RECORD_SIZE, ENTRY_SIZE

    def build(capacity=200, n=150, rps=16, eps=16, seed=0):
        rng = np.random.default_rng(seed)
        t = ReflexTable.create(capacity, room=capacity, records_per_segment=rps, entries_per_segment=eps)
        states = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        conns = np.zeros(n, CONNECTION_DTYPE)
        conns["token_a"] = np.arange(n)
        conns["confidence"] = rng.integers(150, 256, n)
        conns["mutability"] = rng.integers(0, 3, n)
        t.insert_batch(states, conns)
        return t, states

    def refix(h):
        h = bytearray(h)
        h[252:256] = struct.pack("<I", zlib.crc32(bytes(h[:252])))
        return bytes(h)

    def patch(h, fmt, off, value):
        h = bytearray(h)
        struct.pack_into(fmt, h, off, value)
        return refix(h)

    def exercise(t, states):
        """Every read and write path; only CorruptionError may come out."""
        for call in (lambda: t.lookup_batch(states), lambda: t.lookup(states[0]), lambda: t.lookup(list(states[1])),
                     lambda: t.lookup_batch(states, nearest_fallback=1.5), lambda: t.lookup_batch(
                         states[:5], nearest_fallback=40.0), lambda: t.entries(), lambda: t.check(),
                     lambda: t.stats(), lambda: len(t)):
            try:
                call()
            except CorruptionError:
                pass
        if t.writable:
            c = np.zeros(1, CONNECTION_DTYPE)[0]
            c["confidence"] = 240
            for s in states[:20]:
                for call in (lambda: t.insert(s, c), lambda: t.delete(s),
                             lambda: t.plan_insert(s.reshape(1, 8), c.reshape(1))):
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
        bad = [
            ("magic", bytes(b"NGREFLEY") + h[8:]),
            ("crc", h[:252] + bytes([h[252] ^ 1]) + h[253:]),
            ("header size", patch(h, "<H", 10, 128)),
            ("record size", patch(h, "<H", 12, 96)),
            ("entry size", patch(h, "<H", 14, 16)),
            ("max candidates", patch(h, "<H", 16, 1000)),
            ("eviction window", patch(h, "<H", 18, 0)),
            ("flags", patch(h, "<I", 20, 1)),
            ("records per segment zero", patch(h, "<I", 24, 0)),
            ("records per segment not a power of two", patch(h, "<I", 24, 24)),
            ("records per segment huge", patch(h, "<I", 24, 1 << 31)),
            ("record segments zero", patch(h, "<I", 28, 0)),
            ("record segments absurd", patch(h, "<I", 28, 0xFFFFFFFF)),
            ("entries per segment not a power of two", patch(h, "<I", 32, 48)),
            ("index segments zero", patch(h, "<I", 36, 0)),
            ("index segments absurd", patch(h, "<I", 36, 0xFFFFFFFF)),
            ("capacity zero", patch(h, "<Q", 40, 0)),
            ("live above the room", patch(h, "<Q", 48, t.room + 1)),
            ("live absurd", patch(h, "<Q", 48, 2**64 - 1)),
            ("shift 16", patch(h, "<B", 64 + 3, 16)),
            ("an empty box with live reflexes", patch(h, "<h", 72, 32767)),
            ("reserved", patch(h, "<B", 200, 1)),
            ("short header", h[:100]),
            ("long header", h + b"\\0"),
        ]
        for name, hh in bad:
            try:
                ReflexTable.attach(hh, segs)
            except CorruptionError:
                continue
            raise SystemExit(f"accepted a header with a bad {name}")
        for version in (3, 0xFFFF):
            try:
                ReflexTable.attach(patch(h, "<H", 8, version), segs)
                raise SystemExit(f"accepted version {version}")
            except FormatVersionError:
                pass
    ''')


def test_a_version_1_table_is_refused_with_format_version_error():
    run_child('''
        t, states = build()
        v1 = bytearray(128)                      # a well-formed version-1 header (format 1, §7.2)
        v1[:8] = b"NGREFLEX"
        struct.pack_into("<HHHHIIQQQ8sI", v1, 8, 1, 128, 96, 4, 16, 1, 12, 0, 0, bytes([4, 4, 5, 6, 6, 6, 8, 8]), 0)
        struct.pack_into("<I", v1, 124, zlib.crc32(bytes(v1[:124])))
        from ngstore.reflex import parse_header
        for call in (lambda: ReflexTable.attach(bytes(v1), [bytes(16 * 96)]), lambda: parse_header(bytes(v1)),
                     lambda: ReflexTable.from_bytes(bytes(v1) + bytes(16 * 96))):
            try:
                call()
                raise SystemExit("a version-1 table was accepted")
            except FormatVersionError as exc:
                assert "version 1" in str(exc) and "source state" in str(exc), str(exc)
    ''')


def test_missing_truncated_or_oversized_segments_are_corruption():
    run_child('''
        t, states = build()
        h, segs = t.header(), [bytes(b) for b in t.all_segments()]
        g = t.geometry
        r0, i0 = 0, g.record_segments  # a record segment and an index segment
        cases = {
            "one segment missing": segs[:-1],
            "an extra segment": segs + [segs[0]],
            "no segments": [],
            "a truncated record segment": segs[:r0] + [segs[r0][:-1]] + segs[r0 + 1:],
            "a truncated index segment": segs[:i0] + [segs[i0][:-1]] + segs[i0 + 1:],
            "an empty segment": segs[:3] + [b""] + segs[4:],
            "an oversized segment": segs[:3] + [segs[3] + b"\\0"] + segs[4:],
            "index and records swapped": segs[i0:] + segs[:i0],
        }
        for name, ss in cases.items():
            try:
                ReflexTable.attach(h, ss)
            except CorruptionError:
                continue
            raise SystemExit(f"accepted {name}")
        image = t.to_bytes()
        for cut in (0, 50, 256, 257, len(image) - 1):
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
    ''', timeout=180)


def test_garbage_segments_terminate_and_report_corruption():
    run_child('''
        t, states = build(capacity=700, n=500, rps=64, eps=64)
        h = t.header()
        g = t.geometry
        rng = np.random.default_rng(5)
        lens = g.segment_lengths()
        patterns = {
            "random bytes": [rng.integers(0, 256, n, dtype=np.uint8) for n in lens],
            "all 0xFF": [np.full(n, 0xFF, np.uint8) for n in lens],
        }
        # every index entry occupied at the largest distance, naming live records, one tag
        recs = [np.array(s) for s in t.all_segments()[:g.record_segments]]
        full = np.zeros((g.index_segments, g.entries_per_segment, 8), np.uint8)
        full[:, :, 0] = 3           # record 3
        full[:, :, 6] = 255         # dist 255
        patterns["every entry at dist 255"] = recs + list(full.reshape(g.index_segments, -1))
        rnd = rng.integers(0, 256, (g.index_segments, g.entries_per_segment, 8), dtype=np.uint8)
        rnd[:, :, 1:4] = 0          # record numbers below 256: live records
        patterns["random entries naming live records"] = recs + list(rnd.reshape(g.index_segments, -1))
        for name, segs in patterns.items():
            for writable in (False, True):
                tt = ReflexTable.attach(h, [np.array(s) for s in segs], writable=writable)
                exercise(tt, states)
                try:
                    tt.check()
                except CorruptionError:
                    continue
                raise SystemExit(f"check() accepted {name}")
    ''', timeout=180)


def test_a_bad_record_or_index_entry_is_reported_with_its_segment_and_offset():
    run_child('''
        t, states = build(capacity=200, n=150, rps=16, eps=16)
        h = t.header()
        g = t.geometry
        clean = [bytearray(b) for b in t.all_segments()]
        # a record: reserved bytes 56..63 of record 37
        segs = [bytearray(b) for b in clean]
        segs[37 // 16][(37 % 16) * RECORD_SIZE + 60] = 1
        try:
            ReflexTable.attach(h, segs).check()
            raise SystemExit("check() accepted a dirty reserved field")
        except CorruptionError as exc:
            assert exc.path == f"reflex segment {37 // 16} (record)" and exc.offset == (37 % 16) * RECORD_SIZE, exc
        # an index entry: the one naming record 5, its zero byte set
        index = np.concatenate([np.frombuffer(bytes(b), np.uint8) for b in clean[g.record_segments:]]).reshape(-1, 8)
        j = int(np.flatnonzero((index[:, 6] != 0) & (index[:, :4].copy().view("<u4")[:, 0] == 5))[0])
        segs = [bytearray(b) for b in clean]
        segs[g.record_segments + j // 16][(j % 16) * ENTRY_SIZE + 7] = 1
        try:
            ReflexTable.attach(h, segs).check()
            raise SystemExit("check() accepted a bad entry")
        except CorruptionError as exc:
            assert exc.path == f"reflex segment {g.record_segments + j // 16} (index)", exc.path
            assert exc.offset == (j % 16) * ENTRY_SIZE, exc.offset
        # an entry naming a record beyond the live count: lookups report it, never read it
        segs = [bytearray(b) for b in clean]
        struct.pack_into("<I", segs[g.record_segments + j // 16], (j % 16) * ENTRY_SIZE, 10**6)
        tt = ReflexTable.attach(h, segs)
        try:
            tt.lookup_batch(states)
            raise SystemExit("a lookup followed an entry beyond the live count")
        except CorruptionError:
            pass
    ''')


def test_a_live_count_that_disagrees_with_the_records_fails_check():
    run_child('''
        t, states = build()
        h = patch(t.header(), "<Q", 48, len(t) - 1)
        tt = ReflexTable.attach(h, [bytes(b) for b in t.all_segments()])
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
            hh[int(rng.integers(256))] ^= 1 << int(rng.integers(8))
            try:
                ReflexTable.attach(bytes(hh), segs)
            except (CorruptionError, FormatVersionError):
                continue
            raise SystemExit("a flipped header bit went unnoticed")
    ''')
