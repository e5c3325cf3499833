"""Known outcomes: idempotency keys, ``store.outcome(key)`` and what a failed commit says.

Each answer of ``outcome()`` is reached on purpose; duplicates are shown not to be applied
(events, which a second apply would append again, are the witness); the ``outcomes``
database is read straight from LMDB (a second handle of the LMDB layer, not through the
store) so that a symmetric bug of writer and reader cannot hide.
"""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
import xxhash
from conftest import make_tokens

import ngstore
from ngstore import Outcome
from ngstore.experience import new_events
from ngstore.fileio import Buffer, FileIO
from ngstore.kv import KV, ReadTxn
from ngstore.layout import DB_OUTCOMES, OUTCOMES_HEADER_KEY, KnownOutcome, OutcomesHeader, outcome_key
from ngstore.ops import (
    OP_EVENT_APPEND,
    OP_OUTCOME_KEY,
    OP_TOKEN_PUT,
    Op,
    batch_key,
    decode_ops,
    encode_ops,
    outcome_key_op,
)
from ngstore.outcomes import key_digest

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)


def events(n: int, step: int = 0) -> np.ndarray:
    return new_events(n, event_type=3, step=step, timestamp_us=1_700_000_000_000_000 + step,
                      event_id=np.arange(n) + 1000 * step + 1)


def raw_outcomes(path: str) -> tuple[OutcomesHeader, dict[bytes, KnownOutcome], list[tuple[int, bytes]]]:
    """The ``outcomes`` database as LMDB holds it: header, digest -> outcome, order index."""
    kv = KV(path, readonly=True)
    try:
        with ReadTxn(kv) as txn:
            head = OutcomesHeader()
            known: dict[bytes, KnownOutcome] = {}
            order: list[tuple[int, bytes]] = []
            for k, v in txn.cursor(db=kv.dbs[DB_OUTCOMES]):
                k = bytes(k)
                if k == OUTCOMES_HEADER_KEY:
                    head = OutcomesHeader.decode(v, "test")
                elif k[:1] == b"K":
                    known[k[1:]] = KnownOutcome.decode(v, "test")
                else:
                    order.append((int.from_bytes(k[1:], "big"), bytes(v)))
            return head, known, order
    finally:
        kv.close()


class LogFaults(FileIO):
    """A file seam that, once armed, fails the next write or fdatasync of a log segment."""

    def __init__(self) -> None:
        self.fail: str | None = None  # "write" or "fdatasync"
        self.paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def _armed(self, kind: str, fd: int) -> bool:
        if self.fail == kind and self.paths.get(fd, "").endswith(".wal"):
            self.fail = None
            return True
        return False

    def pwritev(self, fd: int, buffers: list[Buffer], offset: int) -> None:  # type: ignore[override]
        if self._armed("write", fd):
            raise OSError(errno.EIO, "injected EIO on the log's write")
        super().pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        if self._armed("fdatasync", fd):
            raise OSError(errno.EIO, "injected EIO on the log's fdatasync")
        super().fdatasync(fd)


# -- keys -------------------------------------------------------------------------------

def test_a_key_is_1_to_256_bytes_or_a_str_of_as_many_utf8_bytes(store):
    for bad in (b"", b"x" * 257, "é" * 129, 17, None.__class__, bytearray()):
        with pytest.raises(ngstore.InvalidArgumentError):
            store.batch(key=bad)  # type: ignore[arg-type]
        with pytest.raises(ngstore.InvalidArgumentError):
            store.outcome(bad)  # type: ignore[arg-type]
    store.put_tokens(make_tokens([1]), key="é" * 128)  # 256 bytes
    assert store.outcome("é".encode() * 128) is Outcome.COMMITTED
    store.put_tokens(make_tokens([2]), key=bytearray(b"k"))
    assert store.outcome(b"k") is Outcome.COMMITTED and store.outcome(memoryview(b"k")) is Outcome.COMMITTED


