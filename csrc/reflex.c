/* reflex.c -- the persistent reflex table (see reflex.h for the API manual and
 * docs/format.md §7 for the same bytes with validity rules).
 *
 * WHAT IS STORED
 *
 * A reflex is a Connection v3 record (64 bytes; its target_vector is the action)
 * filed under a STATE. The state itself is not stored (as in the original); it
 * is represented by two 64-bit numbers:
 *   grid hash   the original compute_grid_hash (XOR/rotate of the coordinates
 *               shifted right by the per-layer shifts), ngcore.h. It decides
 *               where the reflex lives. It is a weak hash: distinct grid cells can
 *               share it (easy to construct).
 *   fingerprint XXH3-64, seed 0, of the QUANTIZED STATE: the 24 raw i16
 *               coordinates (layer-major, x y z) with the low shift[layer] bits
 *               cleared, as 48 little-endian bytes. Two states with the same
 *               quantized coordinates are the same grid cell; a grid-hash
 *               collision between two cells is told apart by the fingerprint
 *               (up to XXH3's 2^-64 collision odds).
 * A state can hold up to NG_REFLEX_MAX_CANDIDATES (4, the original's SmallVec<4>)
 * connections, distinguished by their IDENTITY = bytes 0..8 of the record
 * (token_a, token_b, connection_type). Writing the same (state, identity) again
 * replaces the record (upsert).
 *
 * HEADER (128 bytes, little-endian; kept apart from the segments)
 *   0   magic "NGREFLEX"              8  u16 version (1)
 *   10  u16 header size (128)         12 u16 slot size (96)
 *   14  u16 max candidates (4)        16 u32 slots per segment (power of 2, 16..2^20)
 *   20  u32 segment count (>= 1)      24 u64 capacity (1 <= capacity <= 3/4 slots)
 *   32  u64 live count (<= capacity)  40 u64 tick (next write tick)
 *   48  u8[8] shifts (each <= 15)     56 u32 flags (0)
 *   60  64 reserved zero bytes        124 u32 CRC-32 (zlib) of bytes 0..123
 *
 * SEGMENTS AND SLOTS
 *   Slot i lives in segment i / slots_per_segment at byte (i % slots_per_segment) * 96.
 *   Each segment is exactly slots_per_segment * 96 bytes. A slot:
 *   0  u64 grid hash      8  u64 fingerprint      16 u64 tick (of its last write)
 *   24 u8 state: 0 EMPTY, 1 LIVE (anything else is corruption)
 *   25 7 zero bytes       32 the 64-byte Connection v3 record
 *   An EMPTY slot is all zeros. The key fields sit in the first 32 bytes so that
 *   a probe reads one cache line per slot (96 * i mod 64 is 0 or 32).
 *
 * PROBING: ROBIN HOOD, LINEAR, WITH BACKWARD-SHIFT DELETION
 *   home(h) = hi64(mix(h) * slot_count), mix = splitmix64's finaliser (the grid
 *   hash's low bits are poorly spread; the multiply-high maps onto any slot count
 *   so capacity need not be a power of two). A key at slot i has probe distance
 *   dist = (i - home) mod slot_count. Invariant: along the table, distances never
 *   grow by more than 1 from one live slot to the next, and a live slot after an
 *   empty one has distance 0 (so slots are ordered by home).
 *   Why Robin Hood: the fast path mostly MISSES (most states have no reflex), and
 *   a Robin Hood miss stops as soon as it meets a key with a smaller distance than
 *   its own -- about as short as a hit -- whereas a plain linear-probing miss runs
 *   to the next empty slot (~8 slots at load 0.75). Why backward-shift deletion
 *   instead of tombstones: tombstones lengthen every miss and only a full rebuild
 *   (rewriting every segment) removes them; the shift touches only the rest of one
 *   cluster, so few segments become dirty. The rejected alternative of a separate
 *   dense key array would shorten probes further but doubles the cache lines of a
 *   hit and complicates the segment format.
 *
 * CAPACITY AND EVICTION
 *   Capacity (max live reflexes) is fixed at creation; slots = capacity * 4/3
 *   rounded up to whole segments, so the load factor never exceeds 0.75. Inserting
 *   a NEW (state, identity) when live == capacity first evicts one victim: among the
 *   live slots of the EVICTION WINDOW (the NG_REFLEX_EVICT_WINDOW = 32 slots from
 *   the new key's home, or if none of them is live the first live slot after it),
 *   the one with the lowest confidence, ties broken by the oldest tick. Lowest
 *   confidence first because a reflex below min_confidence (150) is never answered
 *   by the fast path, so evicting it loses nothing; then least recently WRITTEN.
 *   True LRU-on-read was rejected: a lookup would have to write to the slots, which
 *   a read-only LMDB mapping forbids and which would make concurrent lookups fight
 *   over cache lines. Scoping the victim to the window keeps eviction O(1) and
 *   local (one or two dirty segments). When a state already has 4 candidates, a
 *   new identity replaces the weakest of those 4 (same order), in place.
 *
 * LOOKUP (upstream try_fast_path, section 3.3 of the reference)
 *   Candidates are the slots with the state's grid hash AND fingerprint. Eligible:
 *   confidence >= min_confidence, and for a Hypothesis (mutability 2) also
 *   confidence >= hypothesis_threshold. The best eligible is the highest
 *   confidence (then the newest tick); it is answered only if confidence/255 >
 *   similarity_threshold. The fingerprint is computed only when a slot with the
 *   grid hash is met, so misses cost the grid hash and a short probe.
 *
 * ROBUSTNESS
 *   Every slot address is computed from an index < slot_count, and attach checked
 *   that each segment is exactly slots_per_segment * 96 bytes, so no byte outside a
 *   segment is ever read, whatever the slots contain. Every probe loop stops after
 *   slot_count steps; a state byte other than EMPTY/LIVE, or a probe that never
 *   ends, is NG_ECORRUPT. Corrupt keys can make lookups miss, never crash.
 */
