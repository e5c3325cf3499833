"""Corrupted logs: every single-byte change, every truncation, and byte surgery.

The rule under test (docs/format.md §6.5): a bad point with no evidence of durability
after it is a torn tail (truncated, the log is a prefix); with evidence it is corruption
(tolerate-tail raises CorruptionError naming file and offset; salvage skips it and returns
a subset in order; strict raises on either).
"""
from __future__ import annotations

import os
import random
import shutil
import struct
import zlib

import pytest
from walfaults import NoSyncIO

from ngstore import wal, waltools
from ngstore.errors import CorruptionError

B = wal.BATCH
FH = wal.FRAME_HEADER_SIZE
SH = wal.SEGMENT_HEADER_SIZE
IO = NoSyncIO()

#: 9 records of 20..36 bytes, a sync after each, segments of ≤ 3 records, 64-byte runway.
RECORDS = [bytes([65 + i]) * (20 + 2 * i) for i in range(9)]
XORS = (0xFF, 0x01, 0x80)
#: 3 xor patterns + 1 zeroing per byte, plus one truncation per byte; see the count test.
EXPECTED_CASES = 3660  # 5 per byte of the 732-byte pristine log


def build_log(d: str, records=RECORDS, sync_each: bool = True, salt_seed: int = 99) -> None:
    """Seeded salts so every run checks the same bytes."""
    rng = random.Random(salt_seed)
    saved = wal.new_salt
    wal.new_salt = lambda: rng.getrandbits(64) | 1
    try:
        log, _ = wal.Log.open(d, io=IO, segment_bytes=270, preallocate_bytes=64)
        for r in records:
            log.append([(B, r)])
            if sync_each:
                log.sync()
        log.close()
    finally:
        wal.new_salt = saved


def files_of(d: str) -> dict[str, bytes]:
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


def write_files(d: str, files: dict[str, bytes]) -> None:
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    for n, data in files.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(data)


def recover(d: str, mode: str) -> list[tuple[int, bytes]]:
    log, _ = wal.Log.open(d, io=IO, recovery=mode)
    try:
        return [(r.position, r.payload) for r in log.iter_records()]
    finally:
        log.close()


def refix_crc(buf: bytearray, off: int) -> None:
    length = struct.unpack_from("<I", buf, off + 4)[0]
    buf[off:off + 4] = struct.pack("<I", zlib.crc32(bytes(buf[off + 4:off + FH + length])))


def frame_offsets(data: bytes) -> list[int]:
    offs, off = [], SH
    while off + FH <= len(data):
        length = struct.unpack_from("<I", data, off + 4)[0]
        if struct.unpack_from("<Q", data, off + 16)[0] == 0:
            break
        offs.append(off)
        off += FH + length
    return offs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, bytes]:
    d = str(tmp_path_factory.mktemp("pristine") / "wal")
    build_log(d)
    files = files_of(d)
    assert len(files) == 3
    return files


def check_case(d: str, files: dict[str, bytes], damaged: str, truncated: bool = False) -> None:
    """The assertions every damaged state must satisfy, in all three modes."""
    n = len(RECORDS)
    names = sorted(files)
    in_sealed = damaged != names[-1]
    expected = list(enumerate(RECORDS, start=1))
    # tolerate-tail: a prefix, or a CorruptionError naming a file of the log and an offset
    write_files(d, files)
    try:
        got = recover(d, "tolerate-tail")
    except CorruptionError as e:
        assert e.path is not None and os.path.dirname(e.path) == d and e.offset is not None
    else:
        assert got == expected[:len(got)], "tolerate-tail must recover a prefix"
        # only the newest segment can lose anything, and only its final unproven record
        assert not in_sealed or got == expected, "damage in a sealed segment is never a torn tail"
        if not truncated:  # a changed byte costs at most the final record
            assert len(got) >= n - 1
    # strict: everything or an error
    write_files(d, files)
    try:
        got = recover(d, "strict")
    except CorruptionError as e:
        assert e.path is not None and e.offset is not None
    else:  # (a cut exactly at a frame boundary looks like records never written)
        assert got == expected or (truncated and got == expected[:len(got)])
    # salvage: never raises on damaged data; returns a subset, in order, each intact
    write_files(d, files)
    got = recover(d, "salvage")
    assert got == sorted(got) and all(p in dict(expected) and dict(expected)[p] == b for p, b in got)
    if not truncated:
        assert len(got) >= n - 3  # one damaged spot costs at most one segment's records


