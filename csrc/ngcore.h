/* ngcore.h -- the C core of ngstore: shared definitions and the grid hash.
 *
 * Plain C99, no Python headers. Compiled into the private extension
 * ngstore._ngcore by build_ffi.py; the typed Python face is ngstore/_native.py.
 *
 * Status codes: every function that can fail returns 0 on success or one of
 * the negative NG_E* codes below; ng_strerror() names them.
 *
 * The grid hash (bit-exact with the original core's compute_grid_hash):
 *   for each layer d = 0..7 with raw i16 axes x, y, z and shift s[d]:
 *     q(v)  = ((uint64_t)(int64_t)v) >> s[d]     (sign-extend, then LOGICAL shift)
 *     r     = 13 + 7 d
 *     mix   = (q(x) ^ rotl(d, r)) ^ rotl(q(y), r + 5) ^ rotl(q(z), r + 11)
 *     hash ^= rotl(mix, r)                         (hash starts at 0)
 *   rotations are modulo 64. A Token's coordinates are 24 little-endian i16 at
 *   offset 0 of its 64-byte record (layer L, axis A at byte 6L + 2A).
 */
#ifndef NGCORE_H
#define NGCORE_H

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever a declaration in any csrc .cdef file, or a function of csrc/cpython/, changes
 * meaning. */
#define NG_ABI_VERSION 10

/* Bytes of the checksum trailer after a stored value's record region (docs/format.md 3.0). */
#define NG_CHECKSUM_BYTES 8

#define NG_OK 0
#define NG_EINVAL (-1)    /* bad argument (NULL pointer, zero size, bad shift) */
#define NG_ENOMEM (-2)    /* allocation failed */
#define NG_EFULL (-3)     /* table or buffer full */
#define NG_ECORRUPT (-4)  /* stored bytes fail a structural check */
#define NG_ENOTFOUND (-5) /* key not present */
#define NG_ERANGE (-6)    /* index or size out of range */

/* Arrays passed as typed pointers (uint32_t *, uint64_t *, float * outputs) must be
 * aligned for their type, as C requires; inputs that may come from arbitrary byte
 * buffers are declared const void * or const uint8_t * and are read with memcpy. */

#define NG_TOKEN_SIZE 64
#define NG_LAYERS 8

static inline uint64_t ng_rotl64(uint64_t v, unsigned r) {
    r &= 63u;
    return r ? (v << r) | (v >> (64u - r)) : v;
}

/* Grid hash of 24 raw coordinates (layer-major: x0 y0 z0 x1 ...). */
static inline uint64_t ng_grid_hash_coords(const int16_t c[24], const uint8_t shifts[8]) {
    uint64_t h = 0;
    for (unsigned d = 0; d < NG_LAYERS; d++) {
        unsigned s = shifts[d];
        unsigned r = 13u + 7u * d;
        uint64_t x = ((uint64_t)(int64_t)c[3 * d + 0]) >> s;
        uint64_t y = ((uint64_t)(int64_t)c[3 * d + 1]) >> s;
        uint64_t z = ((uint64_t)(int64_t)c[3 * d + 2]) >> s;
        uint64_t mix = (x ^ ng_rotl64((uint64_t)d, r)) ^ ng_rotl64(y, r + 5u) ^ ng_rotl64(z, r + 11u);
        h ^= ng_rotl64(mix, r);
    }
    return h;
}

/* Reads the 24 coordinates of a packed 64-byte token record (alignment 1). */
static inline void ng_load_coords(const uint8_t *rec, int16_t out[24]) {
    for (unsigned i = 0; i < 24; i++)
        out[i] = (int16_t)(uint16_t)(rec[2 * i] | ((uint16_t)rec[2 * i + 1] << 8));
}

int ng_abi_version(void);
const char *ng_strerror(int code);
int ng_gather_column(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                     unsigned slot_shift, unsigned field_off, unsigned field_size,
                     uint8_t *out, size_t out_cap, size_t *n_out);
/* The number of present records (presence bits set) of `nchunks` chunk values, the
 * values checked as ng_gather_column checks them (NG_ECORRUPT for a wrong length, before
 * any is read); *n_out receives it. Only the bitmaps are read: a parallel gather uses it
 * to place the part of its output that later chunks fill. */
int ng_count_present(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                     unsigned slot_shift, size_t *n_out);