def test_the_store_holds_the_keys_digest_never_the_key(store_path):
    key = b"order-4711-" + bytes(range(40))
    with ngstore.open(store_path, **OPEN) as s:
        s.put_tokens(make_tokens([1]), key=key)
        position = s.put_tokens(make_tokens([2]))
    assert key_digest(key) == xxhash.xxh3_128_digest(key) and len(key_digest(key)) == 16
    head, known, order = raw_outcomes(store_path)
    assert list(known) == [xxhash.xxh3_128_digest(key)]
    assert known[xxhash.xxh3_128_digest(key)] == KnownOutcome(position - 1, 0, None)
    assert order == [(0, xxhash.xxh3_128_digest(key))] and head == OutcomesHeader(1, 1)
    with open(os.path.join(store_path, "data.mdb"), "rb") as f:
        assert key not in f.read()


def test_a_batch_holds_one_key_op_of_one_item_as_its_first_op():
    op = outcome_key_op(key_digest(b"k"), 7)
    tokens = Op(OP_TOKEN_PUT, make_tokens([1]))
    ops = decode_ops(encode_ops([op, tokens]))
    assert [o.kind for o in ops] == [OP_OUTCOME_KEY, OP_TOKEN_PUT]
    assert batch_key(ops) == (key_digest(b"k"), 7) and batch_key([tokens]) is None
    two = Op(OP_OUTCOME_KEY, np.concatenate([op.data, op.data]))
    zero = Op.of_bytes(OP_OUTCOME_KEY, key_digest(b"k") + bytes(8))
    for bad in ([tokens, op], [two], [op, op], [zero]):
        with pytest.raises(ngstore.CorruptionError):
            batch_key(decode_ops(encode_ops(bad)))



def test_the_api_key_op_holds_what_its_body_says_and_two_ops_encode_as_any_batch_does():
    # The writer reads a KeyOp's digest instead of unpacking its body, and encode_ops has a
    # path of its own for two ops: both must agree with the general format (format.md §5).
    op = outcome_key_op(key_digest("order-17"), 3)
    assert (op.digest, op.remember) == batch_key([op]) == (key_digest("order-17"), 3)
    tokens = Op(OP_TOKEN_PUT, make_tokens([1, 2, 3]))
    events = Op(OP_EVENT_APPEND, new_events(2, event_type=1))
    for pair in ([op, tokens], [tokens, events], [op, events]):
        payload = encode_ops(pair)
        general = encode_ops([*pair, Op(OP_TOKEN_PUT, make_tokens([9]))])  # three ops: the general path
        assert payload[8:] == general[8:len(payload)]  # the same op heads and bodies, in order
        back = decode_ops(payload)
        assert [(o.kind, o.count, o.body()) for o in back] == [(o.kind, o.count, o.body()) for o in pair]
    with pytest.raises(AssertionError):
        encode_ops([op, Op.whole(OP_TOKEN_PUT, bytes(64), 2)])  # a body that is not its items


# -- the three answers -------------------------------------------------------------------

def test_a_key_never_given_to_a_store_that_forgot_none_is_not_committed(store):
    assert store.outcome(b"never") is Outcome.NOT_COMMITTED
    store.put_tokens(make_tokens([1]), key=b"given")
    assert store.outcome(b"never") is Outcome.NOT_COMMITTED
    assert store.outcome(b"given") is Outcome.COMMITTED


def test_a_key_pending_in_the_overlay_is_committed(store_path):
    with ngstore.open(store_path, **OPEN, apply_interval=3600.0) as s:
        s.write_events(events(2), key=b"pending", durability="none")
        overlay = s._writer.overlay  # type: ignore[union-attr]
        assert overlay.entries == 1 and overlay.key(key_digest(b"pending")) is not None  # not in LMDB yet
        assert s.outcome(b"pending") is Outcome.COMMITTED
        assert s._writer.lookup_key(key_digest(b"pending")) is None  # type: ignore[union-attr]
        assert s.write_events(events(2), key=b"pending") == 0  # and a retry sees it there
        assert s.stats()["events_live"] == 2


