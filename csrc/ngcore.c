/* ngcore.c -- status strings, the ABI stamp, the batch grid hash and the
 * chunk gather; see ngcore.h for the contracts and the layouts. */
#include "ngcore.h"

#include <string.h>

int ng_abi_version(void) { return NG_ABI_VERSION; }

const char *ng_strerror(int code) {
    switch (code) {
    case NG_OK: return "ok";
    case NG_EINVAL: return "invalid argument";
    case NG_ENOMEM: return "out of memory";
    case NG_EFULL: return "table full";
    case NG_ECORRUPT: return "stored bytes are corrupt";
    case NG_ENOTFOUND: return "not found";
    case NG_ERANGE: return "out of range";
    default: return "unknown status";
    }
}

/* ---- Batch grid hash --------------------------------------------------------
 *
 * The per-record work is ng_grid_hash_coords (ngcore.h), shared with the reflex
 * table so that every hash in the process comes from one formula. These loops
 * only validate, load and encode.
 */

/* Layer scales as float: the state encode multiplies in single precision,
 * exactly like the original's `value as f32 * scale as f32` and like
 * ngstore.codec.encode_state (numpy float32 multiply, IEEE round-to-nearest).
 * Only a multiply, so no FMA contraction can change the rounding. */
static const float ng_scales_f32[NG_LAYERS] = {100.0f, 10000.0f, 1000.0f, 10000.0f,
                                               10000.0f, 10000.0f, 100.0f, 10000.0f};

static int ng_check_shifts(const uint8_t shifts[8]) {
    if (!shifts) return NG_EINVAL;
    for (unsigned d = 0; d < NG_LAYERS; d++)
        if (shifts[d] > NG_MAX_SHIFT) return NG_EINVAL;
    return NG_OK;
}

/* Rust's `f as i16`: NaN -> 0, saturate, truncate toward zero. The range checks
 * come first so the C conversion below is always defined. */
static inline int16_t ng_encode_f32(float v) {
    if (v != v) return 0;
    if (v >= 32767.0f) return 32767;
    if (v <= -32768.0f) return -32768;
    return (int16_t)v;
}

int ng_grid_hash_tokens(const uint8_t *records, size_t n, size_t stride,
                        const uint8_t shifts[8], uint64_t *out) {
    int rc = ng_check_shifts(shifts);
    if (rc != NG_OK) return rc;
    if (n == 0) return NG_OK;
    if (!records || !out || stride < NG_TOKEN_SIZE) return NG_EINVAL;
    if (n > SIZE_MAX / stride) return NG_ERANGE;
    int16_t c[24];
    for (size_t i = 0; i < n; i++) {
        ng_load_coords(records + i * stride, c);
        out[i] = ng_grid_hash_coords(c, shifts);
    }
    return NG_OK;
}

int ng_grid_hash_states(const void *states, size_t n, const uint8_t shifts[8],
                        uint64_t *out) {
    int rc = ng_check_shifts(shifts);
    if (rc != NG_OK) return rc;
    if (n == 0) return NG_OK;
    if (!states || !out) return NG_EINVAL;
    if (n > SIZE_MAX / (NG_LAYERS * sizeof(float))) return NG_ERANGE;
    const unsigned char *in = (const unsigned char *)states;
    int16_t c[24] = {0};
    for (size_t i = 0; i < n; i++) {
        float s[NG_LAYERS]; /* memcpy: the caller's array may sit at any address */
        memcpy(s, in + i * sizeof s, sizeof s);
        for (unsigned d = 0; d < NG_LAYERS; d++) c[3 * d] = ng_encode_f32(s[d] * ng_scales_f32[d]);
        out[i] = ng_grid_hash_coords(c, shifts);
    }
    return NG_OK;
}

