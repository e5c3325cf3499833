"""The public C contract of csrc/ under AddressSanitizer and UndefinedBehaviorSanitizer.

tests/c/contract_harness.c calls every exported function the way a careless or hostile
caller would: bad offsets and sizes, unaligned inputs, NULLs, counts whose byte sizes
overflow, reflex tables attached over flipped or random bytes and then read and written
through every path. Built with ``-fsanitize=address,undefined -fno-sanitize-recover=all``
(see tests/csan.py), the first invalid access, misaligned load, overflow or leak ends the
program with a report; the harness also checks every promised status. Skipped without gcc.
"""
from __future__ import annotations

import pathlib

import csan

HARNESS = pathlib.Path(__file__).resolve().parents[1] / "c" / "contract_harness.c"


def test_the_c_contract_holds_under_asan_and_ubsan(tmp_path):
    exe = csan.build(tmp_path, HARNESS.read_text(), name="contract_harness")
    result = csan.run(exe, "40")
    csan.assert_clean(result)
    assert "contract held" in result.stdout
