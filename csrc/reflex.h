/* reflex.h -- the persistent reflex table: the manual.
 *
 * A reflex is a 64-byte Connection v3 record (its target_vector is the action)
 * stored under the grid hash of a state plus an independent fingerprint of that
 * state. The table is an open-addressing Robin Hood hash table whose slots live in
 * caller-provided memory cut into equal SEGMENTS, so that it can be stored as
 * several LMDB values and persisted one changed segment at a time. The byte
 * layout, the probing scheme and the eviction policy are described at the top of
 * reflex.c and in docs/format.md §7.
 *
 * Status codes: every function returning int returns NG_OK (0) or a negative
 * NG_E* code of ngcore.h; ng_reflex_strerror() (= ng_strerror) names them.
 *   NG_EINVAL    bad argument: NULL pointer, bad kind, shift > 15, write on a
 *                read-only table.
 *   NG_ENOMEM    malloc of the handle failed.
 *   NG_ECORRUPT  stored bytes fail a structural check (header CRC, sizes, a slot
 *                whose state byte is neither EMPTY nor LIVE, a probe that runs off
 *                the end of the table). Never a crash: every read is inside a
 *                segment whose length was checked at create/attach, and every
 *                probe loop is bounded by the slot count.
 *   NG_ENOTFOUND delete of something not present.
 *   NG_ERANGE    a size or index out of range (segment length, cursor, capacity).
 *
 * LIFETIMES. The handle does not own the header or segment memory. Segment
 * memory passed to create/attach must stay valid, unmoved and (for a writable
 * table) writable until ng_reflex_free(); for a table attached over LMDB values
 * that means: until the read transaction that mapped them ends. The header bytes
 * are read only during attach (the handle keeps its own copy of the header
 * fields; ng_reflex_write_header() serialises them).
 *
 * THREADS. Any number of threads may run lookups (ng_reflex_lookup_*,
 * ng_reflex_bench_loop, ng_reflex_export, ng_reflex_check, ng_reflex_stats) on
 * the same handle concurrently: lookups never write to the slots; their counters
 * are accumulated locally per call and added once per call with atomic adds.
 * WRITES (insert, delete, take_dirty, reset_stats) must be serialised by the
 * caller and must not run concurrently with lookups on the same handle.
 */
#ifndef NG_REFLEX_H
#define NG_REFLEX_H

#include <stddef.h>
#include <stdint.h>

#include "ngcore.h"

#define NG_REFLEX_HEADER_SIZE 128
#define NG_REFLEX_SLOT_SIZE 96
#define NG_REFLEX_FORMAT_VERSION 1
#define NG_REFLEX_MAX_CANDIDATES 4 /* connections kept per (grid hash, fingerprint) */
#define NG_REFLEX_DEFAULT_SLOTS_PER_SEGMENT 4096
#define NG_REFLEX_EVICT_WINDOW 32 /* slots examined from the new key's home */

/* Kinds of state passed to lookups, inserts and deletes. */
#define NG_REFLEX_STATE_F32 0    /* 8 float32 per state (X axes; Y = Z = 0)      */
#define NG_REFLEX_STATE_TOKEN 1  /* 64-byte Token records (coordinates at 0)    */
#define NG_REFLEX_STATE_COORDS 2 /* 24 int16 per state, layer-major, native order */

/* Outcomes of ng_reflex_insert. */
#define NG_REFLEX_INSERTED 1 /* a new slot was filled                               */
#define NG_REFLEX_UPDATED 2  /* same (hash, fingerprint, identity): record replaced */
#define NG_REFLEX_EVICTED 3  /* table at capacity: a victim was evicted, then inserted */
#define NG_REFLEX_REPLACED 4 /* state already had MAX_CANDIDATES: weakest replaced   */

/* Counter indices of ng_reflex_stats(). Counters live in the handle only (they
 * are not persisted) and count since create/attach or the last reset. */