#include "reflex.h"

#include <stdlib.h>
#include <string.h>

#include "xxh3.h"

#define SLOT_EMPTY 0
#define SLOT_LIVE 1
#define OFF_HASH 0
#define OFF_FP 8
#define OFF_TICK 16
#define OFF_STATE 24
#define OFF_CONN 32
#define CONN_MUTABILITY 32
#define CONN_CONFIDENCE 33
#define CONN_TARGET 48
#define IDENTITY_BYTES 9 /* token_a u32, token_b u32, connection_type u8 */
#define MUT_HYPOTHESIS 2
#define MAX_SLOTS_PER_SEGMENT (1u << 20)
#define MAX_SEGMENTS (1u << 24)
#define MAX_SLOT_COUNT (1ULL << 40)
#define TOUCH_BYTES (4 * NG_REFLEX_SLOT_SIZE) /* the home slot and the next 3 */
#define LOOKUP_BLOCK 32 /* states hashed, touched, then probed together in batch lookups */

struct ng_reflex_table {
    uint8_t **segs;   /* segment base pointers (not owned)      */
    uint8_t *dirty;   /* one flag per segment                   */
    uint64_t slot_count, capacity, live, tick;
    uint64_t sps_mask;
    uint32_t sps, sps_shift, nseg;
    int writable, header_dirty;
    uint8_t shifts[8];
    uint64_t stats[NG_REFLEX_NSTATS];
};

static const float layer_scale[8] = {100.f, 10000.f, 1000.f, 10000.f, 10000.f, 10000.f, 100.f, 10000.f};

/* ---------------------------------------------------------------- helpers */

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
static inline void st16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

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

static inline uint64_t home_of(const ng_reflex_table *t, uint64_t h) {
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return mulhi64(h, t->slot_count);
}

static inline uint64_t dist_of(const ng_reflex_table *t, uint64_t i, uint64_t home) {
    return i >= home ? i - home : i + t->slot_count - home;
}

static inline uint8_t *slot_ptr(const ng_reflex_table *t, uint64_t i) {
    return t->segs[i >> t->sps_shift] + (size_t)(i & t->sps_mask) * NG_REFLEX_SLOT_SIZE;
}

static inline void mark_dirty(ng_reflex_table *t, uint64_t i) { t->dirty[i >> t->sps_shift] = 1; }

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

static uint32_t crc32_zlib(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (unsigned k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static inline int16_t encode_axis(float v) {
    if (v != v) return 0; /* NaN */
    if (v >= 32767.0f) return 32767;
    if (v <= -32768.0f) return -32768;
    return (int16_t)v; /* truncation toward zero */
}

static inline size_t state_stride(int kind) {
    return kind == NG_REFLEX_STATE_F32 ? 32 : kind == NG_REFLEX_STATE_TOKEN ? 64 : 48;
}

static inline int kind_ok(int kind) {
    return kind == NG_REFLEX_STATE_F32 || kind == NG_REFLEX_STATE_TOKEN || kind == NG_REFLEX_STATE_COORDS;
}

static inline void load_coords(int kind, const uint8_t *p, int16_t c[24]) {
    if (kind == NG_REFLEX_STATE_F32) {
        float s[8];
        memcpy(s, p, sizeof s);
        for (unsigned d = 0; d < 8; d++) {
            c[3 * d] = encode_axis(s[d] * layer_scale[d]);
            c[3 * d + 1] = 0;
            c[3 * d + 2] = 0;
        }
    } else if (kind == NG_REFLEX_STATE_TOKEN) {
        ng_load_coords(p, c);
    } else {
        memcpy(c, p, 48);
    }
}

/* Quantized state as 48 little-endian bytes -> fingerprint. */
static inline uint64_t fingerprint_of(const int16_t c[24], const uint8_t shifts[8]) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint16_t q[24]; /* native order is the little-endian byte image */
    for (unsigned d = 0; d < 8; d++) {
        uint16_t keep = (uint16_t)(0xFFFFu << shifts[d]);
        q[3 * d] = (uint16_t)c[3 * d] & keep;
        q[3 * d + 1] = (uint16_t)c[3 * d + 1] & keep;
        q[3 * d + 2] = (uint16_t)c[3 * d + 2] & keep;
    }
    return ng_xxh3_64_17to128((const uint8_t *)q, 48);
#else
    uint8_t b[48];
    for (unsigned d = 0; d < 8; d++) {
        uint16_t keep = (uint16_t)(0xFFFFu << shifts[d]);
        for (unsigned a = 0; a < 3; a++) {
            uint16_t v = (uint16_t)c[3 * d + a] & keep;
            b[6 * d + 2 * a] = (uint8_t)v;
            b[6 * d + 2 * a + 1] = (uint8_t)(v >> 8);
        }
    }
    return ng_xxh3_64_17to128(b, 48);
#endif
}

static int shifts_ok(const uint8_t shifts[8]) {
    for (unsigned d = 0; d < 8; d++)
        if (shifts[d] > 15) return 0;
    return 1;
}

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
    const uint8_t *p = (const uint8_t *)states;
    size_t stride = state_stride(kind);
    for (size_t i = 0; i < n; i++) {
        int16_t c[24];
        load_coords(kind, p + i * stride, c);
        grid_hashes[i] = ng_grid_hash_coords(c, shifts);
        fingerprints[i] = fingerprint_of(c, shifts);
    }
    return NG_OK;
}

