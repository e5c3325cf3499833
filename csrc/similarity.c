/* similarity.c -- exact k nearest tokens over mapped chunks, box/ball filters, Z-order.
 *
 * The k-nearest scan
 * ------------------
 * One pass over the chunks. Present tokens are gathered into blocks of KNN_BLOCK, their
 * chosen coordinates converted to double and laid out axis-major (xs[d][t]) in a small
 * buffer that stays in L1; every query is then run against the block, so the 64-byte
 * records are read from the map once for the whole batch, whatever the number of queries.
 *
 * L2 uses |q - t|^2 = |q|^2 + |t|^2 - 2 q.t: one multiply-add per (query, token,
 * coordinate) instead of a subtract and a multiply-add. It is exact: coordinates are
 * integers of at most 2^15 in magnitude, so every product is below 2^30, every sum of 24 of
 * them below 2^35, and doubles hold integers up to 2^53 exactly, whatever the order of
 * the additions. The ranking therefore depends on no rounding and no instruction set.
 *
 * Selection: one max-heap of k (distance, id) per query, kept in the caller's output
 * rows. Tokens are met in ascending id order (chunks ascend, slots ascend), so a token
 * whose distance equals the heap's worst never displaces it: ties go to the smaller id,
 * as the contract says. A block is first tested for any distance <= the worst (a
 * reduction the compiler vectorises); only then are its tokens offered one by one.
 *
 * Rejected: float32 (faiss's type) is not exact beyond 2^24; int32 multiply-adds
 * (pmaddwd) overflow at -32768 * -32768 * 2 and need 64-bit accumulation; a partial sort
 * of all n distances per query costs n writes per query instead of a heap's few inserts.
 *
 * On x86-64 with GCC the block kernel is compiled three times (AVX-512, AVX2+FMA,
 * baseline SSE2) and the loader picks one for the machine (target_clones); the results
 * are identical by the exactness argument above. Elsewhere it is plain C.
 */
#include "similarity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ngcore.h"

#define KNN_BLOCK 64
#define NG_DIMS 24

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(NG_NO_CLONES)
#define NG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                                 optimize("fp-contract=fast")))
#else
#define NG_CLONES
#endif

static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* little-endian hosts only, like the rest of csrc */
    return v;
}

static inline int16_t load_i16(const uint8_t *p) {
    return (int16_t)(uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

/* (da, ia) worse than (db, ib): farther, or as far with a larger id. */
static inline int worse(double da, uint32_t ia, double db, uint32_t ib) {
    return da > db || (da == db && ia > ib);
}

static void heap_sift_down(double *d, uint32_t *id, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(d[l], id[l], d[m], id[m])) m = l;
        if (r < n && worse(d[r], id[r], d[m], id[m])) m = r;
        if (m == i) return;
        double td = d[i]; d[i] = d[m]; d[m] = td;
        uint32_t ti = id[i]; id[i] = id[m]; id[m] = ti;
        i = m;
    }
}

static void heap_push(double *d, uint32_t *id, size_t n, double dv, uint32_t iv) {
    size_t i = n;
    d[i] = dv;
    id[i] = iv;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!worse(d[i], id[i], d[p], id[p])) break;
        double td = d[i]; d[i] = d[p]; d[p] = td;
        uint32_t ti = id[i]; id[i] = id[p]; id[p] = ti;
        i = p;
    }
}

typedef struct {
    const double *qd;  /* nq x ndims query coordinates */
    const double *qn;  /* |q|^2 */
    const double *sqq; /* sqrt(|q|^2) */
    size_t nq, k;
    unsigned ndims;
    int metric;
    double *out_dist;
    uint32_t *out_ids;
} knn_job;

/* Runs every query against one block of n tokens; `filled` entries are in each heap.
 * Queries go QB at a time and tokens TB at a time, so each coordinate vector loaded from
 * the block feeds QB multiply-adds held in registers (qd is padded to a multiple of QB).
 * Contracting a*b+c into one fused multiply-add is allowed here: every value is an exact
 * integer below 2^53, so fused or not, the sums are the same. */
