/* xxh3.h -- XXH3-64 (seed 0) for inputs of 17..128 bytes, the only lengths the
 * reflex table hashes (its quantized states are 48 bytes).
 *
 * Written from the published XXH3 specification (xxHash's doc/xxhash_spec.md and
 * the reference xxhash.h, v0.8): bit-identical with Python
 * `xxhash.xxh3_64_intdigest(data)` for 17 <= len <= 128. The tests compare it
 * with the `xxhash` package on every length of that range and on thousands of
 * random 48-byte inputs.
 *
 * Why not vendor xxhash.h: it is ~6000 lines for a 30-line code path; and why
 * not a simpler hash: the fingerprint is part of the on-disk format, so it must be
 * a published, stable function that another implementation can reproduce.
 *
 * The algorithm for 17 <= len <= 128 (all reads little-endian, arithmetic mod 2^64):
 *   acc = len * PRIME64_1
 *   if len > 32:
 *     if len > 64:
 *       if len > 96: acc += mix16(in+48, sec+96); acc += mix16(in+len-64, sec+112)
 *       acc += mix16(in+32, sec+64); acc += mix16(in+len-48, sec+80)
 *     acc += mix16(in+16, sec+32); acc += mix16(in+len-32, sec+48)
 *   acc += mix16(in, sec); acc += mix16(in+len-16, sec+16)
 *   return avalanche(acc)
 * mix16(in, sec) = fold64(read64(in) ^ read64(sec), read64(in+8) ^ read64(sec+8))
 *   (the seed terms vanish for seed 0), fold64(a, b) = lo64(a*b) ^ hi64(a*b) of
 *   the full 128-bit product; avalanche(h): h ^= h >> 37; h *= 0x165667919E3779F9;
 *   h ^= h >> 32.
 * Only the first 128 bytes of the 192-byte default secret are read on this path,
 * so only those are reproduced here (the remaining 64 serve longer inputs).
 */
#ifndef NG_XXH3_H
#define NG_XXH3_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NG_XXH_PRIME64_1 0x9E3779B185EBCA87ULL

/* XXH3 kSecret, bytes 0..127 (of 192). */
static const uint8_t ng_xxh3_secret[128] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
};

static inline uint64_t ng_xxh_read64le(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* lo64(a*b) ^ hi64(a*b) of the 128-bit product. */
static inline uint64_t ng_xxh_mul128_fold64(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 ng_u128;
    ng_u128 p = (ng_u128)a * (ng_u128)b;
    return (uint64_t)p ^ (uint64_t)(p >> 64);
#else /* portable: schoolbook on 32-bit halves */
    uint64_t lo_lo = (a & 0xFFFFFFFFu) * (b & 0xFFFFFFFFu);
    uint64_t hi_lo = (a >> 32) * (b & 0xFFFFFFFFu);
    uint64_t lo_hi = (a & 0xFFFFFFFFu) * (b >> 32);
    uint64_t hi_hi = (a >> 32) * (b >> 32);
    uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
    uint64_t upper = (hi_lo >> 32) + (cross >> 32) + hi_hi;
    uint64_t lower = (cross << 32) | (lo_lo & 0xFFFFFFFFu);
    return lower ^ upper;
#endif
}

static inline uint64_t ng_xxh3_mix16(const uint8_t *in, const uint8_t *sec) {
    return ng_xxh_mul128_fold64(ng_xxh_read64le(in) ^ ng_xxh_read64le(sec),
                                ng_xxh_read64le(in + 8) ^ ng_xxh_read64le(sec + 8));
}

static inline uint64_t ng_xxh3_avalanche(uint64_t h) {
    h ^= h >> 37;
    h *= 0x165667919E3779F9ULL;
    h ^= h >> 32;
    return h;
}

/* XXH3-64, seed 0, 17 <= len <= 128 (other lengths: the caller's bug; returns 0). */
static inline uint64_t ng_xxh3_64_17to128(const uint8_t *in, size_t len) {
    const uint8_t *sec = ng_xxh3_secret;
    uint64_t acc;
    if (len < 17 || len > 128)
        return 0;
    acc = (uint64_t)len * NG_XXH_PRIME64_1;
    if (len > 32) {
        if (len > 64) {
            if (len > 96) {
                acc += ng_xxh3_mix16(in + 48, sec + 96);
                acc += ng_xxh3_mix16(in + len - 64, sec + 112);
            }
            acc += ng_xxh3_mix16(in + 32, sec + 64);
            acc += ng_xxh3_mix16(in + len - 48, sec + 80);
        }
        acc += ng_xxh3_mix16(in + 16, sec + 32);
        acc += ng_xxh3_mix16(in + len - 32, sec + 48);
    }
    acc += ng_xxh3_mix16(in, sec);
    acc += ng_xxh3_mix16(in + len - 16, sec + 16);
    return ng_xxh3_avalanche(acc);
}

#endif
