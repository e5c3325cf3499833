"""Builds ``ngstore._ngcore``, the private compiled module, with cffi in API mode.

Every ``csrc/*.cdef`` file contributes declarations and every ``csrc/*.c`` file is
compiled into the one extension, so a new C component is added by dropping its
``.c``/``.h``/``.cdef`` files into ``csrc/`` -- nothing here needs to change.
The ABI stamp ``NG_ABI_VERSION`` in ``csrc/ngcore.h`` must equal
``ngstore._native.ABI_VERSION``; the wrapper refuses a mismatched build at import.

This file is also the project's PEP 517 build backend (``pyproject.toml`` names it
with ``backend-path = ["."]``): it is setuptools' own backend with one change, the
``cffi_modules`` argument that would otherwise need a ``setup.py``.
"""
from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def _make_builder() -> FFI:
    builder = FFI()
    builder.cdef("\n".join(p.read_text() for p in sorted(CSRC.glob("*.cdef"))))
    headers = sorted(h.name for h in CSRC.glob("*.h"))
    builder.set_source(
        "ngstore._ngcore",
        "".join(f'#include "{h}"\n' for h in headers),
        # Relative paths: setuptools rejects absolute source paths.
        sources=[str(p.relative_to(HERE)) for p in sorted(CSRC.glob("*.c"))],
        include_dirs=[str(CSRC.relative_to(HERE))],
        extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra",
                            "-Werror=implicit-function-declaration"],
    )
    return builder


ffibuilder = _make_builder()

try:  # the backend part; absent when this file is run only as a cffi builder
    from setuptools import build_meta as _build_meta
except ImportError:  # pragma: no cover
    _build_meta = None

if _build_meta is not None:

    class _Backend(_build_meta._BuildMetaBackend):
        def run_setup(self, setup_script: str = "setup.py") -> None:
            import setuptools

            setuptools.setup(cffi_modules=["build_ffi.py:ffibuilder"])

    _BACKEND = _Backend()
    get_requires_for_build_wheel = _BACKEND.get_requires_for_build_wheel
    get_requires_for_build_sdist = _BACKEND.get_requires_for_build_sdist
    prepare_metadata_for_build_wheel = _BACKEND.prepare_metadata_for_build_wheel
    build_wheel = _BACKEND.build_wheel
    build_sdist = _BACKEND.build_sdist
    get_requires_for_build_editable = _BACKEND.get_requires_for_build_editable
    prepare_metadata_for_build_editable = _BACKEND.prepare_metadata_for_build_editable
    build_editable = _BACKEND.build_editable

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