def test_a_keyed_token_batch_is_written_once_whether_its_original_is_pending_or_applied(store_path):
    # A keyed batch of token ops alone is committed by a committer that finds no leader
    # (the solo path): its key is looked up in the overlay, then in LMDB, as in a group.
    with ngstore.open(store_path, **OPEN, apply_interval=3600.0) as s:
        writer = s._writer
        assert writer is not None
        digest = key_digest(b"tok")
        position = s.put_tokens(make_tokens([1]), key=b"tok", durability="none")
        assert writer.overlay.key(digest) is not None and writer.lookup_key(digest) is None  # pending
        written = writer.stats_counters["wal_records_written_total"]  # (stats() would apply the overlay)
        with s.batch(key=b"tok", durability="none") as b:
            b.put_tokens(make_tokens([2]))
        # answered with the original's position once the original is applied (visible)
        assert b.already_committed and b.position == position
        assert writer.overlay.key(digest) is None and writer.lookup_key(digest) is not None
        with s.batch(key=b"tok") as b2:  # now found in LMDB
            b2.put_tokens(make_tokens([3]))
        assert b2.already_committed and b2.position == position
        stats = s.stats()
        assert stats["wal_records_written_total"] == written  # neither retry wrote a record
        assert stats["commits_already_committed_total"] == 2
        assert 1 in s and 2 not in s and 3 not in s


def test_a_key_beyond_the_window_is_unknown_and_so_is_any_absent_key_once_one_was_forgotten(store_path):
    with ngstore.open(store_path, **OPEN, remember_keys=2) as s:
        for k in (b"a", b"b"):
            s.put_tokens(make_tokens([1]), key=k)
        s.check()  # applied: nothing forgotten yet
        assert s.outcome(b"never") is Outcome.NOT_COMMITTED
        s.put_tokens(make_tokens([1]), key=b"c")
        assert s.check().facts["outcome_keys_forgotten"] == 1
        assert s.outcome(b"a") is Outcome.UNKNOWN_KEY
        assert s.outcome(b"never") is Outcome.UNKNOWN_KEY
        assert s.outcome(b"b") is Outcome.COMMITTED and s.outcome(b"c") is Outcome.COMMITTED


def test_a_read_only_handle_answers_committed_or_unknown_never_not_committed(store_path):
    with ngstore.open(store_path, **OPEN) as s:
        s.put_tokens(make_tokens([1]), key=b"k")
    with ngstore.open(store_path, readonly=True, **OPEN) as r:
        assert r.outcome(b"k") is Outcome.COMMITTED
        assert r.outcome(b"other") is Outcome.UNKNOWN_KEY


def test_keys_are_off_with_remember_keys_0_but_outcome_still_answers(store_path):
    with ngstore.open(store_path, **OPEN) as s:
        s.put_tokens(make_tokens([1]), key=b"k")
    with ngstore.open(store_path, **OPEN, remember_keys=0) as s:
        with pytest.raises(ngstore.InvalidArgumentError, match="remember_keys=0"):
            s.put_tokens(make_tokens([2]), key=b"j")
        with pytest.raises(ngstore.InvalidArgumentError):
            s.batch(key=b"j")
        assert s.outcome(b"k") is Outcome.COMMITTED and 2 not in s
    for bad in (-1, 1.5, True, (1 << 32) + 1):
        with pytest.raises(ngstore.InvalidArgumentError):
            ngstore.Options(remember_keys=bad)


# -- committed at most once ----------------------------------------------------------------

def test_a_retried_keyed_batch_is_not_applied_again(store):
    first = store.write_events(events(3), key=b"once")
    assert store.write_events(events(3, step=1), key=b"once") == first
    with store.batch(key=b"once") as b:
        b.append_events(events(5))
        b.put_tokens(make_tokens([9]))
    assert b.already_committed and b.first_event == first
    assert store.stats()["events_live"] == 3 and 9 not in store
    assert store.stats()["commits_already_committed_total"] == 2
    with store.batch(key=b"twice") as b2:
        b2.append_events(events(1))
    assert not b2.already_committed and store.stats()["events_live"] == 4


