/* contract_harness.c -- the public C contract of csrc/ under ASan and UBSan.
 *
 * Built and run by tests/unit/test_c_contract_sanitized.py with
 * -fsanitize=address,undefined -fno-sanitize-recover=all: the first out-of-bounds
 * read or write, misaligned load, signed overflow, use after free or leak aborts with a
 * report. Every buffer handed to the library is malloc'd at its exact length, so a read
 * one byte past it is caught. The harness also checks the statuses the headers promise;
 * a wrong status exits with a message (exit 1). Exit 0: the contract held.
 *
 * Usage: harness [iterations]   (default 40 corruption rounds)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngcore.h"
#include "reflex.h"
#include "similarity.h"
#include "graph.h"

static unsigned long long rng_state = 0x9E3779B97F4A7C15ULL;
static unsigned long long rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static float rndf(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 40) / (float)(1 << 24); }

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: expected %s: ", __FILE__, __LINE__, #cond);                    \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static const uint8_t SHIFTS[8] = {4, 4, 5, 6, 6, 6, 8, 8};
static const uint8_t BAD_SHIFTS[8] = {4, 4, 5, 6, 6, 6, 8, 16};

/* An exact-length copy (ASan red zones sit right after it). */
static uint8_t *dup_exact(const void *p, size_t n) {
    uint8_t *q = (uint8_t *)malloc(n ? n : 1);
    if (n) memcpy(q, p, n);
    return q;
}

static void check_core(void) {
    EXPECT(ng_abi_version() == NG_ABI_VERSION, "abi");
    for (int code = 1; code >= -8; code--) EXPECT(ng_strerror(code) != NULL, "strerror %d", code);

    /* grid hash of states at every alignment, and the argument checks */
    float st[3][8];
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < 8; d++) st[i][d] = rndf(-2.f, 2.f);
    uint64_t want[3], got[3];
    EXPECT(ng_grid_hash_states(st, 3, SHIFTS, want) == NG_OK, "hash states");
    for (unsigned off = 1; off < 8; off++) {
        uint8_t *buf = (uint8_t *)malloc(sizeof st + off);
        memcpy(buf + off, st, sizeof st);
        EXPECT(ng_grid_hash_states(buf + off, 3, SHIFTS, got) == NG_OK, "unaligned states");
        EXPECT(memcmp(got, want, sizeof want) == 0, "unaligned states differ at offset %u", off);
        free(buf);
    }
    EXPECT(ng_grid_hash_states(st, 3, BAD_SHIFTS, got) == NG_EINVAL, "shift 16");
    EXPECT(ng_grid_hash_states(NULL, 0, SHIFTS, NULL) == NG_OK, "n = 0 with NULL");
    EXPECT(ng_grid_hash_states(NULL, 3, SHIFTS, got) == NG_EINVAL, "NULL states");
    EXPECT(ng_grid_hash_states(st, SIZE_MAX, SHIFTS, got) == NG_ERANGE, "n * 32 overflows");

    /* token records, with strides and the stride rules */
    uint8_t *recs = (uint8_t *)calloc(5, 100);
    for (int i = 0; i < 500; i++) recs[i] = (uint8_t)rnd();
    uint64_t h5[5];
    EXPECT(ng_grid_hash_tokens(recs, 5, 100, SHIFTS, h5) == NG_OK, "tokens stride 100");
    EXPECT(ng_grid_hash_tokens(recs, 5, 63, SHIFTS, h5) == NG_EINVAL, "stride 63");
    EXPECT(ng_grid_hash_tokens(recs, SIZE_MAX / 64, 128, SHIFTS, h5) == NG_ERANGE, "n * stride overflows");
    free(recs);

    /* gather64 and gather_column over exact-length chunks */
    const unsigned shift = 3, slots = 1u << shift;
    const size_t len = (size_t)slots * 64 + slots / 8;
    uint8_t *chunk = (uint8_t *)malloc(len);
    for (size_t i = 0; i < len; i++) chunk[i] = (uint8_t)rnd();
    const uint8_t *ptrs[2] = {chunk, chunk};
    uint64_t lens[2] = {len, len};
    uint32_t keys[2] = {0, 5};
    uint32_t ids[6] = {0, 7, 8, 41, 47, 0xFFFFFFFFu};
    uint8_t *out = (uint8_t *)malloc(6 * 64), found[6];
    EXPECT(ng_gather64(ids, 6, keys, ptrs, lens, 2, shift, out, found) == NG_OK, "gather64");
    EXPECT(!found[2] && !found[5], "absent ids found");
    uint32_t unsorted[2] = {5, 0};
    EXPECT(ng_gather64(ids, 6, unsorted, ptrs, lens, 2, shift, out, found) == NG_EINVAL, "unsorted keys");
    lens[1] = len - 1;
    EXPECT(ng_gather64(ids, 6, keys, ptrs, lens, 2, shift, out, found) == NG_ECORRUPT, "short chunk");
    lens[1] = len + NG_CHECKSUM_BYTES - 1;
    EXPECT(ng_gather64(ids, 6, keys, ptrs, lens, 2, shift, out, found) == NG_ECORRUPT, "chunk of neither length");
    lens[1] = len;
    EXPECT(ng_gather64(ids, 6, keys, ptrs, lens, 2, 2, out, found) == NG_EINVAL, "slot shift 2");
    /* a sealed chunk (record region + checksum trailer, format.md 3.0), at its exact length */
    uint8_t *sealed = (uint8_t *)malloc(len + NG_CHECKSUM_BYTES);
    memcpy(sealed, chunk, len);
    memset(sealed + len, 0xA5, NG_CHECKSUM_BYTES);
    const uint8_t *sptrs[2] = {chunk, sealed};
    uint64_t slens[2] = {len, len + NG_CHECKSUM_BYTES};
    uint8_t *sout = (uint8_t *)malloc(6 * 64), sfound[6];
    EXPECT(ng_gather64(ids, 6, keys, sptrs, slens, 2, shift, sout, sfound) == NG_OK, "gather64 of a sealed chunk");
    EXPECT(ng_gather64(ids, 6, keys, ptrs, lens, 2, shift, out, found) == NG_OK &&
           memcmp(out, sout, 6 * 64) == 0 && memcmp(found, sfound, 6) == 0, "sealed and unsealed gather alike");
    free(sout);
    free(sealed);
    free(out);
    size_t n_out = 0;
    uint8_t *col = (uint8_t *)malloc(16 * 8);
    static const unsigned bad[][2] = {{0xFFFFFFF0u, 0x20u}, {0xFFFFFFFFu, 1u}, {1u, 0xFFFFFFFFu}, {64u, 1u},
                                      {60u, 5u}, {0u, 65u}, {0u, 0u}};
    for (unsigned k = 0; k < sizeof bad / sizeof bad[0]; k++)
        EXPECT(ng_gather_column(ptrs, lens, 2, shift, bad[k][0], bad[k][1], col, 16, &n_out) == NG_EINVAL,
               "field %u+%u", bad[k][0], bad[k][1]);
    EXPECT(ng_gather_column(ptrs, lens, 2, shift, 56, 8, col, 16, &n_out) == NG_OK, "last 8 bytes");
    EXPECT(ng_gather_column(ptrs, lens, 2, shift, 56, 8, col, 0, &n_out) == NG_ERANGE || n_out == 0,
           "no room");
    free(col);
    free(chunk);
}

