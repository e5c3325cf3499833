"""Long, coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    pip install -e '.[fuzz]'
    python tests/fuzz/run_atheris.py TARGET [WORKDIR] [-- libFuzzer options]
    python tests/fuzz/run_atheris.py token_chunk /tmp/fz -- -max_total_time=3600 -rss_limit_mb=2048

Starts from the checked-in seed corpus (``corpus/TARGET``, read only) and keeps the inputs
that reach new code in ``WORKDIR/corpus`` (default: a directory under the system's temporary
directory); a crash, an undocumented exception, a timeout (``-timeout``, default here 20 s)
or memory beyond ``-rss_limit_mb`` stops the run and leaves the input in ``WORKDIR`` as
``crash-*``, ``timeout-*`` or ``oom-*``. Reproduce one with the bounded runner, which prints
the traceback: ``python tests/fuzz/worker.py TARGET --out DIR`` after copying the input into
``corpus/TARGET/`` -- and once fixed, it stays there as a seed and gets a regression test.

Mutations are libFuzzer's, and half of them go through the target's ``fixup`` (checksums
re-computed) so they get past the CRCs. Not needed by CI: ``tests/fuzz/test_fuzz.py`` runs
every target for a few seconds without atheris.
"""
from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import atheris  # noqa: E402

with atheris.instrument_imports(include=["ngstore"]):
    import targets

    import ngstore  # noqa: F401


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    if not argv or argv[0] not in targets.TARGETS:
        raise SystemExit(f"usage: run_atheris.py TARGET [WORKDIR] [-- libFuzzer options]\n"
                         f"targets: {', '.join(sorted(targets.TARGETS))}")
    target = targets.TARGETS[argv[0]]
    work = argv[1] if len(argv) > 1 else tempfile.mkdtemp(prefix=f"ngstore-atheris-{target.name}-")
    found = os.path.join(work, "corpus")
    os.makedirs(found, exist_ok=True)
    seeds = os.path.join(HERE, "corpus", target.name)
    targets.prepare([target.name])
    longest = max(os.path.getsize(os.path.join(seeds, n)) for n in os.listdir(seeds))

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        out: bytes = atheris.Mutate(data, max_size)
        if target.fixup is not None and seed & 1:
            out = target.fixup(out)[:max_size]
        return out

    def one_input(data: bytes) -> None:
        target(data)

    options = [f"-artifact_prefix={work}{os.sep}", f"-max_len={2 * longest + 64}", "-timeout=20", *extra]
    print(f"fuzzing {target.name}: seeds {seeds}, new inputs and crashes in {work}", flush=True)
    atheris.Setup([sys.argv[0], *options, found, seeds], one_input, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
