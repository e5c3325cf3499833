/* reflex.c -- the persistent reflex table, format version 2 (reflex.h is the API manual;
 * docs/format.md §7 specifies the same bytes with their validity rules).
 *
 * WHAT IS STORED
 *
 * A reflex is a Connection v3 record (64 bytes; its target_vector is the action) and its
 * SOURCE STATE, the 24 raw i16 coordinates it was learned at. It is filed under the
 * state's CELL: the coordinates with the low shift[layer] bits cleared (the grid of the
 * original compute_grid_hash). A cell holds up to NG_REFLEX_MAX_CANDIDATES (4, the
 * original's SmallVec<4>) reflexes, told apart by their IDENTITY = bytes 0..8 of the
 * record (token_a, token_b, connection_type); writing the same (cell, identity) replaces
 * the record and its source state.
 *
 * TWO ARRAYS
 *
 *   records  dense, 128 bytes each: state i16[24] @0, tick u64 @48, zero @56, the
 *            Connection @64. Records 0..live-1 are the reflexes; the rest are zero.
 *   index    Robin Hood open addressing over N slots of 8 bytes: record u32 @0,
 *            tag u16 @4 (low 16 bits of the fingerprint), dist u8 @6 (0 empty, else
 *            1 + probe distance), zero @7.
 *
 *   fingerprint = XXH3-64 (seed 0) of the quantized state as 48 little-endian bytes;
 *   home = hi64(fingerprint * N). A probe reads 8-byte entries (8 per cache line, the
 *   index of 1M reflexes is ~10 MiB and stays in the last-level cache) and touches a
 *   record -- two cache lines of a 128 MiB array -- only where dist and tag match, to
 *   compare the quantized states exactly. Version 1 kept the key inside 96-byte slots,
 *   so every probe step was a random line of the big array; measured, the batch lookup
 *   went from ~120 ns to the figures in docs/performance.md.
 *   Why the fingerprint and not the grid hash decides the home: the grid hash is a weak
 *   XOR/rotate mix (distinct cells collide by construction), and collisions would pile
 *   up in one probe run. Why Robin Hood with stored distances: a miss stops at the first
 *   entry poorer than itself without reading any record, and deletion is a backward
 *   shift of 8-byte entries (no tombstones, which would lengthen every miss until a full
 *   rebuild). Why dense records: records never move when entries are displaced, a
 *   deletion moves the last record into the hole (one record, one entry repointed), and
 *   growth is a rebuild that copies the records in order.
 *
 * SEGMENTS
 *
 *   The caller provides the memory as segments: record segments of R records, then index
 *   segments of E entries (powers of two), so that a table can be stored as LMDB values
 *   and persisted one dirty segment at a time. Every address is seg[i >> shift] +
 *   (i & mask) * size with i below the allocated count.
 *
 * CAPACITY, GROWTH, EVICTION
 *
 *   capacity bounds the live reflexes; room = min(capacity, records allocated, 3N/4) is
 *   what the current allocation holds. An insert that needs a record beyond room (below
 *   capacity) returns NG_EFULL without changing anything; the caller allocates a larger
 *   geometry and calls ng_reflex_rebuild. At capacity, a new (cell, identity) first
 *   evicts the weakest (lowest confidence, then oldest tick) of the 32 records from
 *   record fingerprint mod live (wrapping): a deterministic sample, one sequential read.
 *   A cell that already holds 4 reflexes replaces its weakest in place instead.
 *
 * LOOKUP
 *
 *   Similarity (format §7.7) is the original token_similarity: the cosine of the raw
 *   coordinates in double precision, clamped to [0, 1], 0 when either state is all zero,
 *   except that identical states have similarity 1. Exact path: the candidates of the
 *   query's cell that are eligible (confidence >= min_confidence, Hypothesis also >=
 *   hypothesis_threshold, similarity > similarity_threshold); the best by confidence,
 *   similarity, tick. Nearest fallback (radius r > 0, in grid cells): when the exact path
 *   does not answer, the eligible reflex nearest to the query within r, found by probing
 *   the neighbour cells whose range meets the ball and the box of stored states (a
 *   depth-first enumeration that prunes on the running sum of squared per-coordinate
 *   distances to each neighbour cell), or by a scan of every record when more cells than
 *   the budget would be probed. Both give the same answer.
 *
 * ROBUSTNESS
 *
 *   attach checks the header and each segment length; after that every record number
 *   read from an entry is compared with live before the record is touched, and probe
 *   loops stop after NG_REFLEX_MAX_DIST steps. Corrupt entries or records make lookups
 *   miss or return NG_ECORRUPT; they never make them read outside a segment.
 */
#if !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif
#include "reflex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xxh3.h"

#define HDR NG_REFLEX_HEADER_SIZE
#define REC NG_REFLEX_RECORD_SIZE
#define ENT NG_REFLEX_ENTRY_SIZE
#define R_TICK 48
#define R_ZERO 56
#define R_CONN 64
#define C_MUTABILITY 32
#define C_CONFIDENCE 33
#define C_TARGET 48
#define IDENTITY_BYTES 9 /* token_a u32, token_b u32, connection_type u8 */
#define MUT_HYPOTHESIS 2
#define MIN_RPS 16u
#define MAX_RPS (1u << 16)
#define MIN_EPS 16u
#define MAX_EPS (1u << 20)
#define MAX_SEGMENTS (1u << 24)
#define MAX_RECORDS (1ULL << 32)
#define MAX_SLOTS (1ULL << 40)
#define DEFAULT_RPS 512u  /* 64 KiB record segments */
#define DEFAULT_EPS 8192u /* 64 KiB index segments  */
#define BLOCK 16          /* states hashed, then probed, then evaluated together */
#define MAX_MATCH 8       /* tag matches kept per state in a block (more: full probe) */
#define FB_PENDING 32     /* fallback cells hashed and prefetched together */
#define FB_MAX_OPTS 16    /* neighbour cells per coordinate (more: scan) */
#define FB_MIN_BUDGET 256 /* default budget = max(FB_MIN_BUDGET, live / 8) cells */

struct ng_reflex_table {
    uint8_t **rsegs, **isegs; /* segment bases (not owned)             */
    uint8_t *dirty;           /* record segments, then index segments  */
    uint64_t capacity, live, tick;
    uint64_t nrec, nslots;    /* records allocated, index slots        */
    uint64_t rmask, emask;
    uint32_t rps, rshift, nrseg, eps, eshift, niseg;
    int writable, header_dirty;
    uint8_t shifts[8];
    uint16_t keep[24];        /* per coordinate: the bits a cell keeps */
    uint64_t keepw[6];        /* the same as cell-key words           */
    double inv_w2[24];        /* per coordinate: 1 / (cell width)^2    */
    int16_t bmin[24], bmax[24];
    size_t bytes;             /* of this allocation                    */
    uint64_t stats[NG_REFLEX_NSTATS];
};

static const float layer_scale[8] = {100.f, 10000.f, 1000.f, 10000.f, 10000.f, 10000.f, 100.f, 10000.f};
/* 1 / scale in double: t * (1 / s) rounded to float equals the correctly rounded t / s for
 * every int16 t (t / s is never within 2^-53 of a float rounding boundary unless it lies
 * on one exactly), and a multiply is a fraction of a divide. */
static const double layer_inv_scale[8] = {1.0 / 100, 1.0 / 10000, 1.0 / 1000, 1.0 / 10000,
                                          1.0 / 10000, 1.0 / 10000, 1.0 / 100, 1.0 / 10000};

/* ============================================================== helpers */

static inline uint64_t ld64(const uint8_t *p) { return ng_xxh_read64le(p); }
static inline uint32_t ld32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void st64(uint8_t *p, uint64_t v) {
    for (unsigned k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (8 * k));
}
static inline void st32(uint8_t *p, uint32_t v) {
    for (unsigned k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k));
}
static inline void st16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Little-endian hosts read records and keys with memcpy (the bytes are the native
 * layout); others assemble them byte by byte. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NG_LE 1
#else
#define NG_LE 0
#endif

/* SSE2 is part of x86-64: the 8-float encode runs on vectors there (same results). */
#if NG_LE && (defined(__x86_64__) || defined(_M_X64)) && defined(__SSE2__)
#define NG_SSE2 1
#include <emmintrin.h>
#else
#define NG_SSE2 0
#endif

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define PREFETCH(p) ((void)(p))
#endif

static inline uint64_t mulhi64(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)a * (u128)b) >> 64);
#else
    uint64_t lo_lo = (a & 0xFFFFFFFFu) * (b & 0xFFFFFFFFu);
    uint64_t hi_lo = (a >> 32) * (b & 0xFFFFFFFFu);
    uint64_t lo_hi = (a & 0xFFFFFFFFu) * (b >> 32);
    uint64_t hi_hi = (a >> 32) * (b >> 32);
    uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
    return (hi_lo >> 32) + (cross >> 32) + hi_hi;
#endif
}

/* splitmix64's finaliser: spreads the bits of a key for the planning maps. */
static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

