/* graph.h -- breadth-first walks over the connections, read straight from LMDB's pages.
 *
 * Plain C99, no Python headers, status codes of ngcore.h; no global state; safe without
 * the GIL while the caller's read transaction keeps the pages mapped.
 *
 * Why read LMDB's pages here: a walk touches a node's connections by a prefix scan of
 * `connections` (key a BE | b BE | type) and of `conn_by_b` (b | a | type); through
 * py-lmdb each step of a scan costs a Python call (~0.3 us), more than a whole Python BFS
 * step over an adjacency dict. A read transaction's B-tree is immutable and mapped, so C
 * can walk it at memory speed. This reads LMDB's on-disk layout (lmdb.h, mdb.c, stable
 * since LMDB 0.9 and already relied on by the checkpoint file, docs/format.md §4.1):
 *
 *   page (psize bytes at map + pgno * psize):
 *     pgno u64 @0 | pad u16 @8 | flags u16 @10 | lower u16 @12 | upper u16 @14 |
 *     node offsets u16[(lower - 16) / 2] @16, ascending key order
 *     flags: 0x01 branch, 0x02 leaf (0x04 overflow, 0x20 leaf2, 0x40 sub-page: refused)
 *   node (at page + offset, offset >= upper):
 *     lo u16 @0 | hi u16 @2 | flags u16 @4 | ksize u16 @6 | key @8 | data after the key
 *     branch: child pgno = lo | hi << 16 | flags << 32 (node 0's key is empty: -infinity)
 *     leaf:   data size = lo | hi << 16; node flag 0x01 (F_BIGDATA): data is an overflow pgno
 *   a named database's root pgno: its record in the main database (MDB_db, 48 bytes,
 *   md_root u64 @40), as of the read transaction; (uint64_t)-1: the database is empty.
 *
 * Every page number is checked against the mapped length, every offset and size against
 * the page, the depth against 32: corrupt or unexpected bytes give NG_ECORRUPT, never a
 * read outside the map.
 */
#ifndef NG_GRAPH_H
#define NG_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#define NG_WALK_OUT 1u /* follow (a -> b): a's entries of `connections` */
#define NG_WALK_IN 2u  /* follow (b -> a): b's entries of `conn_by_b` */

/* Multi-source breadth-first walk to depth k from seeds[0..nseeds) (any order,
 * duplicates allowed). map/map_len: the mapped data file (page 0 at map); psize: LMDB's
 * page size (512..65536, a power of two); fwd_root/rev_root: the root pages of
 * `connections` and `conn_by_b` ((uint64_t)-1: empty). A connection is followed when
 * its type's bit is set in type_mask (bit t of byte t >> 3) and, with use_min, when its
 * pull_strength (f32 @16 of the record) >= min_strength; in direction NG_WALK_IN with
 * use_min the record is found by its forward key. With both directions a
 * self-connection is followed once.
 *
 * Writes the ids reached to out_ids and their depth to out_depth in the order reached
 * (seeds first, depth 0); *n_out = how many were reached. If more than cap are reached,
 * returns NG_ERANGE with *n_out = the number needed (the outputs hold the first cap).
 * Returns NG_OK, NG_EINVAL, NG_ERANGE, NG_ECORRUPT or NG_ENOMEM. */
int ng_graph_walk(const uint8_t *map, uint64_t map_len, unsigned psize, uint64_t fwd_root,
                  uint64_t rev_root, const uint32_t *seeds, size_t nseeds, unsigned k,
                  unsigned direction, const uint8_t type_mask[32], int use_min, double min_strength,
                  uint32_t *out_ids, uint32_t *out_depth, size_t cap, size_t *n_out);

#endif
