"""What does one record object cost in Python?

The original README quotes 677 ns to create a Token and 54 ns to clone one (Rust debug-build
figures). Here each per-object call of ngstore's ``Token`` and ``Connection`` is timed
against the cheapest object Python can make: a class with one ``__slots__`` field,
``One(i)``. That baseline is the yardstick because it is what any Python object costs on
this machine and interpreter, so the ratio travels between machines where nanoseconds do not.

How: each row is a statement compiled by ``timeit`` (no lambda around it, so nothing but the
call itself is timed; the loop costs a few ns and is in the baseline too), run ``number``
times per sample. The rows are **interleaved**: every round times every row once, so the
baseline and the rows it divides share the same load on a shared machine. Medians of the
rounds; timeit switches the garbage collector off while timing, for every row alike.

Rows: ``Token(i)``; ``Token.copy()`` of a token that has been written (so its bytes are a
private bytearray and the copy is a real 64-byte copy; a never-written token's copy shares
its immutable bytes and costs less); ``.coordinates`` of a token whose 24 coordinates are
all non-zero (each decoded value is a new float) and of a fresh ``Token(i)`` (all zero, the
README's example); ``TokenArray[i]`` (a write-through row token); ``Token.from_bytes``;
``Connection(a, b)`` and ``Connection.copy()``. Peers for context: ``np.frombuffer`` of 64
bytes as a record (what one Token cost before it was a light object) and numpy's own
``data[i]`` of a structured array.

Targets (issue 11): Token(i) ≤ 3×, copy() ≤ 3×, .coordinates ≤ 8× the one-slot object.
Connection(a, b) and its copy are reported beside them (no target of their own).
"""
from __future__ import annotations

import timeit
from typing import Any

import numpy as np
from _harness import LIMITS, Bench

import ngstore

BASELINE = "python object, one __slots__ field"


class One:
    """The baseline: the cheapest Python object with a field."""

    __slots__ = ("x",)

    def __init__(self, x: int) -> None:
        self.x = x


def _namespace() -> dict[str, Any]:
    t = ngstore.Token(12345)
    # every coordinate non-zero and outside CPython's cache of small ints, as real data is
    t.raw_coordinates = [[1000 + 97 * layer + 13 * axis - 3000 * (axis == 1) for axis in range(3)]
                         for layer in range(8)]
    arr = ngstore.Token.create_batch(1000)
    image = t.to_bytes()
    assert all(v != 0 for row in t.raw_coordinates for v in row)
    return {
        "One": One, "Token": ngstore.Token, "Connection": ngstore.Connection, "np": np,
        "TOKEN_DTYPE": ngstore.TOKEN_DTYPE, "t": t, "fresh": ngstore.Token(7), "arr": arr,
        "data": arr.data, "image": image, "c": ngstore.Connection(3, 9),
    }


#: (workload, system, statement); the baseline row is timed once and shown in each workload.
ROWS: list[tuple[str, str, str]] = [
    ("Token(i)", "ngstore Token(i)", "Token(12345)"),
    ("Token(i)", "numpy record view of 64 B (before)", "np.frombuffer(image, TOKEN_DTYPE)"),
    ("Token.copy()", "ngstore Token.copy()", "t.copy()"),
    (".coordinates, 24 non-zero", "ngstore t.coordinates", "t.coordinates"),
    (".coordinates, fresh Token(i)", "ngstore Token(7).coordinates", "fresh.coordinates"),
    ("TokenArray[i]", "ngstore TokenArray[i] (row token)", "arr[500]"),
    ("TokenArray[i]", "numpy structured data[i]", "data[500]"),
    ("Token.from_bytes", "ngstore Token.from_bytes(64 B)", "Token.from_bytes(image)"),
    ("Connection(a, b)", "ngstore Connection(a, b)", "Connection(3, 9)"),
    ("Connection.copy()", "ngstore Connection.copy()", "c.copy()"),
]


def interleaved_ns(stmts: dict[str, str], ns: dict[str, Any], number: int, rounds: int) -> dict[str, list[float]]:
    """ns per execution of each statement; every round times every statement once."""
    timers = {name: timeit.Timer(stmt, globals=ns) for name, stmt in stmts.items()}
    for t in timers.values():  # warm-up: first calls, caches, the clock's current second
        t.timeit(max(1, number // 10))
    out: dict[str, list[float]] = {name: [] for name in stmts}
    for _ in range(rounds):
        for name, t in timers.items():
            out[name].append(t.timeit(number) / number * 1e9)
    return out


def run(b: Bench) -> None:
    b.log("## record objects (ns per call; ratio to a one-slot Python object)")
    ns = _namespace()
    number = 20_000 if b.quick else 100_000
    rounds = max(5, 3 * b.repeats)
    stmts = {BASELINE: "One(12345)"} | {system: stmt for _w, system, stmt in ROWS}
    samples = interleaved_ns(stmts, ns, number, rounds)
    for w in dict.fromkeys(w for w, _s, _st in ROWS):
        LIMITS[w] = BASELINE
        b.record(w, BASELINE, number, "ns/call", samples[BASELINE], note="the same samples in every table")
        for w2, system, _stmt in ROWS:
            if w2 == w:
                b.record(w, system, number, "ns/call", samples[system])
    for w, system, op, target in [
        ("Token(i)", "ngstore Token(i)", "<=", 3.0),
        ("Token.copy()", "ngstore Token.copy()", "<=", 3.0),
        (".coordinates, 24 non-zero", "ngstore t.coordinates", "<=", 8.0),
        (".coordinates, fresh Token(i)", "ngstore Token(7).coordinates", "<=", 8.0),
        ("TokenArray[i]", "ngstore TokenArray[i] (row token)", "report", 0.0),
        ("Connection(a, b)", "ngstore Connection(a, b)", "report", 0.0),
        ("Connection.copy()", "ngstore Connection.copy()", "report", 0.0),
    ]:
        b.ratio_check("records", f"{system} ÷ one-slot object", w, system, BASELINE, op, target)


if __name__ == "__main__":  # a quick look without the whole suite: python benchmarks/bench_records.py
    bench = Bench(sizes=[1], repeats=5, quick=False, out="", log=print)
    try:
        run(bench)
    finally:
        bench.cleanup()