/* ---------------------------------------------------------------- geometry, create, attach */

int ng_reflex_geometry(uint64_t capacity, uint32_t hint, uint32_t *sps_out, uint32_t *nseg_out) {
    if (!sps_out || !nseg_out) return NG_EINVAL;
    if (capacity == 0 || capacity > (MAX_SLOT_COUNT / 4) * 3) return NG_ERANGE;
    if (hint && (hint < 16 || hint > MAX_SLOTS_PER_SEGMENT || (hint & (hint - 1)))) return NG_EINVAL;
    uint64_t needed = (capacity * 4 + 2) / 3;
    uint64_t sps = hint;
    if (!sps) {
        sps = NG_REFLEX_DEFAULT_SLOTS_PER_SEGMENT;
        if (needed < sps) {
            sps = 16;
            while (sps < needed) sps <<= 1;
        }
    }
    uint64_t nseg = (needed + sps - 1) / sps;
    if (nseg > MAX_SEGMENTS) return NG_ERANGE;
    *sps_out = (uint32_t)sps;
    *nseg_out = (uint32_t)nseg;
    return NG_OK;
}

static int alloc_table(uint32_t sps, uint32_t nseg, ng_reflex_table **out) {
    size_t bytes = sizeof(ng_reflex_table) + (size_t)nseg * sizeof(uint8_t *) + nseg;
    ng_reflex_table *t = (ng_reflex_table *)calloc(1, bytes);
    if (!t) return NG_ENOMEM;
    t->segs = (uint8_t **)(t + 1);
    t->dirty = (uint8_t *)(t->segs + nseg);
    t->sps = sps;
    t->nseg = nseg;
    t->sps_mask = sps - 1;
    while ((1u << t->sps_shift) < sps) t->sps_shift++;
    t->slot_count = (uint64_t)sps * nseg;
    *out = t;
    return NG_OK;
}

int ng_reflex_create(uint64_t capacity, const uint8_t shifts[8], uint32_t sps, uint32_t nseg,
                     uint8_t *const *segments, const size_t *lengths, ng_reflex_table **out) {
    if (!out || !shifts || !segments || !lengths || !shifts_ok(shifts)) return NG_EINVAL;
    *out = NULL;
    if (sps < 16 || sps > MAX_SLOTS_PER_SEGMENT || (sps & (sps - 1)) || nseg == 0 || nseg > MAX_SEGMENTS)
        return NG_EINVAL;
    uint64_t slots = (uint64_t)sps * nseg;
    /* capacity > slots first: it bounds capacity so that capacity * 4 cannot wrap. */
    if (capacity == 0 || slots > MAX_SLOT_COUNT || capacity > slots || capacity * 4 > slots * 3) return NG_ERANGE;
    for (uint32_t s = 0; s < nseg; s++) {
        if (!segments[s]) return NG_EINVAL;
        if (lengths[s] != (size_t)sps * NG_REFLEX_SLOT_SIZE) return NG_ERANGE;
    }
    ng_reflex_table *t;
    int rc = alloc_table(sps, nseg, &t);
    if (rc) return rc;
    for (uint32_t s = 0; s < nseg; s++) {
        t->segs[s] = segments[s];
        memset(segments[s], 0, lengths[s]);
        t->dirty[s] = 1;
    }
    t->capacity = capacity;
    t->writable = 1;
    t->header_dirty = 1;
    memcpy(t->shifts, shifts, 8);
    *out = t;
    return NG_OK;
}

#define FAIL(msg)                                                                                  \
    do {                                                                                           \
        if (reason) *reason = (msg);                                                               \
        return NG_ECORRUPT;                                                                        \
    } while (0)