#define QB 4
#define TB 16
NG_CLONES
static void knn_block(const knn_job *job, const double *xs, const double *xn, const double *sqx,
                      const uint32_t *ids, size_t n, size_t filled) {
    double acc[QB][KNN_BLOCK];
    double dist[KNN_BLOCK];
    const unsigned ndims = job->ndims;
    const size_t k = job->k;
    for (size_t q0 = 0; q0 < job->nq; q0 += QB) {
        const double *q = job->qd + q0 * ndims;
        for (size_t t0 = 0; t0 < KNN_BLOCK; t0 += TB) {
            double a0[TB], a1[TB], a2[TB], a3[TB];
            for (size_t u = 0; u < TB; u++) a0[u] = a1[u] = a2[u] = a3[u] = 0.0;
            for (unsigned d = 0; d < ndims; d++) {
                const double *x = xs + (size_t)d * KNN_BLOCK + t0;
                const double c0 = q[d], c1 = q[ndims + d], c2 = q[2 * ndims + d], c3 = q[3 * ndims + d];
                for (size_t u = 0; u < TB; u++) {
                    const double v = x[u];
                    a0[u] += v * c0;
                    a1[u] += v * c1;
                    a2[u] += v * c2;
                    a3[u] += v * c3;
                }
            }
            for (size_t u = 0; u < TB; u++) {
                acc[0][t0 + u] = a0[u]; acc[1][t0 + u] = a1[u]; acc[2][t0 + u] = a2[u]; acc[3][t0 + u] = a3[u];
            }
        }
        const size_t nb = job->nq - q0 < QB ? job->nq - q0 : QB;
        for (size_t j = 0; j < nb; j++) {
            const size_t qi = q0 + j;
            const double qn = job->qn[qi];
            if (job->metric == NG_METRIC_L2) {
                for (size_t t = 0; t < KNN_BLOCK; t++) dist[t] = (xn[t] + qn) - 2.0 * acc[j][t];
            } else {
                const double sq = job->sqq[qi];
                for (size_t t = 0; t < KNN_BLOCK; t++) {
                    const double den = sq * sqx[t];
                    double v = den > 0.0 ? 1.0 - acc[j][t] / den : ((qn == 0.0 && xn[t] == 0.0) ? 0.0 : 1.0);
                    v = v < 0.0 ? 0.0 : v;
                    dist[t] = v > 2.0 ? 2.0 : v;
                }
            }
            for (size_t t = n; t < KNN_BLOCK; t++) dist[t] = HUGE_VAL; /* a partial block's padding */
            double *hd = job->out_dist + qi * k;
            uint32_t *hi = job->out_ids + qi * k;
            size_t f = filled;
            size_t t = 0;
            for (; t < n && f < k; t++) heap_push(hd, hi, f++, dist[t], ids[t]);
            if (t >= n) continue;
            if (t == 0) { /* the usual case: is any token of the block a candidate at all? */
                const double thr = hd[0];
                int any = 0;
                for (size_t u = 0; u < KNN_BLOCK; u++) any |= dist[u] <= thr;
                if (!any) continue;
            }
            for (; t < n; t++) {
                if (worse(hd[0], hi[0], dist[t], ids[t])) {
                    hd[0] = dist[t];
                    hi[0] = ids[t];
                    heap_sift_down(hd, hi, k, 0);
                }
            }
        }
    }
}

