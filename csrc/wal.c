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

uint32_t ng_crc32(const void *data, size_t n, uint32_t crc) {
    const uint8_t *p = (const uint8_t *)data;
    uint32_t c = ~crc;
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
