"""The overlay holds tens of thousands of entries under sustained small commits; if each
were made of tracked objects, every full collection of the cyclic garbage collector would
walk them all. These tests hold that an entry, once the collector has looked at it, is not
tracked, and that the applier still gets the same ops back."""
from __future__ import annotations

import gc

import numpy as np
from conftest import make_tokens

from ngstore.ops import OP_CONNECTION_PUT, OP_TOKEN_DELETE, OP_TOKEN_PUT, Op, encode_ops, token_writes
from ngstore.overlay import Overlay
from ngstore.records import CONNECTION_DTYPE


def _batches() -> list[list[Op]]:
    conn = np.zeros(2, CONNECTION_DTYPE)
    conn["token_a"], conn["token_b"] = [1, 2], [3, 4]
    return [[Op.of_bytes(OP_TOKEN_PUT, make_tokens([i]).tobytes())] for i in range(50)] + [
        [Op.of_bytes(OP_TOKEN_DELETE, np.array([7, 8], "<u4").tobytes()),
         Op.of_bytes(OP_CONNECTION_PUT, conn.tobytes())],
        [Op(OP_TOKEN_PUT, make_tokens(np.arange(100, 200)))],  # an op without bytes at hand
    ]


def test_ordinary_entries_are_not_tracked_by_the_garbage_collector():
    o = Overlay(1 << 30)
    batches = _batches()
    for pos, ops in enumerate(batches, start=1):
        o.add(pos, ops, encode_ops(ops), token_writes(ops, 4096))
    gc.collect()  # one collection: entries are flat, so one look untracks each
    assert not any(gc.is_tracked(e) for e in o._entries)
    assert not any(gc.is_tracked(v) for v in o._tokens.values())


def test_the_applier_takes_the_ops_it_was_given():
    o = Overlay(1 << 30)
    batches = _batches()
    for pos, ops in enumerate(batches, start=1):
        o.add(pos, ops, encode_ops(ops), token_writes(ops, 4096))
    taken = o.take()
    assert (taken.log_entries, taken.first) == (len(batches), 1)
    # the 50 one-token puts come as one put at the run's last position; then the others
    assert [pos for pos, _ops in taken.entries] == [50, 51, 52]
    run = taken.entries[0][1]
    assert [op.kind for op in run] == [OP_TOKEN_PUT]
    assert run[0].data.tobytes() == b"".join(b[0].data.tobytes() for b in batches[:50])
    for (_pos, got), want in zip(taken.entries[1:], batches[50:], strict=True):
        assert [op.kind for op in got] == [op.kind for op in want]
        assert [op.data.tobytes() for op in got] == [op.data.tobytes() for op in want]
    assert o.pending.tokens == 50 + 100 and o.pending.connections == 2
    o.drop(len(batches))
    assert (o.pending.tokens, o.pending.connections, o.entries, o.bytes) == (0, 0, 0, 0)


def test_a_take_of_one_token_commits_only_gives_the_same_records_in_one_put():
    # All one-token puts: the heads are checked as one array, not one at a time.
    o = Overlay(1 << 30)
    tokens = make_tokens(np.arange(300, 340))
    for pos, t in enumerate(tokens, start=10):
        ops = [Op.of_bytes(OP_TOKEN_PUT, t.tobytes())]
        o.add(pos, ops, encode_ops(ops), token_writes(ops, 4096))
    taken = o.take()
    assert (taken.log_entries, taken.first) == (40, 10)
    ((pos, ops),) = taken.entries
    assert pos == 49 and [op.kind for op in ops] == [OP_TOKEN_PUT] and ops[0].count == 40
    assert ops[0].data.tobytes() == tokens.tobytes()


def test_a_one_connection_commit_of_a_one_token_commits_size_is_not_taken_for_a_token_put():
    # A one-connection payload has the length of a one-token payload, not its head.
    o = Overlay(1 << 30)
    conn = np.zeros(1, CONNECTION_DTYPE)
    conn["token_a"], conn["token_b"] = 1, 2
    batches = [[Op.of_bytes(OP_TOKEN_PUT, make_tokens([5]).tobytes())],
               [Op.of_bytes(OP_CONNECTION_PUT, conn.tobytes())],
               [Op.of_bytes(OP_TOKEN_PUT, make_tokens([6]).tobytes())]]
    for pos, ops in enumerate(batches, start=1):
        assert len(encode_ops(ops)) == len(encode_ops(batches[0]))
        o.add(pos, ops, encode_ops(ops), token_writes(ops, 4096))
    taken = o.take()
    assert [(pos, [op.kind for op in ops]) for pos, ops in taken.entries] == \
        [(1, [OP_TOKEN_PUT]), (2, [OP_CONNECTION_PUT]), (3, [OP_TOKEN_PUT])]
    assert taken.entries[1][1][0].data.tobytes() == conn.tobytes()


def test_drop_forgets_exactly_the_entries_through_a_position():
    o = Overlay(1 << 30)
    batches = _batches()
    for pos, ops in enumerate(batches, start=1):
        o.add(pos, ops, encode_ops(ops), token_writes(ops, 4096))
    sizes = [len(encode_ops(ops)) for ops in batches]
    o.drop(30)
    assert o.entries == len(batches) - 30 and o.bytes == sum(sizes[30:])
    assert o.pending.tokens == 20 + 100 and o.pending.connections == 2
    assert o.token(29) == (False, None) and o.token(30)[0] and o.token(150)[0]
    o.drop(0)  # nothing at or below it is left
    assert o.entries == len(batches) - 30