static int check_chunks(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                        unsigned slot_shift) {
    if (slot_shift < NG_MIN_SLOT_SHIFT || slot_shift > NG_MAX_SLOT_SHIFT) return NG_EINVAL;
    if (nchunks > 0 && (!chunk_ptrs || !chunk_lens)) return NG_EINVAL;
    const uint64_t slots = (uint64_t)1 << slot_shift;
    const uint64_t value_len = slots * NG_TOKEN_SIZE + slots / 8;
    for (size_t c = 0; c < nchunks; c++) {
        if (!chunk_ptrs[c]) return NG_EINVAL;
        /* the record region alone, or the whole sealed value (its trailer is not read) */
        if (chunk_lens[c] != value_len && chunk_lens[c] != value_len + NG_CHECKSUM_BYTES) return NG_ECORRUPT;
    }
    return NG_OK;
}

int ng_knn_chunks(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                  unsigned slot_shift, const int16_t *queries, size_t nq, const uint8_t *dims,
                  unsigned ndims, int metric, size_t k, double *out_dist, uint32_t *out_ids,
                  size_t *out_n) {
    int rc = check_chunks(chunk_ptrs, chunk_lens, nchunks, slot_shift);
    if (rc != NG_OK) return rc;
    if (!out_n || !dims || ndims == 0 || ndims > NG_DIMS || k == 0) return NG_EINVAL;
    if (metric != NG_METRIC_L2 && metric != NG_METRIC_COSINE) return NG_EINVAL;
    for (unsigned j = 0; j < ndims; j++)
        if (dims[j] >= NG_DIMS || (j > 0 && dims[j] <= dims[j - 1])) return NG_EINVAL;
    if (nq > 0 && (!queries || !out_dist || !out_ids)) return NG_EINVAL;
    if (nq > 0 && k > SIZE_MAX / nq / sizeof(double)) return NG_ERANGE;
    if (nq == 0) {
        *out_n = 0;
        return NG_OK;
    }

    const size_t nq_pad = (nq + QB - 1) / QB * QB;
    if (nq_pad > SIZE_MAX / (ndims + 2) / sizeof(double)) return NG_ERANGE;
    double *qd = (double *)calloc(nq_pad * (ndims + 2), sizeof(double));
    if (!qd) return NG_ENOMEM;
    double *qn = qd + nq_pad * ndims, *sqq = qn + nq_pad;
    for (size_t i = 0; i < nq; i++) {
        double s = 0.0;
        for (unsigned j = 0; j < ndims; j++) {
            double v = (double)queries[i * NG_DIMS + dims[j]];
            qd[i * ndims + j] = v;
            s += v * v;
        }
        qn[i] = s;
        sqq[i] = sqrt(s);
    }
    knn_job job = {qd, qn, sqq, nq, k, ndims, metric, out_dist, out_ids};

    double xs[NG_DIMS * KNN_BLOCK];
    double xn[KNN_BLOCK], sqx[KNN_BLOCK];
    uint32_t ids[KNN_BLOCK];
    memset(xs, 0, sizeof xs);
    memset(xn, 0, sizeof xn);
    memset(sqx, 0, sizeof sqx);
    size_t n = 0, seen = 0;
    const size_t slots = (size_t)1 << slot_shift;
    const size_t records_bytes = slots * NG_TOKEN_SIZE;
    for (size_t c = 0; c < nchunks; c++) {
        const uint8_t *base = chunk_ptrs[c];
        const uint8_t *bitmap = base + records_bytes;
        for (size_t b = 0; b < slots / 8; b++) {
            unsigned bits = bitmap[b];
            for (unsigned j = 0; bits; j++, bits >>= 1) {
                if (!(bits & 1u)) continue;
                const uint8_t *rec = base + (b * 8 + j) * NG_TOKEN_SIZE;
                double s = 0.0;
                for (unsigned d = 0; d < ndims; d++) {
                    double v = (double)load_i16(rec + 2 * dims[d]);
                    xs[(size_t)d * KNN_BLOCK + n] = v;
                    s += v * v;
                }
                xn[n] = s;
                sqx[n] = sqrt(s);
                ids[n] = load_u32(rec + 48);
                if (++n == KNN_BLOCK) {
                    knn_block(&job, xs, xn, sqx, ids, n, seen < k ? seen : k);
                    seen += n;
                    n = 0;
                }
            }
        }
    }
    if (n > 0) {
        knn_block(&job, xs, xn, sqx, ids, n, seen < k ? seen : k);
        seen += n;
    }
    free(qd);
    const size_t m = seen < k ? seen : k;
    for (size_t i = 0; i < nq; i++) { /* heap sort: ascending (distance, id) */
        double *hd = out_dist + i * k;
        uint32_t *hi = out_ids + i * k;
        for (size_t e = m; e > 1; e--) {
            double td = hd[0]; hd[0] = hd[e - 1]; hd[e - 1] = td;
            uint32_t ti = hi[0]; hi[0] = hi[e - 1]; hi[e - 1] = ti;
            heap_sift_down(hd, hi, e - 1, 0);
        }
    }
    *out_n = m;
    return NG_OK;
}