int ng_reflex_attach(const uint8_t *h, size_t hlen, uint8_t *const *segments, const size_t *lengths,
                     uint32_t segment_count, int writable, ng_reflex_table **out, const char **reason) {
    if (reason) *reason = "ok";
    if (!out || !h || (segment_count && (!segments || !lengths))) {
        if (reason) *reason = "NULL argument";
        return NG_EINVAL;
    }
    *out = NULL;
    if (hlen != NG_REFLEX_HEADER_SIZE) FAIL("header is not 128 bytes long");
    if (memcmp(h, "NGREFLEX", 8) != 0) FAIL("bad magic (not a reflex table header)");
    if (crc32_zlib(h, 124) != ld32(h + 124)) FAIL("header CRC mismatch");
    if (ld16(h + 8) != NG_REFLEX_FORMAT_VERSION) FAIL("unsupported format version");
    if (ld16(h + 10) != NG_REFLEX_HEADER_SIZE) FAIL("header size field is not 128");
    if (ld16(h + 12) != NG_REFLEX_SLOT_SIZE) FAIL("slot size field is not 96");
    if (ld16(h + 14) != NG_REFLEX_MAX_CANDIDATES) FAIL("max candidates field is not 4");
    uint32_t sps = ld32(h + 16), nseg = ld32(h + 20);
    if (sps < 16 || sps > MAX_SLOTS_PER_SEGMENT || (sps & (sps - 1)))
        FAIL("slots per segment is not a power of two in [16, 2^20]");
    if (nseg == 0 || nseg > MAX_SEGMENTS) FAIL("segment count out of range");
    uint64_t slots = (uint64_t)sps * nseg;
    uint64_t capacity = ld64(h + 24), live = ld64(h + 32), tick = ld64(h + 40);
    if (capacity == 0 || capacity > slots || capacity * 4 > slots * 3) FAIL("capacity exceeds 3/4 of the slots");
    if (live > capacity) FAIL("live count exceeds capacity");
    if (!shifts_ok(h + 48)) FAIL("a layer shift exceeds 15");
    if (ld32(h + 56) != 0) FAIL("unknown flags");
    for (unsigned k = 60; k < 124; k++)
        if (h[k]) FAIL("reserved header bytes are not zero");
    if (segment_count != nseg) FAIL("segment count differs from the header");
    for (uint32_t s = 0; s < nseg; s++) {
        if (!segments[s]) {
            if (reason) *reason = "NULL segment";
            return NG_EINVAL;
        }
        if (lengths[s] != (size_t)sps * NG_REFLEX_SLOT_SIZE) FAIL("segment length differs from the header");
    }
    ng_reflex_table *t;
    int rc = alloc_table(sps, nseg, &t);
    if (rc) return rc;
    for (uint32_t s = 0; s < nseg; s++) t->segs[s] = segments[s];
    t->capacity = capacity;
    t->live = live;
    t->tick = tick;
    t->writable = writable ? 1 : 0;
    memcpy(t->shifts, h + 48, 8);
    *out = t;
    return NG_OK;
}
#undef FAIL

void ng_reflex_free(ng_reflex_table *t) { free(t); }

int ng_reflex_info_get(const ng_reflex_table *t, ng_reflex_info *o) {
    if (!t || !o) return NG_EINVAL;
    o->capacity = t->capacity;
    o->slot_count = t->slot_count;
    o->live_count = t->live;
    o->tick = t->tick;
    o->slots_per_segment = t->sps;
    o->segment_count = t->nseg;
    o->slot_size = NG_REFLEX_SLOT_SIZE;
    o->writable = (uint32_t)t->writable;
    memcpy(o->shifts, t->shifts, 8);
    return NG_OK;
}

int ng_reflex_write_header(const ng_reflex_table *t, uint8_t *h, size_t len) {
    if (!t || !h) return NG_EINVAL;
    if (len < NG_REFLEX_HEADER_SIZE) return NG_ERANGE;
    memset(h, 0, NG_REFLEX_HEADER_SIZE);
    memcpy(h, "NGREFLEX", 8);
    st16(h + 8, NG_REFLEX_FORMAT_VERSION);
    st16(h + 10, NG_REFLEX_HEADER_SIZE);
    st16(h + 12, NG_REFLEX_SLOT_SIZE);
    st16(h + 14, NG_REFLEX_MAX_CANDIDATES);
    st32(h + 16, t->sps);
    st32(h + 20, t->nseg);
    st64(h + 24, t->capacity);
    st64(h + 32, t->live);
    st64(h + 40, t->tick);
    memcpy(h + 48, t->shifts, 8);
    st32(h + 124, crc32_zlib(h, 124));
    return NG_OK;
}

/* ---------------------------------------------------------------- lookup */

typedef struct {
    uint64_t hits, misses, answers, collisions, candidates;
} lcount;

/* Probes for the state with quantized-source coordinates c (grid hash h, home).
 * Returns 0 unknown, 1 answered (*best = its slot), 2 known but not answered,
 * or NG_ECORRUPT. */
static inline int probe(const ng_reflex_table *t, const int16_t c[24], uint64_t h, uint64_t home,
                        const ng_reflex_params *p, lcount *lc, uint64_t *best_slot,
                        const uint8_t **best_ptr) {
    const uint64_t n = t->slot_count;
    uint64_t i = home, d, fp = 0, best_tick = 0;
    int have_fp = 0;
    unsigned same_hash = 0, fp_mismatch = 0, cands = 0, best_conf = 0;
    const uint8_t *best = NULL;
    for (d = 0; d < n; d++) {
        const uint8_t *s = slot_ptr(t, i);
        uint8_t st = s[OFF_STATE];
        if (st == SLOT_EMPTY) break;
        if (st != SLOT_LIVE) return NG_ECORRUPT;
        uint64_t rh = ld64(s + OFF_HASH);
        if (rh == h) {
            same_hash++;
            if (!have_fp) {
                fp = fingerprint_of(c, t->shifts);
                have_fp = 1;
            }
            if (ld64(s + OFF_FP) == fp) {
                unsigned conf = s[OFF_CONN + CONN_CONFIDENCE];
                unsigned mut = s[OFF_CONN + CONN_MUTABILITY];
                cands++;
                if (conf >= p->min_confidence && (mut != MUT_HYPOTHESIS || conf >= p->hypothesis_threshold)) {
                    uint64_t tk = ld64(s + OFF_TICK);
                    if (!best || conf > best_conf || (conf == best_conf && tk > best_tick)) {
                        best = s;
                        best_conf = conf;
                        best_tick = tk;
                        *best_slot = i;
                    }
                }
            } else {
                fp_mismatch++;
            }
        } else if (dist_of(t, i, home_of(t, rh)) < d) {
            break;
        }
        if (++i == n) i = 0;
    }
    if (d == n) return NG_ECORRUPT; /* no empty slot and no stop: impossible at load <= 3/4 */
    if (same_hash > 1 || fp_mismatch) lc->collisions++;
    lc->candidates += cands;
    if (!cands) {
        lc->misses++;
        return 0;
    }
    lc->hits++;
    if (best && (double)best_conf / 255.0 > p->similarity_threshold) {
        lc->answers++;
        *best_ptr = best;
        return 1;
    }
    return 2;
}

