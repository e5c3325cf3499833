"""ng_gather_column checked ``field_off + field_size > NG_TOKEN_SIZE`` in unsigned
arithmetic: offset 0xFFFFFFF0 with size 0x20 wraps to 0x10, passed the check, and the
copy then read 4 GiB past the chunk. The check must refuse every field that does not lie
inside the 64-byte record, whatever the sum does."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import csan

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ngcore.h"

int main(void) {
    const unsigned shift = 3, slots = 1u << shift;
    size_t len = slots * NG_TOKEN_SIZE + slots / 8;
    uint8_t *chunk = calloc(1, len);
    chunk[slots * NG_TOKEN_SIZE] = 0xFF;            /* every slot present */
    const uint8_t *ptrs[1] = {chunk};
    uint64_t lens[1] = {len};
    uint8_t out[64 * 8];
    size_t n = 0;
    static const unsigned bad[][2] = {{0xFFFFFFF0u, 0x20u}, {0xFFFFFFFFu, 1u}, {1u, 0xFFFFFFFFu},
                                      {64u, 1u}, {60u, 5u}, {0u, 65u}};
    for (unsigned k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int rc = ng_gather_column(ptrs, lens, 1, shift, bad[k][0], bad[k][1], out, 8, &n);
        if (rc != NG_EINVAL) { printf("offset %u size %u: status %d\n", bad[k][0], bad[k][1], rc); return 1; }
    }
    /* the largest valid fields still work */
    if (ng_gather_column(ptrs, lens, 1, shift, 63, 1, out, 8, &n) != NG_OK || n != 8) return 2;
    if (ng_gather_column(ptrs, lens, 1, shift, 0, 64, out, 8, &n) != NG_OK || n != 8) return 3;
    free(chunk);
    return 0;
}
"""


def test_c_gather_column_refuses_offsets_and_sizes_whose_sum_wraps(tmp_path):
    csan.assert_clean(csan.run(csan.build(tmp_path, HARNESS)))


def test_the_compiled_module_refuses_a_wrapping_offset_without_reading(tmp_path):
    # In a child process: the old code read far out of bounds (SIGSEGV or garbage).
    child = textwrap.dedent("""
        import numpy as np
        from ngstore import _native
        ffi, lib = _native.ffi, _native.lib
        chunk = np.zeros(8 * 64 + 1, np.uint8)
        chunk[-1] = 0xFF
        ptrs = ffi.new("const uint8_t *[]", [ffi.from_buffer("uint8_t[]", chunk)])
        lens = ffi.new("uint64_t[]", [chunk.size])
        out = ffi.new("uint8_t[]", 64 * 8)
        n = ffi.new("size_t *")
        print(lib.ng_gather_column(ptrs, lens, 1, 3, 0xFFFFFFF0, 0x20, out, 8, n))
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-1"]  # NG_EINVAL