/* ---- filters -------------------------------------------------------------------------- */

static inline int point_matches(int16_t x, int16_t y, int16_t z, const int16_t lo[3], const int16_t hi[3],
                                const int16_t *center, double r2) {
    if (x < lo[0] || x > hi[0] || y < lo[1] || y > hi[1] || z < lo[2] || z > hi[2]) return 0;
    if (!center) return 1;
    int64_t dx = (int64_t)x - center[0], dy = (int64_t)y - center[1], dz = (int64_t)z - center[2];
    return (double)(dx * dx + dy * dy + dz * dz) <= r2;
}

static int check_filter_args(const int16_t lo[3], const int16_t hi[3], const int16_t *center, double r2,
                             const size_t *n_out) {
    if (!lo || !hi || !n_out) return NG_EINVAL;
    if (center && !(r2 >= 0.0)) return NG_EINVAL; /* also refuses NaN */
    return NG_OK;
}

int ng_filter_entries(const uint8_t *const *ptrs, const uint64_t *lens, size_t nbufs,
                      const int16_t lo[3], const int16_t hi[3], const int16_t *center, double r2,
                      uint32_t *out_ids, size_t cap, size_t *n_out) {
    int rc = check_filter_args(lo, hi, center, r2, n_out);
    if (rc != NG_OK) return rc;
    if (nbufs > 0 && (!ptrs || !lens)) return NG_EINVAL;
    if (cap > 0 && !out_ids) return NG_EINVAL;
    for (size_t b = 0; b < nbufs; b++) {
        if (!ptrs[b] && lens[b]) return NG_EINVAL;
        if (lens[b] % 10 != 0) return NG_ECORRUPT;
    }
    size_t n = 0;
    for (size_t b = 0; b < nbufs; b++) {
        const uint8_t *p = ptrs[b];
        const size_t m = (size_t)(lens[b] / 10);
        for (size_t e = 0; e < m; e++, p += 10) {
            if (!point_matches(load_i16(p + 4), load_i16(p + 6), load_i16(p + 8), lo, hi, center, r2)) continue;
            if (n >= cap) return NG_ERANGE;
            out_ids[n++] = load_u32(p);
        }
    }
    *n_out = n;
    return NG_OK;
}

int ng_filter_chunks(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                     unsigned slot_shift, unsigned layer, const int16_t lo[3], const int16_t hi[3],
                     const int16_t *center, double r2, uint32_t *out_ids, size_t cap, size_t *n_out) {
    int rc = check_chunks(chunk_ptrs, chunk_lens, nchunks, slot_shift);
    if (rc == NG_OK) rc = check_filter_args(lo, hi, center, r2, n_out);
    if (rc != NG_OK) return rc;
    if (layer >= NG_LAYERS || (cap > 0 && !out_ids)) return NG_EINVAL;
    const size_t slots = (size_t)1 << slot_shift;
    const size_t records_bytes = slots * NG_TOKEN_SIZE;
    size_t n = 0;
    for (size_t c = 0; c < nchunks; c++) {
        const uint8_t *base = chunk_ptrs[c];
        const uint8_t *bitmap = base + records_bytes;
        for (size_t b = 0; b < slots / 8; b++) {
            unsigned bits = bitmap[b];
            for (unsigned j = 0; bits; j++, bits >>= 1) {
                if (!(bits & 1u)) continue;
                const uint8_t *rec = base + (b * 8 + j) * NG_TOKEN_SIZE;
                const uint8_t *p = rec + 6 * layer;
                if (!point_matches(load_i16(p), load_i16(p + 2), load_i16(p + 4), lo, hi, center, r2)) continue;
                if (n >= cap) return NG_ERANGE;
                out_ids[n++] = load_u32(rec + 48);
            }
        }
    }
    *n_out = n;
    return NG_OK;
}