static uint32_t crc32_zlib(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (unsigned k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static inline void stat_add(const ng_reflex_table *t, int k, uint64_t v) {
    /* Counters are the one thing a lookup writes; the const is cast away here only. */
    uint64_t *p = &((ng_reflex_table *)t)->stats[k];
    if (!v) return;
#if defined(__GNUC__)
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
#else
    *p += v; /* no atomics in C99: concurrent lookups may lose counts here */
#endif
}

static uint64_t now_ns(void) {
#if defined(CLOCK_MONOTONIC)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
    return 0;
}

static inline int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }
static inline unsigned log2_of(uint64_t v) {
    unsigned s = 0;
    while (((uint64_t)1 << s) < v) s++;
    return s;
}

static int shifts_ok(const uint8_t shifts[8]) {
    for (unsigned d = 0; d < 8; d++)
        if (shifts[d] > NG_MAX_SHIFT) return 0;
    return 1;
}

static inline int kind_ok(int kind) {
    return kind == NG_REFLEX_STATE_F32 || kind == NG_REFLEX_STATE_TOKEN || kind == NG_REFLEX_STATE_COORDS;
}

static inline size_t state_stride(int kind) {
    return kind == NG_REFLEX_STATE_F32 ? 32 : kind == NG_REFLEX_STATE_TOKEN ? 64 : 48;
}

static int params_ok(const ng_reflex_params *p) {
    return p && p->similarity_threshold == p->similarity_threshold && p->fallback_radius == p->fallback_radius;
}

/* Rust's `f as i16` of each s[d] * scale[d]: NaN -> 0, saturate, truncate toward zero.
 * Clamping before the conversion keeps it defined; written without branches so that the
 * compiler turns the loop into a few SIMD instructions. */
static inline void encode8(const float s[8], int16_t e[8]) {
    for (unsigned d = 0; d < 8; d++) {
        float x = s[d] * layer_scale[d];
        x = x == x ? x : 0.0f;
        x = x < 32767.0f ? x : 32767.0f;
        x = x > -32768.0f ? x : -32768.0f;
        e[d] = (int16_t)(int32_t)x;
    }
}

static inline void encode_f32(const float s[8], int16_t c[24]) {
    int16_t e[8];
    encode8(s, e);
    memset(c, 0, 48);
    for (unsigned d = 0; d < 8; d++) c[3 * d] = e[d];
}

/* Any alignment: every kind is read with memcpy or byte loads. */
static inline void load_coords(int kind, const uint8_t *p, int16_t c[24]) {
    if (kind == NG_REFLEX_STATE_F32) {
        float s[8];
        memcpy(s, p, sizeof s);
        encode_f32(s, c);
    } else if (kind == NG_REFLEX_STATE_TOKEN) {
        ng_load_coords(p, c);
    } else {
        memcpy(c, p, 48);
    }
}

static inline void record_state(const uint8_t *rec, int16_t c[24]) {
#if NG_LE
    memcpy(c, rec, 48);
#else
    for (unsigned i = 0; i < 24; i++) c[i] = (int16_t)ld16(rec + 2 * i);
#endif
}

static inline void keep_masks(const uint8_t shifts[8], uint16_t keep[24]) {
    for (unsigned i = 0; i < 24; i++) keep[i] = (uint16_t)(0xFFFFu << shifts[i / 3]);
}

static inline void quantize(const uint16_t keep[24], const int16_t c[24], uint16_t q[24]) {
    for (unsigned i = 0; i < 24; i++) q[i] = (uint16_t)((uint16_t)c[i] & keep[i]);
}


/* A CELL KEY is the quantized state as the six little-endian 64-bit words of its 48
 * bytes: what XXH3 reads, and what a record's state ANDed with the keep masks must equal.
 * The lookups build it in registers, so no wide load ever reads narrow stores just made
 * (a store-forwarding stall measured at a third of the lookup's time). */
typedef struct {
    uint64_t w[6];
} cellkey;

static inline void cellkey_of(const uint16_t q[24], cellkey *k) {
    for (unsigned j = 0; j < 6; j++)
        k->w[j] = (uint64_t)q[4 * j] | (uint64_t)q[4 * j + 1] << 16 | (uint64_t)q[4 * j + 2] << 32 |
                  (uint64_t)q[4 * j + 3] << 48;
}

/* XXH3-64 of the 48 bytes of a cell key (ng_xxh3_64_17to128 for len = 48, unrolled). */
static inline uint64_t fingerprint_k(const cellkey *k) {
    const uint8_t *sec = ng_xxh3_secret;
    uint64_t acc = 48 * NG_XXH_PRIME64_1;
    acc += ng_xxh_mul128_fold64(k->w[2] ^ ng_xxh_read64le(sec + 32), k->w[3] ^ ng_xxh_read64le(sec + 40));
    acc += ng_xxh_mul128_fold64(k->w[2] ^ ng_xxh_read64le(sec + 48), k->w[3] ^ ng_xxh_read64le(sec + 56));
    acc += ng_xxh_mul128_fold64(k->w[0] ^ ng_xxh_read64le(sec + 0), k->w[1] ^ ng_xxh_read64le(sec + 8));
    acc += ng_xxh_mul128_fold64(k->w[4] ^ ng_xxh_read64le(sec + 16), k->w[5] ^ ng_xxh_read64le(sec + 24));
    return ng_xxh3_avalanche(acc);
}

/* Is the record's state in the cell of key k? */
static inline int rec_in_cellkey(const ng_reflex_table *t, const uint8_t *rec, const cellkey *k) {
    uint64_t diff = 0;
    for (unsigned j = 0; j < 6; j++) diff |= (ld64(rec + 8 * j) & t->keepw[j]) ^ k->w[j];
    return diff == 0;
}

/* XXH3-64 of the quantized state as 48 little-endian bytes. */
static inline uint64_t fingerprint_q(const uint16_t q[24]) {
    cellkey k;
    cellkey_of(q, &k);
    return fingerprint_k(&k);
}

static inline int rec_in_cell(const ng_reflex_table *t, const uint8_t *rec, const uint16_t q[24]) {
    int16_t c[24];
    unsigned diff = 0;
    record_state(rec, c);
    for (unsigned i = 0; i < 24; i++) diff |= (unsigned)(((uint16_t)c[i] & t->keep[i]) ^ q[i]); /* no branch: SIMD */
    return diff == 0;
}

/* floor(v / 2^s) for any sign (C's >> of a negative value is implementation-defined). */
static inline int32_t floor_shift(int32_t v, unsigned s) {
    return v >= 0 ? (int32_t)((uint32_t)v >> s) : -(int32_t)(((uint32_t)(-v) - 1u) >> s) - 1;
}

typedef struct {
    int16_t c[24];  /* raw coordinates                                   */
    cellkey key;    /* its cell                                          */
    int64_t norm2;  /* sum of squares of c; -1 until a similarity needs it */
} query_t;

static inline void query_init(query_t *qy) { qy->norm2 = -1; }

/* A query from a state of `kind`: raw coordinates, and the cell key built from values in
 * registers (8-float states) or read from the caller's bytes, never from c just written.
 * On little-endian hosts c is written as the six key words (whole-word stores, which the
 * exact comparison of a hit reads back as words). */
static inline void load_query(const uint16_t keep[24], const uint64_t keepw[6], int kind, const uint8_t *p,
                              query_t *qy) {
    uint64_t w[6];
    if (kind == NG_REFLEX_STATE_F32) {
        uint64_t u[8];
#if NG_SSE2
        /* encode8 on 4 lanes at a time: the same float products, NaN -> 0, the same
         * clamps and truncation, so the same int16 values. */
        const __m128 x0 = _mm_mul_ps(_mm_loadu_ps((const float *)p), _mm_setr_ps(100.f, 10000.f, 1000.f, 10000.f));
        const __m128 x1 = _mm_mul_ps(_mm_loadu_ps((const float *)p + 4), _mm_setr_ps(10000.f, 10000.f, 100.f, 10000.f));
        const __m128 hi = _mm_set1_ps(32767.0f), lo = _mm_set1_ps(-32768.0f);
        const __m128 y0 = _mm_max_ps(_mm_min_ps(_mm_and_ps(x0, _mm_cmpord_ps(x0, x0)), hi), lo);
        const __m128 y1 = _mm_max_ps(_mm_min_ps(_mm_and_ps(x1, _mm_cmpord_ps(x1, x1)), hi), lo);
        const __m128i e = _mm_packs_epi32(_mm_cvttps_epi32(y0), _mm_cvttps_epi32(y1));
        const uint64_t e03 = (uint64_t)_mm_cvtsi128_si64(e), e47 = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(e, e));
        for (unsigned d = 0; d < 4; d++) {
            u[d] = (e03 >> (16 * d)) & 0xFFFFu;
            u[d + 4] = (e47 >> (16 * d)) & 0xFFFFu;
        }
#else
        float s[8];
        int16_t e[8];
        memcpy(s, p, sizeof s);
        encode8(s, e);
        for (unsigned d = 0; d < 8; d++) u[d] = (uint16_t)e[d];
#endif
        /* X of layer d is coordinate 3d: byte 6d, word 6d / 8, bit 8 * (6d % 8) */
        w[0] = u[0] | u[1] << 48;
        w[1] = u[2] << 32;
        w[2] = u[3] << 16;
        w[3] = u[4] | u[5] << 48;
        w[4] = u[6] << 32;
        w[5] = u[7] << 16;
#if NG_LE
        memcpy(qy->c, w, sizeof w);
#else
        memset(qy->c, 0, sizeof qy->c);
        for (unsigned d = 0; d < 8; d++) qy->c[3 * d] = (int16_t)(uint16_t)u[d];
#endif
    } else {
#if NG_LE /* Token coordinates and COORDS states are little-endian i16 at offset 0 */
        memcpy(qy->c, p, sizeof qy->c);
        for (unsigned j = 0; j < 6; j++) w[j] = ld64(p + 8 * j);
#else
        cellkey raw;
        load_coords(kind, p, qy->c);
        cellkey_of((const uint16_t *)qy->c, &raw);
        memcpy(w, raw.w, sizeof w);
#endif
    }
    (void)keep;
    for (unsigned j = 0; j < 6; j++) qy->key.w[j] = w[j] & keepw[j];
    qy->norm2 = -1;
}

static inline int64_t norm2_of(const int16_t c[24]) {
    int64_t n = 0;
    for (unsigned i = 0; i < 24; i++) n += (int32_t)c[i] * (int32_t)c[i];
    return n;
}

/* Format §7.7: cosine in double, clamped to [0, 1]; 0 if either is all zero; identical
 * states 1. The expression order is part of the contract (the Python reference repeats it). */
static double similarity_of(query_t *qy, const int16_t b[24]) {
    if (memcmp(qy->c, b, 48) == 0) return 1.0;
    if (qy->norm2 < 0) qy->norm2 = norm2_of(qy->c);
    const int16_t *a = qy->c;
    const int64_t na = qy->norm2;
    int64_t dot = 0, nb = 0;
    for (unsigned i = 0; i < 24; i++) {
        dot += (int32_t)a[i] * (int32_t)b[i];
        nb += (int32_t)b[i] * (int32_t)b[i];
    }
    if (na == 0 || nb == 0) return 0.0;
    double cs = (double)dot / sqrt((double)na * (double)nb);
    return cs < 0.0 ? 0.0 : cs > 1.0 ? 1.0 : cs;
}

/* Squared distance in grid cells: sum over i of (a_i - b_i)^2 / 4^shift[layer i]. */
static inline double dist2_of(const double inv_w2[24], const int16_t a[24], const int16_t b[24]) {
    double d2 = 0.0;
    for (unsigned i = 0; i < 24; i++) {
        double d = (double)((int32_t)a[i] - (int32_t)b[i]);
        d2 += d * d * inv_w2[i];
    }
    return d2;
}

static inline void inv_widths(const uint8_t shifts[8], double inv_w2[24]) {
    for (unsigned i = 0; i < 24; i++) inv_w2[i] = 1.0 / ((double)(1u << shifts[i / 3]) * (double)(1u << shifts[i / 3]));
}

/* ============================================================== table access */

static inline uint64_t room_of(const ng_reflex_table *t) {
    uint64_t r = t->capacity, s = t->nslots / 4 * 3 + (t->nslots % 4) * 3 / 4;
    if (t->nrec < r) r = t->nrec;
    return s < r ? s : r;
}

static inline uint8_t *rec_ptr(const ng_reflex_table *t, uint64_t r) {
    return t->rsegs[r >> t->rshift] + (size_t)(r & t->rmask) * REC;
}

static inline uint8_t *ent_ptr(const ng_reflex_table *t, uint64_t j) {
    return t->isegs[j >> t->eshift] + (size_t)(j & t->emask) * ENT;
}

typedef struct {
    uint32_t rec;
    uint16_t tag;
    uint8_t dist;
} entry_t;

static inline entry_t ent_load(const uint8_t *p) {
    uint64_t v = ld64(p);
    entry_t e;
    e.rec = (uint32_t)v;
    e.tag = (uint16_t)(v >> 32);
    e.dist = (uint8_t)(v >> 48);
    return e;
}