#define NG_REFLEX_STAT_LOOKUPS 0    /* states looked up                               */
#define NG_REFLEX_STAT_HITS 1       /* state known (hash and fingerprint matched)     */
#define NG_REFLEX_STAT_MISSES 2     /* state unknown                                  */
#define NG_REFLEX_STAT_ANSWERS 3    /* a reflex passed the thresholds and was returned */
#define NG_REFLEX_STAT_COLLISIONS 4 /* >1 slot with the grid hash, or a hash match with another fingerprint */
#define NG_REFLEX_STAT_CANDIDATES 5 /* candidates (hash+fingerprint matches) examined */
#define NG_REFLEX_STAT_INSERTS 6
#define NG_REFLEX_STAT_UPDATES 7
#define NG_REFLEX_STAT_DELETES 8
#define NG_REFLEX_STAT_EVICTIONS 9 /* NG_REFLEX_EVICTED and NG_REFLEX_REPLACED */
#define NG_REFLEX_NSTATS 10

typedef struct ng_reflex_table ng_reflex_table; /* opaque; malloc'd by create/attach */

/* Read-only description of a table. */
typedef struct {
    uint64_t capacity;          /* max live reflexes (set at creation)          */
    uint64_t slot_count;        /* slots_per_segment * segment_count            */
    uint64_t live_count;        /* live slots                                   */
    uint64_t tick;              /* next write tick                              */
    uint32_t slots_per_segment; /* a power of two                              */
    uint32_t segment_count;
    uint32_t slot_size;         /* NG_REFLEX_SLOT_SIZE                          */
    uint32_t writable;          /* 1 if writes are allowed                      */
    uint8_t shifts[8];
} ng_reflex_info;

/* Thresholds of the fast path (upstream FastPathConfig defaults 150, 200, 0.85). */
typedef struct {
    uint32_t min_confidence;       /* eligible if confidence >= this             */
    uint32_t hypothesis_threshold; /* mutability 2 also needs confidence >= this */
    double similarity_threshold;   /* answer only if confidence/255 > this       */
} ng_reflex_params;

typedef struct {
    float similarity;      /* confidence / 255 */
    float action[8];       /* decoded target_vector */
    uint8_t connection[64];
} ng_reflex_hit;

/* One slot as exported by ng_reflex_export / reported by an eviction. */
typedef struct {
    uint64_t slot;        /* slot index (for an eviction: where the victim was) */
    uint64_t grid_hash;
    uint64_t fingerprint;
    uint64_t tick;        /* write tick of the last insert/update               */
    uint8_t connection[64];
} ng_reflex_entry;

/* The grid hash and fingerprint of one state of `kind` (see NG_REFLEX_STATE_*). */
int ng_reflex_key(int kind, const void *state, const uint8_t shifts[8], uint64_t *grid_hash,
                  uint64_t *fingerprint);

/* Batch form: n states -> n grid hashes and n fingerprints. */
int ng_reflex_keys(int kind, const void *states, size_t n, const uint8_t shifts[8],
                   uint64_t *grid_hashes, uint64_t *fingerprints);

/* XXH3-64 (seed 0) of 17..128 bytes; exported so tests can compare it with xxhash. */
uint64_t ng_reflex_xxh3_64(const uint8_t *data, size_t len);

/* Segment geometry for a table of `capacity` reflexes: the caller allocates
 * *segment_count segments of *slots_per_segment * NG_REFLEX_SLOT_SIZE bytes.
 * slots_per_segment_hint: a power of two in [16, 2^20], or 0 for the default
 * (4096, smaller for small tables). Guarantees capacity <= 3/4 of the slots. */
int ng_reflex_geometry(uint64_t capacity, uint32_t slots_per_segment_hint,
                       uint32_t *slots_per_segment, uint32_t *segment_count);

/* Creates an empty writable table over `segment_count` segments (zeroed here),
 * each exactly slots_per_segment * NG_REFLEX_SLOT_SIZE bytes long. */
int ng_reflex_create(uint64_t capacity, const uint8_t shifts[8], uint32_t slots_per_segment,
                     uint32_t segment_count, uint8_t *const *segments, const size_t *segment_lengths,
                     ng_reflex_table **out);

/* Attaches to stored bytes: validates the header (magic, version, CRC, sizes,
 * counts, shifts) and that exactly the header's segment count was given, each of
 * the exact segment length. Slots are not scanned (O(1)); ng_reflex_check() does
 * the full scan. *reason (may be NULL) receives a static string naming the first
 * failed check. writable = 0: all writes fail with NG_EINVAL, and the segment
 * memory is never written (it may be a read-only mapping). */
int ng_reflex_attach(const uint8_t *header, size_t header_len, uint8_t *const *segments,
                     const size_t *segment_lengths, uint32_t segment_count, int writable,
                     ng_reflex_table **out, const char **reason);

