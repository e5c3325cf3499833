/* reflex.h -- the persistent reflex table: the manual.
 *
 * A reflex is a 64-byte Connection v3 record (its target_vector is the action) stored
 * with the SOURCE STATE it answers (24 raw i16 coordinates). Reflexes are filed under the
 * state's grid cell (its coordinates with the low per-layer shift bits cleared), found
 * through an open-addressing Robin Hood index of 8-byte entries, and kept in a dense
 * array of 128-byte records. Index and records live in caller-provided memory cut into
 * equal SEGMENTS, so that a table can be stored as LMDB values and persisted one changed
 * segment at a time. The bytes, the probing, the growth and the eviction rules are
 * specified in docs/format.md §7 (format version 2); reflex.c opens with the same essay
 * from the code's side.
 *
 * Status codes: every function returning int returns NG_OK (0) or a negative NG_E* code
 * of ngcore.h (lookups return a non-negative status instead of NG_OK); ng_strerror()
 * names them.
 *   NG_EINVAL    bad argument: NULL pointer, bad kind, shift > 15, NaN threshold, a
 *                write on a read-only table, a rebuild into a non-empty table.
 *   NG_ENOMEM    malloc of a handle or of a scratch array failed.
 *   NG_EFULL     an insert needs a new record but live == room < capacity (or its
 *                probe would exceed the maximum distance): nothing was changed; rebuild
 *                the table into a larger geometry (ng_reflex_rebuild) and retry.
 *   NG_ECORRUPT  stored bytes fail a structural check (header CRC or fields, an entry
 *                naming a record >= live, a cell with more than 4 candidates). Never a
 *                crash: every address comes from an index below the allocated count,
 *                checked at create/attach, and every probe loop is bounded.
 *   NG_ENOTFOUND delete of something not present.
 *   NG_ERANGE    a size, geometry or index out of range.
 *
 * LIFETIMES. A handle does not own its segment memory. Segments passed to create/attach
 * must stay valid, unmoved and (for a writable table) writable until ng_reflex_free();
 * for a table attached over LMDB values that means: until the read transaction that
 * mapped them ends. The header bytes are read only during attach. Results written by
 * lookups and exports are copies.
 *
 * THREADS. Any number of threads may run lookups (ng_reflex_lookup_*, bench_loop,
 * export, check, stats, info) on one handle concurrently: they never write to the
 * segments; their counters are added with relaxed atomic adds once per call. An
 * ng_reflex_ctx is used by one thread at a time. WRITES (insert, delete, rebuild into,
 * take_dirty, reset_stats) must be serialised by the caller. A write that runs while
 * lookups run on the same handle cannot make them read outside the segments (record
 * numbers are checked against the allocation, loops are bounded), but they may see a
 * torn record; the Python layer publishes new tables instead (copy, then swap).
 */
#ifndef NG_REFLEX_H
#define NG_REFLEX_H

#include <stddef.h>
#include <stdint.h>

#include "ngcore.h"

#define NG_REFLEX_HEADER_SIZE 256
#define NG_REFLEX_RECORD_SIZE 128
#define NG_REFLEX_ENTRY_SIZE 8
#define NG_REFLEX_FORMAT_VERSION 2
#define NG_REFLEX_MAX_CANDIDATES 4 /* reflexes kept per cell */
#define NG_REFLEX_EVICT_WINDOW 32  /* records examined to choose a victim */
#define NG_REFLEX_MAX_DIST 255     /* stored dist = 1 + probe distance */

/* Kinds of state passed to lookups, inserts and deletes. */
#define NG_REFLEX_STATE_F32 0    /* 8 float32 per state (X axes; Y = Z = 0), any alignment */
#define NG_REFLEX_STATE_TOKEN 1  /* 64-byte Token records (coordinates at 0)            */
#define NG_REFLEX_STATE_COORDS 2 /* 24 int16 per state, layer-major, native byte order  */

/* Outcomes of an insert. */
#define NG_REFLEX_INSERTED 1 /* a new record was added                                  */
#define NG_REFLEX_UPDATED 2  /* same (cell, identity): record and source state replaced  */
#define NG_REFLEX_EVICTED 3  /* live == capacity: a victim was evicted, then inserted    */
#define NG_REFLEX_REPLACED 4 /* the cell had MAX_CANDIDATES: the weakest was replaced    */

/* Bits of a lookup status (docs/format.md §7.7): 0 unknown cell, 2 known but not
 * answered, 3 answered by the exact path, 5 or 7 answered by the nearest fallback. */
