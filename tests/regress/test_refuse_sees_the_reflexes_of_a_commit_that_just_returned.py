"""With reflex_eviction="refuse", a reflex commit that returned has its reflexes in the
table the next commit's refusal check plans against.

The applier used to publish its applied position before it swapped in the new reflex
table. A reflex commit returns once its position is applied, so the next commit could
be checked against the table without the reflexes just committed, be admitted, and push
one of them out when applied -- what "refuse" promises never happens. Seen as a flaky
test_refuse_holds_for_concurrent_committers_grouped_together under load; made certain
here by slowing the step between the two."""
from __future__ import annotations

import threading
import time

import pytest
from fuzz import stores

import ngstore
from ngstore.applier import Applier


def test_refuse_sees_the_reflexes_of_a_commit_that_just_returned(tmp_path, monkeypatch):
    adopting = threading.Event()
    slow = Applier._carry_counters

    def carry_slowly(self: Applier) -> None:  # runs while the applier adopts a new table
        adopting.set()
        time.sleep(0.3)
        slow(self)

    monkeypatch.setattr(Applier, "_carry_counters", carry_slowly)
    with ngstore.open(str(tmp_path / "s"), reflex_capacity=8, reflex_eviction="refuse") as s:
        with s.batch() as b:
            b.put_reflexes(*stores.reflexes(4, seed=1))  # a table exists: the next apply adopts a new one
        adopting.clear()

        def fill() -> None:
            with s.batch() as b:
                b.put_reflexes(*stores.reflexes(4, seed=2))  # the table is full once applied

        t = threading.Thread(target=fill)
        t.start()
        assert adopting.wait(10)
        # The fill is applied, its table not adopted yet: this batch must be checked
        # against the full table, and refused.
        with pytest.raises(ngstore.QuotaExceededError), s.batch() as b:
            b.put_reflexes(*stores.reflexes(1, seed=3))
        t.join()
        st = s.stats()
        assert st["reflex_evictions_total"] == 0 and st["reflexes_live"] == 8