static inline void ent_store(uint8_t *p, entry_t e) {
    st64(p, (uint64_t)e.rec | (uint64_t)e.tag << 32 | (uint64_t)e.dist << 48);
}

static inline uint64_t home_of(const ng_reflex_table *t, uint64_t fp) { return mulhi64(fp, t->nslots); }
static inline uint64_t next_slot(const ng_reflex_table *t, uint64_t j) { return j + 1 == t->nslots ? 0 : j + 1; }
static inline void dirty_rec(ng_reflex_table *t, uint64_t r) { t->dirty[r >> t->rshift] = 1; }
static inline void dirty_ent(ng_reflex_table *t, uint64_t j) { t->dirty[t->nrseg + (j >> t->eshift)] = 1; }

static inline uint64_t rec_fingerprint(const ng_reflex_table *t, const uint8_t *rec) {
    int16_t c[24];
    uint16_t q[24];
    record_state(rec, c);
    quantize(t->keep, c, q);
    return fingerprint_q(q);
}

/* The records of the cell of key (fingerprint fp): record numbers into recs (and entry positions
 * into pos, may be NULL). Returns the count (at most max), or NG_ECORRUPT when an entry
 * names a record >= live or the cell holds more than max. */
static int probe_cell(const ng_reflex_table *t, const cellkey *key, uint64_t fp, uint64_t *recs,
                      uint64_t *pos, int max) {
    const uint16_t tag = (uint16_t)fp;
    uint64_t j = home_of(t, fp);
    int k = 0;
    for (unsigned d = 0; d < NG_REFLEX_MAX_DIST; d++) {
        entry_t e = ent_load(ent_ptr(t, j));
        if (e.dist == 0 || (unsigned)e.dist - 1u < d) break;
        if ((unsigned)e.dist - 1u == d && e.tag == tag) {
            if (e.rec >= t->live) return NG_ECORRUPT;
            if (rec_in_cellkey(t, rec_ptr(t, e.rec), key)) {
                if (k == max) return NG_ECORRUPT;
                recs[k] = e.rec;
                if (pos) pos[k] = j;
                k++;
            }
        }
        j = next_slot(t, j);
    }
    return k;
}

/* The index slot holding record r (whose cell has fingerprint fp), or NG_ECORRUPT. */
static int64_t slot_of_record(const ng_reflex_table *t, uint64_t r, uint64_t fp) {
    uint64_t j = home_of(t, fp);
    for (unsigned d = 0; d < NG_REFLEX_MAX_DIST; d++) {
        entry_t e = ent_load(ent_ptr(t, j));
        if (e.dist == 0) break;
        if (e.rec == r && (unsigned)e.dist - 1u == d) return (int64_t)j;
        j = next_slot(t, j);
    }
    return NG_ECORRUPT;
}

/* Would a Robin Hood insertion from home need a dist above the maximum? (read only) */
static int placement_overflows(const ng_reflex_table *t, uint64_t home) {
    uint64_t j = home;
    unsigned carried = 1; /* the dist of the entry being carried */
    for (uint64_t k = 0; k < t->nslots; k++) {
        entry_t e = ent_load(ent_ptr(t, j));
        if (e.dist == 0) return 0;
        if (e.dist < carried) carried = e.dist; /* it is displaced and carried on */
        if (++carried > NG_REFLEX_MAX_DIST) return 1;
        j = next_slot(t, j);
    }
    return 1; /* no empty slot: cannot happen at load <= 3/4 */
}

/* Robin Hood placement of an entry for record r (the caller checked for overflow). */
static void place_entry(ng_reflex_table *t, uint32_t r, uint64_t fp) {
    entry_t cur;
    cur.rec = r;
    cur.tag = (uint16_t)fp;
    cur.dist = 1;
    uint64_t j = home_of(t, fp);
    for (uint64_t k = 0; k < t->nslots; k++) {
        uint8_t *p = ent_ptr(t, j);
        entry_t e = ent_load(p);
        if (e.dist == 0) {
            ent_store(p, cur);
            dirty_ent(t, j);
            return;
        }
        if (e.dist < cur.dist) { /* the resident is richer: take its place, carry it on */
            ent_store(p, cur);
            dirty_ent(t, j);
            cur = e;
        }
        cur.dist++;
        j = next_slot(t, j);
    }
}

/* Backward-shift deletion of the entry at slot j. */
static void delete_entry(ng_reflex_table *t, uint64_t j) {
    for (uint64_t k = 0; k < t->nslots; k++) {
        uint64_t nx = next_slot(t, j);
        entry_t e = ent_load(ent_ptr(t, nx));
        if (e.dist <= 1) break; /* empty, or at its home */
        e.dist--;
        ent_store(ent_ptr(t, j), e);
        dirty_ent(t, j);
        j = nx;
    }
    memset(ent_ptr(t, j), 0, ENT);
    dirty_ent(t, j);
}

static inline void box_extend(ng_reflex_table *t, const int16_t c[24]) {
    int changed = 0;
    for (unsigned i = 0; i < 24; i++) {
        if (c[i] < t->bmin[i]) { t->bmin[i] = c[i]; changed = 1; }
        if (c[i] > t->bmax[i]) { t->bmax[i] = c[i]; changed = 1; }
    }
    if (changed) t->header_dirty = 1;
}

static inline void box_empty(ng_reflex_table *t) {
    for (unsigned i = 0; i < 24; i++) {
        t->bmin[i] = 32767;
        t->bmax[i] = -32768;
    }
}

/* Removes live record r: its entry is deleted, the last record moves into r (its entry
 * repointed) and the last record's bytes are zeroed. */
static int remove_record(ng_reflex_table *t, uint64_t r) {
    int64_t j = slot_of_record(t, r, rec_fingerprint(t, rec_ptr(t, r)));
    if (j < 0) return (int)j;
    delete_entry(t, (uint64_t)j);
    uint64_t last = t->live - 1;
    if (r != last) {
        uint8_t *src = rec_ptr(t, last);
        int64_t jl = slot_of_record(t, last, rec_fingerprint(t, src));
        if (jl < 0) return (int)jl;
        uint8_t *p = ent_ptr(t, (uint64_t)jl);
        entry_t e = ent_load(p);
        e.rec = (uint32_t)r;
        ent_store(p, e);
        dirty_ent(t, (uint64_t)jl);
        memcpy(rec_ptr(t, r), src, REC);
        dirty_rec(t, r);
    }
    memset(rec_ptr(t, last), 0, REC);
    dirty_rec(t, last);
    t->live--;
    t->header_dirty = 1;
    return NG_OK;
}

static void write_record(ng_reflex_table *t, uint64_t r, const int16_t c[24], const uint8_t *conn) {
    uint8_t *p = rec_ptr(t, r);
    for (unsigned i = 0; i < 24; i++) st16(p + 2 * i, (uint16_t)c[i]);
    st64(p + R_TICK, t->tick++);
    memset(p + R_ZERO, 0, R_CONN - R_ZERO);
    memcpy(p + R_CONN, conn, 64);
    dirty_rec(t, r);
    box_extend(t, c);
    t->header_dirty = 1;
}

static void entry_of(const ng_reflex_table *t, uint64_t r, ng_reflex_entry *e) {
    const uint8_t *p = rec_ptr(t, r);
    int16_t c[24];
    uint16_t q[24];
    record_state(p, c);
    quantize(t->keep, c, q);
    e->record = r;
    e->grid_hash = ng_grid_hash_coords(c, t->shifts);
    e->fingerprint = fingerprint_q(q);
    e->tick = ld64(p + R_TICK);
    memcpy(e->connection, p + R_CONN, 64);
    memcpy(e->state, c, sizeof c);
}

/* (confidence, tick) order: is record a weaker than record b? */
static inline int weaker(const uint8_t *a, const uint8_t *b) {
    unsigned ca = a[R_CONN + C_CONFIDENCE], cb = b[R_CONN + C_CONFIDENCE];
    if (ca != cb) return ca < cb;
    return ld64(a + R_TICK) < ld64(b + R_TICK);
}

/* ============================================================== keys and measures */

uint64_t ng_reflex_xxh3_64(const uint8_t *data, size_t len) {
    return data ? ng_xxh3_64_17to128(data, len) : 0;
}

const char *ng_reflex_strerror(int code) { return ng_strerror(code); }

int ng_reflex_key(int kind, const void *state, const uint8_t shifts[8], uint64_t *grid_hash,
                  uint64_t *fingerprint) {
    return ng_reflex_keys(kind, state, 1, shifts, grid_hash, fingerprint);
}

int ng_reflex_keys(int kind, const void *states, size_t n, const uint8_t shifts[8],
                   uint64_t *grid_hashes, uint64_t *fingerprints) {
    if (!kind_ok(kind) || !shifts || !shifts_ok(shifts) || (n && (!states || !grid_hashes || !fingerprints)))
        return NG_EINVAL;
    const size_t stride = state_stride(kind);
    if (n > SIZE_MAX / stride) return NG_ERANGE;
    const uint8_t *p = (const uint8_t *)states;
    uint16_t keep[24];
    keep_masks(shifts, keep);
    for (size_t i = 0; i < n; i++) {
        int16_t c[24];
        uint16_t q[24];
        load_coords(kind, p + i * stride, c);
        quantize(keep, c, q);
        grid_hashes[i] = ng_grid_hash_coords(c, shifts);
        fingerprints[i] = fingerprint_q(q);
    }
    return NG_OK;
}

double ng_reflex_similarity(const void *a, const void *b) {
    if (!a || !b) return NAN;
    query_t qa;
    int16_t cb[24];
    memcpy(qa.c, a, sizeof qa.c);
    memcpy(cb, b, sizeof cb);
    query_init(&qa);
    return similarity_of(&qa, cb);
}

double ng_reflex_distance(const void *a, const void *b, const uint8_t shifts[8]) {
    if (!a || !b || !shifts || !shifts_ok(shifts)) return NAN;
    int16_t ca[24], cb[24];
    double w[24];
    memcpy(ca, a, sizeof ca);
    memcpy(cb, b, sizeof cb);
    inv_widths(shifts, w);
    return sqrt(dist2_of(w, ca, cb));
}

/* ============================================================== geometry, create, attach */

int ng_reflex_plan_geometry(uint64_t room, uint32_t rps_hint, uint32_t eps_hint, ng_reflex_geometry *g) {
    if (!g) return NG_EINVAL;
    if (room == 0 || room > MAX_RECORDS) return NG_ERANGE;
    if (rps_hint && (rps_hint < MIN_RPS || rps_hint > MAX_RPS || !is_pow2(rps_hint))) return NG_EINVAL;
    if (eps_hint && (eps_hint < MIN_EPS || eps_hint > MAX_EPS || !is_pow2(eps_hint))) return NG_EINVAL;
    uint64_t slots = (room * 4 + 2) / 3; /* room <= 3/4 of the slots */
    uint64_t rps = rps_hint, eps = eps_hint;
    if (!rps) {
        rps = MIN_RPS;
        while (rps < room && rps < DEFAULT_RPS) rps <<= 1;
    }
    if (!eps) {
        eps = MIN_EPS;
        while (eps < slots && eps < DEFAULT_EPS) eps <<= 1;
    }
    uint64_t nr = (room + rps - 1) / rps, ni = (slots + eps - 1) / eps;
    if (nr > MAX_SEGMENTS || ni > MAX_SEGMENTS || nr * rps > MAX_RECORDS || ni * eps > MAX_SLOTS) return NG_ERANGE;
    g->records_per_segment = (uint32_t)rps;
    g->record_segments = (uint32_t)nr;
    g->entries_per_segment = (uint32_t)eps;
    g->index_segments = (uint32_t)ni;
    return NG_OK;
}