static void flush_counts(const ng_reflex_table *t, uint64_t lookups, const lcount *lc) {
    stat_add(t, NG_REFLEX_STAT_LOOKUPS, lookups);
    stat_add(t, NG_REFLEX_STAT_HITS, lc->hits);
    stat_add(t, NG_REFLEX_STAT_MISSES, lc->misses);
    stat_add(t, NG_REFLEX_STAT_ANSWERS, lc->answers);
    stat_add(t, NG_REFLEX_STAT_COLLISIONS, lc->collisions);
    stat_add(t, NG_REFLEX_STAT_CANDIDATES, lc->candidates);
}

static inline void decode_action(const uint8_t *conn, float *out) {
    for (unsigned d = 0; d < 8; d++)
        out[d] = (float)(int16_t)ld16(conn + CONN_TARGET + 2 * d) / layer_scale[d];
}

static int params_ok(const ng_reflex_params *p) {
    return p && p->similarity_threshold == p->similarity_threshold; /* not NaN */
}

int ng_reflex_lookup_batch(const ng_reflex_table *t, int kind, const void *states, size_t n,
                           const ng_reflex_params *p, uint8_t *status, int64_t *slot,
                           uint8_t *confidence, float *similarity, float *action,
                           uint8_t *connections) {
    if (!t || !kind_ok(kind) || !params_ok(p)) return NG_EINVAL;
    if (n && (!states || !status || !slot || !confidence || !similarity || !action)) return NG_EINVAL;
    const uint8_t *in = (const uint8_t *)states;
    const size_t stride = state_stride(kind);
    lcount lc = {0, 0, 0, 0, 0};
    /* Blocks of LOOKUP_BLOCK states in three passes. (1) hash: compute only.
     * (2) touch: one plain load of the first two cache lines of every home slot, in
     * a loop so short that the CPU keeps all of them in flight at once. (3) probe:
     * the lines are now cached. Measured on this VM, the touch pass does what
     * __builtin_prefetch in a rolling pipeline did not: software prefetches that
     * miss the (nested, 4 KiB) TLB were not overlapping here. */
    int16_t c[LOOKUP_BLOCK][24];
    uint64_t h[LOOKUP_BLOCK], home[LOOKUP_BLOCK];
    int rc = NG_OK;
    size_t done = 0;
    volatile uint8_t sink = 0;
    for (size_t base = 0; base < n && rc == NG_OK; base += LOOKUP_BLOCK) {
        size_t m = n - base < LOOKUP_BLOCK ? n - base : LOOKUP_BLOCK;
        for (size_t k = 0; k < m; k++) {
            load_coords(kind, in + (base + k) * stride, c[k]);
            h[k] = ng_grid_hash_coords(c[k], t->shifts);
            home[k] = home_of(t, h[k]);
        }
        uint8_t acc = 0;
        for (size_t k = 0; k < m; k++) {
            const uint8_t *s = slot_ptr(t, home[k]);
            uint64_t room = (t->sps - (home[k] & t->sps_mask)) * NG_REFLEX_SLOT_SIZE; /* to segment end */
            uint64_t span = room < TOUCH_BYTES ? room : TOUCH_BYTES;
            for (uint64_t off = 0; off < span; off += 64) acc ^= s[off];
        }
        sink = acc;
        for (size_t k = 0; k < m; k++) {
            size_t i = base + k;
            uint64_t bs = 0;
            const uint8_t *best = NULL;
            int res = probe(t, c[k], h[k], home[k], p, &lc, &bs, &best);
            if (res < 0) {
                rc = res;
                break;
            }
            status[i] = (uint8_t)res;
            if (res == 1) {
                unsigned conf = best[OFF_CONN + CONN_CONFIDENCE];
                slot[i] = (int64_t)bs;
                confidence[i] = (uint8_t)conf;
                similarity[i] = (float)conf / 255.0f;
                decode_action(best + OFF_CONN, action + 8 * i);
                if (connections) memcpy(connections + 64 * i, best + OFF_CONN, 64);
            } else {
                slot[i] = -1;
                confidence[i] = 0;
                similarity[i] = 0.0f;
                memset(action + 8 * i, 0, 8 * sizeof(float));
                if (connections) memset(connections + 64 * i, 0, 64);
            }
            done = i + 1;
        }
    }
    (void)sink;
    flush_counts(t, done, &lc);
    return rc;
}