void ng_reflex_free(ng_reflex_table *t);

int ng_reflex_info_get(const ng_reflex_table *t, ng_reflex_info *out);

/* Serialises the header (with its CRC) into out[0..127]. */
int ng_reflex_write_header(const ng_reflex_table *t, uint8_t *out, size_t out_len);

/* Upsert of one reflex for one state; *outcome (may be NULL) gets NG_REFLEX_*;
 * *evicted (may be NULL) gets the victim on NG_REFLEX_EVICTED/REPLACED. */
int ng_reflex_insert(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection,
                     int *outcome, ng_reflex_entry *evicted);

/* n upserts in order; outcomes (may be NULL) gets one NG_REFLEX_* per state.
 * Stops at the first error (the first *done states were applied). */
int ng_reflex_insert_batch(ng_reflex_table *t, int kind, const void *states, size_t n,
                           const uint8_t *connections, int8_t *outcomes, size_t *done);

/* Deletes the reflex of `state` whose identity (token_a, token_b, type) equals
 * connection's, or every reflex of the state if connection is NULL.
 * *deleted gets the count; NG_ENOTFOUND if it is 0. */
int ng_reflex_delete(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection,
                     uint32_t *deleted);
/* The same, by key: the grid hash and fingerprint of the state (as ng_reflex_export
 * reports them), for a caller that does not have the state. */
int ng_reflex_delete_key(ng_reflex_table *t, uint64_t grid_hash, uint64_t fingerprint,
                         const uint8_t *connection, uint32_t *deleted);

/* The main interface: n states, hash + fingerprint + probe in one call.
 * Per state i: status[i] = 0 unknown state, 1 reflex answered, 2 state known but
 * no candidate passed the thresholds; slot[i] = slot index of the answer or -1;
 * confidence[i], similarity[i] (= confidence/255), action[8 i .. 8 i + 7] (the
 * decoded target_vector) are 0 when nothing was answered. connections (may be
 * NULL) receives the answered 64-byte record (zeros otherwise). Prefetches. */
int ng_reflex_lookup_batch(const ng_reflex_table *t, int kind, const void *states, size_t n,
                           const ng_reflex_params *params, uint8_t *status, int64_t *slot,
                           uint8_t *confidence, float *similarity, float *action,
                           uint8_t *connections);

/* One state; returns the status (0, 1, 2) or a negative NG_E* code; on 1 fills
 * *out (may be NULL). Few arguments on purpose: each costs cffi time per call. */
int ng_reflex_lookup_one(const ng_reflex_table *t, int kind, const void *state,
                         const ng_reflex_params *params, ng_reflex_hit *out);

/* Benchmark helper: the same hash + probe per state as lookup_batch, in a plain
 * loop without prefetching and without per-state output; *answered counts
 * answers. Lets benchmarks measure what the Python call costs on top. */
int ng_reflex_bench_loop(const ng_reflex_table *t, int kind, const void *states, size_t n,
                         const ng_reflex_params *params, uint64_t *answered);

/* Cursor iteration: copies up to max live slots with index >= *cursor into out,
 * sets *n and advances *cursor past the last one returned (slot_count at end). */
int ng_reflex_export(const ng_reflex_table *t, uint64_t *cursor, ng_reflex_entry *out, size_t max,
                     size_t *n);

/* Full scan: state bytes, the live count, the Robin Hood ordering, the candidate
 * cap. NG_ECORRUPT with *bad_slot (may be NULL) = first offending slot, or
 * slot_count if only the live count disagrees. */
int ng_reflex_check(const ng_reflex_table *t, uint64_t *bad_slot);

/* Counters (NG_REFLEX_NSTATS of them, indices NG_REFLEX_STAT_*). */
int ng_reflex_stats(const ng_reflex_table *t, uint64_t *out, size_t n);
int ng_reflex_reset_stats(ng_reflex_table *t);

/* Dirty tracking for persistence: writes up to max indices of segments written
 * since the last call into out (ascending), *n = count, *header_dirty = 1 if the
 * header changed; clears what it reported. */
int ng_reflex_take_dirty(ng_reflex_table *t, uint32_t *out, size_t max, size_t *n,
                         int *header_dirty);

const char *ng_reflex_strerror(int code);

#endif