/* Validates a geometry; NULL if fine, else the reason. */
static const char *geometry_problem(const ng_reflex_geometry *g) {
    if (g->records_per_segment < MIN_RPS || g->records_per_segment > MAX_RPS || !is_pow2(g->records_per_segment))
        return "records per segment is not a power of two in [16, 2^16]";
    if (g->entries_per_segment < MIN_EPS || g->entries_per_segment > MAX_EPS || !is_pow2(g->entries_per_segment))
        return "index entries per segment is not a power of two in [16, 2^20]";
    if (g->record_segments == 0 || g->record_segments > MAX_SEGMENTS) return "record segment count out of range";
    if (g->index_segments == 0 || g->index_segments > MAX_SEGMENTS) return "index segment count out of range";
    if ((uint64_t)g->records_per_segment * g->record_segments > MAX_RECORDS) return "more than 2^32 records";
    if ((uint64_t)g->entries_per_segment * g->index_segments > MAX_SLOTS) return "more than 2^40 index slots";
    return NULL;
}

static int alloc_table(const ng_reflex_geometry *g, const uint8_t shifts[8], ng_reflex_table **out) {
    const uint32_t nseg = g->record_segments + g->index_segments;
    size_t bytes = sizeof(ng_reflex_table) + (size_t)nseg * sizeof(uint8_t *) + nseg;
    ng_reflex_table *t = (ng_reflex_table *)calloc(1, bytes);
    if (!t) return NG_ENOMEM;
    t->rsegs = (uint8_t **)(t + 1);
    t->isegs = t->rsegs + g->record_segments;
    t->dirty = (uint8_t *)(t->isegs + g->index_segments);
    t->bytes = bytes;
    t->rps = g->records_per_segment;
    t->nrseg = g->record_segments;
    t->eps = g->entries_per_segment;
    t->niseg = g->index_segments;
    t->rshift = log2_of(t->rps);
    t->eshift = log2_of(t->eps);
    t->rmask = t->rps - 1;
    t->emask = t->eps - 1;
    t->nrec = (uint64_t)t->rps * t->nrseg;
    t->nslots = (uint64_t)t->eps * t->niseg;
    memcpy(t->shifts, shifts, 8);
    keep_masks(shifts, t->keep);
    {
        cellkey kw;
        cellkey_of(t->keep, &kw);
        memcpy(t->keepw, kw.w, sizeof kw.w);
    }
    inv_widths(shifts, t->inv_w2);
    box_empty(t);
    *out = t;
    return NG_OK;
}

static int segments_match(const ng_reflex_geometry *g, uint8_t *const *segments, const size_t *lengths,
                          uint32_t count, const char **why) {
    if (count != g->record_segments + g->index_segments) {
        *why = "segment count differs from the header";
        return NG_ECORRUPT;
    }
    for (uint32_t s = 0; s < count; s++) {
        size_t want = s < g->record_segments ? (size_t)g->records_per_segment * REC
                                             : (size_t)g->entries_per_segment * ENT;
        if (!segments[s]) {
            *why = "NULL segment";
            return NG_EINVAL;
        }
        if (lengths[s] != want) {
            *why = s < g->record_segments ? "record segment length differs from the header"
                                          : "index segment length differs from the header";
            return NG_ECORRUPT;
        }
    }
    return NG_OK;
}

int ng_reflex_create(uint64_t capacity, const uint8_t shifts[8], const ng_reflex_geometry *g,
                     uint8_t *const *segments, const size_t *lengths, uint32_t count, ng_reflex_table **out) {
    if (!out || !shifts || !g || !segments || !lengths || !shifts_ok(shifts)) return NG_EINVAL;
    *out = NULL;
    if (geometry_problem(g)) return NG_EINVAL;
    if (capacity == 0) return NG_ERANGE;
    const char *why = NULL;
    int rc = segments_match(g, segments, lengths, count, &why);
    if (rc) return rc == NG_ECORRUPT ? NG_ERANGE : rc;
    ng_reflex_table *t;
    rc = alloc_table(g, shifts, &t);
    if (rc) return rc;
    for (uint32_t s = 0; s < count; s++) {
        memset(segments[s], 0, lengths[s]);
        if (s < t->nrseg) t->rsegs[s] = segments[s];
        else t->isegs[s - t->nrseg] = segments[s];
        t->dirty[s] = 1;
    }
    t->capacity = capacity;
    t->writable = 1;
    t->header_dirty = 1;
    *out = t;
    return NG_OK;
}

#define FAIL(msg)                                                                                  \
    do {                                                                                           \
        if (reason) *reason = (msg);                                                               \
        return NG_ECORRUPT;                                                                        \
    } while (0)

int ng_reflex_attach(const uint8_t *h, size_t hlen, uint8_t *const *segments, const size_t *lengths,
                     uint32_t count, int writable, ng_reflex_table **out, const char **reason) {
    if (reason) *reason = "ok";
    if (!out || !h || (count && (!segments || !lengths))) {
        if (reason) *reason = "NULL argument";
        return NG_EINVAL;
    }
    *out = NULL;
    if (hlen < 10 || memcmp(h, "NGREFLEX", 8) != 0) FAIL("bad magic (not a reflex table header)");
    if (ld16(h + 8) != NG_REFLEX_FORMAT_VERSION) {
        if (reason) *reason = "unsupported format version (this code reads version 2)";
        return NG_ERANGE;
    }
    if (hlen != HDR) FAIL("header is not 256 bytes long");
    if (crc32_zlib(h, HDR - 4) != ld32(h + HDR - 4)) FAIL("header CRC mismatch");
    if (ld16(h + 10) != HDR) FAIL("header size field is not 256");
    if (ld16(h + 12) != REC) FAIL("record size field is not 128");
    if (ld16(h + 14) != ENT) FAIL("index entry size field is not 8");
    if (ld16(h + 16) != NG_REFLEX_MAX_CANDIDATES) FAIL("max candidates field is not 4");
    if (ld16(h + 18) != NG_REFLEX_EVICT_WINDOW) FAIL("eviction window field is not 32");
    if (ld32(h + 20) != 0) FAIL("unknown flags");
    ng_reflex_geometry g;
    g.records_per_segment = ld32(h + 24);
    g.record_segments = ld32(h + 28);
    g.entries_per_segment = ld32(h + 32);
    g.index_segments = ld32(h + 36);
    const char *gp = geometry_problem(&g);
    if (gp) FAIL(gp);
    uint64_t capacity = ld64(h + 40), live = ld64(h + 48), tick = ld64(h + 56);
    if (capacity == 0) FAIL("capacity is 0");
    if (!shifts_ok(h + 64)) FAIL("a layer shift exceeds 15");
    for (unsigned k = 168; k < HDR - 4; k++)
        if (h[k]) FAIL("reserved header bytes are not zero");
    int16_t bmin[24], bmax[24];
    for (unsigned i = 0; i < 24; i++) {
        bmin[i] = (int16_t)ld16(h + 72 + 2 * i);
        bmax[i] = (int16_t)ld16(h + 120 + 2 * i);
        if (live && bmin[i] > bmax[i]) FAIL("the box of the stored states is empty but the table is not");
    }
    const char *why = NULL;
    int rc = segments_match(&g, segments, lengths, count, &why);
    if (rc) {
        if (reason) *reason = why;
        return rc;
    }
    ng_reflex_table *t;
    rc = alloc_table(&g, h + 64, &t);
    if (rc) return rc;
    t->capacity = capacity;
    if (live > room_of(t)) {
        free(t);
        FAIL("live count exceeds the room of the table (capacity, records, 3/4 of the index)");
    }
    for (uint32_t s = 0; s < count; s++) {
        if (s < t->nrseg) t->rsegs[s] = segments[s];
        else t->isegs[s - t->nrseg] = segments[s];
    }
    t->live = live;
    t->tick = tick;
    memcpy(t->bmin, bmin, sizeof bmin);
    memcpy(t->bmax, bmax, sizeof bmax);
    t->writable = writable ? 1 : 0;
    *out = t;
    return NG_OK;
}
#undef FAIL

int ng_reflex_rebuild(const ng_reflex_table *src, ng_reflex_table *dst) {
    if (!src || !dst || !dst->writable || dst->live != 0 || memcmp(src->shifts, dst->shifts, 8) != 0)
        return NG_EINVAL;
    if (src->live > room_of(dst)) return NG_EFULL;
    for (uint64_t r = 0; r < src->live; r++) {
        const uint8_t *s = rec_ptr(src, r);
        uint8_t *d = rec_ptr(dst, r);
        uint64_t fp = rec_fingerprint(dst, s);
        if (placement_overflows(dst, home_of(dst, fp))) return NG_EFULL;
        memcpy(d, s, REC);
        dirty_rec(dst, r);
        int16_t c[24];
        record_state(s, c);
        box_extend(dst, c);
        place_entry(dst, (uint32_t)r, fp);
        dst->live = r + 1;
    }
    if (src->tick > dst->tick) dst->tick = src->tick;
    memcpy(dst->stats, src->stats, sizeof dst->stats);
    dst->header_dirty = 1;
    return NG_OK;
}

void ng_reflex_free(ng_reflex_table *t) { free(t); }

int ng_reflex_info_get(const ng_reflex_table *t, ng_reflex_info *o) {
    if (!t || !o) return NG_EINVAL;
    memset(o, 0, sizeof *o);
    o->capacity = t->capacity;
    o->room = room_of(t);
    o->live_count = t->live;
    o->tick = t->tick;
    o->records = t->nrec;
    o->slots = t->nslots;
    o->segment_bytes = t->nrec * REC + t->nslots * ENT;
    o->handle_bytes = t->bytes;
    o->geometry.records_per_segment = t->rps;
    o->geometry.record_segments = t->nrseg;
    o->geometry.entries_per_segment = t->eps;
    o->geometry.index_segments = t->niseg;
    o->segment_count = t->nrseg + t->niseg;
    o->writable = (uint32_t)t->writable;
    memcpy(o->shifts, t->shifts, 8);
    memcpy(o->box_min, t->bmin, sizeof t->bmin);
    memcpy(o->box_max, t->bmax, sizeof t->bmax);
    return NG_OK;
}

