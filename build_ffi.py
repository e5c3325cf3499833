"""Builds ``ngstore._ngcore``, the private compiled module, with cffi in API mode.

Every ``csrc/*.cdef`` file contributes declarations and every ``csrc/*.c`` file is
compiled into the one extension, so a new C component is added by dropping its
``.c``/``.h``/``.cdef`` files into ``csrc/`` -- nothing here needs to change.
The ABI stamp ``NG_ABI_VERSION`` in ``csrc/ngcore.h`` must equal
``ngstore._native.ABI_VERSION``; the wrapper refuses a mismatched build at import.

One small second extension, ``ngstore._fastpath`` (``csrc/cpython/``), is written against
the CPython API instead: the single-state reflex lookup, whose cffi conversions cost more
than the lookup. It calls into ``_ngcore`` and carries the same ABI stamp.

This file is also the project's PEP 517 build backend (``pyproject.toml`` names it
with ``backend-path = ["."]``): it is setuptools' own backend with two additions, the
``cffi_modules`` and ``ext_modules`` arguments that would otherwise need a ``setup.py``.
"""
from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE / "csrc"


#: Functions whose wrappers keep the GIL during the call. cffi releases it around every
#: call; for a call of well under a microsecond that costs more than the call (a release and
#: a re-acquisition), and it invites any thread waiting for the GIL to run until its switch
#: interval ends before the caller continues (a commit's log append, a lookup, each paying
#: a slice of the applier's work). Only functions that are short and bounded, take no lock
#: and do no system call belong here: a caller holding the GIL blocks every Python thread.
KEEPS_GIL = ("ng_wal_put_frame", "ng_reflex_lookup_f32", "ng_reflex_lookup_one")


def keeps_gil_preamble(names: tuple[str, ...] = KEEPS_GIL) -> str:
    """C that redefines the two macros cffi's generated wrappers put around each call, so
    that the wrappers of ``names`` keep the GIL. A wrapper is the function
    ``_cffi_f_<name>``; comparing ``__func__`` with constant strings is resolved at compile
    time, so every other wrapper releases the GIL exactly as before."""
    test = " || ".join(f'strcmp(__func__, "_cffi_f_{n}") == 0' for n in names) or "0"
    return (
        "#include <string.h>\n"
        "#undef Py_BEGIN_ALLOW_THREADS\n"
        "#undef Py_END_ALLOW_THREADS\n"
        f"#define NG_KEEPS_GIL ({test})\n"
        "#define Py_BEGIN_ALLOW_THREADS { PyThreadState *_save = NG_KEEPS_GIL ? NULL : PyEval_SaveThread();\n"
        "#define Py_END_ALLOW_THREADS if (_save != NULL) PyEval_RestoreThread(_save); }\n"
    )


def _make_builder() -> FFI:
    builder = FFI()
    builder.cdef("\n".join(p.read_text() for p in sorted(CSRC.glob("*.cdef"))))
    headers = sorted(h.name for h in CSRC.glob("*.h"))
    builder.set_source(
        "ngstore._ngcore",
        "".join(f'#include "{h}"\n' for h in headers) + keeps_gil_preamble(),
        # Relative paths: setuptools rejects absolute source paths.
        sources=[str(p.relative_to(HERE)) for p in sorted(CSRC.glob("*.c"))],
        include_dirs=[str(CSRC.relative_to(HERE))],
        extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra",
                            "-Werror=implicit-function-declaration"],
    )
    return builder


ffibuilder = _make_builder()


def fastpath_extension() -> object:
    """``ngstore._fastpath``: the one-state reflex lookup through the CPython API
    (``csrc/cpython/fastpath.c``), where cffi's argument and result conversions would cost
    several times the lookup. It includes the core's headers for its types and calls the
    core through a function pointer that ``ngstore.reflex`` binds at import."""
    from setuptools import Extension

    return Extension(
        "ngstore._fastpath",
        sources=["csrc/cpython/fastpath.c"],
        include_dirs=[str(CSRC.relative_to(HERE))],
        extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
    )

try:  # the backend part; absent when this file is run only as a cffi builder
    from setuptools import build_meta as _build_meta
except ImportError:  # pragma: no cover
    _build_meta = None

if _build_meta is not None:

    class _Backend(_build_meta._BuildMetaBackend):
        def run_setup(self, setup_script: str = "setup.py") -> None:
            import setuptools

            setuptools.setup(cffi_modules=["build_ffi.py:ffibuilder"], ext_modules=[fastpath_extension()])

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
