"""ng_grid_hash_states read its input through a ``float *``: given the address of an
unaligned float32 array (numpy makes them, e.g. ``np.frombuffer(buf, offset=1)``, and
``np.ascontiguousarray`` passes them through unchanged) that is undefined behaviour. The
states are now read byte-wise (memcpy), so any address is valid."""
from __future__ import annotations

import csan
import numpy as np

from ngstore import _native

HARNESS = r"""
#include <stdio.h>
#include <string.h>
#include "ngcore.h"

int main(void) {
    static const uint8_t shifts[8] = {4, 4, 5, 6, 6, 6, 8, 8};
    float aligned[2][8] = {{0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f},
                           {-0.1f, 0.2f, -0.3f, 0.4f, -0.5f, 0.6f, -0.7f, 0.8f}};
    unsigned char buf[sizeof aligned + 8];
    uint64_t want[2], got[2];
    if (ng_grid_hash_states(aligned, 2, shifts, want) != NG_OK) return 1;
    for (unsigned off = 1; off < 4; off++) {
        memcpy(buf + off, aligned, sizeof aligned);
        if (ng_grid_hash_states((const void *)(buf + off), 2, shifts, got) != NG_OK) return 2;
        if (got[0] != want[0] || got[1] != want[1]) { printf("offset %u differs\n", off); return 3; }
    }
    /* Appendix A3 */
    if (want[0] != 0xb0dc1dfd4fc00037ULL || want[1] != 0xb0a39c0548001e37ULL) return 4;
    return 0;
}
"""


def test_c_grid_hash_states_accepts_any_address_under_ubsan(tmp_path):
    csan.assert_clean(csan.run(csan.build(tmp_path, HARNESS)))


def test_an_unaligned_numpy_view_hashes_like_an_aligned_copy():
    states = np.random.default_rng(0).uniform(-1, 1, (100, 8)).astype(np.float32)
    raw = np.zeros(states.nbytes + 1, np.uint8)
    raw[1:] = states.view(np.uint8).ravel()
    view = np.frombuffer(raw.data, np.float32, offset=1).reshape(100, 8)
    assert not view.flags.aligned
    assert np.array_equal(_native.grid_hash_states(view), _native.grid_hash_states(states))
