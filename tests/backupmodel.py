"""The deterministic writer of the backup tests, and its model.

Commit ``i`` (1, 2, ...) of :func:`batch` lands at log position ``i`` of a fresh store (each
commit is one log record), so the store after record ``E`` is :func:`state_after` ``(E)``:
a backup that restores to ``end_position`` E must hold exactly that, byte for byte.
Batches overwrite and delete earlier ids, so a missing, repeated or reordered record shows.

Run as a script it is the writer child: ``python backupmodel.py STORE [OPTIONS_JSON]`` commits
until killed, printing each returned position on stdout.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from ngstore.records import TOKEN_DTYPE

IDS = 3000


def batch(i: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens to put, ids to delete)`` of commit ``i``."""
    start = (i * 53) % IDS
    ids = (np.arange(start, start + 40) % IDS).astype(np.uint32)
    t = np.zeros(ids.size, TOKEN_DTYPE)
    t["id"] = ids
    t["flags"] = i % 5
    t["weight"] = np.float32(i)
    t["timestamp"] = i
    t["coordinates"][:, 0, 0] = (ids % 30000).astype(np.int16)
    t["coordinates"][:, 3, 1] = np.int16(i % 30000)
    dels = (np.arange((i * 7) % IDS, (i * 7) % IDS + 10) % IDS).astype(np.uint32) if i % 20 == 0 else \
        np.zeros(0, np.uint32)
    return t, dels


def state_after(end: int) -> np.ndarray:
    """Every present token after commits 1..``end``, in id order."""
    rows = np.zeros(IDS, TOKEN_DTYPE)
    present = np.zeros(IDS, bool)
    for i in range(1, end + 1):
        t, dels = batch(i)
        rows[t["id"]] = t
        present[t["id"]] = True
        present[dels] = False
        rows[dels] = np.zeros(1, TOKEN_DTYPE)
    return rows[present]


def commit(store, i: int) -> None:
    """Commits batch ``i`` to an open store."""
    t, dels = batch(i)
    with store.batch() as b:
        b.put_tokens(t)
        if dels.size:
            b.delete_tokens(dels)


def main(argv: list[str]) -> int:
    import ngstore

    opts = json.loads(argv[2]) if len(argv) > 2 else {}
    limit = opts.pop("commits", None)
    hold = opts.pop("hold", False)
    with ngstore.open(argv[1], **opts) as s:
        i = 1
        while limit is None or i <= limit:
            commit(s, i)
            print(i, flush=True)
            i += 1
        print("done", flush=True)
        while hold:  # keep the writer (and its unapplied overlay) alive until killed
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
