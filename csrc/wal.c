/* wal.c -- CRC-32 and the log's one-record writer; see wal.h. */
#define _GNU_SOURCE /* pwritev */
#include "wal.h"
#include "ngcore.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- CRC-32, slicing by 8 ----------------------------------------------------
 *
 * Eight 256-entry tables let the loop fold eight bytes per step (about 1 byte per
 * cycle, against 4-8 cycles per byte for the bitwise form). The tables are filled
 * once, before the module's first use, by a constructor; the build is gcc/clang. */
static uint32_t crc_tab[8][256];

__attribute__((constructor)) static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (unsigned k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (unsigned t = 1; t < 8; t++) crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
}

static inline uint32_t ld32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- CRC-32 by carry-less multiplication (x86-64 with PCLMULQDQ) ---------------
 *
 * The folding method of Gopal et al., "Fast CRC Computation for Generic Polynomials
 * Using PCLMULQDQ Instruction" (Intel, 2009), for the bit-reflected polynomial: four
 * 128-bit lanes are folded forward 64 bytes a step, then into one lane, then 16 bytes a
 * step; the lane is reduced to 64 bits and the remainder taken by Barrett reduction.
 * The constants are x^k mod P for the fold distances (reflected, with the 33rd bit),
 * and P and floor(x^64 / P) for the reduction. Measured here: ~10x the tables above,
 * which made the CRC a sixth of a 1M-token bulk commit and a tenth of a replay. It
 * runs on whole 16-byte blocks of at least 64 bytes; the tables do the rest. The CPU is
 * asked once, at load; no build flag is needed (the function carries its own target). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NG_CRC_CLMUL 1

static int crc_clmul_ok;

__attribute__((constructor)) static void crc_clmul_init(void) {
    __builtin_cpu_init();
    crc_clmul_ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

/* The inverted CRC state `c` after n bytes (n >= 64, a multiple of 16). */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_clmul(const uint8_t *p, size_t n, uint32_t c) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL); /* fold by 512 bits */
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL); /* fold by 128 bits */
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124LL);                 /* 96 -> 64 bits */
    const __m128i pmu = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);   /* P, floor(x^64/P) */
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 0x00));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 0x10));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 0x20));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)c));
    p += 64;
    n -= 64;
    while (n >= 64) {
        __m128i t1 = _mm_clmulepi64_si128(x1, k1k2, 0x00), t2 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        __m128i t3 = _mm_clmulepi64_si128(x3, k1k2, 0x00), t4 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k1k2, 0x11);
        x2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
        x3 = _mm_clmulepi64_si128(x3, k1k2, 0x11);
        x4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, t1), _mm_loadu_si128((const __m128i *)(p + 0x00)));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, t2), _mm_loadu_si128((const __m128i *)(p + 0x10)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, t3), _mm_loadu_si128((const __m128i *)(p + 0x20)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, t4), _mm_loadu_si128((const __m128i *)(p + 0x30)));
        p += 64;
        n -= 64;
    }
    /* four lanes into one */
    __m128i t = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), t), x2);
    t = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), t), x3);
    t = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), t), x4);
    while (n >= 16) {
        t = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), t),
                           _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
    /* 128 -> 64 bits */
    x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00), x2);
    /* Barrett reduction to 32 bits */
    x2 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), pmu, 0x10);
    x2 = _mm_clmulepi64_si128(_mm_and_si128(x2, low32), pmu, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x1, x2), 1);
}
#endif

uint32_t ng_crc32(const void *data, size_t n, uint32_t crc) {
    const uint8_t *p = (const uint8_t *)data;
    uint32_t c = ~crc;
#ifdef NG_CRC_CLMUL
    if (n >= 64 && crc_clmul_ok) {
        const size_t whole = n & ~(size_t)15;
        c = crc_clmul(p, whole, c);
        p += whole;
        n -= whole;
    }
#endif
    while (n >= 8) {
        uint32_t lo = ld32le(p) ^ c, hi = ld32le(p + 4);
        c = crc_tab[7][lo & 0xFF] ^ crc_tab[6][(lo >> 8) & 0xFF] ^ crc_tab[5][(lo >> 16) & 0xFF] ^
            crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xFF] ^ crc_tab[2][(hi >> 8) & 0xFF] ^
            crc_tab[1][(hi >> 16) & 0xFF] ^ crc_tab[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xFF];
    return ~c;
}

