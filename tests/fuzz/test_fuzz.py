"""Every fuzz target, for a bounded time, from its seed corpus (docs/design.md, "Testing").

Each target runs in its own child process (``worker.py``) under an address-space limit,
so that a crash in C, an allocation a length field asked for, or a hang is this test's
failure and not pytest's death. The children run side by side, one per core; each gets
``NGSTORE_FUZZ_SECONDS`` (default 2) of inputs after its seeds. A failure names the
input that broke the contract, saved in the test's temporary directory, and the seed
that reproduces the run:

    python tests/fuzz/worker.py TARGET --seconds 2 --seed SEED --out DIR

Long runs: ``tests/fuzz/run_atheris.py`` (coverage-guided, needs the ``fuzz`` extra).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import targets

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = float(os.environ.get("NGSTORE_FUZZ_SECONDS", "2"))
#: How long a child may take beyond its budget (imports, making the fuzz store, Hypothesis
#: shrinking a failure) before it counts as hung.
GRACE = 60.0


@dataclass
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str
    current: bytes | None

    def describe(self, name: str) -> str:
        if self.returncode is None:
            how = "hung (no exit within its time)"
        elif self.returncode < 0:
            how = f"died of signal {signal.Signals(-self.returncode).name}"
        else:
            how = f"exited with status {self.returncode}"
        shown = "" if self.current is None else f"\nthe input it was running ({len(self.current)} bytes): " \
                                                 f"{self.current[:256].hex()}"
        return f"fuzz target {name} {how}{shown}\n--- stderr (tail)\n{self.stderr[-6000:]}"


def run_target(name: str, out: str) -> Outcome:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, os.path.join(HERE, "worker.py"), name, "--seconds", str(SECONDS), "--out", out]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SECONDS + GRACE)
        code: int | None = p.returncode
        stdout, stderr = p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    current = None
    if code != 0:
        path = os.path.join(out, f"current-{name}")
        if os.path.exists(path):
            with open(path, "rb") as f:
                current = f.read()
    return Outcome(code, stdout, stderr, current)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    out = str(tmp_path_factory.mktemp("fuzz"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(run_target, name, out) for name in targets.TARGETS}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_keeps_its_contract(outcomes: dict[str, Outcome], name: str) -> None:
    o = outcomes[name]
    assert o.returncode == 0, o.describe(name)
    summary = json.loads(o.stdout.strip().splitlines()[-1])
    assert summary["seeds"] >= 1, summary  # the corpus ran: every seed keeps the contract


def test_every_target_has_a_seed_corpus() -> None:
    for name in targets.TARGETS:
        d = os.path.join(HERE, "corpus", name)
        assert os.path.isdir(d) and os.listdir(d), f"no seed corpus for {name} (run make_corpus.py)"
