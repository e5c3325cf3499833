/* similarity.h -- exact nearest tokens, box and ball filters, Z-order steps.
 *
 * Plain C99, no Python headers, status codes of ngcore.h. Every function validates all
 * of its arguments before it writes anything (on a non-zero status the outputs are
 * untouched), reads no byte outside the buffers it is given, allocates only scratch
 * memory it frees before returning, and holds no global state: safe without the GIL
 * while the buffers stay mapped.
 *
 * Token chunk values are the layout of ngcore.h / docs/format.md §3.2 (S records of 64
 * bytes, then a presence bitmap of S/8 bytes; S = 1 << slot_shift), with or without the
 * NG_CHECKSUM_BYTES trailer of a sealed value (never read here). A present record's
 * id is read from its own id field (offset 48). Coordinates are the 24 raw i16 at
 * offset 0 (layer L, axis A at byte 6L + 2A).
 *
 * Spatial index entries are docs/format.md §3.5: 10 bytes, id u32 LE, x, y, z i16 LE.
 */
#ifndef NG_SIMILARITY_H
#define NG_SIMILARITY_H

#include <stddef.h>
#include <stdint.h>

#define NG_METRIC_L2 0
#define NG_METRIC_COSINE 1

/* ---- Exact k nearest tokens -------------------------------------------------------
 *
 * For each of the nq queries (24 raw i16 each, queries + 24*i), the k present tokens
 * of the chunks nearest to it over the coordinates dims[0..ndims) (indexes 0..23,
 * strictly ascending, 1 <= ndims <= 24):
 *
 *   NG_METRIC_L2      squared Euclidean distance in raw units, computed exactly (every
 *                     partial sum is an integer below 2^53, held in a double);
 *   NG_METRIC_COSINE  1 - dot / (sqrt(|q|^2) * sqrt(|t|^2)) in double precision from
 *                     exact integer sums, clamped to [0, 2]; when either vector is all
 *                     zero the distance is 1, and 0 when both are.
 *
 * Order and ties: ascending distance, then ascending id -- exact and deterministic.
 * Row i of out_dist/out_ids (k entries each, at i*k) receives the *out_n = min(k,
 * present tokens) nearest, in that order. Returns NG_OK, NG_EINVAL (NULL pointer with a
 * non-zero count, bad slot_shift, metric, k or dims), NG_ERANGE (nq*k overflows),
 * NG_ECORRUPT (a chunk value of the wrong length) or NG_ENOMEM. */
int ng_knn_chunks(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                  unsigned slot_shift, const int16_t *queries, size_t nq, const uint8_t *dims,
                  unsigned ndims, int metric, size_t k, double *out_dist, uint32_t *out_ids,
                  size_t *out_n);

/* ---- Box and ball filters -----------------------------------------------------------
 *
 * A point p (3 raw i16) matches when lo[a] <= p[a] <= hi[a] for every axis a, and, when
 * center is not NULL, also (p - center)^2 summed over the axes (exact) <= r2.
 * The ids of the matching entries / present tokens are written to out_ids in the order
 * met (at most cap; NG_ERANGE if more match), *n_out their number. */

/* Over spatial index entries: nbufs buffers of lens[b] bytes, each a multiple of 10
 * (else NG_ECORRUPT). */
int ng_filter_entries(const uint8_t *const *ptrs, const uint64_t *lens, size_t nbufs,
                      const int16_t lo[3], const int16_t hi[3], const int16_t *center, double r2,
                      uint32_t *out_ids, size_t cap, size_t *n_out);

/* Over the present tokens of chunk values, with p = the coordinates of layer (0..7). */
int ng_filter_chunks(const uint8_t *const *chunk_ptrs, const uint64_t *chunk_lens, size_t nchunks,
                     unsigned slot_shift, unsigned layer, const int16_t lo[3], const int16_t hi[3],
                     const int16_t *center, double r2, uint32_t *out_ids, size_t cap, size_t *n_out);

/* ---- Z-order (docs/format.md §3.5) --------------------------------------------------
 *
 * 30-bit Morton codes of cells (cx, cy, cz), each 0..1023: bit i of cx is bit 3i.
 * The smallest code >= z whose cell lies in the box lo..hi (cell coordinates, lo <= hi
 * on each axis) -- z itself when its cell is inside. NG_OK with *out set, NG_ENOTFOUND
 * when no code >= z is inside, NG_EINVAL for bad arguments (z >= 2^30, lo > hi, a
 * coordinate above 1023, NULL). */
int ng_zorder_next_in_box(uint32_t z, const uint16_t lo[3], const uint16_t hi[3], uint32_t *out);

/* The spatial index entries (docs/format.md §3.5) of n tokens in one layer, in ascending
 * sort-key order: ids[0..n) strictly ascending (else NG_EINVAL), coords the tokens'
 * 24 raw coordinates each (coords + 24*i), of which layer's three are used. Writes n
 * 10-byte entries to out_entries and their sort keys (Z << 32 | id) to out_keys. A
 * stable radix sort on Z (30 bits, three passes) keeps ascending ids within a Z: O(n). */
int ng_spatial_entries(const uint32_t *ids, const int16_t *coords, size_t n, unsigned layer,
                       uint8_t *out_entries, uint64_t *out_keys);

/* The sort keys (Z << 32 | id) of n spatial index entries (10 bytes each, any alignment). */
int ng_spatial_keys(const uint8_t *entries, size_t n, uint64_t *out_keys);

#endif