/* ---- Z-order ---------------------------------------------------------------------------
 *
 * BIGMIN (Tropf & Herzog, 1981): walking the code from its top bit, the box [zmin, zmax]
 * is halved along the dimension of each bit; where z and the box part ways, the answer is
 * either the lowest code of the box's upper half (remembered as a candidate while z goes
 * on into the lower half) or the box's lowest code. */

#define ZO_BITS 30
#define ZO_DIM_MASK 0x09249249u /* bits 0, 3, ... 27: dimension 0 */

static uint32_t zo_spread(uint32_t v) {
    v &= 0x3FFu;
    v = (v | (v << 16)) & 0x30000FFu;
    v = (v | (v << 8)) & 0x300F00Fu;
    v = (v | (v << 4)) & 0x30C30C3u;
    v = (v | (v << 2)) & 0x9249249u;
    return v;
}

static uint32_t zo_compact(uint32_t v) {
    v &= 0x9249249u;
    v = (v | (v >> 2)) & 0x30C30C3u;
    v = (v | (v >> 4)) & 0x300F00Fu;
    v = (v | (v >> 8)) & 0x30000FFu;
    v = (v | (v >> 16)) & 0x3FFu;
    return v;
}

/* v with the bits of bit p's dimension at and below p set to 1000... (high) or 0111... */
static uint32_t zo_load(uint32_t v, unsigned p, int high) {
    uint32_t below = (p + 1 >= 32) ? 0xFFFFFFFFu : ((1u << (p + 1)) - 1u);
    uint32_t mask = (ZO_DIM_MASK << (p % 3)) & below;
    v &= ~mask;
    return high ? (v | (1u << p)) : (v | (mask & ~(1u << p)));
}

int ng_zorder_next_in_box(uint32_t z, const uint16_t lo[3], const uint16_t hi[3], uint32_t *out) {
    if (!lo || !hi || !out || z >= (1u << ZO_BITS)) return NG_EINVAL;
    for (unsigned a = 0; a < 3; a++)
        if (lo[a] > hi[a] || hi[a] > 1023) return NG_EINVAL;
    int inside = 1;
    for (unsigned a = 0; a < 3; a++) {
        uint32_t c = zo_compact(z >> a);
        if (c < lo[a] || c > hi[a]) inside = 0;
    }
    if (inside) {
        *out = z;
        return NG_OK;
    }
    uint32_t zmin = zo_spread(lo[0]) | (zo_spread(lo[1]) << 1) | (zo_spread(lo[2]) << 2);
    uint32_t zmax = zo_spread(hi[0]) | (zo_spread(hi[1]) << 1) | (zo_spread(hi[2]) << 2);
    int found = 0;
    uint32_t best = 0;
    for (int p = ZO_BITS - 1; p >= 0; p--) {
        unsigned code = (((z >> p) & 1u) << 2) | (((zmin >> p) & 1u) << 1) | ((zmax >> p) & 1u);
        switch (code) {
        case 1: /* 0 0 1: the answer is in the lower half, or else the upper half's lowest */
            best = zo_load(zmin, (unsigned)p, 1);
            found = 1;
            zmax = zo_load(zmax, (unsigned)p, 0);
            break;
        case 3: /* 0 1 1: z is below the whole (remaining) box */
            *out = zmin;
            return NG_OK;
        case 4: /* 1 0 0: z is above the whole (remaining) box */
            if (!found) return NG_ENOTFOUND;
            *out = best;
            return NG_OK;
        case 5: /* 1 0 1: z is in the upper half */
            zmin = zo_load(zmin, (unsigned)p, 1);
            break;
        default: /* 0 0 0, 1 1 1: go on; 0 1 0, 1 1 0 cannot happen with lo <= hi */
            break;
        }
    }
    if (!found) return NG_ENOTFOUND; /* unreachable: z would be inside */
    *out = best;
    return NG_OK;
}

