"""The corruption campaign's machinery (``tests/crash/test_corruption_campaign.py``).

The parent (the test) makes two real stores, plans the trials -- which file of which store,
which damage -- and hands them out in batches to child processes running this module:

    python tests/corruption.py PLAN.json

A child runs each trial of its plan: a fresh copy of the store, the damage applied to one
file, then what an application and an operator do with a store: the offline readers (log
verify and dump, black box, stats page), a read-only open, a writer's open (which recovers),
``check()`` and a read of everything through each, and the readers and a read-only open
again after the writer closed. It prints one JSON line when a trial starts and one
with its outcome, so that when a child dies of a signal the parent knows which trial killed
it (and starts another child for the rest). Each child runs under an address-space limit,
so an allocation a damaged length asks for is an exception here, not the machine's memory.

An outcome is, for each stage: ``ok`` (opened, ``check()`` found nothing, everything read),
``findings`` (``check()`` reported damage), ``error`` (an ``ngstore.NgStoreError`` subclass:
the damage was named) or ``breach`` (any other exception: the contract is broken).
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

#: LMDB address space the campaign's opens ask for (the stores hold far less): a handle
#: over a 1 TiB map could not run under the address-space limit.
MAP_SIZE = 32 << 20
#: What a child may allocate beyond what it uses once it has imported everything.
HEADROOM = 768 << 20
#: Options of every writer the campaign opens: those of the fuzz stores (small chunks, a
#: small black box), the black box on, no crash handlers in the children.
OPEN_OPTIONS = dict(map_size=MAP_SIZE, crash_handlers=False, tracing=False, blackbox_capacity=8)


# ------------------------------------------------------------------------- the damage
@dataclass(frozen=True)
class Damage:
    """One corruption of one file: ``kind`` is ``flip`` (``bits``: byte offset, bit),
    ``zero`` or ``random`` (a range ``start``/``length``; ``seed`` for the bytes), or
    ``truncate`` (to ``length``)."""

    kind: str
    start: int = 0
    length: int = 0
    bits: tuple[tuple[int, int], ...] = ()
    seed: int = 0

    def ranges(self, size: int) -> list[tuple[int, int]]:
        """The byte ranges ``[a, b)`` of the file this damage changes."""
        if self.kind == "flip":
            return [(o, o + 1) for o, _b in self.bits]
        if self.kind == "truncate":
            return [(self.length, size)]
        return [(self.start, min(size, self.start + self.length))]

    def apply(self, path: str) -> None:
        with open(path, "r+b") as f:
            if self.kind == "truncate":
                f.truncate(self.length)
                return
            data = bytearray(f.read())
            if self.kind == "flip":
                for off, bit in self.bits:
                    data[off] ^= 1 << bit
            elif self.kind == "zero":
                data[self.start:self.start + self.length] = bytes(len(data[self.start:self.start + self.length]))
            elif self.kind == "random":
                n = len(data[self.start:self.start + self.length])
                data[self.start:self.start + n] = random.Random(self.seed).randbytes(n)
            f.seek(0)
            f.write(data)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "length": self.length, "bits": [list(b) for b in self.bits],
                "seed": self.seed}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Damage:
        return Damage(d["kind"], d["start"], d["length"], tuple((int(o), int(b)) for o, b in d["bits"]), d["seed"])


def random_damage(rng: random.Random, size: int, within: list[tuple[int, int]] | None = None) -> Damage:
    """A random damage of a file of ``size`` bytes; ``within``: ranges to aim it at (then a
    flip of one to three bits inside them)."""
    if within:
        bits = []
        for _ in range(rng.randint(1, 3)):
            a, b = rng.choice(within)
            bits.append((rng.randrange(a, b), rng.randrange(8)))
        return Damage("flip", bits=tuple(bits))
    if size == 0:
        return Damage("random", 0, 0, seed=rng.randrange(1 << 30))
    kind = rng.choice(("flip", "flip", "zero", "random", "truncate"))
    if kind == "flip":
        return Damage("flip", bits=tuple((rng.randrange(size), rng.randrange(8)) for _ in range(rng.randint(1, 8))))
    if kind == "truncate":
        return Damage("truncate", length=rng.randrange(size))
    start = rng.randrange(size)
    length = rng.choice((1, 8, 64, 512, 4096, size))
    return Damage(kind, start, length, seed=rng.randrange(1 << 30))


# ------------------------------------------------------------------------ one trial
def _read_everything(s: Any, expected_tokens: np.ndarray) -> bool:
    """Reads everything ``s`` holds through the public API; True if the tokens read differ
    from ``expected_tokens`` (a corruption a reader can see). Absent records and named
    damage raise ngstore's errors, which end the stage."""
    import ngstore

    s.count()
    s.stats()
    s.count_connections()
    changed = False
    with s.snapshot() as snap:
        tokens = snap.tokens.to_array()
        changed = tokens.tobytes() != expected_tokens.tobytes()
        snap.tokens.column("weight")
        snap.tokens.column("coordinates")
        snap.tokens.get(list(range(40)), missing="skip")
        snap.connections.to_array()
        snap.events.since(0)
    for tid in (0, 5, 17, 30):
        try:
            s.get_token(tid)
        except ngstore.NotFoundError:
            pass
    s.neighbors(1)
    s.neighbors(9, "in")
    table = s.reflex_table()
    if table is not None:
        states = np.random.default_rng(1).uniform(-1, 1, (4, 8)).astype(np.float32)
        table.lookup_batch(states)
        table.lookup_batch(states, nearest_fallback=3.0)
        table.check()
    s.reflex_stats()
    s.learning_statistics(4)
    return changed