#define NG_REFLEX_ANSWERED 1
#define NG_REFLEX_KNOWN 2
#define NG_REFLEX_BY_FALLBACK 4

/* Counter indices of ng_reflex_stats(); in the handle only (not persisted), since
 * create/attach or the last reset; a rebuild copies them into the new handle. */
#define NG_REFLEX_STAT_LOOKUPS 0          /* states looked up                              */
#define NG_REFLEX_STAT_HITS 1             /* the query's cell holds a reflex                */
#define NG_REFLEX_STAT_MISSES 2           /* it does not                                   */
#define NG_REFLEX_STAT_ANSWERS 3          /* answered, exact path or fallback              */
#define NG_REFLEX_STAT_COLLISIONS 4       /* the cell held more than one candidate         */
#define NG_REFLEX_STAT_CANDIDATES 5       /* candidates of the query's cell examined       */
#define NG_REFLEX_STAT_INSERTS 6
#define NG_REFLEX_STAT_UPDATES 7
#define NG_REFLEX_STAT_DELETES 8
#define NG_REFLEX_STAT_EVICTIONS 9        /* NG_REFLEX_EVICTED and NG_REFLEX_REPLACED      */
#define NG_REFLEX_STAT_FALLBACK_ANSWERS 10 /* of ANSWERS, those of the nearest fallback    */
#define NG_REFLEX_STAT_FALLBACK_CELLS 11  /* neighbour cells probed by the fallback        */
#define NG_REFLEX_STAT_FALLBACK_SCANS 12  /* fallbacks that scanned every record instead   */
#define NG_REFLEX_STAT_TIME_NS 13         /* nanoseconds spent in timed lookups            */
#define NG_REFLEX_STAT_TIMED 14           /* states those timed lookups covered            */
#define NG_REFLEX_NSTATS 15

typedef struct ng_reflex_table ng_reflex_table; /* opaque; malloc'd by create/attach */

/* How a table's memory is cut: R records per record segment, E index entries per index
 * segment; the segment list is the record segments, then the index segments. */
typedef struct {
    uint32_t records_per_segment; /* R: a power of two in 16..2^16   */
    uint32_t record_segments;     /* 1..2^24                         */
    uint32_t entries_per_segment; /* E: a power of two in 16..2^20   */
    uint32_t index_segments;      /* 1..2^24                         */
} ng_reflex_geometry;

/* Read-only description of a table. */
typedef struct {
    uint64_t capacity;      /* max live reflexes                                   */
    uint64_t room;          /* live reflexes the allocation holds before a rebuild */
    uint64_t live_count;
    uint64_t tick;          /* next write tick                                     */
    uint64_t records;       /* records allocated                                   */
    uint64_t slots;         /* index slots                                         */
    uint64_t segment_bytes; /* bytes of all segments                               */
    uint64_t handle_bytes;  /* bytes malloc'd for the handle                       */
    ng_reflex_geometry geometry;
    uint32_t segment_count; /* record_segments + index_segments                    */
    uint32_t writable;
    uint8_t shifts[8];
    int16_t box_min[24];
    int16_t box_max[24];
} ng_reflex_info;

/* Lookup parameters (upstream FastPathConfig defaults 150, 200, 0.85; fallback off). */
typedef struct {
    uint32_t min_confidence;       /* eligible if confidence >= this                   */
    uint32_t hypothesis_threshold; /* mutability 2 also needs confidence >= this       */
    double similarity_threshold;   /* eligible if similarity > this                    */
    double fallback_radius;        /* grid cells; <= 0: no nearest fallback            */
    uint64_t fallback_budget;      /* cells probed before scanning instead; 0: default */
} ng_reflex_params;

/* The answer of one lookup (112 bytes; the layout is mirrored by ngstore.reflex). */
typedef struct {
    float similarity;       /* token similarity of the query and the source state  */
    float distance;         /* in grid cells (format §7.7)                         */
    uint32_t status;        /* NG_REFLEX_ANSWERED | KNOWN | BY_FALLBACK bits       */
    uint32_t record;        /* record number of the answer                         */
    float action[8];        /* decoded target_vector                               */
    uint8_t connection[64]; /* the Connection v3 record                            */
} ng_reflex_hit;

/* Per-thread context of single lookups: few cffi arguments per call, no allocation. */
typedef struct {
    const ng_reflex_table *table;
    uint64_t calls; /* lookups made through this context (1 in 64 is timed) */
    ng_reflex_hit out;
} ng_reflex_ctx;