def test_every_one_call_write_takes_a_key(store):
    conns = ngstore.Connection(1, 2).record
    calls = [lambda k: store.put_tokens(make_tokens([1, 2]), key=k),
             lambda k: store.delete_tokens([2], key=k),
             lambda k: store.put_connections(conns, key=k),
             lambda k: store.delete_connections([(1, 2, 0x50)], key=k),
             lambda k: store.write_events(events(1), key=k),
             lambda k: store.resize_reflexes(1000, key=k)]
    for i, call in enumerate(calls):
        first = call(f"call-{i}")
        assert store.outcome(f"call-{i}") is Outcome.COMMITTED
        assert call(f"call-{i}") == first  # the original's answer, nothing applied
    assert store.stats()["commits_already_committed_total"] == len(calls)
    assert store.stats()["events_live"] == 1 and store.count() == 1


def test_an_empty_keyed_batch_still_records_its_key(store):
    with store.batch(key=b"nothing") as b:
        pass
    assert store.outcome(b"nothing") is Outcome.COMMITTED and b.position is not None


class HeldSync(FileIO):
    """Holds the next log fdatasync at a gate once armed (so a group queues behind it)."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.gate.wait(30)
        super().fdatasync(fd)


def test_racing_commits_of_one_key_apply_once_in_one_group_or_across_groups(store_path):
    io = HeldSync()
    with ngstore.open(store_path, **OPEN, io=io) as s:
        io.armed = True
        blocker = threading.Thread(target=s.put_tokens, args=(make_tokens([1]),))
        blocker.start()  # leads, and waits in the log's fdatasync
        assert io.entered.wait(30)
        results: list[tuple[int, bool]] = []
        lock = threading.Lock()

        def commit() -> None:
            with s.batch(key=b"race") as b:
                b.append_events(events(2))
            with lock:
                results.append((b.position or 0, b.already_committed))

        threads = [threading.Thread(target=commit) for _ in range(8)]
        for t in threads:
            t.start()
        while len(s._writer._queue) < 8:  # type: ignore[union-attr]  # all queued: one group behind the leader
            threading.Event().wait(0.001)
        io.gate.set()
        for t in [blocker, *threads]:
            t.join(30)
        assert len(results) == 8
        assert len({pos for pos, _ in results}) == 1  # every one answered with the one position
        assert sorted(already for _, already in results) == [False] + [True] * 7
        s.write_events(events(2), key=b"race")  # a later group: found in the overlay or LMDB
        assert s.stats()["events_live"] == 2 and s.check().ok


def test_a_log_holding_one_key_twice_applies_it_once(store_path):
    """The writer never logs a key twice; if a log does (written here below the store), the
    apply skips the second as a duplicate -- at replay too."""
    from ngstore import wal

    with ngstore.open(store_path, **OPEN) as s:
        s.write_events(events(1), key=b"other")
        applied = s.stats()["applied_position"]
    payload = encode_ops([outcome_key_op(key_digest(b"dup"), 100), Op(OP_EVENT_APPEND, events(4))])
    log, _report = wal.Log.open(os.path.join(store_path, "wal"), start_after=applied)
    log.append([(wal.RECORD_BATCH, payload), (wal.RECORD_BATCH, payload)])
    log.sync()
    log.close()
    with ngstore.open(store_path, **OPEN) as s:
        assert s.recovery.replayed_records == 2
        assert s.stats()["events_live"] == 1 + 4
        assert s.outcome(b"dup") is Outcome.COMMITTED and s.check().ok
    _head, known, _order = raw_outcomes(store_path)
    assert known[key_digest(b"dup")].position == applied + 1  # the first record's


def test_a_keyed_batch_committed_straight_to_lmdb_is_not_applied_again(store_path):
    with ngstore.open(store_path, **OPEN, direct_threshold=4096) as s:
        big = events(64)  # 8 KiB of records: past direct_threshold, so no log record
        first = s.write_events(big, key=b"direct")
        assert s.stats()["direct_commits_total"] == 1 and s.outcome(b"direct") is Outcome.COMMITTED
        assert s.write_events(big, key=b"direct") == first
        assert s.stats()["direct_commits_total"] == 1 and s.stats()["events_live"] == 64
    with ngstore.open(store_path, **OPEN, direct_threshold=4096) as s:
        assert s.outcome(b"direct") is Outcome.COMMITTED and s.check().ok


# -- the window --------------------------------------------------------------------------

def test_the_oldest_keys_are_forgotten_first_and_the_window_is_the_records_own(store_path):
    with ngstore.open(store_path, **OPEN, remember_keys=3) as s:
        for i in range(6):
            s.write_events(events(1, step=i), key=f"k{i}")
        s.flush()  # a key is forgotten once the batches that push it out are in LMDB
        assert [s.outcome(f"k{i}") for i in range(6)] == [Outcome.UNKNOWN_KEY] * 3 + [Outcome.COMMITTED] * 3
    head, known, order = raw_outcomes(store_path)
    assert head == OutcomesHeader(next_seq=6, held=3)
    assert order == [(i, key_digest(f"k{i}")) for i in (3, 4, 5)]
    assert {d: (o.sequence, o.first_event) for d, o in known.items()} == {
        key_digest(f"k{i}"): (i, i) for i in (3, 4, 5)}
    with ngstore.open(store_path, **OPEN, remember_keys=5) as s:  # a wider window from now on
        s.write_events(events(1, step=9), key=b"k9")
        assert s.outcome(b"k3") is Outcome.COMMITTED and s.check().facts["outcome_keys"] == 4
    with ngstore.open(store_path, **OPEN, remember_keys=1) as s:  # narrower: the next key trims to it
        s.write_events(events(1, step=10), key=b"k10")
        assert s.check().facts["outcome_keys"] == 1 and s.outcome(b"k9") is Outcome.UNKNOWN_KEY


def test_check_finds_an_order_index_that_disagrees_with_the_digests(store_path):
    import lmdb

    with ngstore.open(store_path, **OPEN) as s:
        for k in (b"a", b"b"):
            s.put_tokens(make_tokens([1]), key=k)
    env = lmdb.open(store_path, max_dbs=16, subdir=True)
    with env.begin(write=True) as txn:
        db = env.open_db(DB_OUTCOMES, txn=txn)
        txn.put(b"Q" + (1).to_bytes(8, "big"), key_digest(b"zzz"), db=db)  # names the wrong digest
        txn.delete(outcome_key(key_digest(b"a")), db=db)                  # a digest without its entry
    env.close()
    with ngstore.open(store_path, **OPEN) as s:
        report = s.check()
    assert not report.ok
    text = "\n".join(report.problems)
    assert "order entry 1 names" in text and "order entry 0 names" in text and "holds 2 keys" in text


# -- what a failed commit says -------------------------------------------------------------

def test_a_refused_keyed_batch_says_nothing_was_written_and_is_not_committed(store_path):
    with ngstore.open(store_path, **dict(OPEN, max_tokens=2)) as s:
        with pytest.raises(ngstore.QuotaExceededError) as exc:
            s.put_tokens(make_tokens([1, 2, 3]), key=b"big")
        assert exc.value.outcome_known is True and exc.value.committed is False
        assert s.outcome(b"big") is Outcome.NOT_COMMITTED
        with pytest.raises(ngstore.InvalidArgumentError) as bad:
            s.put_tokens(make_tokens([1]), key=b"")
        assert bad.value.outcome_known is True and bad.value.committed is False
        assert s.put_tokens(make_tokens([1, 2]), key=b"big") >= 1  # a retry within the quota
        assert s.outcome(b"big") is Outcome.COMMITTED


def test_a_failed_log_sync_says_the_outcome_is_unknown_until_reopened(store_path):
    io = LogFaults()
    s = ngstore.open(store_path, **OPEN, io=io)
    s.write_events(events(2), key=b"before")
    io.fail = "fdatasync"
    with pytest.raises(ngstore.OutcomeUnknownError) as exc:
        s.write_events(events(2, step=1), key=b"synced?")
    e = exc.value
    assert e.outcome_known is False and e.committed is None and e.position is not None
    assert "store.outcome(key) after reopening" in str(e) and e.errno == errno.EIO
    with pytest.raises(ngstore.NgStoreError, match="open it again") as later:
        s.outcome(b"synced?")
    with pytest.raises(ngstore.NgStoreError) as refused:
        s.write_events(events(1), key=b"after")
    assert refused.value.outcome_known is True and refused.value.committed is False
    assert later.value.outcome_known is None  # not a commit's error
    s.close()
    with ngstore.open(store_path, **OPEN) as s:  # the record reached the page cache: recovery keeps it
        assert s.outcome(b"synced?") is Outcome.COMMITTED and s.outcome(b"after") is Outcome.NOT_COMMITTED
        s.write_events(events(2, step=1), key=b"synced?")
        assert s.stats()["events_live"] == 4


def test_a_failed_log_write_says_the_outcome_is_unknown_without_a_position(store_path):
    io = LogFaults()
    s = ngstore.open(store_path, **OPEN, io=io)
    io.fail = "write"
    with pytest.raises(ngstore.OutcomeUnknownError) as exc:
        s.write_events(events(2), key=b"written?")
    assert exc.value.position is None and exc.value.outcome_known is False
    s.close()
    with ngstore.open(store_path, **OPEN) as s:  # nothing reached the file here: not committed
        assert s.outcome(b"written?") is Outcome.NOT_COMMITTED and s.stats()["events_live"] == 0


# -- asyncio -------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_aio_commits_take_keys_and_answer_outcomes(store_path):
    import ngstore.aio

    async with await ngstore.aio.open(store_path, **OPEN) as db:
        assert await db.outcome(b"a") is Outcome.NOT_COMMITTED
        first = await db.write_events(events(3), key=b"a")
        assert await db.outcome(b"a") is Outcome.COMMITTED
        again = db.write_events(events(3, step=1), key=b"a")
        assert await again == first and again.commit_result.already_committed
        position = await db.put_tokens(make_tokens([1]), key="t")
        assert await db.put_tokens(make_tokens([2]), key="t") == position and not await db.contains(2)
        async with db.batch(key=b"b") as b:
            b.append_events(events(2, step=2))
        async with db.batch(key=b"b") as b2:
            b2.append_events(events(2, step=2))
        assert b2.outcome is not None and b2.outcome.commit_result.already_committed
        with pytest.raises(ngstore.InvalidArgumentError):
            db.put_tokens(make_tokens([3]), key=b"")
        assert (await db.stats())["events_live"] == 5


def test_a_store_from_before_the_outcomes_database_gets_it_from_its_next_writer(store_path):
    import lmdb

    with ngstore.open(store_path, **OPEN) as s:
        s.put_tokens(make_tokens([1]))
    env = lmdb.open(store_path, max_dbs=32, subdir=True)  # the store as an older version made it
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(DB_OUTCOMES, txn=txn), delete=True)
    env.close()
    with ngstore.open(store_path, readonly=True, **OPEN) as r:  # no database: no key known
        assert r.outcome(b"k") is Outcome.UNKNOWN_KEY and r.check().ok
    with ngstore.open(store_path, **OPEN) as s:  # the writer creates it, empty
        assert s.outcome(b"k") is Outcome.NOT_COMMITTED
        s.put_tokens(make_tokens([2]), key=b"k")
        assert s.outcome(b"k") is Outcome.COMMITTED and s.check().ok