/* gather_column against a plain loop over the presence bits: chunks of 8 to 256 slots
 * (bitmap words shorter than, equal to and longer than 64 bits), random, full and empty
 * bitmaps, every field size path (1, 2, 4, 8 and an odd 3), sealed and unsealed values. */
static void check_gather_column(void) {
    for (unsigned shift = 3; shift <= 8; shift++) {
        const size_t slots = (size_t)1 << shift, len = slots * 64 + slots / 8;
        enum { NCHUNKS = 3 };
        uint8_t *chunks[NCHUNKS];
        const uint8_t *ptrs[NCHUNKS];
        uint64_t lens[NCHUNKS];
        for (unsigned c = 0; c < NCHUNKS; c++) {
            chunks[c] = (uint8_t *)malloc(len + NG_CHECKSUM_BYTES);
            for (size_t i = 0; i < len + NG_CHECKSUM_BYTES; i++) chunks[c][i] = (uint8_t)rnd();
            if (c == 1) memset(chunks[c] + slots * 64, 0xFF, slots / 8); /* full */
            if (c == 2 && shift == 4) memset(chunks[c] + slots * 64, 0, slots / 8); /* empty */
            ptrs[c] = chunks[c];
            lens[c] = c == 1 ? len + NG_CHECKSUM_BYTES : len;
        }
        static const unsigned fields[][2] = {{52, 4}, {0, 1}, {6, 2}, {56, 8}, {13, 3}};
        for (unsigned f = 0; f < sizeof fields / sizeof fields[0]; f++) {
            const unsigned off = fields[f][0], size = fields[f][1];
            uint8_t *want = (uint8_t *)malloc(NCHUNKS * slots * size), *got = (uint8_t *)malloc(NCHUNKS * slots * size);
            size_t n_want = 0, n_got = 0;
            for (unsigned c = 0; c < NCHUNKS; c++)
                for (size_t s = 0; s < slots; s++)
                    if ((chunks[c][slots * 64 + s / 8] >> (s % 8)) & 1u)
                        memcpy(want + size * n_want++, chunks[c] + s * 64 + off, size);
            EXPECT(ng_gather_column(ptrs, lens, NCHUNKS, shift, off, size, got, NCHUNKS * slots, &n_got) == NG_OK,
                   "gather_column shift %u field %u+%u", shift, off, size);
            EXPECT(n_got == n_want && memcmp(got, want, n_want * size) == 0,
                   "gather_column shift %u field %u+%u: %zu of %zu", shift, off, size, n_got, n_want);
            size_t n_count = 0;
            EXPECT(ng_count_present(ptrs, lens, NCHUNKS, shift, &n_count) == NG_OK && n_count == n_want,
                   "count_present shift %u: %zu of %zu", shift, n_count, n_want);
            if (n_want)
                EXPECT(ng_gather_column(ptrs, lens, NCHUNKS, shift, off, size, got, n_want - 1, &n_got) == NG_ERANGE,
                       "gather_column one short, shift %u", shift);
            free(want);
            free(got);
        }
        uint64_t short_lens[NCHUNKS] = {lens[0], lens[1] - 1, lens[2]};
        size_t n_count = 12345;
        EXPECT(ng_count_present(ptrs, short_lens, NCHUNKS, shift, &n_count) == NG_ECORRUPT && n_count == 12345,
               "count_present refuses a short chunk");
        EXPECT(ng_count_present(ptrs, lens, NCHUNKS, 2, &n_count) == NG_EINVAL, "count_present bad shift");
        EXPECT(ng_count_present(NULL, NULL, 0, shift, &n_count) == NG_OK && n_count == 0, "count_present none");
        for (unsigned c = 0; c < NCHUNKS; c++) free(chunks[c]);
    }
}

