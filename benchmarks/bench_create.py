"""How much does creating N tokens cost?

ngstore ``Token.create_batch(n)`` against the limit (``np.zeros(n, TOKEN_DTYPE)`` plus
``arange`` ids: the same bytes, nothing else), a Python list of ``Token`` objects (the
original README's "DON'T" path) and a dict of them.
Target: create_batch(1M) ≤ 2× the limit.
"""
from __future__ import annotations

import numpy as np
from _harness import LIMITS, Bench, repeat

import ngstore

W = "create tokens"
LIMITS[W] = "numpy zeros + arange"


def numpy_limit(n: int) -> np.ndarray:
    a = np.zeros(n, ngstore.TOKEN_DTYPE)
    a["id"] = np.arange(n, dtype=np.uint32)
    return a


def run(b: Bench) -> None:
    b.log(f"## {W}")
    for n in b.sizes:
        scale = 1e9 / n
        b.record(W, "ngstore create_batch", n, "ns/token",
                 repeat(lambda: ngstore.Token.create_batch(n), b.repeats, scale=scale, warmup=True))
        b.record(W, "numpy zeros + arange", n, "ns/token",
                 repeat(lambda: numpy_limit(n), b.repeats, scale=scale, warmup=True))
        k = n
        if n > (100_000 if b.quick else 1_000_000):
            continue  # bounded: ~1 µs and ~200 B of RAM per object
        reps = max(2, b.repeats // 2)
        b.record(W, "python list of Token", k, "ns/token",
                 repeat(lambda: [ngstore.Token(i) for i in range(k)], reps, scale=1e9 / k),
                 )
        b.record(W, "python dict of Token", k, "ns/token",
                 repeat(lambda: {i: ngstore.Token(i) for i in range(k)}, reps, scale=1e9 / k),
                 )
    n = 1_000_000 if b.max_size >= 1_000_000 else b.max_size
    b.ratio_check("store core", f"Token.create_batch({n:,}) ÷ np.zeros + arange", W,
                  "ngstore create_batch", "numpy zeros + arange", "<=", 2.0, n)