/* ---- Gather -------------------------------------------------------------------
 *
 * Layout of a chunk value (see ngcore.h): S*64 record bytes, then S/8 bitmap
 * bytes. Lengths are checked for every chunk up front -- one pass over nchunks
 * -- so the per-id loop can index without bounds checks and an error leaves the
 * outputs untouched.
 *
 * Lookup: callers usually pass ids grouped by chunk (sorted, or clustered), so
 * the previous chunk is tried before a binary search. A linear merge would need
 * sorted ids; a hash of keys would need allocation. Neither is worth it here.
 */
int ng_gather64(const uint32_t *ids, size_t n, const uint32_t *chunk_keys,
                const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens,
                size_t nchunks, unsigned slot_shift, uint8_t *out, uint8_t *found) {
    if (slot_shift < NG_MIN_SLOT_SHIFT || slot_shift > NG_MAX_SLOT_SHIFT) return NG_EINVAL;
    if (n > 0 && (!ids || !out || !found)) return NG_EINVAL;
    if (nchunks > 0 && (!chunk_keys || !chunk_ptrs || !chunk_lens)) return NG_EINVAL;
    const uint64_t slots = (uint64_t)1 << slot_shift;
    const uint64_t bitmap_off = slots * NG_TOKEN_SIZE;
    const uint64_t value_len = bitmap_off + slots / 8;
    for (size_t k = 0; k < nchunks; k++) {
        if (k > 0 && chunk_keys[k] <= chunk_keys[k - 1]) return NG_EINVAL;
        if (!chunk_ptrs[k]) return NG_EINVAL;
        /* the record region alone (format version 1) or followed by its checksum
         * trailer (format 2, docs/format.md 3.0): only the region is ever read */
        if (chunk_lens[k] != value_len && chunk_lens[k] != value_len + NG_CHECKSUM_BYTES) return NG_ECORRUPT;
    }
    if (n == 0) return NG_OK;

    const uint32_t slot_mask = (uint32_t)(slots - 1);
    size_t cur = (size_t)-1;   /* index of the last chunk found, or none */
    uint32_t cur_key = 0;
    int have_cur = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t id = ids[i];
        const uint32_t key = id >> slot_shift;
        uint8_t *dst = out + (size_t)NG_TOKEN_SIZE * i;
        if (!have_cur || key != cur_key) {
            size_t lo = 0, hi = nchunks; /* first index with chunk_keys[idx] >= key */
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (chunk_keys[mid] < key) lo = mid + 1; else hi = mid;
            }
            have_cur = 1;
            cur_key = key;
            cur = (lo < nchunks && chunk_keys[lo] == key) ? lo : (size_t)-1;
        }
        if (cur != (size_t)-1) {
            const uint8_t *v = chunk_ptrs[cur];
            const uint32_t slot = id & slot_mask;
            if (v[bitmap_off + (slot >> 3)] & (uint8_t)(1u << (slot & 7u))) {
                memcpy(dst, v + (size_t)slot * NG_TOKEN_SIZE, NG_TOKEN_SIZE);
                found[i] = 1;
                continue;
            }
        }
        memset(dst, 0, NG_TOKEN_SIZE);
        found[i] = 0;
    }
    return NG_OK;
}

/* Bit counts of a bitmap word; the portable forms are for compilers without the builtins. */
static inline size_t ng_popcount64(uint64_t v) {
#if defined(__GNUC__)
    return (size_t)__builtin_popcountll(v);
#else
    size_t n = 0;
    for (; v; v &= v - 1) n++;
    return n;
#endif
}

static inline size_t ng_ctz64(uint64_t v) { /* v != 0 */
#if defined(__GNUC__)
    return (size_t)__builtin_ctzll(v);
#else
    size_t n = 0;
    for (; !(v & 1u); v >>= 1) n++;
    return n;
#endif
}

#if defined(__GNUC__)
#define NG_PREFETCH_NT(p) __builtin_prefetch((p), 0, 0)
#else
#define NG_PREFETCH_NT(p) ((void)(p))
#endif
#define GATHER_AHEAD 4 /* pages of 64 records (4 KiB) that ng_gather_column reads ahead */