/* One reflex as exported by ng_reflex_export or reported by an eviction (144 bytes). */
typedef struct {
    uint64_t record;      /* record number (for an eviction: where the victim was) */
    uint64_t grid_hash;   /* of the source state                                    */
    uint64_t fingerprint; /* of the source state's cell                             */
    uint64_t tick;        /* write tick of the last insert/update                   */
    uint8_t connection[64];
    int16_t state[24];    /* the source state                                       */
} ng_reflex_entry;

/* ---- keys and measures (no table) */

/* The grid hash and fingerprint of one state / of n states of `kind`. */
int ng_reflex_key(int kind, const void *state, const uint8_t shifts[8], uint64_t *grid_hash,
                  uint64_t *fingerprint);
int ng_reflex_keys(int kind, const void *states, size_t n, const uint8_t shifts[8],
                   uint64_t *grid_hashes, uint64_t *fingerprints);
/* XXH3-64 (seed 0) of 17..128 bytes (0 for other lengths); exported for conformance tests. */
uint64_t ng_reflex_xxh3_64(const uint8_t *data, size_t len);
/* Similarity and distance of two states of 24 raw i16 (any alignment), format §7.7.
 * NaN when a pointer is NULL (or, for the distance, a shift exceeds 15). */
double ng_reflex_similarity(const void *a, const void *b);
double ng_reflex_distance(const void *a, const void *b, const uint8_t shifts[8]);

/* ---- geometry, create, attach, rebuild */

/* The geometry for a table that must hold `room` reflexes. Hints: 0 for the defaults
 * (R = 512 and E = 8192, smaller for small tables), else a power of two in range. */
int ng_reflex_plan_geometry(uint64_t room, uint32_t records_per_segment_hint,
                            uint32_t entries_per_segment_hint, ng_reflex_geometry *out);

/* An empty writable table of `capacity` over segment_count = R-segments + E-segments
 * segments of the exact lengths of `g` (zeroed here). */
int ng_reflex_create(uint64_t capacity, const uint8_t shifts[8], const ng_reflex_geometry *g,
                     uint8_t *const *segments, const size_t *segment_lengths, uint32_t segment_count,
                     ng_reflex_table **out);

/* Attaches to stored bytes: validates the 256-byte header (magic, version, CRC, every
 * field) and the number and lengths of the segments (O(1): records and entries are not
 * scanned; ng_reflex_check does that). *reason (may be NULL) names the first failed check.
 * writable = 0: writes fail with NG_EINVAL and the memory is never written (it may be a
 * read-only mapping). A header of another format version (version 1 among them) fails
 * with NG_ERANGE before any other check but the magic. */
int ng_reflex_attach(const uint8_t *header, size_t header_len, uint8_t *const *segments,
                     const size_t *segment_lengths, uint32_t segment_count, int writable,
                     ng_reflex_table **out, const char **reason);

/* Copies every live reflex of src, in record order, into dst, which must be empty,
 * writable and have the same shifts; builds dst's index and box; dst's tick becomes the
 * larger of the two and src's counters are copied. NG_EFULL if src's live > dst's room. */
int ng_reflex_rebuild(const ng_reflex_table *src, ng_reflex_table *dst);

void ng_reflex_free(ng_reflex_table *t);

int ng_reflex_info_get(const ng_reflex_table *t, ng_reflex_info *out);

/* Serialises the header (with its CRC) into out[0..255]. */
int ng_reflex_write_header(const ng_reflex_table *t, uint8_t *out, size_t out_len);

/* ---- writes */

/* Upsert of one reflex; *outcome (may be NULL) gets NG_REFLEX_*; *evicted (may be NULL)
 * gets the victim on NG_REFLEX_EVICTED / REPLACED. NG_EFULL: nothing changed. */
int ng_reflex_insert(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection,
                     int *outcome, ng_reflex_entry *evicted);

/* n upserts in order; outcomes (may be NULL) gets one NG_REFLEX_* per state. Stops at
 * the first error; *done = states applied (on NG_EFULL the caller rebuilds and resumes
 * at *done). */
int ng_reflex_insert_batch(ng_reflex_table *t, int kind, const void *states, size_t n,
                           const uint8_t *connections, int8_t *outcomes, size_t *done);

/* What an insert_batch of these n reflexes would do, without writing: *new_records =
 * how many new reflexes it adds (updates of an existing (cell, identity), in the table
 * or earlier in the batch, add none); *first_eviction = the index of the first item that
 * would evict or replace a reflex, or -1 if none would (then *new_records is exact and
 * live + *new_records <= capacity). Exact: items before the first eviction behave as
 * simulated. Allocates scratch memory (NG_ENOMEM). */