def test_every_single_byte_change_and_every_truncation_is_a_torn_tail_or_reported(pristine, tmp_path, capsys):
    d = str(tmp_path / "wal")
    cases = 0
    for name, data in pristine.items():
        for off in range(len(data)):
            for x in XORS:
                buf = bytearray(data)
                buf[off] ^= x
                check_case(d, {**pristine, name: bytes(buf)}, name)
                cases += 1
            if data[off] != 0:
                buf = bytearray(data)
                buf[off] = 0
            else:
                buf = bytearray(data)
                buf[off] = 0x5A
            check_case(d, {**pristine, name: bytes(buf)}, name)
            cases += 1
            check_case(d, {**pristine, name: data[:off]}, name, truncated=True)
            cases += 1
    with capsys.disabled():
        print(f"\n[wal corruption matrix] {cases} damaged logs checked in 3 recovery modes")
    assert cases == EXPECTED_CASES == 5 * sum(len(v) for v in pristine.values())


def test_a_pristine_log_recovers_completely_in_every_mode(pristine, tmp_path):
    d = str(tmp_path / "wal")
    for mode in wal.RECOVERY_MODES:
        write_files(d, pristine)
        assert recover(d, mode) == list(enumerate(RECORDS, start=1))


# ------------------------------------------------------------------------ byte surgery --
def surgery(pristine: dict[str, bytes], seg: int, frame: int, edit) -> tuple[dict[str, bytes], str, int]:
    names = sorted(pristine)
    buf = bytearray(pristine[names[seg]])
    off = frame_offsets(bytes(buf))[frame]
    edit(buf, off)
    return {**pristine, names[seg]: bytes(buf)}, names[seg], off


def expect_corruption(d, files, name, off, reason_part, salvage_loses_records=True):
    write_files(d, files)
    with pytest.raises(CorruptionError) as ei:
        recover(d, "tolerate-tail")
    assert ei.value.path == os.path.join(d, name) and ei.value.offset == off
    assert reason_part in ei.value.reason
    write_files(d, files)
    got = recover(d, "salvage")
    assert got == sorted(got) and (len(got) < len(RECORDS)) == salvage_loses_records
    log, rep = wal.Log.open(d, io=IO, recovery="salvage")  # second salvage open is fine too
    assert rep.skipped
    log.close()
    v = waltools.verify(d)
    assert not v.sound and any(p.kind == "corruption" for p in v.problems)


def test_a_length_too_large_with_valid_records_after_it_is_corruption(pristine, tmp_path):
    def edit(buf, off):
        buf[off + 4:off + 8] = struct.pack("<I", 0xFFFFFFFF)
    files, name, off = surgery(pristine, 1, 1, edit)
    expect_corruption(str(tmp_path / "wal"), files, name, off, "exceeds the limit")


def test_a_length_too_small_with_the_crc_refixed_is_caught_at_the_next_frame(pristine, tmp_path):
    def edit(buf, off):
        length = struct.unpack_from("<I", buf, off + 4)[0]
        buf[off + 4:off + 8] = struct.pack("<I", length - 10)
        buf[off + 36:off + 40] = struct.pack("<I", length - 10)
        refix_crc(buf, off)
    files, name, off = surgery(pristine, 1, 0, edit)
    length = struct.unpack_from("<I", files[name], off + 4)[0]
    # the shortened frame is self-consistent (its CRC was re-fixed): salvage keeps it and
    # resynchronises on the next frame; nothing positional is lost
    expect_corruption(str(tmp_path / "wal"), files, name, off + FH + length, "",
                      salvage_loses_records=False)


