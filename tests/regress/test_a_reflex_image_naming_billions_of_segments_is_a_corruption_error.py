"""``ReflexTable.from_bytes`` built the list of segment lengths from the image's header
before validating it: a header naming 2³² − 1 record segments asked for a list of four
billion entries (32 GB) -- a MemoryError under an address-space limit, the OOM killer
without one. It now compares the image's size with the header's geometry first. Found by
the ``reflex_table`` fuzz target."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("fix_crc", [False, True])
@pytest.mark.parametrize("field", [28, 36])  # record segments, index segments
def test_from_bytes_refuses_a_header_naming_billions_of_segments(field, fix_crc):
    code = textwrap.dedent(f"""
        import resource, struct, zlib
        import numpy as np
        import ngstore
        from ngstore.reflex import ReflexTable
        from ngstore.records import CONNECTION_DTYPE
        t = ReflexTable.create(64)
        conns = np.zeros(3, CONNECTION_DTYPE)
        conns["confidence"] = 200
        t.insert_batch(np.random.default_rng(1).uniform(-1, 1, (3, 8)).astype(np.float32), conns)
        image = bytearray(t.to_bytes())
        struct.pack_into("<I", image, {field}, 0xFFFFFFFF)
        if {fix_crc}:
            struct.pack_into("<I", image, 252, zlib.crc32(image[:252]))
        resource.setrlimit(resource.RLIMIT_AS, (1 << 32, 1 << 32))
        try:
            ReflexTable.from_bytes(bytes(image))
        except ngstore.CorruptionError as exc:
            print("refused:", exc)
        else:
            raise SystemExit("accepted a header naming 2^32 - 1 segments")
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "refused" in p.stdout, p.stderr[-3000:]