int ng_spatial_entries(const uint32_t *ids, const int16_t *coords, size_t n, unsigned layer,
                       uint8_t *out_entries, uint64_t *out_keys) {
    if (layer >= NG_LAYERS) return NG_EINVAL;
    if (n == 0) return NG_OK;
    if (!ids || !coords || !out_entries || !out_keys) return NG_EINVAL;
    if (n > SIZE_MAX / 2 / sizeof(uint64_t)) return NG_ERANGE;
    for (size_t i = 1; i < n; i++)
        if (ids[i] <= ids[i - 1]) return NG_EINVAL;
    uint64_t *a = (uint64_t *)malloc(2 * n * sizeof(uint64_t));
    if (!a) return NG_ENOMEM;
    uint64_t *b = a + n;
    /* a[i] = Z << 32 | i: the index rides along, so the payload is fetched at the end */
    for (size_t i = 0; i < n; i++) {
        const int16_t *p = coords + NG_DIMS * i + 3 * layer;
        uint32_t z = zo_spread((uint32_t)(p[0] + 32768) >> 6) | (zo_spread((uint32_t)(p[1] + 32768) >> 6) << 1) |
                     (zo_spread((uint32_t)(p[2] + 32768) >> 6) << 2);
        a[i] = ((uint64_t)z << 32) | (uint64_t)i;
    }
    if (n > 0xFFFFFFFFu) { free(a); return NG_ERANGE; }
    size_t count[1024];
    for (unsigned pass = 0; pass < 3; pass++) { /* LSD, 10 bits a pass: stable */
        const unsigned sh = 32 + 10 * pass;
        memset(count, 0, sizeof count);
        for (size_t i = 0; i < n; i++) count[(a[i] >> sh) & 1023u]++;
        size_t sum = 0;
        for (unsigned v = 0; v < 1024; v++) { size_t c = count[v]; count[v] = sum; sum += c; }
        for (size_t i = 0; i < n; i++) b[count[(a[i] >> sh) & 1023u]++] = a[i];
        uint64_t *t = a; a = b; b = t;
    }
    for (size_t j = 0; j < n; j++) {
        const size_t i = (size_t)(a[j] & 0xFFFFFFFFu);
        const int16_t *p = coords + NG_DIMS * i + 3 * layer;
        uint8_t *e = out_entries + 10 * j;
        memcpy(e, &ids[i], 4);
        memcpy(e + 4, p, 6);
        out_keys[j] = (a[j] & 0xFFFFFFFF00000000ull) | ids[i];
    }
    free(a < b ? a : b);
    return NG_OK;
}

int ng_spatial_keys(const uint8_t *entries, size_t n, uint64_t *out_keys) {
    if (n == 0) return NG_OK;
    if (!entries || !out_keys) return NG_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *e = entries + 10 * i;
        uint32_t z = zo_spread((uint32_t)(load_i16(e + 4) + 32768) >> 6) |
                     (zo_spread((uint32_t)(load_i16(e + 6) + 32768) >> 6) << 1) |
                     (zo_spread((uint32_t)(load_i16(e + 8) + 32768) >> 6) << 2);
        out_keys[i] = ((uint64_t)z << 32) | load_u32(e);
    }
    return NG_OK;
}