/* chunk_patch against a plain model: the old region copied (or zeroed), then each record
 * into its slot, a later one for a slot winning, the bits newly set counted; ids whose high
 * bits name another chunk still land in this one (only slot bits count), and the bytes
 * past the region stay. Short buffers and bad shifts are refused before any write. */
static void check_chunk_patch(void) {
    for (unsigned shift = 3; shift <= 10; shift++) {
        const size_t slots = (size_t)1 << shift, len = slots * 64 + slots / 8;
        uint8_t *src = (uint8_t *)malloc(len), *got = (uint8_t *)malloc(len + 8), *want = (uint8_t *)malloc(len + 8);
        enum { N = 40 };
        uint8_t recs[N * 64];
        uint32_t ids[N];
        for (size_t i = 0; i < len; i++) src[i] = (uint8_t)rnd();
        for (size_t i = 0; i < sizeof recs; i++) recs[i] = (uint8_t)rnd();
        for (unsigned i = 0; i < N; i++) ids[i] = (uint32_t)rnd();  /* duplicates of a slot when slots < N */
        for (int with_src = 0; with_src < 2; with_src++) {
            memset(got, 0xA5, len + 8);
            memset(want, 0xA5, len + 8);
            if (with_src) memcpy(want, src, len); else memset(want, 0, len);
            int added = 0;
            for (unsigned i = 0; i < N; i++) {
                size_t slot = ids[i] & (slots - 1);
                uint8_t *byte = want + slots * 64 + slot / 8;
                if (!((*byte >> (slot % 8)) & 1u)) added++;
                *byte |= (uint8_t)(1u << (slot % 8));
                memcpy(want + slot * 64, recs + i * 64, 64);
            }
            int rc = ng_chunk_patch(got, len, with_src ? src : NULL, with_src ? len : 0, shift, recs, ids, N);
            EXPECT(rc == added, "chunk_patch shift %u src %d: %d bits, want %d", shift, with_src, rc, added);
            EXPECT(memcmp(got, want, len + 8) == 0, "chunk_patch shift %u src %d: bytes differ", shift, with_src);
        }
        memset(got, 0x5A, len);
        EXPECT(ng_chunk_patch(got, len - 1, NULL, 0, shift, recs, ids, N) == NG_EINVAL, "short region");
        EXPECT(ng_chunk_patch(got, len, src, len - 1, shift, recs, ids, N) == NG_EINVAL, "short source");
        EXPECT(ng_chunk_patch(got, len, NULL, 0, shift, NULL, ids, N) == NG_EINVAL, "no records");
        EXPECT(ng_chunk_patch(got, len, NULL, 0, 2, recs, ids, N) == NG_EINVAL, "shift too small");
        EXPECT(got[0] == 0x5A && got[len - 1] == 0x5A, "a refused patch wrote nothing");
        EXPECT(ng_chunk_patch(got, len, NULL, 0, shift, NULL, NULL, 0) == 0, "nothing to patch");
        free(src);
        free(got);
        free(want);
    }
    uint8_t big[64];
    EXPECT(ng_chunk_patch(big, sizeof big, NULL, 0, 17, NULL, NULL, 0) == NG_EINVAL, "shift too large");
}

/* ---- the reflex table */

typedef struct {
    ng_reflex_geometry g;
    uint8_t **segs;
    size_t *lens;
    uint32_t count;
} mem_t;

static mem_t mem_new(const ng_reflex_geometry *g) {
    mem_t m;
    m.g = *g;
    m.count = g->record_segments + g->index_segments;
    m.segs = (uint8_t **)calloc(m.count, sizeof *m.segs);
    m.lens = (size_t *)calloc(m.count, sizeof *m.lens);
    for (uint32_t s = 0; s < m.count; s++) {
        m.lens[s] = s < g->record_segments ? (size_t)g->records_per_segment * NG_REFLEX_RECORD_SIZE
                                           : (size_t)g->entries_per_segment * NG_REFLEX_ENTRY_SIZE;
        m.segs[s] = (uint8_t *)malloc(m.lens[s]);
    }
    return m;
}

static mem_t mem_copy(const mem_t *src) {
    mem_t m = mem_new(&src->g);
    for (uint32_t s = 0; s < m.count; s++) memcpy(m.segs[s], src->segs[s], m.lens[s]);
    return m;
}

static void mem_free(mem_t *m) {
    for (uint32_t s = 0; s < m->count; s++) free(m->segs[s]);
    free(m->segs);
    free(m->lens);
}

