"""Mutations of seed inputs, by a plain random generator and as a Hypothesis strategy.

The mutations are the damage a file meets (a flipped bit, a zeroed or overwritten range, a
short or long file) and what a fuzzer needs to reach the checks behind them (a length or
count field set to a boundary value, a piece of another seed spliced in). One list of
operations serves both generators: a mutation is ``(kind, position, argument)``, applied by
:func:`apply`, so that Hypothesis can draw and shrink the list.
"""
from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence

from hypothesis import strategies as st

#: Values that sit on the boundaries of length, count and offset fields.
INTERESTING = (0, 1, 2, 7, 8, 15, 16, 63, 64, 127, 128, 255, 256, 4095, 4096, 65535, 65536,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40, 0x7FFFFFFFFFFFFFFF, (1 << 64) - 1)

KINDS = ("flip", "byte", "zero", "random", "truncate", "extend", "delete", "insert",
         "u16", "u32", "u64", "splice", "duplicate")

Mutation = tuple[str, int, int]


def apply(data: bytes, mutation: Mutation, seeds: Sequence[bytes]) -> bytes:
    """``data`` with one mutation. ``position`` and ``argument`` are any non-negative ints,
    reduced to what fits; the result is never longer than twice the longest seed + 64."""
    kind, pos, arg = mutation
    b = bytearray(data)
    n = len(b)
    p = pos % (n + 1)
    rnd = random.Random(arg)
    if kind == "flip" and n:
        b[pos % n] ^= 1 << (arg % 8)
    elif kind == "byte" and n:
        b[pos % n] = arg & 0xFF
    elif kind == "zero":
        b[p:p + 1 + arg % 64] = bytes(len(b[p:p + 1 + arg % 64]))
    elif kind == "random":
        k = len(b[p:p + 1 + arg % 32])
        b[p:p + k] = rnd.randbytes(k)
    elif kind == "truncate":
        del b[p:]
    elif kind == "extend":
        b += rnd.randbytes(arg % 64) if arg & 1 else bytes(arg % 4096)
    elif kind == "delete":
        del b[p:p + 1 + arg % 64]
    elif kind == "insert":
        b[p:p] = rnd.randbytes(1 + arg % 16)
    elif kind in ("u16", "u32", "u64"):
        fmt, size = {"u16": ("<H", 2), "u32": ("<I", 4), "u64": ("<Q", 8)}[kind]
        if n >= size:
            at = pos % (n - size + 1)
            v = INTERESTING[arg % len(INTERESTING)] + (arg >> 8) % 3 - 1
            struct.pack_into(fmt, b, at, v % (1 << (8 * size)))
    elif kind == "splice" and seeds:
        other = seeds[arg % len(seeds)]
        if other:
            a = (arg >> 8) % len(other)
            piece = other[a:a + 1 + (arg >> 20) % 256]
            b[p:p + len(piece)] = piece
    elif kind == "duplicate" and n:
        piece = b[p:p + 1 + arg % 64]
        b[p:p] = piece
    limit = 2 * max((len(s) for s in seeds), default=0) + 64
    return bytes(b[:limit])


def mutate(rng: random.Random, seeds: Sequence[bytes], fixup: Callable[[bytes], bytes] | None) -> bytes:
    """A seed with 1–4 random mutations (or, one time in 16, random bytes), fixed up half
    the time."""
    if rng.random() < 1 / 16:
        return rng.randbytes(rng.randrange(0, 2 * max(len(s) for s in seeds) + 2))
    data = rng.choice(seeds)
    for _ in range(rng.randint(1, 4)):
        data = apply(data, (rng.choice(KINDS), rng.randrange(1 << 32), rng.randrange(1 << 40)), seeds)
    return fixup(data) if fixup is not None and rng.random() < 0.5 else data


def inputs(seeds: Sequence[bytes], fixup: Callable[[bytes], bytes] | None) -> st.SearchStrategy[bytes]:
    """Hypothesis inputs: raw bytes (up to the longest seed), or a seed with a drawn list of
    mutations, fixed up or not."""
    longest = max(len(s) for s in seeds)
    mutation = st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 32), st.integers(0, 1 << 40))

    def build(args: tuple[bytes, list[Mutation], bool]) -> bytes:
        data, muts, fix = args
        for m in muts:
            data = apply(data, m, seeds)
        return fixup(data) if fix and fixup is not None else data

    mutated = st.tuples(st.sampled_from(list(seeds)), st.lists(mutation, max_size=4), st.booleans()).map(build)
    return st.one_of(mutated, st.binary(max_size=max(longest, 64)))