/* ---- Batch grid hash ------------------------------------------------------
 *
 * Both functions validate every argument before writing anything: on a
 * non-zero return, out[] is untouched. n == 0 is a no-op returning NG_OK (the
 * pointers may then be NULL). shifts[] must hold 8 values in 0..NG_MAX_SHIFT.
 * Returns NG_OK, NG_EINVAL (NULL pointer, bad shift, stride < 64) or NG_ERANGE
 * (n records would span more than SIZE_MAX bytes).
 */
#define NG_MAX_SHIFT 15

/* Hash of n packed 64-byte token records; record i starts at records + i*stride
 * (stride >= 64, so rows never overlap). Writes n hashes to out. */
int ng_grid_hash_tokens(const uint8_t *records, size_t n, size_t stride,
                        const uint8_t shifts[8], uint64_t *out);

/* Hash of n states of 8 floats (contiguous, state i at byte 32*i; any alignment: the
 * floats are read with memcpy, so a view at an odd offset of a buffer is fine): each
 * state[d] is encoded to layer d's X axis exactly like ngstore.codec does --
 * float multiply by the layer scale in single precision, truncation toward
 * zero, saturation to int16, NaN -> 0 -- with Y = Z = 0, then hashed. */
int ng_grid_hash_states(const void *states, size_t n, const uint8_t shifts[8],
                        uint64_t *out);

/* ---- Gather of token records from chunk values ------------------------------
 *
 * Storage (docs/format.md owns the definitive text): tokens live in chunks of
 * S = 1 << slot_shift consecutive id slots; chunk key = id >> slot_shift, slot
 * = id & (S - 1). A chunk value is S records of 64 bytes at offset 0, followed
 * by a presence bitmap of S/8 bytes (slot i present iff bit (i & 7) of byte
 * (i >> 3) is set, LSB first). Its length must be exactly S*64 + S/8 (the record
 * region), or that plus NG_CHECKSUM_BYTES: the checksum trailer of docs/format.md
 * 3.0, which the caller verifies (XXH3-64 over a whole chunk is Python's job: the
 * gather never reads past the region).
 *
 * chunk_keys[0..nchunks) is strictly ascending; chunk_ptrs[k]/chunk_lens[k]
 * is the value of chunk_keys[k]. For each ids[i]: if its chunk is listed and
 * its bit is set, the record is copied to out + 64*i and found[i] = 1;
 * otherwise out's row is zeroed and found[i] = 0.
 *
 * slot_shift must be in NG_MIN_SLOT_SHIFT..NG_MAX_SLOT_SHIFT. Returns NG_OK,
 * NG_EINVAL (NULL pointer with a non-zero count, bad slot_shift, keys not
 * strictly ascending) or NG_ECORRUPT (a chunk value of the wrong length). All
 * chunks are checked before anything is written, so on error out[] and found[]
 * are untouched, and no byte outside [chunk_ptrs[k], chunk_ptrs[k] +
 * chunk_lens[k]) is ever read. Pure C, no allocation: safe without the GIL
 * while the chunk memory stays mapped.
 */
#define NG_MIN_SLOT_SHIFT 3
#define NG_MAX_SLOT_SHIFT 24

int ng_gather64(const uint32_t *ids, size_t n, const uint32_t *chunk_keys,
                const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens,
                size_t nchunks, unsigned slot_shift, uint8_t *out, uint8_t *found);

/* ---- Writing records into one chunk ------------------------------------------
 *
 * Builds a chunk's new record region in `region` (S = 1 << slot_shift slots;
 * `region_len` at least the record region, S*64 + S/8 bytes): first the old region,
 * copied from `src` (`src_len` at least the record region; only the region is read),
 * or zeros when `src` is NULL; then n 64-byte records (records + 64*i), each into slot
 * ids[i] & (S - 1) with its presence bit set; a later record for the same slot wins.
 * The caller chooses ids of this chunk (only the slot bits are used, so no byte outside
 * the region is ever written). Bytes of `region` past the record region are left as
 * they are. Returns how many presence bits were newly set (0..S), or NG_EINVAL (NULL
 * pointer with a non-zero count, bad slot_shift, a buffer too short) with nothing
 * written. The copy is the point of doing it here: cffi releases the GIL, and reading
 * a chunk freshly written to the map costs page faults. */
int ng_chunk_patch(uint8_t *region, size_t region_len, const uint8_t *src, size_t src_len, unsigned slot_shift,
                   const uint8_t *records, const uint32_t *ids, size_t n);

#endif