static void conn_of(uint8_t c[64], unsigned ident, unsigned conf, unsigned mut) {
    memset(c, 0, 64);
    c[0] = (uint8_t)ident;
    c[1] = (uint8_t)(ident >> 8);
    c[4] = (uint8_t)(ident + 1);
    c[8] = 0x50;
    c[32] = (uint8_t)mut;
    c[33] = (uint8_t)conf;
    for (int d = 0; d < 16; d++) c[48 + d] = (uint8_t)rnd();
}

/* Every read path; statuses must be >= 0 or NG_ECORRUPT (or EINVAL/ENOTFOUND for writes). */
static void exercise(ng_reflex_table *t, const float (*states)[8], size_t n, int writable) {
    ng_reflex_params p = {150, 200, 0.85, 0.0, 0};
    const size_t m = n < 64 ? n : 64;
    uint8_t *status = (uint8_t *)malloc(m), *conf = (uint8_t *)malloc(m), *conns = (uint8_t *)malloc(64 * m);
    int64_t *rec = (int64_t *)malloc(sizeof *rec * m);
    float *sim = (float *)malloc(sizeof *sim * m), *dist = (float *)malloc(sizeof *dist * m);
    float *act = (float *)malloc(sizeof *act * 8 * m);
    double radii[4] = {0.0, 0.5, 2.0, 60.0};
    for (int r = 0; r < 4; r++) {
        p.fallback_radius = radii[r];
        p.fallback_budget = r == 3 ? 1 : 0;
        int rc = ng_reflex_lookup_batch(t, NG_REFLEX_STATE_F32, states, m, &p, status, rec, conf, sim, dist, act, conns);
        EXPECT(rc == NG_OK || rc == NG_ECORRUPT, "lookup_batch %d", rc);
        ng_reflex_ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        ctx.table = t;
        for (size_t i = 0; i < m; i += 7) {
            rc = ng_reflex_lookup_f32(&ctx, &p, states[i][0], states[i][1], states[i][2], states[i][3],
                                      states[i][4], states[i][5], states[i][6], states[i][7]);
            EXPECT(rc >= 0 || rc == NG_ECORRUPT, "lookup_f32 %d", rc);
        }
    }
    uint64_t answered, cursor = 0, seg, off;
    size_t got;
    ng_reflex_entry *e = (ng_reflex_entry *)malloc(sizeof *e * 16);
    int rc = ng_reflex_bench_loop(t, NG_REFLEX_STATE_F32, states, m, &p, &answered);
    EXPECT(rc == NG_OK || rc == NG_ECORRUPT, "bench_loop %d", rc);
    while ((rc = ng_reflex_export(t, &cursor, e, 16, &got)) == NG_OK && got) {}
    EXPECT(rc == NG_OK, "export %d", rc);
    const char *why = NULL;
    rc = ng_reflex_check(t, &seg, &off, &why);
    EXPECT(rc == NG_OK || (rc == NG_ECORRUPT && why), "check %d", rc);
    uint64_t stats[NG_REFLEX_NSTATS];
    EXPECT(ng_reflex_stats(t, stats, NG_REFLEX_NSTATS) == NG_OK, "stats");
    if (writable) {
        uint8_t c[64];
        uint64_t fresh;
        int64_t first;
        for (size_t i = 0; i < m; i += 3) {
            conn_of(c, (unsigned)i, 240, 1);
            int oc;
            rc = ng_reflex_insert(t, NG_REFLEX_STATE_F32, states[i], c, &oc, e);
            EXPECT(rc == NG_OK || rc == NG_ECORRUPT || rc == NG_EFULL, "insert %d", rc);
            uint32_t del;
            rc = ng_reflex_delete(t, NG_REFLEX_STATE_F32, states[i + 1 < m ? i + 1 : i], NULL, &del);
            EXPECT(rc == NG_OK || rc == NG_ECORRUPT || rc == NG_ENOTFOUND, "delete %d", rc);
            rc = ng_reflex_delete_key(t, rnd(), rnd(), c, &del);
            EXPECT(rc == NG_ENOTFOUND || rc == NG_ECORRUPT, "delete_key %d", rc);
            rc = ng_reflex_plan_insert(t, NG_REFLEX_STATE_F32, states[i], 1, c, &fresh, &first);
            EXPECT(rc == NG_OK || rc == NG_ECORRUPT, "plan %d", rc);
        }
        uint32_t dirty[64];
        int hd;
        EXPECT(ng_reflex_take_dirty(t, dirty, 64, &got, &hd) == NG_OK, "take_dirty");
    }
    free(e);
    free(status);
    free(conf);
    free(conns);
    free(rec);
    free(sim);
    free(dist);
    free(act);
}

