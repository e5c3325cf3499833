/* wal.h -- the log's small-record writer: frame one record and write it, in one call.
 *
 * The frame is the one docs/format.md section 6 defines (ngstore/wal.py writes the same
 * bytes for every other record):
 *
 *   0  u32 crc       CRC-32 (zlib's polynomial) of bytes 4..40 followed by the payload
 *   4  u32 stored    payload bytes as stored (here: == raw, never compressed)
 *   8  u64 salt      the segment's salt
 *  16  u64 position  the record's log position
 *  24  u64 synced    the position durable when the record was written
 *  32  u8  type, u8 flags (0 here), u16 reserved (0)
 *  36  u32 raw       payload bytes before compression
 *
 * All little-endian. Plain C99 and POSIX; no Python headers.
 */
#ifndef NG_WAL_H
#define NG_WAL_H

#include <stddef.h>
#include <stdint.h>

#define NG_WAL_FRAME_HEADER 40

/* CRC-32 (polynomial 0xEDB88320, zlib's crc32) of p[0..n), continuing from crc
 * (0 to start): ng_crc32(b, n2, ng_crc32(a, n1, 0)) is the CRC of a then b. */
uint32_t ng_crc32(const void *p, size_t n, uint32_t crc);

/* Writes, at offset `offset` of `fd`: the 40-byte frame header of `payload`
 * (len bytes, stored uncompressed, flags 0), the payload, then `zeros` zero bytes
 * (the log's zero runway). One pwritev unless the kernel writes short or a signal
 * interrupts it (both continue where it stopped). Returns 0, or -errno of the
 * failed write: then any prefix of the bytes may be on the file. */
int ng_wal_write_frame(int fd, int64_t offset, const char *payload, uint32_t len, uint64_t salt,
                       uint64_t position, uint64_t synced, unsigned type, uint64_t zeros);

/* The active segment mapped shared, read-write, `length` bytes from offset 0 (it may
 * extend past the file's end: only bytes inside the file may be touched). NULL on
 * failure, errno set. On Linux, an fdatasync of the file writes back what was stored
 * through the mapping (one page cache), so a record put there is as durable as a
 * written one after the same fdatasync, and survives a process crash at once. */
void *ng_wal_map(int fd, uint64_t length);
int ng_wal_unmap(void *map, uint64_t length); /* 0, or -errno */

/* Stores the frame of `payload` (as ng_wal_write_frame, without a zero runway) at
 * map + offset. `limit`: the bytes of the mapping that lie inside the file (and are
 * zero past the log's end); NG_ERANGE, with nothing stored, when the frame would pass
 * it. The CRC is stored last: a frame interrupted before it is torn, never valid. */
int ng_wal_put_frame(uint8_t *map, uint64_t limit, uint64_t offset, const char *payload, uint32_t len,
                     uint64_t salt, uint64_t position, uint64_t synced, unsigned type);

#endif
