"""Builds small C programs together with ``csrc/*.c`` under AddressSanitizer and
UndefinedBehaviorSanitizer, and runs them.

The compiled extension cannot be checked by sanitizers from inside the Python process
(the interpreter is not instrumented), so the C contract is tested the way SQLite tests
its core: a C harness that calls the public functions directly, compiled with
``-fsanitize=address,undefined -fno-sanitize-recover=all`` so that the first invalid read,
misaligned load or overflow aborts the program with a report.

Tests that use this module are skipped when gcc is absent, or when it cannot link a
sanitized program (no libasan/libubsan installed); any other compiler error fails the
test, since it means the harness or csrc/ does not build.
"""
from __future__ import annotations

import functools
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]


@functools.lru_cache(maxsize=1)
def _gcc_problem() -> str | None:
    """Why sanitized programs cannot be built here, or None if they can (probed once)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "gcc is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        r = subprocess.run([gcc, *SANITIZE, str(src), "-o", str(src.with_suffix(""))],
                           capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return f"gcc cannot link a sanitized program: {r.stderr.strip()[:200]}"
    return None


def build(tmp_path: pathlib.Path, source: str, *, name: str = "harness", opt: str = "-O1",
          sources: list[pathlib.Path] | None = None) -> pathlib.Path:
    """Compiles ``source`` with ``sources`` (default: every ``csrc/*.c``) under the sanitizers
    and returns the executable; skips the calling test when gcc cannot do it."""
    problem = _gcc_problem()
    if problem is not None:
        pytest.skip(problem)
    main = tmp_path / f"{name}.c"
    main.write_text(source)
    exe = tmp_path / name
    srcs = sorted(CSRC.glob("*.c")) if sources is None else sources
    cmd = ["gcc", *WARN, opt, "-g", *SANITIZE, f"-I{CSRC}", str(main), *map(str, srcs), "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the harness does not build:\n{r.stderr}"
    return exe


def run(exe: pathlib.Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs a sanitized program; ASan/UBSan abort on the first finding (non-zero exit)."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    """The program exited 0 and no sanitizer reported anything."""
    report = result.stderr
    assert result.returncode == 0 and "runtime error" not in report and "Sanitizer" not in report, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{report}")
