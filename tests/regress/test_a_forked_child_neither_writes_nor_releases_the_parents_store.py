"""A child made by fork() used the writer's handle it inherited as its own: its commits
returned (``sync`` ones too) into the parent's log and overlay, where the parent's next
records overwrote them or, after a crash, recovery replayed some of them as the parent's;
closing the handle there waited forever for an applier thread the child does not have; and
a child that did nothing but exit normally ended the parent's read transactions from its
exit-time finalizers, freeing the LMDB reader slots that keep the pages of the parent's
snapshots from reuse, and one that failed dumped the parent's black box from its crash
hooks. Now the handles and snapshots a child inherits refuse every call
(StoreClosedError), their close() there releases nothing, opening the parent's store again
there is refused (StoreLockedError), and no transaction of the parent's is ended in the
child, however it ends."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import ngstore

    path, child_uses = sys.argv[1], sys.argv[2] == "use"

    def active_slots():  # the parent's LMDB reader slots holding a transaction
        rows = [line.split() for line in s._kv.env.readers().splitlines()[1:]]
        return sum(1 for pid, _tid, txn in rows if pid == str(os.getpid()) and txn != "-")

    s = ngstore.open(path, durability="sync")
    tokens = ngstore.Token.create_batch(4096, start=1).data
    tokens["weight"] = 1.0
    s.put_tokens(tokens)
    s.checkpoint()
    snap = s.snapshot()
    view = snap.tokens.column("weight")
    out = {"slots_before": active_slots()}
    pid = os.fork()
    if pid == 0:
        if child_uses:
            seen = {}
            for name, call in (("put", lambda: s.put_tokens(ngstore.Token.create_batch(1, start=9000).data)),
                               ("get", lambda: s.get_token(3)),
                               ("snapshot", lambda: snap.tokens.column("weight")),
                               ("open", lambda: ngstore.open(path, readonly=True))):
                try:
                    call()
                    seen[name] = "returned"
                except ngstore.NgStoreError as exc:
                    seen[name] = type(exc).__name__ + ": " + str(exc)
            seen["view"] = float(view.sum())
            snap.close()
            s.close()
            print(json.dumps(seen), flush=True)
            sys.exit(0)  # a normal exit: the interpreter finalizes everything it holds
        raise ngstore.NgStoreError("the child fails")  # unhandled: the crash hooks would dump
    out["child_status"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out["dumps"] = sorted(n for n in os.listdir(path) if n.startswith("blackbox-"))
    out["slots_after"] = active_slots()
    for r in range(5):
        tokens["weight"] = 2.0 + r
        s.put_tokens(tokens)
        s.checkpoint()
    out["view_intact"] = bool((view == 1.0).all())
    snap.close()
    s.put_tokens(ngstore.Token.create_batch(1, start=8000).data)
    s.close()
    with ngstore.open(path, readonly=True) as r:
        out["count"] = r.count()
        out["has_9000"] = bool(r.contains(9000))
    print(json.dumps(out), flush=True)
''')


@pytest.mark.parametrize("child_uses", [True, False], ids=["child uses the handles", "child fails"])
def test_a_forked_child_is_refused_and_leaves_the_parents_store_as_it_was(tmp_path, child_uses):
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "s"), "use" if child_uses else "exit"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    parent = lines[-1]
    assert parent["child_status"] == (0 if child_uses else 1)
    assert parent["dumps"] == []  # the child dumped nothing into the parent's store
    assert parent["slots_before"] >= 1 and parent["slots_after"] == parent["slots_before"]
    assert parent["view_intact"]
    assert parent["count"] == 4097 and not parent["has_9000"]
    if child_uses:
        child = lines[0]
        for call in ("put", "get", "snapshot"):
            assert child[call].startswith("StoreClosedError") and "fork()" in child[call], child[call]
        assert child["open"].startswith("StoreLockedError") and "fork" in child["open"], child["open"]
        assert child["view"] == 4096.0  # an inherited view still reads, as memory