int ng_reflex_plan_insert(const ng_reflex_table *t, int kind, const void *states, size_t n,
                          const uint8_t *connections, uint64_t *new_records, int64_t *first_eviction);

/* Deletes the reflex of `state`'s cell whose identity (token_a, token_b, type) equals
 * connection's, or every reflex of the cell if connection is NULL. *deleted gets the
 * count; NG_ENOTFOUND if it is 0. */
int ng_reflex_delete(ng_reflex_table *t, int kind, const void *state, const uint8_t *connection,
                     uint32_t *deleted);
/* The same, by key: the grid hash and fingerprint of the cell (as ng_reflex_export
 * reports them), for a caller that does not have the state. */
int ng_reflex_delete_key(ng_reflex_table *t, uint64_t grid_hash, uint64_t fingerprint,
                         const uint8_t *connection, uint32_t *deleted);

/* ---- lookups */

/* The main interface: n states, one call. Per state i: status[i] (NG_REFLEX_* bits),
 * record[i] = the answer's record number or -1, confidence[i], similarity[i],
 * distance[i] (may be NULL), action[8 i .. 8 i + 7] = the decoded target_vector; all 0
 * when nothing was answered. connections (may be NULL) receives the answered 64-byte
 * record (zeros otherwise). Output arrays must be aligned for their types. Hashes a
 * block of states, prefetches their index lines, probes, prefetches the records, then
 * evaluates (format §7.7). */
int ng_reflex_lookup_batch(const ng_reflex_table *t, int kind, const void *states, size_t n,
                           const ng_reflex_params *params, uint8_t *status, int64_t *record,
                           uint8_t *confidence, float *similarity, float *distance, float *action,
                           uint8_t *connections);

/* One state, 8 floats as arguments (the cheapest call from Python): returns the status
 * (>= 0; ctx->out is filled when bit NG_REFLEX_ANSWERED is set) or a negative NG_E*. */
int ng_reflex_lookup_f32(ng_reflex_ctx *ctx, const ng_reflex_params *params, float s0, float s1,
                         float s2, float s3, float s4, float s5, float s6, float s7);
/* One state of any kind; same results. */
int ng_reflex_lookup_one(ng_reflex_ctx *ctx, const ng_reflex_params *params, int kind,
                         const void *state);
/* lookup_one under the name whose Python wrapper releases the GIL: the wrappers of the two
 * above keep it (build_ffi.py), which a lookup without a fallback radius can afford (a
 * bounded probe of one cell); a fallback may probe many cells or scan every record, and
 * goes through this one. (ngstore._fastpath calls ng_reflex_lookup_f32 directly and
 * releases the GIL itself for a fallback.) */
int ng_reflex_lookup_one_released(ng_reflex_ctx *ctx, const ng_reflex_params *params, int kind,
                                  const void *state);

/* Benchmark helper: the per-state work of lookup_one in a plain loop (no prefetching, no
 * per-state output); *answered counts answers. */
int ng_reflex_bench_loop(const ng_reflex_table *t, int kind, const void *states, size_t n,
                         const ng_reflex_params *params, uint64_t *answered);

/* ---- iteration, check, counters, persistence */

/* Cursor iteration over records: copies up to max live reflexes with record number >=
 * *cursor into out, sets *n and advances *cursor (live at the end). */
int ng_reflex_export(const ng_reflex_table *t, uint64_t *cursor, ng_reflex_entry *out, size_t max,
                     size_t *n);

/* Full scan (format §7.3-7.6 invariants). NG_ECORRUPT with *segment and *offset (may be
 * NULL) locating the first bad record or entry (segment = segment_count when only the
 * header's counts disagree) and *reason (may be NULL) naming the rule. NG_ENOMEM: the
 * scratch bitmap could not be allocated. */
int ng_reflex_check(const ng_reflex_table *t, uint64_t *segment, uint64_t *offset, const char **reason);

int ng_reflex_stats(const ng_reflex_table *t, uint64_t *out, size_t n);
int ng_reflex_reset_stats(ng_reflex_table *t);

/* Dirty tracking for persistence: writes up to max indices of segments written since the
 * last call into out (ascending), *n = count, *header_dirty = 1 if the header changed;
 * clears what it reported. */
int ng_reflex_take_dirty(ng_reflex_table *t, uint32_t *out, size_t max, size_t *n,
                         int *header_dirty);

const char *ng_reflex_strerror(int code);

#endif
