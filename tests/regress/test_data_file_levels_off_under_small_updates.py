"""data.mdb grew without bound under steady small commits (66 MiB to 706 MiB in 19 s):
a checkpoint ran only when the file had grown, while the pin kept every page freed since
the last checkpoint from reuse. Checkpoints now also run on the bytes written into LMDB,
so the freed pages are recycled and the file levels off. (The log's total size was a
trigger too, and made every apply checkpoint once a large batch sat in the active
segment, which a checkpoint never drops: the trigger is the bytes appended since the
last checkpoint.)"""
from __future__ import annotations

import os

import numpy as np
from conftest import make_tokens

import ngstore


def test_the_data_file_stops_growing_under_a_long_run_of_one_token_updates(tmp_path):
    path = str(tmp_path / "s")
    rng = np.random.default_rng(1)
    with ngstore.open(path, durability="none", checkpoint_bytes=4 << 20, observability=False,
                      crash_handlers=False) as s:
        s.put_tokens(make_tokens(np.arange(200_000)))   # 13 MB in the log: a large active segment
        sizes = []
        for rnd in range(12):
            for i in rng.integers(0, 200_000, 1500).tolist():
                s.put_tokens(make_tokens([i], weight=np.float32(rnd)))
                s.count()  # waits for the applier: one commit per LMDB transaction, the worst case
            sizes.append(os.path.getsize(os.path.join(path, "data.mdb")))
        assert s.check().ok
    assert sizes[-1] <= 1.25 * sizes[2], [x >> 20 for x in sizes]