def test_an_unknown_record_type_with_a_valid_crc_is_corruption(pristine, tmp_path):
    def edit(buf, off):
        buf[off + 32] = 7
        refix_crc(buf, off)
    files, name, off = surgery(pristine, 0, 1, edit)
    expect_corruption(str(tmp_path / "wal"), files, name, off, "unknown record type 7")


def test_reserved_flag_bits_with_a_valid_crc_are_corruption(pristine, tmp_path):
    def edit(buf, off):
        buf[off + 33] = 0x40
        refix_crc(buf, off)
    files, name, off = surgery(pristine, 2, 0, edit)
    expect_corruption(str(tmp_path / "wal"), files, name, off, "reserved flag")


def test_a_record_with_another_segments_salt_is_stale_and_never_valid(pristine, tmp_path):
    other_salt = struct.unpack_from("<Q", pristine[sorted(pristine)[0]], 16)[0]

    def edit(buf, off):
        buf[off + 8:off + 16] = struct.pack("<Q", other_salt)
        refix_crc(buf, off)
    files, name, off = surgery(pristine, 1, 1, edit)
    expect_corruption(str(tmp_path / "wal"), files, name, off, "stale record")


def test_a_non_consecutive_position_with_a_valid_crc_is_corruption(pristine, tmp_path):
    def edit(buf, off):
        pos = struct.unpack_from("<Q", buf, off + 16)[0]
        buf[off + 16:off + 24] = struct.pack("<Q", pos + 1)
        refix_crc(buf, off)
    files, name, off = surgery(pristine, 0, 1, edit)
    expect_corruption(str(tmp_path / "wal"), files, name, off, "non-consecutive position")


def test_a_synced_watermark_not_below_the_position_is_corruption(pristine, tmp_path):
    def edit(buf, off):
        pos = struct.unpack_from("<Q", buf, off + 16)[0]
        buf[off + 24:off + 32] = struct.pack("<Q", pos)
        refix_crc(buf, off)
    files, name, off = surgery(pristine, 1, 0, edit)
    expect_corruption(str(tmp_path / "wal"), files, name, off, "synced watermark")


def test_a_segment_header_naming_another_first_position_is_corruption(pristine, tmp_path):
    name = sorted(pristine)[1]
    buf = bytearray(pristine[name])
    buf[24:32] = struct.pack("<Q", 99)
    buf[36:40] = struct.pack("<I", zlib.crc32(bytes(buf[:36])))
    d = str(tmp_path / "wal")
    write_files(d, {**pristine, name: bytes(buf)})
    with pytest.raises(CorruptionError) as ei:
        recover(d, "tolerate-tail")
    assert ei.value.offset == 0 and "file name" in ei.value.reason
    write_files(d, {**pristine, name: bytes(buf)})
    assert recover(d, "salvage") == list(enumerate(RECORDS, start=1))  # resynced on its frames