int ng_reflex_write_header(const ng_reflex_table *t, uint8_t *h, size_t len) {
    if (!t || !h) return NG_EINVAL;
    if (len < HDR) return NG_ERANGE;
    memset(h, 0, HDR);
    memcpy(h, "NGREFLEX", 8);
    st16(h + 8, NG_REFLEX_FORMAT_VERSION);
    st16(h + 10, HDR);
    st16(h + 12, REC);
    st16(h + 14, ENT);
    st16(h + 16, NG_REFLEX_MAX_CANDIDATES);
    st16(h + 18, NG_REFLEX_EVICT_WINDOW);
    st32(h + 24, t->rps);
    st32(h + 28, t->nrseg);
    st32(h + 32, t->eps);
    st32(h + 36, t->niseg);
    st64(h + 40, t->capacity);
    st64(h + 48, t->live);
    st64(h + 56, t->tick);
    memcpy(h + 64, t->shifts, 8);
    for (unsigned i = 0; i < 24; i++) {
        st16(h + 72 + 2 * i, (uint16_t)t->bmin[i]);
        st16(h + 120 + 2 * i, (uint16_t)t->bmax[i]);
    }
    st32(h + HDR - 4, crc32_zlib(h, HDR - 4));
    return NG_OK;
}

/* ============================================================== lookup */

typedef struct {
    uint64_t hits, misses, answers, collisions, candidates, fb_answers, fb_cells, fb_scans;
} lcount;

typedef struct {
    const uint8_t *rec; /* NULL: nothing chosen yet */
    uint64_t r;
    unsigned conf;
    double sim, d2;
    uint64_t tick;
} pick_t;

static inline int eligible_conf(const uint8_t *rec, const ng_reflex_params *p) {
    unsigned conf = rec[R_CONN + C_CONFIDENCE], mut = rec[R_CONN + C_MUTABILITY];
    return conf >= p->min_confidence && (mut != MUT_HYPOTHESIS || conf >= p->hypothesis_threshold);
}

/* Exact path over the candidates of the query's cell. */
static void pick_exact(const ng_reflex_table *t, query_t *qy, const uint64_t *recs, int k,
                       const ng_reflex_params *p, pick_t *best) {
    int same = 0; /* is the best's source state the query itself? */
    for (int m = 0; m < k; m++) {
        const uint8_t *rec = rec_ptr(t, recs[m]);
        if (!eligible_conf(rec, p)) continue;
        double sim;
        int identical;
#if NG_LE
        identical = memcmp(rec, qy->c, 48) == 0; /* the common case: the query is the state */
#else
        identical = 0;
#endif
        if (identical) {
            sim = 1.0;
        } else {
            int16_t s[24];
            record_state(rec, s);
            sim = similarity_of(qy, s);
            identical = sim == 1.0 && memcmp(s, qy->c, 48) == 0;
        }
        if (!(sim > p->similarity_threshold)) continue;
        unsigned conf = rec[R_CONN + C_CONFIDENCE];
        uint64_t tk = ld64(rec + R_TICK);
        if (!best->rec || conf > best->conf || (conf == best->conf && (sim > best->sim ||
                                                                       (sim == best->sim && tk > best->tick)))) {
            best->rec = rec;
            best->r = recs[m];
            best->conf = conf;
            best->sim = sim;
            best->tick = tk;
            same = identical;
        }
    }
    if (best->rec) { /* the distance of the answer only */
        if (same) {
            best->d2 = 0.0;
        } else {
            int16_t s[24];
            record_state(best->rec, s);
            best->d2 = dist2_of(t->inv_w2, qy->c, s);
        }
    }
}

/* Fallback: is record r (within the radius, eligible) better than the best so far? */
static void consider_near(const ng_reflex_table *t, query_t *qy, uint64_t r, const ng_reflex_params *p,
                          double r2, pick_t *best) {
    const uint8_t *rec = rec_ptr(t, r);
    if (!eligible_conf(rec, p)) return;
    int16_t s[24];
    record_state(rec, s);
    double d2 = dist2_of(t->inv_w2, qy->c, s);
    if (d2 > r2) return;
    unsigned conf = rec[R_CONN + C_CONFIDENCE];
    uint64_t tk = ld64(rec + R_TICK);
    if (best->rec && (d2 > best->d2 || (d2 == best->d2 && (conf < best->conf ||
                                                           (conf == best->conf && tk <= best->tick)))))
        return;
    double sim = similarity_of(qy, s);
    if (!(sim > p->similarity_threshold)) return;
    best->rec = rec;
    best->r = r;
    best->conf = conf;
    best->sim = sim;
    best->d2 = d2;
    best->tick = tk;
}

typedef struct {
    const ng_reflex_table *t;
    query_t *qy;
    const ng_reflex_params *p;
    double r2, cut;                 /* radius^2; bound of the cells still worth probing */
    unsigned ndims;
    unsigned dim[24];               /* coordinates with a choice, in enumeration order */
    int stay[24];                   /* may the cell keep the query's index there?      */
    unsigned nopt[24];
    uint16_t optq[24][FB_MAX_OPTS]; /* quantized value of each neighbour cell          */
    double optc[24][FB_MAX_OPTS];   /* its squared distance from the query, ascending   */
    uint16_t qn[24];                /* the cell being enumerated                       */
    uint64_t cells, budget;
    int over, err;
    unsigned npend, min_moved;       /* leaves with fewer moved coordinates are skipped */
    cellkey pk[FB_PENDING];
    uint64_t pfp[FB_PENDING];
    double plow[FB_PENDING];        /* each pending cell's squared distance from the query */
    pick_t *best;
} fallback_t;

/* Pruning bound: a cell farther than the radius, or than the best answer so far, cannot
 * hold the answer (equal distances stay in: a tie may have the higher confidence). The
 * slack keeps rounding from dropping a cell that holds a state at exactly the bound. */
static inline double fb_bound(double d2) { return d2 * (1.0 + 1e-9) + 1e-12; }

static void fb_flush(fallback_t *f) {
    const ng_reflex_table *t = f->t;
    for (unsigned k = 0; k < f->npend; k++) PREFETCH(ent_ptr(t, home_of(t, f->pfp[k])));
    for (unsigned k = 0; k < f->npend && !f->err; k++) {
        if (f->plow[k] > f->cut) continue; /* an answer nearer than this cell was found */
        uint64_t recs[NG_REFLEX_MAX_CANDIDATES];
        int m = probe_cell(t, &f->pk[k], f->pfp[k], recs, NULL, NG_REFLEX_MAX_CANDIDATES);
        if (m < 0) {
            f->err = m;
            break;
        }
        for (int i = 0; i < m; i++) consider_near(t, f->qy, recs[i], f->p, f->r2, f->best);
        if (f->best->rec && fb_bound(f->best->d2) < f->cut) f->cut = fb_bound(f->best->d2);
    }
    f->npend = 0;
}

static void fb_emit(fallback_t *f, double low) {
    if (++f->cells > f->budget) {
        f->over = 1;
        return;
    }
    cellkey_of(f->qn, &f->pk[f->npend]);
    f->pfp[f->npend] = fingerprint_k(&f->pk[f->npend]);
    f->plow[f->npend] = low;
    if (++f->npend == FB_PENDING) fb_flush(f);
}

/* Depth-first over the coordinates with a choice; `moved` counts coordinates that left
 * the query's cell (0 at a leaf is the query's own cell: already evaluated). */
static void fb_walk(fallback_t *f, unsigned level, double sum, unsigned moved) {
    if (f->over || f->err) return;
    if (level == f->ndims) {
        if (moved >= f->min_moved) fb_emit(f, sum);
        return;
    }
    unsigned i = f->dim[level];
    if (f->stay[i]) fb_walk(f, level + 1, sum, moved);
    uint16_t keep = f->qn[i];
    for (unsigned o = 0; o < f->nopt[i] && !f->over && !f->err; o++) {
        if (sum + f->optc[i][o] > f->cut) break;
        f->qn[i] = f->optq[i][o];
        fb_walk(f, level + 1, sum + f->optc[i][o], moved + 1);
    }
    f->qn[i] = keep;
}

/* The nearest eligible reflex within the radius (format §7.7). 1 found, 0 none, <0 error. */
static int fallback(const ng_reflex_table *t, query_t *qy, const ng_reflex_params *p, lcount *lc,
                    pick_t *best) {
    fallback_t f;
    uint16_t q[24];
    quantize(t->keep, qy->c, q);
    const double r = p->fallback_radius;
    f.t = t;
    f.qy = qy;
    f.p = p;
    f.r2 = r * r;
    f.cut = fb_bound(f.r2);
    f.ndims = 0;
    f.cells = 0;
    f.budget = p->fallback_budget ? p->fallback_budget : (t->live / 8 > FB_MIN_BUDGET ? t->live / 8 : FB_MIN_BUDGET);
    f.over = f.err = 0;
    f.npend = 0;
    f.best = best;
    best->rec = NULL;
    memcpy(f.qn, q, sizeof f.qn);
    int scan = 0;
    for (unsigned i = 0; i < 24 && !scan; i++) {
        const unsigned s = t->shifts[i / 3];
        const int32_t w = (int32_t)1 << s, v = qy->c[i];
        const int32_t k = floor_shift(v, s), a = v - k * w;
        const int32_t kmin = floor_shift(t->bmin[i], s), kmax = floor_shift(t->bmax[i], s);
        f.stay[i] = kmin <= k && k <= kmax;
        /* Neighbour cells below (k - m) and above (k + m) inside the box, each with the
         * squared distance from v to its nearest integer; merged in ascending order. */
        double cd[FB_MAX_OPTS + 1], cu[FB_MAX_OPTS + 1];
        int32_t kd[FB_MAX_OPTS + 1], ku[FB_MAX_OPTS + 1];
        unsigned nd = 0, nu = 0;
        for (int32_t m = 1; k - m >= kmin; m++) {
            double raw = (double)(a + 1 + (m - 1) * w), c = raw * raw * t->inv_w2[i];
            if (c > f.cut) break;
            if (k - m > kmax) continue; /* above the box: no stored state there */
            if (nd == FB_MAX_OPTS) { scan = 1; break; }
            cd[nd] = c;
            kd[nd++] = k - m;
        }
        for (int32_t m = 1; k + m <= kmax && !scan; m++) {
            double raw = (double)(m * w - a), c = raw * raw * t->inv_w2[i];
            if (c > f.cut) break;
            if (k + m < kmin) continue; /* below the box */
            if (nu == FB_MAX_OPTS) { scan = 1; break; }
            cu[nu] = c;
            ku[nu++] = k + m;
        }
        if (scan) break;
        if (nd + nu > FB_MAX_OPTS) { scan = 1; break; }
        unsigned a_i = 0, b_i = 0, n = 0;
        while (a_i < nd || b_i < nu) {
            int take_d = b_i == nu || (a_i < nd && cd[a_i] <= cu[b_i]);
            int32_t kk = take_d ? kd[a_i] : ku[b_i];
            f.optc[i][n] = take_d ? cd[a_i++] : cu[b_i++];
            f.optq[i][n++] = (uint16_t)(int16_t)(kk * w);
        }
        f.nopt[i] = n;
        if (!f.stay[i] && n == 0) return 0; /* no stored state can be within the radius */
        if (n) f.dim[f.ndims++] = i;
    }
    if (!scan) {
        /* Branch and bound: first the cells one coordinate away (nearest first), whose
         * answer bounds the rest; then every combination of two or more moves, pruned by
         * the radius and by the best answer so far. */
        f.min_moved = 1;
        int all_stay = 1; /* the query's cell is inside the box in every coordinate */
        for (unsigned i = 0; i < 24; i++) all_stay &= f.stay[i];
        if (all_stay && f.ndims) {
            unsigned at[24] = {0}; /* next option of each coordinate, merged by cost */
            for (;;) {
                unsigned bi = 24;
                double bc = 0.0;
                for (unsigned l = 0; l < f.ndims; l++) {
                    unsigned i = f.dim[l];
                    if (at[i] < f.nopt[i] && (bi == 24 || f.optc[i][at[i]] < bc)) {
                        bi = i;
                        bc = f.optc[i][at[i]];
                    }
                }
                if (bi == 24 || bc > f.cut || f.over || f.err) break;
                uint16_t keep = f.qn[bi];
                f.qn[bi] = f.optq[bi][at[bi]++];
                fb_emit(&f, bc);
                f.qn[bi] = keep;
            }
            if (!f.over && !f.err) fb_flush(&f);
            f.min_moved = 2;
        }
        fb_walk(&f, 0, 0.0, 0);
        if (!f.over && !f.err) fb_flush(&f);
        if (f.err) return f.err;
        lc->fb_cells += f.cells > f.budget ? f.budget : f.cells;
        if (!f.over) return best->rec != NULL;
        best->rec = NULL; /* over budget: the scan below decides */
    }
    lc->fb_scans++;
    for (uint64_t rr = 0; rr < t->live; rr++) consider_near(t, qy, rr, p, f.r2, best);
    return best->rec != NULL;
}

