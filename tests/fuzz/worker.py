"""Runs one fuzz target for a bounded time, in its own process, under an address-space limit.

    python tests/fuzz/worker.py TARGET --seconds 3 --out DIR [--seed N] [--headroom-mb 768]

The inputs, in this order: every file of the target's seed corpus (``corpus/TARGET/``) as it
is; then Hypothesis examples (raw bytes, and seeds put through a list of mutations that
Hypothesis draws, so a failure shrinks to a small input); then random mutations of the seeds
until the time is up. Half of the mutated inputs go through the target's ``fixup``, which
re-computes their checksums so that they reach the checks behind the CRCs.

Before any input runs the worker makes what the target needs (``targets.prepare``) and then
limits its address space to what it uses plus ``--headroom-mb``: a length field that makes a
parser allocate more than that raises MemoryError, which is not a documented error, so it is
reported like any other breach. A crash in C kills the process by a signal; a hang is cut by
``faulthandler`` ``--hang-timeout`` seconds after the run's time, with every thread's stack.
In every case the input that was running is in ``DIR/current-TARGET`` (written before it
runs), and a breach found by an exception is saved as ``DIR/breach-TARGET-<sha1>``; the
parent reports both. The last line of stdout is a JSON summary (counts of inputs per source).

Exit status: 0 no breach; 1 a breach (traceback on stderr); killed by a signal: a crash.
"""
from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mutations  # noqa: E402
import targets  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


def load_corpus(name: str) -> list[bytes]:
    d = os.path.join(CORPUS, name)
    seeds = []
    for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, entry), "rb") as f:
            seeds.append(f.read())
    return seeds or [b""]


def vm_size() -> int:
    """This process's virtual size in bytes (what RLIMIT_AS limits)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def limit_address_space(headroom: int) -> int:
    limit = vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


class TimeUp(BaseException):
    """The Hypothesis phase's time is over."""


class Breach(Exception):
    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(source)
        self.data = data
        self.source = source


class Runner:
    def __init__(self, target: targets.Target, out: str) -> None:
        self.target = target
        # One descriptor for the whole run: opening with O_TRUNC per input costs
        # milliseconds on ext4 (it flushes a truncated file on close), pwrite microseconds.
        self.current = os.open(os.path.join(out, f"current-{target.name}"), os.O_RDWR | os.O_CREAT, 0o644)
        self.out = out
        self.counts: dict[str, int] = {}

    def run(self, data: bytes, source: str) -> None:
        os.pwrite(self.current, data, 0)
        os.ftruncate(self.current, len(data))
        try:
            self.target(data)
        except Exception as e:
            raise Breach(data, source) from e
        self.counts[source] = self.counts.get(source, 0) + 1

    def save(self, data: bytes) -> str:
        path = os.path.join(self.out, f"breach-{self.target.name}-{hashlib.sha1(data).hexdigest()[:12]}")
        with open(path, "wb") as f:
            f.write(data)
        return path


def run_hypothesis(runner: Runner, seeds: list[bytes], fixup: Callable[[bytes], bytes] | None,
                   deadline: float, max_examples: int, seed: int) -> None:
    """Hypothesis examples until ``max_examples`` or ``deadline``. A failure is shrunk (past
    the deadline), and the smallest failing input is raised as a Breach."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hseed

    failing: list[bytes] = []

    @hseed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
              print_blob=False, report_multiple_bugs=False, verbosity=Verbosity.quiet)
    @given(mutations.inputs(seeds, fixup))
    def fuzz(data: bytes) -> None:
        if time.monotonic() > deadline and not failing:
            raise TimeUp  # a BaseException: Hypothesis stops at once, without shrinking
        try:
            runner.run(data, "hypothesis")
        except Breach:
            failing.append(data)
            raise

    try:
        fuzz()
    except TimeUp:
        pass
    except Breach:
        raise
    except Exception as e:  # Hypothesis re-raises the shrunk failure as itself
        if failing:
            raise Breach(min(failing, key=lambda d: (len(d), d)), "hypothesis") from e
        raise


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", choices=sorted(targets.TARGETS))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--headroom-mb", type=int, default=768)
    ap.add_argument("--hang-timeout", type=float, default=30.0)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    target = targets.TARGETS[args.target]
    seeds = load_corpus(target.name)
    targets.prepare([target.name])
    import hypothesis  # noqa: F401  (imported before the limit, like everything else)
    limit = limit_address_space(args.headroom_mb << 20)
    runner = Runner(target, args.out)
    # One watchdog for the run (arming one per input costs a thread join per input): a run
    # that outlives its time by --hang-timeout is hung, and faulthandler prints every stack.
    faulthandler.dump_traceback_later(args.seconds + args.hang_timeout, exit=True)
    rng = random.Random(seed)
    start = time.monotonic()
    stop = start + args.seconds
    try:
        for s in seeds:
            runner.run(s, "seeds")
        per_input = (time.monotonic() - start) / len(seeds)
        hyp_deadline = start + args.seconds * 0.4
        run_hypothesis(runner, seeds, target.fixup, hyp_deadline,
                       max(10, min(2000, int(args.seconds * 0.4 / max(per_input, 1e-4)))), seed)
        while time.monotonic() < stop:
            runner.run(mutations.mutate(rng, seeds, target.fixup), "mutation")
    except Breach as b:
        cause = b.__cause__
        path = runner.save(b.data)
        print(f"BREACH in {target.name} ({b.source}), input saved as {path} ({len(b.data)} bytes, seed {seed}):",
              file=sys.stderr)
        traceback.print_exception(type(cause), cause, cause.__traceback__ if cause else None, file=sys.stderr)
        return 1
    print(json.dumps({"target": target.name, "seed": seed, "limit_mb": limit >> 20,
                      "seconds": round(time.monotonic() - start, 2), **runner.counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