static void check_reflex(unsigned rounds) {
    enum { N = 700 };
    float(*states)[8] = (float(*)[8])malloc(sizeof(float[8]) * N);
    for (int i = 0; i < N; i++)
        for (int d = 0; d < 8; d++) states[i][d] = rndf(-0.05f, 0.05f);
    ng_reflex_geometry g;
    EXPECT(ng_reflex_plan_geometry(0, 0, 0, &g) == NG_ERANGE, "room 0");
    EXPECT(ng_reflex_plan_geometry(10, 24, 0, &g) == NG_EINVAL, "rps 24");
    EXPECT(ng_reflex_plan_geometry(1000, 16, 16, &g) == NG_OK, "geometry");
    mem_t m = mem_new(&g);
    ng_reflex_table *t = NULL;
    m.lens[0]--;
    EXPECT(ng_reflex_create(2000, SHIFTS, &g, m.segs, m.lens, m.count, &t) == NG_ERANGE, "short segment");
    m.lens[0]++;
    EXPECT(ng_reflex_create(2000, SHIFTS, &g, m.segs, m.lens, m.count, &t) == NG_OK && t, "create");

    /* inserts of every kind, from unaligned buffers */
    uint8_t c[64];
    uint8_t *tok = (uint8_t *)calloc(1, 65), *co = (uint8_t *)calloc(1, 49), *f = (uint8_t *)malloc(33);
    size_t live = 0;
    for (int i = 0; i < N; i++) {
        conn_of(c, (unsigned)i, 150 + (unsigned)(rnd() % 106), (unsigned)(rnd() % 3));
        int oc = 0, rc;
        if (i % 3 == 0) {
            memcpy(f + 1, states[i], 32);
            rc = ng_reflex_insert(t, NG_REFLEX_STATE_F32, f + 1, c, &oc, NULL);
        } else if (i % 3 == 1) {
            for (int k = 0; k < 48; k++) tok[1 + k] = (uint8_t)rnd();
            rc = ng_reflex_insert(t, NG_REFLEX_STATE_TOKEN, tok + 1, c, &oc, NULL);
        } else {
            for (int k = 0; k < 48; k++) co[1 + k] = (uint8_t)(rnd() & 0x3F);
            rc = ng_reflex_insert(t, NG_REFLEX_STATE_COORDS, co + 1, c, &oc, NULL);
        }
        if (rc == NG_EFULL) break; /* the room of the geometry: 1000 */
        EXPECT(rc == NG_OK, "insert %d", rc);
        live += oc == NG_REFLEX_INSERTED;
    }
    free(tok);
    free(co);
    free(f);
    EXPECT(ng_reflex_check(t, NULL, NULL, NULL) == NG_OK, "check after inserts");
    ng_reflex_params nan_params = {150, 200, NAN, 0.0, 0};
    ng_reflex_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.table = t;
    EXPECT(ng_reflex_lookup_f32(&ctx, &nan_params, 0, 0, 0, 0, 0, 0, 0, 0) == NG_EINVAL, "NaN threshold");
    EXPECT(isnan(ng_reflex_similarity(NULL, states)) && isnan(ng_reflex_distance(states, states, BAD_SHIFTS)),
           "NaN measures");
    exercise(t, (const float(*)[8])states, N, 1);

    /* counts whose byte sizes overflow are refused before any memory is touched */
    {
        uint8_t st1;
        int64_t r1;
        uint8_t cf1;
        float sm1, ds1, ac1[8];
        uint64_t gh, fp, fresh, answered;
        int64_t first;
        size_t done;
        ng_reflex_params p = {150, 200, 0.85, 0.0, 0};
        EXPECT(ng_reflex_lookup_batch(t, NG_REFLEX_STATE_TOKEN, states, SIZE_MAX / 32, &p, &st1, &r1, &cf1, &sm1,
                                      &ds1, ac1, NULL) == NG_ERANGE, "lookup_batch n * 64 overflows");
        EXPECT(ng_reflex_keys(NG_REFLEX_STATE_COORDS, states, SIZE_MAX / 16, SHIFTS, &gh, &fp) == NG_ERANGE,
               "keys n * 48 overflows");
        EXPECT(ng_reflex_insert_batch(t, NG_REFLEX_STATE_F32, states, SIZE_MAX / 16, c, NULL, &done) == NG_ERANGE,
               "insert_batch n * 32 overflows");
        EXPECT(ng_reflex_bench_loop(t, NG_REFLEX_STATE_TOKEN, states, SIZE_MAX / 32, &p, &answered) == NG_ERANGE,
               "bench_loop n * 64 overflows");
        EXPECT(ng_reflex_plan_insert(t, NG_REFLEX_STATE_TOKEN, states, SIZE_MAX / 32, c, &fresh, &first) ==
                   NG_ERANGE, "plan_insert n * 64 overflows");
    }

    /* rebuild into a larger table */
    ng_reflex_geometry g2;
    EXPECT(ng_reflex_plan_geometry(3000, 0, 0, &g2) == NG_OK, "geometry 2");
    mem_t m2 = mem_new(&g2);
    ng_reflex_table *t2 = NULL;
    EXPECT(ng_reflex_create(5000, SHIFTS, &g2, m2.segs, m2.lens, m2.count, &t2) == NG_OK, "create 2");
    EXPECT(ng_reflex_rebuild(t, t2) == NG_OK, "rebuild");
    EXPECT(ng_reflex_rebuild(t, t2) == NG_EINVAL, "rebuild into a non-empty table");
    EXPECT(ng_reflex_check(t2, NULL, NULL, NULL) == NG_OK, "check after rebuild");
    exercise(t2, (const float(*)[8])states, N, 1);

    /* attach over exact copies, then over corrupted ones */
    uint8_t *hdr = (uint8_t *)malloc(NG_REFLEX_HEADER_SIZE);
    EXPECT(ng_reflex_write_header(t2, hdr, NG_REFLEX_HEADER_SIZE) == NG_OK, "header");
    const char *why = NULL;
    ng_reflex_table *ro = NULL;
    EXPECT(ng_reflex_attach(hdr, NG_REFLEX_HEADER_SIZE, m2.segs, m2.lens, m2.count, 0, &ro, &why) == NG_OK, "%s", why);
    exercise(ro, (const float(*)[8])states, N, 0);
    ng_reflex_free(ro);
    for (unsigned round = 0; round < rounds; round++) {
        /* the header: random flips (the CRC catches them) */
        uint8_t *h = dup_exact(hdr, NG_REFLEX_HEADER_SIZE);
        h[rnd() % NG_REFLEX_HEADER_SIZE] ^= (uint8_t)(1u << (rnd() % 8));
        ro = NULL;
        int rc = ng_reflex_attach(h, NG_REFLEX_HEADER_SIZE, m2.segs, m2.lens, m2.count, 0, &ro, &why);
        EXPECT(rc == NG_ECORRUPT || rc == NG_ERANGE, "flipped header attached (%d)", rc);
        EXPECT(ng_reflex_attach(h, 100, m2.segs, m2.lens, m2.count, 0, &ro, &why) != NG_OK, "short header");
        free(h);
        /* the segments: byte flips, or one segment of garbage */
        mem_t bad = mem_copy(&m2);
        unsigned flips = 1 + (unsigned)(rnd() % 64);
        for (unsigned k = 0; k < flips; k++) {
            uint32_t s = (uint32_t)(rnd() % bad.count);
            bad.segs[s][rnd() % bad.lens[s]] ^= (uint8_t)(1u << (rnd() % 8));
        }
        if (round % 4 == 0) {
            uint32_t s = (uint32_t)(rnd() % bad.count);
            for (size_t k = 0; k < bad.lens[s]; k++) bad.segs[s][k] = (uint8_t)rnd();
        }
        for (int writable = 0; writable < 2; writable++) {
            ro = NULL;
            EXPECT(ng_reflex_attach(hdr, NG_REFLEX_HEADER_SIZE, bad.segs, bad.lens, bad.count, writable, &ro,
                                    &why) == NG_OK, "attach corrupt segments: %s", why);
            exercise(ro, (const float(*)[8])states, N, writable);
            ng_reflex_free(ro);
        }
        mem_free(&bad);
    }
    /* every occupied index entry names a record at or beyond the live count: each probe
     * that meets one must report NG_ECORRUPT without touching the record */
    static const uint32_t beyond[3] = {0, 1, 0xFFFFFFFFu};
    ng_reflex_info info;
    EXPECT(ng_reflex_info_get(t2, &info) == NG_OK, "info");
    for (int b = 0; b < 3; b++) {
        mem_t bad = mem_copy(&m2);
        for (uint32_t s = g2.record_segments; s < bad.count; s++)
            for (size_t k = 0; k + 8 <= bad.lens[s]; k += 8)
                if (bad.segs[s][k + 6]) {
                    uint32_t r = beyond[b] == 0xFFFFFFFFu ? beyond[b] : (uint32_t)info.live_count + beyond[b];
                    memcpy(bad.segs[s] + k, &r, 4); /* little-endian hosts: the record field */
                }
        for (int writable = 0; writable < 2; writable++) {
            ro = NULL;
            EXPECT(ng_reflex_attach(hdr, NG_REFLEX_HEADER_SIZE, bad.segs, bad.lens, bad.count, writable, &ro, &why)
                       == NG_OK, "%s", why);
            /* states[0] (stored, kind F32) meets its own entry: the lookup must report it */
            ng_reflex_params p = {150, 200, 0.85, 0.0, 0};
            uint8_t st1, cf1;
            int64_t r1;
            float sm1, ds1, ac1[8];
            EXPECT(ng_reflex_lookup_batch(ro, NG_REFLEX_STATE_F32, states, 1, &p, &st1, &r1, &cf1, &sm1, &ds1, ac1,
                                          NULL) == NG_ECORRUPT, "a record beyond live went unreported");
            exercise(ro, (const float(*)[8])states, N, writable);
            uint64_t seg, off;
            EXPECT(ng_reflex_check(ro, &seg, &off, &why) == NG_ECORRUPT, "check accepted records beyond live");
            ng_reflex_free(ro);
        }
        mem_free(&bad);
    }
    free(hdr);
    ng_reflex_free(t2);
    mem_free(&m2);
    ng_reflex_free(t);
    mem_free(&m);
    free(states);
}