def test_a_record_from_an_older_generation_of_the_same_file_name_is_never_valid(tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    build_log(old, salt_seed=1)
    build_log(new, salt_seed=2)  # same names, same sizes, different salts
    name = sorted(os.listdir(new))[1]
    o, n = bytearray(files_of(old)[name]), bytearray(files_of(new)[name])
    offs = frame_offsets(bytes(n))
    # the middle frame of the new file replaced by the old generation's frame at that spot
    a, b = offs[1], offs[2]
    n[a:b] = o[a:b]
    d = str(tmp_path / "wal")
    expect_corruption(d, {**files_of(new), name: bytes(n)}, name, a, "stale record")
    # an old generation's tail beyond the new content: the log ends where the new one does
    last = sorted(os.listdir(new))[-1]
    nl = files_of(new)[last]
    end = frame_offsets(nl)[-1] + FH + len(RECORDS[-1])
    ol = bytearray(files_of(old)[last])
    stale_tail = nl[:end] + bytes(ol[end - FH - len(RECORDS[-1]):end])  # an old frame re-appearing
    write_files(d, {**files_of(new), last: stale_tail})
    assert recover(d, "tolerate-tail") == list(enumerate(RECORDS, start=1))


# ---------------------------------------------------- torn tail vs corruption, by proof --
def zero_frame(d: str, position: int) -> None:
    for s in waltools.dump(d):
        if s.position == position:
            with open(s.file, "r+b") as f:
                f.seek(s.offset)
                f.write(bytes(s.size))
            return
    raise AssertionError(position)


def test_a_lost_unsynced_write_followed_by_a_later_unsynced_one_is_a_torn_tail(tmp_path):
    """Two appends without a sync between them reached the disk out of order."""
    d = str(tmp_path / "wal")
    log, _ = wal.Log.open(d, io=IO)
    log.append([(B, b"a" * 30)])
    log.sync()
    log.append([(B, b"b" * 30)])
    log.append([(B, b"c" * 30)])  # framed with synced = 1
    log.close()
    zero_frame(d, 2)
    log, rep = wal.Log.open(d, io=IO)
    assert rep.torn_tail is not None and rep.torn_tail.discarded_records == 1
    assert [r.payload for r in log.iter_records()] == [b"a" * 30]
    assert log.append([(B, b"d")]) == [2]  # the discarded frame can never come back
    log.close()
    assert [r.payload for r in wal.Log.open(d, io=IO)[0].iter_records()] == [b"a" * 30, b"d"]


def test_a_hole_before_a_record_that_was_framed_after_a_sync_covering_it_is_corruption(tmp_path):
    d = str(tmp_path / "wal")
    log, _ = wal.Log.open(d, io=IO)
    log.append([(B, b"a" * 30)])
    log.sync()
    log.append([(B, b"b" * 30)])
    log.sync()
    log.append([(B, b"c" * 30)])  # framed with synced = 2: record 2 was durable
    log.close()
    zero_frame(d, 2)
    with pytest.raises(CorruptionError) as ei:
        wal.Log.open(d, io=IO)
    assert ei.value.offset == SH + FH + 30
    log, rep = wal.Log.open(d, io=IO, recovery="salvage")
    assert [r.position for r in log.iter_records()] == [1, 3]
    assert rep.skipped[0].lost == (2, 2)
    log.append([(B, b"d")])
    assert log.segment_count == 2  # salvage writes into a fresh segment
    log.drop_through(3)
    log.close()
    log, rep = wal.Log.open(d, io=IO, start_after=3)  # after the checkpoint the log is clean
    assert rep.clean and [r.payload for r in log.iter_records(3)] == [b"d"]
    log.close()


def test_salvage_skips_a_wholly_destroyed_middle_segment_and_a_checkpoint_cleans_it(tmp_path):
    d = str(tmp_path / "wal")
    build_log(d)
    names = sorted(os.listdir(d))
    victim = os.path.join(d, names[1])
    with open(victim, "r+b") as f:
        f.write(bytes(random.Random(5).randbytes(os.path.getsize(victim))))
    with pytest.raises(CorruptionError) as ei:
        wal.Log.open(d, io=IO)
    assert ei.value.path == victim and ei.value.offset == 0
    log, rep = wal.Log.open(d, io=IO, recovery="salvage")
    assert [r.position for r in log.iter_records()] == [1, 2, 3, 7, 8, 9]
    assert [p.lost for p in rep.skipped if p.lost] == [(4, 6)]
    assert log.append([(B, b"new")]) == [10]
    log.sync()
    log.drop_through(9)  # the store checkpoints after a salvage
    log.close()
    assert waltools.verify(d).clean
    log, rep = wal.Log.open(d, io=IO, recovery="strict", start_after=9)
    assert [r.payload for r in log.iter_records(9)] == [b"new"]
    log.close()
