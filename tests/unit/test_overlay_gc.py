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