int ng_reflex_lookup_one(const ng_reflex_table *t, int kind, const void *state,
                         const ng_reflex_params *p, ng_reflex_hit *out) {
    if (!t || !state || !kind_ok(kind) || !params_ok(p)) return NG_EINVAL;
    lcount lc = {0, 0, 0, 0, 0};
    int16_t c[24];
    load_coords(kind, (const uint8_t *)state, c);
    uint64_t h = ng_grid_hash_coords(c, t->shifts), bs = 0;
    const uint8_t *best = NULL;
    int r = probe(t, c, h, home_of(t, h), p, &lc, &bs, &best);
    if (r < 0) return r;
    flush_counts(t, 1, &lc);
    if (r == 1 && out) {
        out->similarity = (float)best[OFF_CONN + CONN_CONFIDENCE] / 255.0f;
        decode_action(best + OFF_CONN, out->action);
        memcpy(out->connection, best + OFF_CONN, 64);
    }
    return r;
}

int ng_reflex_bench_loop(const ng_reflex_table *t, int kind, const void *states, size_t n,
                         const ng_reflex_params *p, uint64_t *answered) {
    if (!t || !kind_ok(kind) || !params_ok(p) || !answered || (n && !states)) return NG_EINVAL;
    const uint8_t *in = (const uint8_t *)states;
    const size_t stride = state_stride(kind);
    lcount lc = {0, 0, 0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        int16_t c[24];
        uint64_t bs;
        const uint8_t *best = NULL;
        load_coords(kind, in + i * stride, c);
        uint64_t h = ng_grid_hash_coords(c, t->shifts);
        int r = probe(t, c, h, home_of(t, h), p, &lc, &bs, &best);
        if (r < 0) return r;
    }
    *answered = lc.answers;
    flush_counts(t, n, &lc);
    return NG_OK;
}

/* ---------------------------------------------------------------- writes */

static inline void write_slot(uint8_t *s, uint64_t h, uint64_t fp, uint64_t tick, const uint8_t *conn) {
    st64(s + OFF_HASH, h);
    st64(s + OFF_FP, fp);
    st64(s + OFF_TICK, tick);
    s[OFF_STATE] = SLOT_LIVE;
    memset(s + OFF_STATE + 1, 0, OFF_CONN - OFF_STATE - 1);
    memcpy(s + OFF_CONN, conn, 64);
}

static void entry_of(const uint8_t *s, uint64_t i, ng_reflex_entry *e) {
    e->slot = i;
    e->grid_hash = ld64(s + OFF_HASH);
    e->fingerprint = ld64(s + OFF_FP);
    e->tick = ld64(s + OFF_TICK);
    memcpy(e->connection, s + OFF_CONN, 64);
}

/* (conf, tick) order: is slot a weaker than slot b? */
static inline int weaker(const uint8_t *a, const uint8_t *b) {
    unsigned ca = a[OFF_CONN + CONN_CONFIDENCE], cb = b[OFF_CONN + CONN_CONFIDENCE];
    if (ca != cb) return ca < cb;
    return ld64(a + OFF_TICK) < ld64(b + OFF_TICK);
}

/* Removes slot i by shifting the rest of its cluster back by one. */
static int delete_at(ng_reflex_table *t, uint64_t i) {
    const uint64_t n = t->slot_count;
    for (uint64_t k = 0;; k++) {
        if (k == n) return NG_ECORRUPT;
        uint64_t j = i + 1 == n ? 0 : i + 1;
        uint8_t *sj = slot_ptr(t, j);
        if (sj[OFF_STATE] == SLOT_EMPTY) break;
        if (sj[OFF_STATE] != SLOT_LIVE) return NG_ECORRUPT;
        if (dist_of(t, j, home_of(t, ld64(sj + OFF_HASH))) == 0) break;
        memcpy(slot_ptr(t, i), sj, NG_REFLEX_SLOT_SIZE);
        mark_dirty(t, i);
        i = j;
    }
    memset(slot_ptr(t, i), 0, NG_REFLEX_SLOT_SIZE);
    mark_dirty(t, i);
    if (t->live) t->live--;
    t->header_dirty = 1;
    return NG_OK;
}

/* Robin Hood placement of a new entry (the caller checked live < capacity). */
static int place(ng_reflex_table *t, uint64_t h, uint64_t fp, const uint8_t *conn) {
    const uint64_t n = t->slot_count;
    uint8_t cur[NG_REFLEX_SLOT_SIZE], tmp[NG_REFLEX_SLOT_SIZE];
    memset(cur, 0, sizeof cur);
    write_slot(cur, h, fp, t->tick++, conn);
    uint64_t i = home_of(t, h), d = 0;
    for (uint64_t k = 0; k < n; k++) {
        uint8_t *s = slot_ptr(t, i);
        if (s[OFF_STATE] == SLOT_EMPTY) {
            memcpy(s, cur, NG_REFLEX_SLOT_SIZE);
            mark_dirty(t, i);
            t->live++;
            t->header_dirty = 1;
            return NG_OK;
        }
        if (s[OFF_STATE] != SLOT_LIVE) return NG_ECORRUPT;
        uint64_t rd = dist_of(t, i, home_of(t, ld64(s + OFF_HASH)));
        if (rd < d) { /* the resident is richer: take its place, carry it on */
            memcpy(tmp, s, NG_REFLEX_SLOT_SIZE);
            memcpy(s, cur, NG_REFLEX_SLOT_SIZE);
            memcpy(cur, tmp, NG_REFLEX_SLOT_SIZE);
            mark_dirty(t, i);
            d = rd;
        }
        if (++i == n) i = 0;
        d++;
    }
    return NG_ECORRUPT;
}

