"""A KeyboardInterrupt (Ctrl-C) that landed inside a read -- a snapshot, a count, stats()
-- between the beginning of its LMDB read transaction and its owner taking it left the
transaction counted as an open snapshot for good; the next map growth then refused ("cannot
grow while 36 snapshot(s) of this process are open") and the writer stopped. Now open
transactions are counted by a weak set (an orphan stops counting once collected, and map
growth collects before it refuses), and the internal short read ends what it began when an
interrupt stops it. The child interrupts random moments of thousands of reads, then writes
past the map's first size."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from interrupting import PRELUDE

SCRIPT = PRELUDE + textwrap.dedent('''
    import json, random, sys
    import numpy as np
    import ngstore

    rng = random.Random(20261203)
    s = ngstore.open(sys.argv[1], durability="none", map_size=64 << 20)
    s.put_tokens(ngstore.Token.create_batch(20_000, start=1).data)
    s.flush()
    reads = [
        lambda: s.get_token(rng.randint(1, 20_000)),
        lambda: s.get_tokens(np.arange(1, 200, dtype=np.uint32)),
        lambda: s.snapshot().tokens.column("weight").sum(),
        lambda: s.count(),
        lambda: s.stats(),
    ]
    out = {"interrupted": 0, "errors": []}
    for _ in range(2_000):
        read = rng.choice(reads)
        try:
            arm(rng.uniform(1e-6, 60e-6))
            read()
        except KeyboardInterrupt:
            out["interrupted"] += 1
        except ngstore.NgStoreError as exc:
            out["errors"].append(repr(exc))
        finally:
            disarm()
    try:
        for k in range(40):  # 128 MB of tokens: the 64 MiB map must grow
            s.put_tokens(ngstore.Token.create_batch(50_000, start=100_000 + 50_000 * k).data)
        s.flush()
        out["count"] = s.count()
    except ngstore.NgStoreError as exc:
        out["errors"].append(repr(exc.__cause__ or exc))
    s.close()
    print(json.dumps(out))
''')


def test_interrupted_reads_leave_the_map_free_to_grow(tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["errors"] == [], out
    assert out["count"] == 20_000 + 40 * 50_000, out
    assert out["interrupted"] >= 100, out  # the interrupts landed inside reads