/* similarity.h: exact-length chunks and pages, every status the header promises, and
 * knn checked against a brute force of its own. */
static void check_similarity(void) {
    const unsigned shift = 3;
    const size_t slots = 8, vlen = slots * 64 + 1;
    uint8_t *chunk = (uint8_t *)calloc(vlen, 1);
    int16_t coords[8][24];
    for (size_t s = 0; s < slots; s++) {
        if (s == 5) continue; /* one absent slot */
        chunk[slots * 64] |= (uint8_t)(1u << s);
        uint32_t id = (uint32_t)s;
        memcpy(chunk + s * 64 + 48, &id, 4);
        for (unsigned d = 0; d < 24; d++) {
            coords[s][d] = (int16_t)((int)(rnd() % 65536) - 32768);
            if (s == 6) coords[s][d] = coords[2][d]; /* a tie */
            memcpy(chunk + s * 64 + 2 * d, &coords[s][d], 2);
        }
    }
    const uint8_t *ptrs[1] = {chunk};
    uint64_t lens[1] = {vlen};
    uint8_t dims[24];
    for (unsigned d = 0; d < 24; d++) dims[d] = (uint8_t)d;
    int16_t *q = (int16_t *)malloc(2 * 24 * sizeof(int16_t));
    memcpy(q, coords[2], sizeof coords[2]);
    memset(q + 24, 0, 24 * sizeof(int16_t));
    double *od = (double *)malloc(2 * 10 * sizeof(double));
    uint32_t *oi = (uint32_t *)malloc(2 * 10 * sizeof(uint32_t));
    size_t m = 99;
    for (int metric = 0; metric < 2; metric++) {
        EXPECT(ng_knn_chunks(ptrs, lens, 1, shift, q, 2, dims, 24, metric, 10, od, oi, &m) == NG_OK, "knn");
        EXPECT(m == 7, "knn count %zu", m);
        EXPECT(oi[0] == 2 && oi[1] == 6 && od[0] == od[1] && od[0] < 1e-12, "knn tie %u %u", oi[0], oi[1]);
        for (size_t j = 1; j < m; j++) EXPECT(od[j - 1] <= od[j], "knn order");
    }
    EXPECT(od[10] == 1.0 && od[16] == 1.0, "cosine of the zero query");
    lens[0] = vlen - 1;
    EXPECT(ng_knn_chunks(ptrs, lens, 1, shift, q, 2, dims, 24, 0, 10, od, oi, &m) == NG_ECORRUPT, "short chunk");
    /* a sealed value (region + trailer) is read alike; a length of neither kind is corrupt */
    uint8_t *sealed = (uint8_t *)malloc(vlen + NG_CHECKSUM_BYTES);
    memcpy(sealed, chunk, vlen);
    memset(sealed + vlen, 0x5A, NG_CHECKSUM_BYTES);
    const uint8_t *sptrs[1] = {sealed};
    uint64_t slens[1] = {vlen + NG_CHECKSUM_BYTES};
    double sd[10];
    uint32_t si[10];
    size_t sm = 0;
    EXPECT(ng_knn_chunks(sptrs, slens, 1, shift, q, 1, dims, 24, 0, 10, sd, si, &sm) == NG_OK && sm == 7 &&
           si[0] == 2 && si[1] == 6, "knn over a sealed chunk");
    slens[0] = vlen + NG_CHECKSUM_BYTES - 1;
    EXPECT(ng_knn_chunks(sptrs, slens, 1, shift, q, 1, dims, 24, 0, 10, sd, si, &sm) == NG_ECORRUPT,
           "chunk of neither length");
    free(sealed);
    lens[0] = vlen;
    uint8_t bad_dims[2] = {3, 3};
    EXPECT(ng_knn_chunks(ptrs, lens, 1, shift, q, 2, bad_dims, 2, 0, 10, od, oi, &m) == NG_EINVAL, "dims");
    EXPECT(ng_knn_chunks(ptrs, lens, 1, shift, q, 2, dims, 24, 2, 10, od, oi, &m) == NG_EINVAL, "metric");
    EXPECT(ng_knn_chunks(ptrs, lens, 1, shift, q, 2, dims, 24, 0, 0, od, oi, &m) == NG_EINVAL, "k 0");
    EXPECT(ng_knn_chunks(ptrs, lens, 1, shift, q, (size_t)1 << 62, dims, 24, 0, 1 << 20, od, oi, &m) == NG_ERANGE,
           "nq * k overflows");

    int16_t lo[3] = {-32768, -32768, -32768}, hi[3] = {32767, 32767, 32767}, center[3] = {0, 0, 0};
    uint32_t *out = (uint32_t *)malloc(8 * sizeof(uint32_t));
    size_t n = 0;
    EXPECT(ng_filter_chunks(ptrs, lens, 1, shift, 4, lo, hi, NULL, 0.0, out, 7, &n) == NG_OK && n == 7, "box all");
    EXPECT(ng_filter_chunks(ptrs, lens, 1, shift, 4, lo, hi, NULL, 0.0, out, 6, &n) == NG_ERANGE, "box cap");
    EXPECT(ng_filter_chunks(ptrs, lens, 1, shift, 8, lo, hi, NULL, 0.0, out, 7, &n) == NG_EINVAL, "layer");
    EXPECT(ng_filter_chunks(ptrs, lens, 1, shift, 0, lo, hi, center, -1.0, out, 7, &n) == NG_EINVAL, "radius");

    uint8_t *entries = (uint8_t *)malloc(7 * 10);
    uint64_t *keys = (uint64_t *)malloc(7 * sizeof(uint64_t));
    uint32_t ids[7] = {0, 1, 2, 3, 4, 6, 7};
    int16_t *c7 = (int16_t *)malloc(7 * 24 * sizeof(int16_t));
    for (size_t i = 0; i < 7; i++) memcpy(c7 + 24 * i, coords[ids[i]], sizeof coords[0]);
    EXPECT(ng_spatial_entries(ids, c7, 7, 7, entries, keys) == NG_OK, "entries");
    for (size_t i = 1; i < 7; i++) EXPECT(keys[i - 1] < keys[i], "entries order");
    const uint8_t *pages[1] = {entries};
    uint64_t plen[1] = {70};
    EXPECT(ng_filter_entries(pages, plen, 1, lo, hi, center, 1e300, out, 7, &n) == NG_OK && n == 7, "entries");
    plen[0] = 69;
    EXPECT(ng_filter_entries(pages, plen, 1, lo, hi, NULL, 0.0, out, 7, &n) == NG_ECORRUPT, "partial entry");
    ids[3] = 1;
    EXPECT(ng_spatial_entries(ids, c7, 7, 0, entries, keys) == NG_EINVAL, "ids must ascend");

    uint16_t zlo[3] = {1, 2, 3}, zhi[3] = {5, 2, 900}, bad[3] = {6, 2, 900};
    uint32_t z = 0;
    EXPECT(ng_zorder_next_in_box(0, zlo, zhi, &z) == NG_OK && z > 0, "zorder");
    EXPECT(ng_zorder_next_in_box((1u << 30) - 1, zlo, zhi, &z) == NG_ENOTFOUND, "zorder past the box");
    EXPECT(ng_zorder_next_in_box(1u << 30, zlo, zhi, &z) == NG_EINVAL, "zorder code");
    EXPECT(ng_zorder_next_in_box(0, bad, zhi, &z) == NG_EINVAL, "zorder lo > hi");
    free(chunk); free(q); free(od); free(oi); free(out); free(entries); free(keys); free(c7);
}

