"""The overlay's token index in two generations (the entries the applier took, and those
added since): a point read through the writer sees the newest pending write of a token
whatever the applier has taken, applied or taken again after a failed apply, and an
applied write is forgotten once its drop comes."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tokens

from ngstore.ops import OP_TOKEN_DELETE, OP_TOKEN_PUT, Op, encode_ops, token_writes
from ngstore.overlay import Overlay


def _batch(rng: np.random.Generator, ids: int) -> list[Op]:
    if rng.random() < 0.2:
        dead = rng.choice(ids, int(rng.integers(1, 3)), replace=False).astype("<u4")
        return [Op.of_bytes(OP_TOKEN_DELETE, dead.tobytes())]
    toks = make_tokens(rng.choice(ids, int(rng.integers(1, 4)), replace=False))
    toks["weight"] = rng.random(len(toks), dtype=np.float32)
    return [Op.of_bytes(OP_TOKEN_PUT, toks.tobytes())]


@pytest.mark.parametrize("seed", range(8))
def test_point_reads_see_the_newest_pending_write_through_takes_retakes_and_drops(seed):
    rng = np.random.default_rng(seed)
    ids = 40
    o = Overlay(1 << 30)
    newest: dict[int, tuple[int, bytes | None]] = {}  # every write's newest, applied or not
    dropped = 0  # every write at or below this position is in LMDB (and dropped)
    taken = 0  # the position of the last take
    pos = 0

    def check() -> None:
        for tid in range(ids):
            at, record = newest.get(tid, (0, None))
            expected = (True, record) if at > dropped else (False, None)
            assert o.token(tid) == expected, (tid, at, dropped)

    for _step in range(400):
        r = rng.random()
        if r < 0.6:
            pos += 1
            ops = _batch(rng, ids)
            writes = token_writes(ops, 1 << 20)
            assert writes is not None
            o.add(pos, ops, encode_ops(ops), writes)
            for tid, record in writes:
                newest[tid] = (pos, record)
        elif r < 0.75:
            if o.take().log_entries:  # again after a take whose apply "failed": no drop came
                taken = pos
        elif r < 0.9 and taken > dropped:  # the applier's drop of what it took
            o.drop(taken)
            dropped = taken
        elif pos > dropped:  # a drop at another position, above or below the last take
            through = int(rng.integers(dropped, pos + 1))
            o.drop(through)
            dropped = through
        check()
    o.drop(pos)
    dropped = pos
    check()
    assert o.entries == 0 and o.bytes == 0 and o.memory_bytes == 0


def test_the_applied_generation_is_forgotten_and_newer_writes_stay():
    o = Overlay(1 << 30)

    def put(pos: int, tid: int, weight: float) -> bytes:
        toks = make_tokens([tid])
        toks["weight"] = weight
        ops = [Op.of_bytes(OP_TOKEN_PUT, toks.tobytes())]
        writes = token_writes(ops, 16)
        assert writes is not None
        o.add(pos, ops, encode_ops(ops), writes)
        return toks.tobytes()

    put(1, 5, 1.0)
    put(2, 6, 1.0)
    o.take()
    newer = put(3, 5, 2.0)  # after the take: a newer write of token 5
    put(4, 7, 1.0)
    o.drop(2)
    assert o.token(5) == (True, newer)
    assert o.token(6) == (False, None)
    assert o.token(7)[0]
    assert o.entries == 2
    o.take()
    o.drop(4)
    assert [o.token(t) for t in (5, 6, 7)] == [(False, None)] * 3
    assert o.memory_bytes == 0
