"""The source distribution held the Python packages and the C sources, but not the build
backend (build_ffi.py, which pyproject.toml names) nor csrc's headers and cdef files: pip
failed on it with ``ModuleNotFoundError: No module named 'build_ffi'`` before compiling
anything. MANIFEST.in now names them. This builds the sdist of a copy of the project with
the project's own backend, then a wheel from the unpacked sdist alone, as pip would."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: what a checkout may hold that is not part of the project
_NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                     ".hypothesis", "*.so", "*.o", "bench-results*")


def _setuptools_major() -> int:
    import setuptools

    return int(setuptools.__version__.split(".")[0])


def _backend(where: pathlib.Path, call: str) -> str:
    """Runs ``build_ffi.<call>`` with ``where`` as the working directory and first on the
    path (as a PEP 517 frontend does with ``backend-path = ["."]``); returns the file name
    it reports."""
    out = subprocess.run([sys.executable, "-c", f"import build_ffi; print(build_ffi.{call})"], cwd=where,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(_setuptools_major() < 77, reason="the project's license field needs setuptools >= 77 "
                    "(the test extra installs it)")
def test_the_sdist_carries_the_backend_and_every_c_file_and_a_wheel_builds_from_it(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    dist = tmp_path / "dist"
    sdist = dist / _backend(src, f"build_sdist({str(dist)!r})")

    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data")
    needed = {"build_ffi.py", "pyproject.toml", "README.md"}
    needed |= {p.relative_to(src).as_posix() for p in (src / "csrc").rglob("*") if p.is_file()}
    needed |= {p.relative_to(src).as_posix() for p in (src / "ngstore").rglob("*.py")}
    assert needed - names == set()
    assert any(n.endswith(".h") for n in names) and any(n.endswith(".cdef") for n in names)

    unpacked = tmp_path / "unpacked" / top
    wheels = tmp_path / "wheels"
    wheel = wheels / _backend(unpacked, f"build_wheel({str(wheels)!r})")
    with zipfile.ZipFile(wheel) as whl:
        built = whl.namelist()
    assert any(n.startswith("ngstore/_ngcore") and n.endswith(".so") for n in built), built
    assert any(n.startswith("ngstore/_fastpath") and n.endswith(".so") for n in built), built
    assert "ngstore/py.typed" in built