/* graph.h: a one-leaf B-tree of connections built by hand, in pages LMDB's layout; then
 * the same tree with a bad root, bad flags and a node offset past the page. */
static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static void leaf_of(uint8_t *page, const uint32_t (*edges)[2], unsigned n, unsigned psize) {
    memset(page, 0, psize);
    put16(page + 10, 0x02);
    put16(page + 12, 16 + 2 * n);
    unsigned upper = psize;
    for (unsigned i = 0; i < n; i++) {
        upper -= 8 + 9 + 64;
        uint8_t *nd = page + upper;
        put16(page + 16 + 2 * i, upper);
        put16(nd, 64);      /* data size lo */
        put16(nd + 6, 9);   /* key size */
        uint8_t *k = nd + 8;
        for (int b = 0; b < 4; b++) {
            k[b] = (uint8_t)(edges[i][0] >> (24 - 8 * b));
            k[4 + b] = (uint8_t)(edges[i][1] >> (24 - 8 * b));
        }
        k[8] = 0x50;
        float strength = (float)i;
        memcpy(nd + 8 + 9 + 16, &strength, 4);
    }
    put16(page + 14, upper);
}

static void check_graph(void) {
    const unsigned psize = 512;
    const uint32_t fwd[4][2] = {{1, 2}, {2, 3}, {3, 4}, {7, 7}}; /* sorted keys: a | b */
    const uint32_t rev[4][2] = {{2, 1}, {3, 2}, {4, 3}, {7, 7}};
    uint8_t *map = (uint8_t *)malloc(3 * psize);
    memset(map, 0, psize);
    leaf_of(map + psize, fwd, 4, psize);
    leaf_of(map + 2 * psize, rev, 4, psize);
    uint8_t all[32];
    memset(all, 0xFF, sizeof all);
    uint32_t seeds[2] = {1, 7}, ids[8], depth[8];
    size_t n = 0;
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 1, 2, seeds, 2, 9, 3, all, 0, 0.0, ids, depth, 8, &n) == NG_OK,
           "walk");
    EXPECT(n == 5 && depth[4] == 3, "walk reached %zu", n);
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 1, 2, seeds, 2, 9, 3, all, 0, 0.0, ids, depth, 2, &n) == NG_ERANGE
           && n == 5, "walk cap");
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 1, 2, seeds, 1, 9, 1, all, 1, 1.0, ids, depth, 8, &n) == NG_OK
           && n == 1, "min strength: 1-2 has strength 0");
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 1, (uint64_t)-1, seeds, 1, 9, 3, all, 1, 0.0, ids, depth, 8, &n)
           == NG_OK && n == 4, "no reverse tree");
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 5, 2, seeds, 1, 9, 3, all, 0, 0.0, ids, depth, 8, &n)
           == NG_ECORRUPT, "root past the map");
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 0, 2, seeds, 1, 9, 3, all, 0, 0.0, ids, depth, 8, &n)
           == NG_ECORRUPT, "a page with no tree flags");
    EXPECT(ng_graph_walk(map, 3 * psize, 500, 1, 2, seeds, 1, 9, 3, all, 0, 0.0, ids, depth, 8, &n) == NG_EINVAL,
           "page size");
    put16(map + psize + 16, psize - 4); /* a node that would run past its page */
    EXPECT(ng_graph_walk(map, 3 * psize, psize, 1, 2, seeds, 1, 9, 3, all, 0, 0.0, ids, depth, 8, &n)
           == NG_ECORRUPT, "node offset");
    free(map);
}

int main(int argc, char **argv) {
    unsigned rounds = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 40;
    check_core();
    check_gather_column();
    check_chunk_patch();
    check_reflex(rounds);
    check_similarity();
    check_graph();
    puts("contract held");
    return 0;
}