/* The candidates of the query's cell are known (recs, k): evaluate, then the fallback. */
static int finish_state(const ng_reflex_table *t, query_t *qy, const uint64_t *recs,
                        int k, const ng_reflex_params *p, lcount *lc, pick_t *best) {
    int status = 0;
    best->rec = NULL;
    if (k) {
        status = NG_REFLEX_KNOWN;
        lc->hits++;
        lc->candidates += (uint64_t)k;
        if (k > 1) lc->collisions++;
        pick_exact(t, qy, recs, k, p, best);
        if (best->rec) {
            lc->answers++;
            return status | NG_REFLEX_ANSWERED;
        }
    } else {
        lc->misses++;
    }
    if (p->fallback_radius > 0 && t->live) {
        int rc = fallback(t, qy, p, lc, best);
        if (rc < 0) return rc;
        if (rc) {
            lc->answers++;
            lc->fb_answers++;
            return status | NG_REFLEX_ANSWERED | NG_REFLEX_BY_FALLBACK;
        }
    }
    return status;
}

static int lookup_state(const ng_reflex_table *t, query_t *qy, const ng_reflex_params *p, lcount *lc,
                        pick_t *best) {
    uint64_t recs[NG_REFLEX_MAX_CANDIDATES];
    int k = probe_cell(t, &qy->key, fingerprint_k(&qy->key), recs, NULL, NG_REFLEX_MAX_CANDIDATES);
    if (k < 0) return k;
    return finish_state(t, qy, recs, k, p, lc, best);
}

static void flush_counts(const ng_reflex_table *t, uint64_t lookups, const lcount *lc) {
    stat_add(t, NG_REFLEX_STAT_LOOKUPS, lookups);
    stat_add(t, NG_REFLEX_STAT_HITS, lc->hits);
    stat_add(t, NG_REFLEX_STAT_MISSES, lc->misses);
    stat_add(t, NG_REFLEX_STAT_ANSWERS, lc->answers);
    stat_add(t, NG_REFLEX_STAT_COLLISIONS, lc->collisions);
    stat_add(t, NG_REFLEX_STAT_CANDIDATES, lc->candidates);
    stat_add(t, NG_REFLEX_STAT_FALLBACK_ANSWERS, lc->fb_answers);
    stat_add(t, NG_REFLEX_STAT_FALLBACK_CELLS, lc->fb_cells);
    stat_add(t, NG_REFLEX_STAT_FALLBACK_SCANS, lc->fb_scans);
}

static inline void decode_action(const uint8_t *conn, float *out) {
    int16_t tv[8];
#if NG_LE
    memcpy(tv, conn + C_TARGET, sizeof tv);
#else
    for (unsigned d = 0; d < 8; d++) tv[d] = (int16_t)ld16(conn + C_TARGET + 2 * d);
#endif
    for (unsigned d = 0; d < 8; d++) out[d] = (float)((double)tv[d] * layer_inv_scale[d]);
}

/* Pass 2 of a lookup: walks the probe run of one state (home, tag), keeps up to MAX_MATCH
 * record numbers whose entries match, prefetching each record's two lines. Returns the
 * count, or MAX_MATCH + 1 when the caller must run the full probe (more matches, or an
 * entry that names a record >= live: probe_cell reports the corruption). */
static inline unsigned walk_entries(const ng_reflex_table *t, uint64_t j, uint16_t tag, uint32_t *match) {
    unsigned c = 0;
    if ((j & t->emask) + 8 <= t->eps) {
        /* The 8 entries from home, without branches: the end of a probe run is
         * data-dependent, and a mispredicted exit costs more than this scan. */
        unsigned stop = 0, hit = 0;
        const uint8_t *pe = ent_ptr(t, j);
        for (unsigned d = 0; d < 8; d++) {
            const uint64_t v = ld64(pe + 8 * d);
            const unsigned dist = (unsigned)(v >> 48) & 0xFFu, tg = (unsigned)(v >> 32) & 0xFFFFu;
            stop |= (unsigned)(dist == 0 || dist - 1u < d) << d;
            hit |= (unsigned)(dist - 1u == d && tg == tag) << d;
        }
        if (stop) {
            hit &= (stop & (0u - stop)) - 1u; /* the matches before the first stop */
            for (; hit; hit &= hit - 1) {
                unsigned d = 0;
                while (!((hit >> d) & 1u)) d++;
                const uint32_t r = (uint32_t)ld64(pe + 8 * d);
                if (c == MAX_MATCH || r >= t->live) return MAX_MATCH + 1;
                match[c++] = r;
                PREFETCH(rec_ptr(t, r));
                PREFETCH(rec_ptr(t, r) + 64);
            }
            return c;
        }
    }
    for (unsigned d = 0; d < NG_REFLEX_MAX_DIST; d++) {
        entry_t e = ent_load(ent_ptr(t, j));
        if (e.dist == 0 || (unsigned)e.dist - 1u < d) break;
        if ((unsigned)e.dist - 1u == d && e.tag == tag) {
            if (c == MAX_MATCH || e.rec >= t->live) return MAX_MATCH + 1;
            match[c++] = e.rec;
            PREFETCH(rec_ptr(t, e.rec));
            PREFETCH(rec_ptr(t, e.rec) + 64);
        }
        j = next_slot(t, j);
    }
    return c;
}

int ng_reflex_lookup_batch(const ng_reflex_table *t, int kind, const void *states, size_t n,
                           const ng_reflex_params *p, uint8_t *status, int64_t *record, uint8_t *confidence,
                           float *similarity, float *distance, float *action, uint8_t *connections) {
    if (!t || !kind_ok(kind) || !params_ok(p)) return NG_EINVAL;
    if (n && (!states || !status || !record || !confidence || !similarity || !action)) return NG_EINVAL;
    const size_t stride = state_stride(kind);
    if (n > SIZE_MAX / stride || n > SIZE_MAX / 64) return NG_ERANGE;
    const uint64_t t0 = now_ns();
    const uint8_t *in = (const uint8_t *)states;
    lcount lc;
    memset(&lc, 0, sizeof lc);
    int rc = NG_OK;
    size_t done = 0;
    /* Three passes per block of BLOCK states, so that each pass issues its memory
     * accesses for all of them before it needs any: (1) load, build the cell key,
     * fingerprint, prefetch the home entries; (2) walk the entries, keep the tag matches,
     * prefetch their records (two lines each); (3) compare cells exactly and evaluate.
     * Measured on this class of VM: blocks of 16 beat blocks of 8, 32 or 64, and beat a
     * rolling software pipeline with 4, 8 or 12 states between its stages. Measured
     * again once pass 3 had its fast path (1M hits, ~60 ns/state): blocks of 12, 24, 32
     * or 48, a pipeline over blocks (entries of block b+1 or b+2 prefetched while block
     * b is evaluated, in every stage order), a rolling pipeline of 4, 8 or 16 states,
     * prefetching the second index line of a run that crosses one, prefetching one
     * record line instead of two, other prefetch hints, and non-temporal stores of the
     * actions and connections were all slower or no faster. What prefetches early does
     * worse here, the later the worse, as if prefetches beyond some twenty in flight
     * were dropped. */
    query_t qy[BLOCK];
    uint64_t fp[BLOCK], home[BLOCK];
    uint32_t match[BLOCK][MAX_MATCH];
    unsigned nmatch[BLOCK];
    /* Can an identical state answer by the exact path? (its similarity is 1) */
    const int identical_ok = 1.0 > p->similarity_threshold;
    for (size_t base = 0; base < n && rc == NG_OK; base += BLOCK) {
        const unsigned m = (unsigned)(n - base < BLOCK ? n - base : BLOCK);
        for (unsigned k = 0; k < m; k++) {
            load_query(t->keep, t->keepw, kind, in + (base + k) * stride, &qy[k]);
            fp[k] = fingerprint_k(&qy[k].key);
            home[k] = home_of(t, fp[k]);
            PREFETCH(ent_ptr(t, home[k]));
        }
        for (unsigned k = 0; k < m; k++) nmatch[k] = walk_entries(t, home[k], (uint16_t)fp[k], match[k]);
        for (unsigned k = 0; k < m; k++) {
            const size_t i = base + k;
            if (nmatch[k] == 1 && identical_ok) {
                /* The common hit: one tag match, whose source state is the query itself
                 * (then it is in the query's cell, the only candidate, similarity 1,
                 * distance 0): what finish_state would answer if it is eligible. */
                const uint8_t *rec = rec_ptr(t, match[k][0]);
                uint64_t diff = 0;
                for (unsigned j = 0; j < 6; j++) {
                    uint64_t qw;
                    memcpy(&qw, (const uint8_t *)qy[k].c + 8 * j, 8);
                    diff |= ld64(rec + 8 * j) ^ qw;
                }
                if (NG_LE && diff == 0 && eligible_conf(rec, p)) {
                    lc.hits++;
                    lc.candidates++;
                    lc.answers++;
                    status[i] = NG_REFLEX_KNOWN | NG_REFLEX_ANSWERED;
                    record[i] = (int64_t)match[k][0];
                    confidence[i] = rec[R_CONN + C_CONFIDENCE];
                    similarity[i] = 1.0f;
                    if (distance) distance[i] = 0.0f;
                    decode_action(rec + R_CONN, action + 8 * i);
                    if (connections) memcpy(connections + 64 * i, rec + R_CONN, 64);
                    done = i + 1;
                    continue;
                }
            }
            uint64_t recs[NG_REFLEX_MAX_CANDIDATES];
            int nc = 0;
            if (nmatch[k] > MAX_MATCH) {
                nc = probe_cell(t, &qy[k].key, fp[k], recs, NULL, NG_REFLEX_MAX_CANDIDATES);
            } else {
                for (unsigned c = 0; c < nmatch[k] && nc >= 0; c++) {
                    if (!rec_in_cellkey(t, rec_ptr(t, match[k][c]), &qy[k].key)) continue;
                    if (nc == NG_REFLEX_MAX_CANDIDATES) nc = NG_ECORRUPT;
                    else recs[nc++] = match[k][c];
                }
            }
            pick_t best;
            int res = nc < 0 ? nc : finish_state(t, &qy[k], recs, nc, p, &lc, &best);
            if (res < 0) {
                rc = res;
                break;
            }
            status[i] = (uint8_t)res;
            if (res & NG_REFLEX_ANSWERED) {
                record[i] = (int64_t)best.r;
                confidence[i] = (uint8_t)best.conf;
                similarity[i] = (float)best.sim;
                if (distance) distance[i] = best.d2 > 0.0 ? (float)sqrt(best.d2) : 0.0f;
                decode_action(best.rec + R_CONN, action + 8 * i);
                if (connections) memcpy(connections + 64 * i, best.rec + R_CONN, 64);
            } else {
                record[i] = -1;
                confidence[i] = 0;
                similarity[i] = 0.0f;
                if (distance) distance[i] = 0.0f;
                memset(action + 8 * i, 0, 8 * sizeof(float));
                if (connections) memset(connections + 64 * i, 0, 64);
            }
            done = i + 1;
        }
    }
    flush_counts(t, done, &lc);
    if (done) {
        stat_add(t, NG_REFLEX_STAT_TIME_NS, now_ns() - t0);
        stat_add(t, NG_REFLEX_STAT_TIMED, done);
    }
    return rc;
}