static int insert_core(ng_reflex_table *t, int kind, const uint8_t *state, const uint8_t *conn,
                       int *outcome, ng_reflex_entry *ev) {
    const uint64_t n = t->slot_count;
    int16_t c[24];
    load_coords(kind, state, c);
    uint64_t h = ng_grid_hash_coords(c, t->shifts), fp = fingerprint_of(c, t->shifts);
    uint64_t home = home_of(t, h), i = home, d;
    unsigned same_state = 0;
    uint8_t *weakest = NULL;
    uint64_t weakest_i = 0;
    for (d = 0; d < n; d++) {
        uint8_t *s = slot_ptr(t, i);
        if (s[OFF_STATE] == SLOT_EMPTY) break;
        if (s[OFF_STATE] != SLOT_LIVE) return NG_ECORRUPT;
        uint64_t rh = ld64(s + OFF_HASH);
        if (rh == h) {
            if (ld64(s + OFF_FP) == fp) {
                if (memcmp(s + OFF_CONN, conn, IDENTITY_BYTES) == 0) {
                    st64(s + OFF_TICK, t->tick++);
                    memcpy(s + OFF_CONN, conn, 64);
                    mark_dirty(t, i);
                    t->header_dirty = 1;
                    stat_add(t, NG_REFLEX_STAT_UPDATES, 1);
                    *outcome = NG_REFLEX_UPDATED;
                    return NG_OK;
                }
                same_state++;
                if (!weakest || weaker(s, weakest)) {
                    weakest = s;
                    weakest_i = i;
                }
            }
        } else if (dist_of(t, i, home_of(t, rh)) < d) {
            break;
        }
        if (++i == n) i = 0;
    }
    if (d == n) return NG_ECORRUPT;
    if (same_state >= NG_REFLEX_MAX_CANDIDATES) {
        if (ev) entry_of(weakest, weakest_i, ev);
        write_slot(weakest, h, fp, t->tick++, conn);
        mark_dirty(t, weakest_i);
        t->header_dirty = 1;
        stat_add(t, NG_REFLEX_STAT_EVICTIONS, 1);
        *outcome = NG_REFLEX_REPLACED;
        return NG_OK;
    }
    *outcome = NG_REFLEX_INSERTED;
    if (t->live >= t->capacity) {
        /* Victim: weakest live slot of the window starting at the new key's home;
         * if the window holds no live slot, the first live slot after it. */
        uint8_t *victim = NULL;
        uint64_t victim_i = 0, j = home;
        for (uint64_t k = 0; k < n; k++) {
            uint8_t *s = slot_ptr(t, j);
            if (s[OFF_STATE] == SLOT_LIVE) {
                if (!victim || weaker(s, victim)) {
                    victim = s;
                    victim_i = j;
                }
            } else if (s[OFF_STATE] != SLOT_EMPTY) {
                return NG_ECORRUPT;
            }
            if (victim && k + 1 >= NG_REFLEX_EVICT_WINDOW) break;
            if (++j == n) j = 0;
        }
        if (!victim) return NG_ECORRUPT; /* live >= capacity >= 1 but no live slot */
        if (ev) entry_of(victim, victim_i, ev);
        int rc = delete_at(t, victim_i);
        if (rc) return rc;
        stat_add(t, NG_REFLEX_STAT_EVICTIONS, 1);
        *outcome = NG_REFLEX_EVICTED;
    }
    int rc = place(t, h, fp, conn);
    if (rc) return rc;
    stat_add(t, NG_REFLEX_STAT_INSERTS, 1);
    return NG_OK;
}

int ng_reflex_insert(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection,
                     int *outcome, ng_reflex_entry *evicted) {
    int oc = 0;
    if (!t || !state || !connection || !kind_ok(kind) || !t->writable) return NG_EINVAL;
    int rc = insert_core(t, kind, (const uint8_t *)state, connection, &oc, evicted);
    if (outcome) *outcome = oc;
    return rc;
}

int ng_reflex_insert_batch(ng_reflex_table *t, int kind, const void *states, size_t n,
                           const uint8_t *connections, int8_t *outcomes, size_t *done) {
    if (done) *done = 0;
    if (!t || !kind_ok(kind) || !t->writable || (n && (!states || !connections))) return NG_EINVAL;
    const uint8_t *in = (const uint8_t *)states;
    const size_t stride = state_stride(kind);
    for (size_t i = 0; i < n; i++) {
        int oc = 0;
        int rc = insert_core(t, kind, in + i * stride, connections + 64 * i, &oc, NULL);
        if (rc) return rc;
        if (outcomes) outcomes[i] = (int8_t)oc;
        if (done) *done = i + 1;
    }
    return NG_OK;
}

/* Deletes the reflexes filed under (h, fp) -- all of them, or the one whose identity
 * (bytes 0..8 of the connection) matches. Shared by the by-state and by-key entry points. */