/* ---- the frame writer -------------------------------------------------------- */

static void st32le(uint8_t *p, uint32_t v) {
    for (unsigned i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void st64le(uint8_t *p, uint64_t v) {
    for (unsigned i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#define ZERO_BLOCK (64u << 10)
static const uint8_t zero_block[ZERO_BLOCK];
#define MAX_IOV 64

/* The 40-byte header of `payload` into h[0..40), CRC included. */
static void frame_head(uint8_t *h, const char *payload, uint32_t len, uint64_t salt, uint64_t position,
                       uint64_t synced, unsigned type) {
    memset(h, 0, NG_WAL_FRAME_HEADER);
    st32le(h + 4, len);
    st64le(h + 8, salt);
    st64le(h + 16, position);
    st64le(h + 24, synced);
    h[32] = (uint8_t)type;
    st32le(h + 36, len);
    st32le(h, ng_crc32(payload, len, ng_crc32(h + 4, NG_WAL_FRAME_HEADER - 4, 0)));
}

int ng_wal_write_frame(int fd, int64_t offset, const char *payload, uint32_t len, uint64_t salt,
                       uint64_t position, uint64_t synced, unsigned type, uint64_t zeros) {
    if (fd < 0 || offset < 0 || (len && !payload) || type > 0xFF ||
        zeros > (uint64_t)(MAX_IOV - 2) * ZERO_BLOCK)
        return -EINVAL;
    uint8_t head[NG_WAL_FRAME_HEADER];
    frame_head(head, payload, len, salt, position, synced, type);

    struct iovec iov[MAX_IOV];
    int n = 0;
    iov[n].iov_base = head;
    iov[n++].iov_len = sizeof head;
    if (len) {
        iov[n].iov_base = (void *)payload;
        iov[n++].iov_len = len;
    }
    for (uint64_t left = zeros; left; n++) {
        size_t part = left < ZERO_BLOCK ? (size_t)left : ZERO_BLOCK;
        iov[n].iov_base = (void *)zero_block;
        iov[n].iov_len = part;
        left -= part;
    }
    struct iovec *v = iov;
    off_t at = (off_t)offset;
    while (n > 0) {
        ssize_t done = pwritev(fd, v, n, at);
        if (done < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (done == 0) return -EIO; /* no progress on a regular file: never loop forever */
        at += done;
        while (n > 0 && (size_t)done >= v->iov_len) { /* skip what was written */
            done -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (uint8_t *)v->iov_base + done;
            v->iov_len -= (size_t)done;
        }
    }
    return 0;
}

/* ---- the mapped segment ------------------------------------------------------ */

void *ng_wal_map(int fd, uint64_t length) {
    if (fd < 0 || length == 0 || length > (uint64_t)SIZE_MAX) {
        errno = EINVAL;
        return NULL;
    }
    void *p = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int ng_wal_unmap(void *map, uint64_t length) {
    if (!map || length == 0) return -EINVAL;
    return munmap(map, (size_t)length) ? -errno : 0;
}

int ng_wal_put_frame(uint8_t *map, uint64_t limit, uint64_t offset, const char *payload, uint32_t len,
                     uint64_t salt, uint64_t position, uint64_t synced, unsigned type) {
    if (!map || (len && !payload) || type > 0xFF) return NG_EINVAL;
    if (offset > limit || limit - offset < (uint64_t)NG_WAL_FRAME_HEADER + len) return NG_ERANGE;
    uint8_t head[NG_WAL_FRAME_HEADER];
    frame_head(head, payload, len, salt, position, synced, type);
    uint8_t *dst = map + offset;
    if (len) memcpy(dst + NG_WAL_FRAME_HEADER, payload, len);
    memcpy(dst + 4, head + 4, NG_WAL_FRAME_HEADER - 4);
    /* the CRC last: a compiler barrier keeps the stores in this order for a crash of
     * this process (the page cache keeps what was stored); a power loss is the torn-tail
     * case of any unsynced write, caught by the CRC */
    __asm__ __volatile__("" ::: "memory");
    memcpy(dst, head, 4);
    return NG_OK;
}