static int lookup_ctx(ng_reflex_ctx *ctx, const ng_reflex_params *p, query_t *qy) {
    const ng_reflex_table *t = ctx->table;
    const int timed = (++ctx->calls & 63) == 1; /* time 1 lookup in 64: a clock read costs as much */
    const uint64_t t0 = timed ? now_ns() : 0;
    lcount lc;
    pick_t best;
    memset(&lc, 0, sizeof lc);
    int res = lookup_state(t, qy, p, &lc, &best);
    if (res < 0) return res;
    flush_counts(t, 1, &lc);
    if (res & NG_REFLEX_ANSWERED) {
        ng_reflex_hit *o = &ctx->out;
        o->similarity = (float)best.sim;
        o->distance = best.d2 > 0.0 ? (float)sqrt(best.d2) : 0.0f;
        o->status = (uint32_t)res;
        o->record = (uint32_t)best.r;
        decode_action(best.rec + R_CONN, o->action);
        memcpy(o->connection, best.rec + R_CONN, 64);
    }
    if (timed) {
        stat_add(t, NG_REFLEX_STAT_TIME_NS, now_ns() - t0);
        stat_add(t, NG_REFLEX_STAT_TIMED, 1);
    }
    return res;
}

int ng_reflex_lookup_f32(ng_reflex_ctx *ctx, const ng_reflex_params *p, float s0, float s1, float s2, float s3,
                         float s4, float s5, float s6, float s7) {
    if (!ctx || !ctx->table || !params_ok(p)) return NG_EINVAL;
    const float s[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
    query_t qy;
    load_query(ctx->table->keep, ctx->table->keepw, NG_REFLEX_STATE_F32, (const uint8_t *)s, &qy);
    return lookup_ctx(ctx, p, &qy);
}

int ng_reflex_lookup_one(ng_reflex_ctx *ctx, const ng_reflex_params *p, int kind, const void *state) {
    if (!ctx || !ctx->table || !state || !kind_ok(kind) || !params_ok(p)) return NG_EINVAL;
    query_t qy;
    load_query(ctx->table->keep, ctx->table->keepw, kind, (const uint8_t *)state, &qy);
    return lookup_ctx(ctx, p, &qy);
}

int ng_reflex_lookup_one_released(ng_reflex_ctx *ctx, const ng_reflex_params *p, int kind, const void *state) {
    return ng_reflex_lookup_one(ctx, p, kind, state);
}

int ng_reflex_bench_loop(const ng_reflex_table *t, int kind, const void *states, size_t n,
                         const ng_reflex_params *p, uint64_t *answered) {
    if (!t || !kind_ok(kind) || !params_ok(p) || !answered || (n && !states)) return NG_EINVAL;
    const size_t stride = state_stride(kind);
    if (n > SIZE_MAX / stride) return NG_ERANGE;
    const uint8_t *in = (const uint8_t *)states;
    lcount lc;
    memset(&lc, 0, sizeof lc);
    for (size_t i = 0; i < n; i++) {
        query_t qy;
        pick_t best;
        load_query(t->keep, t->keepw, kind, in + i * stride, &qy);
        int r = lookup_state(t, &qy, p, &lc, &best);
        if (r < 0) return r;
    }
    *answered = lc.answers;
    flush_counts(t, n, &lc);
    return NG_OK;
}

/* ============================================================== writes */

/* Victim of an eviction: the weakest of the window from record fp mod live. */
static uint64_t victim_of(const ng_reflex_table *t, uint64_t fp) {
    uint64_t r = fp % t->live, best = r;
    for (unsigned k = 1; k < NG_REFLEX_EVICT_WINDOW && k < t->live; k++) {
        if (++r == t->live) r = 0;
        if (weaker(rec_ptr(t, r), rec_ptr(t, best))) best = r;
    }
    return best;
}

static int insert_core(ng_reflex_table *t, const int16_t c[24], const uint8_t *conn, int *outcome,
                       ng_reflex_entry *ev) {
    uint16_t q[24];
    uint64_t recs[NG_REFLEX_MAX_CANDIDATES];
    cellkey key;
    quantize(t->keep, c, q);
    cellkey_of(q, &key);
    const uint64_t fp = fingerprint_k(&key);
    int k = probe_cell(t, &key, fp, recs, NULL, NG_REFLEX_MAX_CANDIDATES);
    if (k < 0) return k;
    for (int m = 0; m < k; m++) {
        if (memcmp(rec_ptr(t, recs[m]) + R_CONN, conn, IDENTITY_BYTES) == 0) {
            write_record(t, recs[m], c, conn);
            stat_add(t, NG_REFLEX_STAT_UPDATES, 1);
            *outcome = NG_REFLEX_UPDATED;
            return NG_OK;
        }
    }
    if (k == NG_REFLEX_MAX_CANDIDATES) { /* replace the weakest of the cell, in place */
        uint64_t w = recs[0];
        for (int m = 1; m < k; m++)
            if (weaker(rec_ptr(t, recs[m]), rec_ptr(t, w))) w = recs[m];
        if (ev) entry_of(t, w, ev);
        write_record(t, w, c, conn);
        stat_add(t, NG_REFLEX_STAT_EVICTIONS, 1);
        *outcome = NG_REFLEX_REPLACED;
        return NG_OK;
    }
    const int evict = t->live >= t->capacity;
    if (!evict && t->live >= room_of(t)) return NG_EFULL;
    if (placement_overflows(t, home_of(t, fp))) return NG_EFULL; /* checked before anything changes */
    *outcome = NG_REFLEX_INSERTED;
    if (evict) {
        uint64_t v = victim_of(t, fp);
        if (ev) entry_of(t, v, ev);
        int rc = remove_record(t, v);
        if (rc) return rc;
        stat_add(t, NG_REFLEX_STAT_EVICTIONS, 1);
        *outcome = NG_REFLEX_EVICTED;
    }
    const uint64_t r = t->live;
    write_record(t, r, c, conn);
    t->live = r + 1;
    place_entry(t, (uint32_t)r, fp);
    stat_add(t, NG_REFLEX_STAT_INSERTS, 1);
    return NG_OK;
}

int ng_reflex_insert(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection, int *outcome,
                     ng_reflex_entry *evicted) {
    int oc = 0;
    if (!t || !state || !connection || !kind_ok(kind) || !t->writable) return NG_EINVAL;
    int16_t c[24];
    load_coords(kind, (const uint8_t *)state, c);
    int rc = insert_core(t, c, connection, &oc, evicted);
    if (outcome) *outcome = oc;
    return rc;
}

int ng_reflex_insert_batch(ng_reflex_table *t, int kind, const void *states, size_t n,
                           const uint8_t *connections, int8_t *outcomes, size_t *done) {
    if (done) *done = 0;
    if (!t || !kind_ok(kind) || !t->writable || (n && (!states || !connections))) return NG_EINVAL;
    const size_t stride = state_stride(kind);
    if (n > SIZE_MAX / stride || n > SIZE_MAX / 64) return NG_ERANGE;
    const uint8_t *in = (const uint8_t *)states;
    for (size_t i = 0; i < n; i++) {
        int oc = 0;
        int16_t c[24];
        load_coords(kind, in + i * stride, c);
        int rc = insert_core(t, c, connections + 64 * i, &oc, NULL);
        if (rc) return rc;
        if (outcomes) outcomes[i] = (int8_t)oc;
        if (done) *done = i + 1;
    }
    return NG_OK;
}

/* ---- planning: open-addressing maps of batch items, keyed by cell or (cell, identity) */

typedef struct {
    int kind;
    const uint8_t *states, *conns;
    size_t stride;
    const uint16_t *keep;
} batch_t;

static void batch_q(const batch_t *b, size_t i, uint16_t q[24]) {
    int16_t c[24];
    load_coords(b->kind, b->states + i * b->stride, c);
    quantize(b->keep, c, q);
}

int ng_reflex_plan_insert(const ng_reflex_table *t, int kind, const void *states, size_t n,
                          const uint8_t *connections, uint64_t *new_records, int64_t *first_eviction) {
    if (!t || !kind_ok(kind) || !new_records || !first_eviction || (n && (!states || !connections))) return NG_EINVAL;
    const size_t stride = state_stride(kind);
    if (n > SIZE_MAX / stride || n > ((size_t)1 << 40)) return NG_ERANGE;
    *new_records = 0;
    *first_eviction = -1;
    if (n == 0) return NG_OK;
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    /* cells[j]: 1 + the first batch item of a cell, and how many new identities the batch
     * adds to it; ids[j]: 1 + a batch item that added a new (cell, identity). */
    uint64_t *cells = (uint64_t *)calloc(cap, sizeof *cells);
    uint32_t *added = (uint32_t *)calloc(cap, sizeof *added);
    uint64_t *ids = (uint64_t *)calloc(cap, sizeof *ids);
    if (!cells || !added || !ids) {
        free(cells);
        free(added);
        free(ids);
        return NG_ENOMEM;
    }
    batch_t b = {kind, (const uint8_t *)states, connections, stride, t->keep};
    int rc = NG_OK;
    uint64_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t q[24], q2[24];
        uint64_t recs[NG_REFLEX_MAX_CANDIDATES];
        const uint8_t *conn = connections + 64 * i;
        cellkey key;
        batch_q(&b, i, q);
        cellkey_of(q, &key);
        const uint64_t fp = fingerprint_k(&key);
        int k = probe_cell(t, &key, fp, recs, NULL, NG_REFLEX_MAX_CANDIDATES);
        if (k < 0) {
            rc = k;
            break;
        }
        int known = 0;
        for (int m = 0; m < k && !known; m++) known = memcmp(rec_ptr(t, recs[m]) + R_CONN, conn, IDENTITY_BYTES) == 0;
        if (known) continue;
        /* the (cell, identity) map */
        size_t j = (size_t)mulhi64(mix64(fp ^ mix64(ld64(conn) ^ ((uint64_t)conn[8] << 3))), cap);
        for (;;) {
            if (!ids[j]) break;
            size_t o = (size_t)(ids[j] - 1);
            batch_q(&b, o, q2);
            if (memcmp(q, q2, sizeof q) == 0 && memcmp(b.conns + 64 * o, conn, IDENTITY_BYTES) == 0) {
                known = 1;
                break;
            }
            if (++j == cap) j = 0;
        }
        if (known) continue;
        size_t cj = (size_t)mulhi64(fp, cap);
        for (;;) {
            if (!cells[cj]) break;
            batch_q(&b, (size_t)(cells[cj] - 1), q2);
            if (memcmp(q, q2, sizeof q) == 0) break;
            if (++cj == cap) cj = 0;
        }
        if ((unsigned)k + added[cj] >= NG_REFLEX_MAX_CANDIDATES || t->live + fresh + 1 > t->capacity) {
            *first_eviction = (int64_t)i;
            break;
        }
        fresh++;
        ids[j] = i + 1;
        if (!cells[cj]) cells[cj] = i + 1;
        added[cj]++;
    }
    *new_records = fresh;
    free(cells);
    free(added);
    free(ids);
    return rc;
}