static int delete_by_key(ng_reflex_table *t, uint64_t h, uint64_t fp, const uint8_t *connection,
                         uint32_t *deleted) {
    const uint64_t n = t->slot_count;
    uint64_t home = home_of(t, h);
    uint32_t count = 0;
    for (uint64_t round = 0; round < n; round++) { /* one deletion per round */
        uint64_t i = home, d, found = n;
        for (d = 0; d < n; d++) {
            uint8_t *s = slot_ptr(t, i);
            if (s[OFF_STATE] == SLOT_EMPTY) break;
            if (s[OFF_STATE] != SLOT_LIVE) return NG_ECORRUPT;
            uint64_t rh = ld64(s + OFF_HASH);
            if (rh == h) {
                if (ld64(s + OFF_FP) == fp &&
                    (!connection || memcmp(s + OFF_CONN, connection, IDENTITY_BYTES) == 0)) {
                    found = i;
                    break;
                }
            } else if (dist_of(t, i, home_of(t, rh)) < d) {
                break;
            }
            if (++i == n) i = 0;
        }
        if (d == n) return NG_ECORRUPT;
        if (found == n) break;
        int rc = delete_at(t, found);
        if (rc) return rc;
        count++;
        stat_add(t, NG_REFLEX_STAT_DELETES, 1);
        if (connection) break;
    }
    if (deleted) *deleted = count;
    return count ? NG_OK : NG_ENOTFOUND;
}

int ng_reflex_delete(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection,
                     uint32_t *deleted) {
    if (deleted) *deleted = 0;
    if (!t || !state || !kind_ok(kind) || !t->writable) return NG_EINVAL;
    int16_t c[24];
    load_coords(kind, (const uint8_t *)state, c);
    return delete_by_key(t, ng_grid_hash_coords(c, t->shifts), fingerprint_of(c, t->shifts),
                         connection, deleted);
}

int ng_reflex_delete_key(ng_reflex_table *t, uint64_t grid_hash, uint64_t fingerprint,
                         const uint8_t *connection, uint32_t *deleted) {
    if (deleted) *deleted = 0;
    if (!t || !t->writable) return NG_EINVAL;
    return delete_by_key(t, grid_hash, fingerprint, connection, deleted);
}

/* ---------------------------------------------------------------- iteration, check, stats */

int ng_reflex_export(const ng_reflex_table *t, uint64_t *cursor, ng_reflex_entry *out, size_t max, size_t *n) {
    if (!t || !cursor || !n || (max && !out)) return NG_EINVAL;
    *n = 0;
    uint64_t i = *cursor;
    if (i > t->slot_count) return NG_ERANGE;
    size_t k = 0;
    for (; i < t->slot_count && k < max; i++) {
        const uint8_t *s = slot_ptr(t, i);
        if (s[OFF_STATE] == SLOT_EMPTY) continue;
        if (s[OFF_STATE] != SLOT_LIVE) {
            *cursor = i;
            *n = k;
            return NG_ECORRUPT;
        }
        entry_of(s, i, &out[k++]);
    }
    *cursor = i;
    *n = k;
    return NG_OK;
}

int ng_reflex_check(const ng_reflex_table *t, uint64_t *bad_slot) {
    if (!t) return NG_EINVAL;
    const uint64_t n = t->slot_count;
    uint64_t live = 0, prev_dist = 0;
    int prev_live;
    {
        const uint8_t *last = slot_ptr(t, n - 1);
        prev_live = last[OFF_STATE] == SLOT_LIVE;
        if (prev_live) prev_dist = dist_of(t, n - 1, home_of(t, ld64(last + OFF_HASH)));
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *s = slot_ptr(t, i);
        int bad = 0;
        if (s[OFF_STATE] == SLOT_EMPTY) {
            prev_live = 0;
            continue;
        }
        if (s[OFF_STATE] != SLOT_LIVE) bad = 1;
        for (unsigned k = OFF_STATE + 1; !bad && k < OFF_CONN; k++)
            if (s[k]) bad = 1;
        uint64_t h = ld64(s + OFF_HASH), home = home_of(t, h), d = dist_of(t, i, home);
        if (!bad && (prev_live ? d > prev_dist + 1 : d != 0)) bad = 1;
        if (!bad) { /* candidate cap: same (hash, fingerprint) later in the same home run */
            unsigned same = 1;
            uint64_t j = i, fp = ld64(s + OFF_FP);
            /* Bounded: a valid run is a few slots long; a corrupt one of
             * thousands fails the scan above or the live count below anyway. */
            for (uint64_t k = 1; k < n && k < 1024 && same <= NG_REFLEX_MAX_CANDIDATES; k++) {
                if (++j == n) j = 0;
                const uint8_t *sj = slot_ptr(t, j);
                if (sj[OFF_STATE] != SLOT_LIVE) break;
                uint64_t hj = ld64(sj + OFF_HASH);
                if (hj != h && home_of(t, hj) != home) break;
                if (hj == h && ld64(sj + OFF_FP) == fp) same++;
            }
            if (same > NG_REFLEX_MAX_CANDIDATES) bad = 1;
        }
        if (bad) {
            if (bad_slot) *bad_slot = i;
            return NG_ECORRUPT;
        }
        live++;
        prev_live = 1;
        prev_dist = d;
    }
    if (live != t->live) {
        if (bad_slot) *bad_slot = n;
        return NG_ECORRUPT;
    }
    return NG_OK;
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
    for (uint32_t s = 0; s < t->nseg && k < max; s++) {
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
