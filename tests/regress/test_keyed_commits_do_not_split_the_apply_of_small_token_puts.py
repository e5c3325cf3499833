"""Keyed one-token commits between unkeyed ones are applied as one run of token puts.

The apply merges adjacent TOKEN_PUT ops of a group so that each chunk is rewritten once
(``apply._coalesced``). A keyed batch starts with its OUTCOME_KEY op, which ended the run:
with keyed and unkeyed one-token commits alternating, every commit rewrote its 64 KiB chunk
in an apply of its own, and the applier took the GIL from the committers for it (a keyed
commit measured 40 µs against 20 unkeyed, and the unkeyed ones between keyed ones were
6 µs slower than alone)."""
from __future__ import annotations

import ngstore
from ngstore import apply
from ngstore.outcomes import Outcome


def test_keyed_commits_do_not_split_the_apply_of_small_token_puts(tmp_path, monkeypatch):
    puts: list[int] = []
    real = apply._token_put

    def counted(txn, db, layout, records, region):
        puts.append(len(records))
        return real(txn, db, layout, records, region)

    monkeypatch.setattr(apply, "_token_put", counted)
    # the applier applies only when asked (flush): one group of every commit below
    with ngstore.open(str(tmp_path / "s"), durability="none", apply_interval=3600.0, crash_handlers=False,
                      observability=False) as s:
        s.flush()
        puts.clear()
        positions = []
        for i in range(20):
            tok = ngstore.Token.create_batch(1, start=i + 1).data
            tok["weight"] = i
            positions.append(s.put_tokens(tok, key=f"k{i}" if i % 2 else None))
        s.flush()
        assert puts == [20]  # one put of the 20 records, not 20 puts of one
        assert s.count() == 20
        assert [s.get_token(i + 1).weight for i in range(20)] == list(range(20))
        assert all(s.outcome(f"k{i}") is Outcome.COMMITTED for i in range(1, 20, 2))
        # a retry of a key committed in that group gets the original's position and writes nothing
        retry = ngstore.Token.create_batch(1, start=4).data
        retry["weight"] = 99
        assert s.put_tokens(retry, key="k3") == positions[3]
        assert s.get_token(4).weight == 3