/* Deletes the records of a cell: every one, or the one with connection's identity.
 * `match` decides whether a record of the probed run belongs to the target cell. */
typedef int (*cell_match_fn)(const ng_reflex_table *t, const uint8_t *rec, const void *arg);

static int delete_where(ng_reflex_table *t, uint64_t fp, cell_match_fn match, const void *arg,
                        const uint8_t *connection, uint32_t *deleted) {
    const uint16_t tag = (uint16_t)fp;
    uint32_t count = 0;
    for (unsigned round = 0; round <= NG_REFLEX_MAX_CANDIDATES; round++) { /* one deletion per round */
        uint64_t j = home_of(t, fp), found = UINT64_MAX;
        for (unsigned d = 0; d < NG_REFLEX_MAX_DIST; d++) {
            entry_t e = ent_load(ent_ptr(t, j));
            if (e.dist == 0 || (unsigned)e.dist - 1u < d) break;
            if ((unsigned)e.dist - 1u == d && e.tag == tag) {
                if (e.rec >= t->live) return NG_ECORRUPT;
                const uint8_t *rec = rec_ptr(t, e.rec);
                if (match(t, rec, arg) && (!connection || memcmp(rec + R_CONN, connection, IDENTITY_BYTES) == 0)) {
                    found = e.rec;
                    break;
                }
            }
            j = next_slot(t, j);
        }
        if (found == UINT64_MAX) break;
        int rc = remove_record(t, found);
        if (rc) return rc;
        count++;
        stat_add(t, NG_REFLEX_STAT_DELETES, 1);
        if (connection) break;
    }
    if (deleted) *deleted = count;
    return count ? NG_OK : NG_ENOTFOUND;
}

static int match_cell(const ng_reflex_table *t, const uint8_t *rec, const void *arg) {
    return rec_in_cell(t, rec, (const uint16_t *)arg);
}

static int match_key(const ng_reflex_table *t, const uint8_t *rec, const void *arg) {
    const uint64_t *key = (const uint64_t *)arg; /* grid hash, fingerprint */
    int16_t c[24];
    uint16_t q[24];
    record_state(rec, c);
    quantize(t->keep, c, q);
    return fingerprint_q(q) == key[1] && ng_grid_hash_coords(c, t->shifts) == key[0];
}

int ng_reflex_delete(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection, uint32_t *deleted) {
    if (deleted) *deleted = 0;
    if (!t || !state || !kind_ok(kind) || !t->writable) return NG_EINVAL;
    int16_t c[24];
    uint16_t q[24];
    load_coords(kind, (const uint8_t *)state, c);
    quantize(t->keep, c, q);
    return delete_where(t, fingerprint_q(q), match_cell, q, connection, deleted);
}

int ng_reflex_delete_key(ng_reflex_table *t, uint64_t grid_hash, uint64_t fingerprint, const uint8_t *connection,
                         uint32_t *deleted) {
    if (deleted) *deleted = 0;
    if (!t || !t->writable) return NG_EINVAL;
    const uint64_t key[2] = {grid_hash, fingerprint};
    return delete_where(t, fingerprint, match_key, key, connection, deleted);
}

/* ============================================================== iteration, check, stats */

int ng_reflex_export(const ng_reflex_table *t, uint64_t *cursor, ng_reflex_entry *out, size_t max, size_t *n) {
    if (!t || !cursor || !n || (max && !out)) return NG_EINVAL;
    *n = 0;
    uint64_t r = *cursor;
    if (r > t->live) return NG_ERANGE;
    size_t k = 0;
    for (; r < t->live && k < max; r++) entry_of(t, r, &out[k++]);
    *cursor = r;
    *n = k;
    return NG_OK;
}

int ng_reflex_check(const ng_reflex_table *t, uint64_t *segment, uint64_t *offset, const char **reason) {
    if (!t) return NG_EINVAL;
    uint64_t seg = 0, off = 0;
    const char *why = NULL;
#define BAD_REC(r, msg) do { seg = (r) >> t->rshift; off = ((r) & t->rmask) * REC; why = (msg); goto bad; } while (0)
#define BAD_ENT(j, msg) do { seg = t->nrseg + ((j) >> t->eshift); off = ((j) & t->emask) * ENT; why = (msg); goto bad; } while (0)
    uint8_t *seen = NULL;
    if (t->live > room_of(t)) {
        seg = t->nrseg + t->niseg;
        why = "live count exceeds the room of the table";
        goto bad;
    }
    for (uint64_t r = 0; r < t->nrec; r++) {
        const uint8_t *p = rec_ptr(t, r);
        if (r < t->live) {
            for (unsigned b = R_ZERO; b < R_CONN; b++)
                if (p[b]) BAD_REC(r, "reserved record bytes are not zero");
            int16_t c[24];
            record_state(p, c);
            for (unsigned i = 0; i < 24; i++)
                if (c[i] < t->bmin[i] || c[i] > t->bmax[i]) BAD_REC(r, "a source state lies outside the header's box");
        } else {
            for (unsigned b = 0; b < REC; b++)
                if (p[b]) BAD_REC(r, "a record beyond the live count is not zero");
        }
    }
    seen = (uint8_t *)calloc((size_t)(t->live / 8 + 1), 1);
    if (!seen) return NG_ENOMEM;
    uint64_t used = 0;
    entry_t prev = ent_load(ent_ptr(t, t->nslots - 1));
    for (uint64_t j = 0; j < t->nslots; j++) {
        const uint8_t *p = ent_ptr(t, j);
        entry_t e = ent_load(p);
        if (p[7]) BAD_ENT(j, "index entry byte 7 is not zero");
        if (e.dist == 0) {
            if (ld64(p)) BAD_ENT(j, "an empty index entry is not all zero");
            prev = e;
            continue;
        }
        if (e.rec >= t->live) BAD_ENT(j, "an index entry names a record beyond the live count");
        if (seen[e.rec / 8] & (1u << (e.rec % 8))) BAD_ENT(j, "two index entries name the same record");
        seen[e.rec / 8] |= (uint8_t)(1u << (e.rec % 8));
        used++;
        const uint8_t *rec = rec_ptr(t, e.rec);
        uint64_t fp = rec_fingerprint(t, rec), h = home_of(t, fp);
        uint64_t d = j >= h ? j - h : j + t->nslots - h;
        if (e.tag != (uint16_t)fp) BAD_ENT(j, "an index entry's tag differs from its record's fingerprint");
        if (d + 1 != e.dist) BAD_ENT(j, "an index entry's dist differs from its record's distance to home");
        if (e.dist > (prev.dist ? prev.dist + 1u : 1u)) BAD_ENT(j, "Robin Hood order broken (dist grows by more than 1)");
        /* the cap: records of this cell later in the same home run */
        int16_t c[24];
        uint16_t qc[24];
        record_state(rec, c);
        quantize(t->keep, c, qc);
        unsigned same = 1;
        uint64_t jj = j;
        for (unsigned m = 1; m < NG_REFLEX_MAX_DIST; m++) {
            jj = next_slot(t, jj);
            entry_t f = ent_load(ent_ptr(t, jj));
            if (f.dist != e.dist + m || f.rec >= t->live) break; /* left the home run */
            if (f.tag == e.tag && rec_in_cell(t, rec_ptr(t, f.rec), qc) && ++same > NG_REFLEX_MAX_CANDIDATES)
                BAD_ENT(j, "a cell holds more than 4 reflexes");
        }
        prev = e;
    }
    if (used != t->live) {
        seg = t->nrseg + t->niseg;
        why = "the index holds a different number of entries than the live count";
        goto bad;
    }
    free(seen);
    return NG_OK;
bad:
    free(seen);
    if (segment) *segment = seg;
    if (offset) *offset = off;
    if (reason) *reason = why;
    return NG_ECORRUPT;
#undef BAD_REC
#undef BAD_ENT
}

int ng_reflex_stats(const ng_reflex_table *t, uint64_t *out, size_t n) {
    if (!t || !out) return NG_EINVAL;
    for (size_t k = 0; k < n && k < NG_REFLEX_NSTATS; k++) {
#if defined(__GNUC__)
        out[k] = __atomic_load_n(&t->stats[k], __ATOMIC_RELAXED);
#else
        out[k] = t->stats[k];
#endif
    }
    return NG_OK;
}

int ng_reflex_reset_stats(ng_reflex_table *t) {
    if (!t) return NG_EINVAL;
    memset(t->stats, 0, sizeof t->stats);
    return NG_OK;
}

int ng_reflex_take_dirty(ng_reflex_table *t, uint32_t *out, size_t max, size_t *n, int *header_dirty) {
    if (!t || !n || (max && !out)) return NG_EINVAL;
    size_t k = 0;
    const uint32_t nseg = t->nrseg + t->niseg;
    for (uint32_t s = 0; s < nseg && k < max; s++) {
        if (t->dirty[s]) {
            out[k++] = s;
            t->dirty[s] = 0;
        }
    }
    *n = k;
    if (header_dirty) {
        *header_dirty = t->header_dirty;
        t->header_dirty = 0;
    }
    return NG_OK;
}