/* 1 when every chunk value is present and exactly value_bytes long, or that plus the
 * checksum trailer (what the chunk readers below accept before reading anything). */
static int ng_chunk_lens_ok(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                            size_t value_bytes) {
    for (size_t c = 0; c < nchunks; c++)
        if (!chunk_ptrs[c] || (chunk_lens[c] != value_bytes && chunk_lens[c] != value_bytes + NG_CHECKSUM_BYTES))
            return 0;
    return 1;
}

/* Word w (64 slots) of a presence bitmap of bitmap_bytes bytes, read as bytes (a chunk value
 * need not be 8-byte aligned); the last word of a chunk of 8..32 slots is shorter. */
static inline uint64_t ng_bitmap_word(const uint8_t *bitmap, size_t bitmap_bytes, size_t w) {
    size_t wbytes = bitmap_bytes - w * 8 < 8 ? bitmap_bytes - w * 8 : 8;
    uint64_t bits = 0;
    for (size_t k = 0; k < wbytes; k++) bits |= (uint64_t)bitmap[w * 8 + k] << (8 * k);
    return bits;
}

/* Copies field bytes [field_off, field_off + field_size) of every PRESENT record of
 * `nchunks` chunk values, in chunk order then slot order, into `out` (packed).
 * Each chunk value must be exactly S*64 + S/8 bytes (S = 1 << slot_shift; the token
 * chunk layout of docs/format.md 3.2), or that plus the NG_CHECKSUM_BYTES trailer
 * (3.0, not verified here), or NG_ECORRUPT is returned before anything is read
 * from it. `out_cap` is the capacity of `out` in records; *n_out receives how many
 * records were written (NG_ERANGE if they would not fit). The GIL is released by cffi:
 * this runs over the LMDB map while the read transaction is held by the caller. */
int ng_gather_column(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                     unsigned slot_shift, unsigned field_off, unsigned field_size,
                     uint8_t *out, size_t out_cap, size_t *n_out) {
    /* The field test is written so that no sum can wrap: field_off + field_size in
     * unsigned arithmetic would let 0xFFFFFFF0 + 0x20 pass as 0x10. */
    if (!chunk_ptrs || !chunk_lens || !n_out || (!out && out_cap) || slot_shift < NG_MIN_SLOT_SHIFT ||
        slot_shift > NG_MAX_SLOT_SHIFT || field_size == 0 || field_off >= NG_TOKEN_SIZE ||
        field_size > NG_TOKEN_SIZE - field_off)
        return NG_EINVAL;
    const size_t slots = (size_t)1 << slot_shift;
    const size_t records_bytes = slots * NG_TOKEN_SIZE;
    const size_t value_bytes = records_bytes + slots / 8;
    if (!ng_chunk_lens_ok(chunk_ptrs, chunk_lens, nchunks, value_bytes)) return NG_ECORRUPT;
    /* Most chunks are full: a bitmap word of 64 present slots copies 64 fields at a
     * fixed stride (a loop the compiler unrolls, as numpy's strided copy is); other
     * words copy their set bits one by one. The bitmap is read as bytes: a chunk value
     * need not be 8-byte aligned. */
    size_t n = 0;
    for (size_t c = 0; c < nchunks; c++) {
        const uint8_t *base = chunk_ptrs[c];
        const uint8_t *bitmap = base + records_bytes;
        for (size_t w = 0; w * 8 < slots / 8; w++) {
            uint64_t bits = ng_bitmap_word(bitmap, slots / 8, w);
            if (!bits) continue;
            const uint8_t *rec = base + w * 64 * NG_TOKEN_SIZE + field_off;
            size_t present = bits == UINT64_MAX ? 64 : ng_popcount64(bits);
            if (present > out_cap - n) return NG_ERANGE;
            uint8_t *dst = out + n * field_size;
            n += present;
            /* A word's records are one 4 KiB page of the map, and the hardware prefetcher
             * stops at page boundaries, so each new page would start with misses: every
             * record read asks for its line GATHER_AHEAD pages on (one line per record;
             * the prefetch cannot fault, past the end of the chunk or of the map). Measured
             * on a 1M-token store: 1.50x an in-RAM strided sum on one thread with one
             * prefetch two pages ahead per page, 1.17-1.39x with these (2, 3 or 4 pages
             * ahead alike; 8 and 16 slower). */
#define NG_COPY_FIELDS(SIZE)                                                       \
            if (bits == UINT64_MAX) {                                              \
                for (unsigned k = 0; k < 64; k++) {                                \
                    NG_PREFETCH_NT(rec + (GATHER_AHEAD * 64 + k) * NG_TOKEN_SIZE); \
                    memcpy(dst + k * (SIZE), rec + k * NG_TOKEN_SIZE, (SIZE));     \
                }                                                                  \
            } else {                                                               \
                NG_PREFETCH_NT(rec + GATHER_AHEAD * 64 * NG_TOKEN_SIZE);           \
                for (; bits; bits &= bits - 1, dst += (SIZE))                      \
                    memcpy(dst, rec + ng_ctz64(bits) * NG_TOKEN_SIZE, (SIZE));     \
            }
            /* Constant-size copies compile to plain loads and stores. */
            switch (field_size) {
            case 1: NG_COPY_FIELDS(1) break;
            case 2: NG_COPY_FIELDS(2) break;
            case 4: NG_COPY_FIELDS(4) break;
            case 8: NG_COPY_FIELDS(8) break;
            default: NG_COPY_FIELDS(field_size) break;
            }
#undef NG_COPY_FIELDS
        }
    }
    *n_out = n;
    return NG_OK;
}