@dataclass
class Stage:
    outcome: str  # ok | findings | error | breach
    detail: str = ""
    changed: bool = False


def _stage(fn: Callable[[], Stage]) -> Stage:
    import ngstore

    try:
        return fn()
    except ngstore.NgStoreError as exc:
        return Stage("error", f"{type(exc).__name__}: {str(exc)[:300]}")
    except Exception as exc:
        return Stage("breach", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])


def run_trial(path: str, expected_tokens: np.ndarray) -> dict[str, Stage]:
    """The stages of one trial over the (damaged) store at ``path``."""
    import ngstore

    def checked(s: Any) -> Stage:
        try:
            report = s.check()
        except ngstore.NgStoreError as exc:  # check() describes damage as findings: note it
            return Stage("error", f"check() raised {type(exc).__name__}: {str(exc)[:300]}")
        changed = _read_everything(s, expected_tokens)
        if not report.ok:
            return Stage("findings", "; ".join(report.problems)[:600], changed)
        return Stage("ok", changed=changed)

    def reader() -> Stage:
        with ngstore.open(path, readonly=True, map_size=MAP_SIZE, observability=False) as r:
            return checked(r)

    def writer() -> Stage:
        with ngstore.open(path, **OPEN_OPTIONS) as w:
            return checked(w)

    def tools() -> Stage:
        """What an operator runs on a store whose writer is gone: ``ngstore wal verify`` and
        ``wal dump``, and the black-box and stats readers (documented to raise ValueError for
        a file they cannot read: a named error here)."""
        from ngstore import waltools
        from ngstore.obs import blackbox, statspage

        named = []
        report = waltools.verify(os.path.join(path, "wal"))
        for _summary in waltools.dump(os.path.join(path, "wal")):
            pass
        for read in (lambda: blackbox.read_ring(path), lambda: statspage.read_stats_page(path, attempts=2),
                     *[lambda d=d: blackbox.load_dump(d) for d in blackbox.list_dumps(path)]):
            try:
                read()
            except ValueError as exc:
                named.append(f"ValueError: {str(exc)[:200]}")
        if named:
            return Stage("error", "; ".join(named))
        return Stage("ok") if report.sound else Stage("findings", "; ".join(map(str, report.problems))[:600])

    stages = {"tools": _stage(tools), "read-only": _stage(reader), "writer": _stage(writer)}
    if stages["writer"].outcome in ("ok", "findings"):
        stages["read-only after writer"] = _stage(reader)
        stages["tools after writer"] = _stage(tools)
    return stages


# ------------------------------------------------------------------------ the child
def _limit_address_space() -> None:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, vm + HEADROOM))


def child(plan_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    import zstandard  # noqa: F401  (everything imported before the limit)

    import ngstore
    import ngstore.obs.blackbox  # noqa: F401
    from ngstore.records import TOKEN_DTYPE

    expected = {name: np.frombuffer(bytes.fromhex(h), dtype=TOKEN_DTYPE)
                for name, h in plan["expected_tokens"].items()}
    _limit_address_space()
    work = plan["work"]
    for trial in plan["trials"]:
        print(json.dumps({"start": trial["id"]}), flush=True)
        path = os.path.join(work, f"t{trial['id']}")
        shutil.copytree(plan["bases"][trial["base"]], path, symlinks=True)
        Damage.from_json(trial["damage"]).apply(os.path.join(path, trial["file"]))
        stages = run_trial(path, expected[trial["base"]])
        print(json.dumps({"id": trial["id"], "stages": {k: vars(v) for k, v in stages.items()}}), flush=True)
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    child(sys.argv[1])