int ng_count_present(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                     unsigned slot_shift, size_t *n_out) {
    if (!n_out || (nchunks && (!chunk_ptrs || !chunk_lens)) || slot_shift < NG_MIN_SLOT_SHIFT ||
        slot_shift > NG_MAX_SLOT_SHIFT)
        return NG_EINVAL;
    const size_t slots = (size_t)1 << slot_shift;
    const size_t records_bytes = slots * NG_TOKEN_SIZE;
    const size_t value_bytes = records_bytes + slots / 8;
    if (!ng_chunk_lens_ok(chunk_ptrs, chunk_lens, nchunks, value_bytes)) return NG_ECORRUPT;
    size_t n = 0;
    for (size_t c = 0; c < nchunks; c++) {
        const uint8_t *bitmap = chunk_ptrs[c] + records_bytes;
        for (size_t w = 0; w * 8 < slots / 8; w++) {
            n += ng_popcount64(ng_bitmap_word(bitmap, slots / 8, w));
        }
    }
    *n_out = n;
    return NG_OK;
}

int ng_chunk_patch(uint8_t *region, size_t region_len, const uint8_t *src, size_t src_len, unsigned slot_shift,
                   const uint8_t *records, const uint32_t *ids, size_t n) {
    if (!region || (n && (!records || !ids)) || slot_shift < NG_MIN_SLOT_SHIFT || slot_shift > 16)
        return NG_EINVAL;
    const size_t slots = (size_t)1 << slot_shift;
    const size_t records_bytes = slots * NG_TOKEN_SIZE;
    const size_t region_bytes = records_bytes + slots / 8;
    if (region_len < region_bytes || (src && src_len < region_bytes)) return NG_EINVAL;
    if (src)
        memcpy(region, src, region_bytes);
    else
        memset(region, 0, region_bytes);
    uint8_t *bitmap = region + records_bytes;
    int added = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t slot = ids[i] & (slots - 1);
        const uint8_t bit = (uint8_t)(1u << (slot & 7));
        added += !(bitmap[slot >> 3] & bit);
        bitmap[slot >> 3] |= bit;
        memcpy(region + slot * NG_TOKEN_SIZE, records + i * NG_TOKEN_SIZE, NG_TOKEN_SIZE);
    }
    return added;
}
