"""Every on-disk name, key and small codec of a store (``docs/format.md`` §1, §3, §4).

This module is the one owner of the bytes it describes: the directory's file names, the
marker and state files, the names of the LMDB databases and the keys inside them, the
``meta`` counters, the token chunk layout, and the checkpoint file (which embeds a copy
of one LMDB meta page, so the two LMDB meta-page fields we read are here too). Writers
and readers of those bytes call these functions; nothing else packs or parses them.
The write-ahead log's bytes belong to ``wal`` (§6), the batch payload's to ``ops`` (§5)
and the reflex table's to ``csrc/reflex.c`` (§7).

Everything here is pure: no file or LMDB access, only bytes in and values out. A value
that fails a rule raises :class:`CorruptionError` (or :class:`FormatVersionError` when it
is well-formed but newer than this code).
"""
from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import xxhash

from .errors import CorruptionError, FormatVersionError, NotAStoreError

# -- the directory (§1) ------------------------------------------------------------------

#: The store format version; a reader refuses a newer one with FormatVersionError.
FORMAT_VERSION = 2

MARKER_FILE = "NGSTORE"
STATE_FILE = "state"
WRITER_LOCK = "writer.lock"
READERS_LOCK = "readers.lock"
WAL_DIR = "wal"
CHECKPOINT_FILE = "checkpoint"
DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"

#: Suffix of the temporary a file is written to before it is renamed into place.
TMP_SUFFIX = ".tmp"

#: The black-box ring and the writer's stats page (their bytes: ``obs``, format.md §8).
BLACKBOX_RING = "blackbox.ring"
STATS_PAGE = "stats.page"

#: Files ngstore itself creates in a store directory (with the temporaries of the ones
#: written atomically): a directory holding anything else and no marker is foreign, never
#: (re)created over.
OWN_FILES = frozenset({
    MARKER_FILE, STATE_FILE, WRITER_LOCK, READERS_LOCK, WAL_DIR, CHECKPOINT_FILE, DATA_FILE,
    LMDB_LOCK_FILE, BLACKBOX_RING, STATS_PAGE,
    MARKER_FILE + TMP_SUFFIX, CHECKPOINT_FILE + TMP_SUFFIX, STATE_FILE + TMP_SUFFIX,
})
#: Black-box dumps (``blackbox-*.json[.zst]`` and their temporaries) are ours too.
DUMP_PREFIX = "blackbox-"


def is_own_file(name: str) -> bool:
    return name in OWN_FILES or name.startswith(DUMP_PREFIX)

_MARKER_TEXT = "ngstore store directory\nformat {version}\n"


def encode_marker(version: int = FORMAT_VERSION) -> bytes:
    return _MARKER_TEXT.format(version=version).encode("ascii")


def decode_marker(data: bytes, where: str) -> int:
    """The format version a marker names; NotAStoreError if it is not a marker,
    FormatVersionError if the version is newer than this code reads."""
    lines = data.decode("utf-8", "replace").splitlines()
    if len(lines) < 2 or not lines[0].startswith("ngstore") or not lines[1].startswith("format "):
        raise NotAStoreError(f"{where}: {MARKER_FILE} is not an ngstore marker")
    try:
        version = int(lines[1].split()[1])
    except (IndexError, ValueError) as exc:
        raise NotAStoreError(f"{where}: unreadable format line in {MARKER_FILE}") from exc
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} has store format {version}; this ngstore reads format "
            f"{FORMAT_VERSION} and older -- upgrade ngstore to open it")
    return version


@dataclass(frozen=True)
class WriterState:
    """The ``state`` file (§4.2): whether the last writer closed cleanly, and on which boot
    of the machine it wrote. ``boot_id`` None means "could not be read"."""

    clean: bool
    boot_id: str | None
    pid: int = 0


def encode_state(state: WriterState) -> bytes:
    return json.dumps({"clean": state.clean, "boot_id": state.boot_id, "pid": state.pid}).encode()


def decode_state(data: bytes | None) -> WriterState:
    """A missing file (``None``) is a clean state; an unreadable one is unclean with an
    unknown boot (so recovery assumes the machine went down)."""
    if data is None:
        return WriterState(clean=True, boot_id=None)
    unknown = WriterState(clean=False, boot_id=None)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
        return unknown
    # Only the writer's own JSON counts: {"clean": "no"} is not clean, and a pid of 1e999
    # is not a pid.
    if not isinstance(obj, dict):
        return unknown
    clean, boot, pid = obj.get("clean"), obj.get("boot_id"), obj.get("pid", 0)
    if not isinstance(clean, bool) or not (boot is None or isinstance(boot, str)) or \
            not isinstance(pid, int) or isinstance(pid, bool):
        return unknown
    return WriterState(clean=clean, boot_id=boot or None, pid=pid)


# -- LMDB databases and keys (§3) ----------------------------------------------------------

DB_META = b"meta"
DB_TOKENS = b"tokens"
DB_CONNECTIONS = b"connections"
DB_CONN_REVERSE = b"conn_by_b"
DB_EVENTS = b"events"
DB_REFLEXES = b"reflexes"
DB_LEARN = b"learn"
DB_SPATIAL = b"spatial"
DB_OUTCOMES = b"outcomes"
ALL_DBS = (DB_META, DB_TOKENS, DB_CONNECTIONS, DB_CONN_REVERSE, DB_EVENTS, DB_REFLEXES, DB_LEARN, DB_SPATIAL,
           DB_OUTCOMES)
#: The databases whose values carry a checksum trailer (§3.0): all but the empty-valued index.
SEALED_DBS = (DB_META, DB_TOKENS, DB_CONNECTIONS, DB_EVENTS, DB_REFLEXES, DB_LEARN, DB_SPATIAL)

_CONN_KEY = struct.Struct(">IIB")
#: bytes of a ``connections`` key (``conn_key``): 9
CONN_KEY_BYTES = _CONN_KEY.size
_SEQ_KEY = struct.Struct(">Q")
_CHUNK_KEY = struct.Struct(">I")
_U64 = struct.Struct("<Q")


def conn_key(a: int, b: int, connection_type: int) -> bytes:
    """``connections`` key: token_a ‖ token_b ‖ type, big-endian (canonical a ≤ b)."""
    return _CONN_KEY.pack(a, b, connection_type)


def conn_reverse_key(a: int, b: int, connection_type: int) -> bytes:
    """``conn_by_b`` key of connection (a, b, type): b ‖ a ‖ type."""
    return _CONN_KEY.pack(b, a, connection_type)


def conn_key_fields(key: bytes) -> tuple[int, int, int]:
    a, b, t = _CONN_KEY.unpack(key)
    return int(a), int(b), int(t)


def forward_of_reverse(key: bytes) -> bytes:
    """The ``connections`` key a ``conn_by_b`` key points at."""
    return key[4:8] + key[0:4] + key[8:9]


def event_key(sequence: int) -> bytes:
    return _SEQ_KEY.pack(sequence)


def event_sequence(key: bytes | memoryview) -> int:
    return int(_SEQ_KEY.unpack(bytes(key))[0])


REFLEX_HEADER_KEY = b"H"


def reflex_segment_key(index: int) -> bytes:
    return b"S" + _CHUNK_KEY.pack(index)


# -- known outcomes (`outcomes`, §3.6) -------------------------------------------------------

#: Bytes of a key digest (XXH3-128).
DIGEST_BYTES = 16
OUTCOMES_HEADER_KEY = b"H"
#: ``first_event`` of a batch that appended no event.
NO_EVENT = (1 << 64) - 1
_OUTCOMES_HEADER = struct.Struct("<QQ")   # next_seq, held
_OUTCOME_VALUE = struct.Struct("<QQQ")    # position, sequence, first_event
OUTCOME_KEY_BYTES = 1 + DIGEST_BYTES      # 17
OUTCOME_ORDER_KEY_BYTES = 1 + _SEQ_KEY.size  # 9
OUTCOME_VALUE_BYTES = _OUTCOME_VALUE.size    # 24
OUTCOMES_HEADER_BYTES = _OUTCOMES_HEADER.size  # 16
ORDER_PREFIX = b"Q"


def outcome_key(digest: bytes) -> bytes:
    """``outcomes`` key of a key digest: ``K`` ‖ digest."""
    return b"K" + digest


def outcome_order_key(sequence: int) -> bytes:
    """``outcomes`` key of an order-index entry: ``Q`` ‖ sequence u64 BE."""
    return ORDER_PREFIX + _SEQ_KEY.pack(sequence)


def outcome_order_sequence(key: bytes | memoryview) -> int:
    raw = bytes(key)
    if len(raw) != OUTCOME_ORDER_KEY_BYTES or raw[:1] != ORDER_PREFIX:
        raise CorruptionError(f"outcomes key {raw.hex()} is not an order-index key")
    return int(_SEQ_KEY.unpack_from(raw, 1)[0])


@dataclass(frozen=True)
class OutcomesHeader:
    """``outcomes/H``: the next sequence number and the keys held (absent = zeros)."""

    next_seq: int = 0
    held: int = 0

    @property
    def forgotten(self) -> int:
        """Keys recorded and since evicted (oldest first)."""
        return self.next_seq - self.held

    def encode(self) -> bytes:
        return _OUTCOMES_HEADER.pack(self.next_seq, self.held)

    @staticmethod
    def decode(value: bytes | memoryview | None, where: str) -> OutcomesHeader:
        if value is None:
            return OutcomesHeader()
        if len(value) != _OUTCOMES_HEADER.size:
            raise CorruptionError(f"{where}: the outcomes header is {len(value)} bytes, "
                                  f"expected {_OUTCOMES_HEADER.size}")
        next_seq, held = _OUTCOMES_HEADER.unpack(bytes(value))
        if held > next_seq:
            raise CorruptionError(f"{where}: the outcomes header holds {held} keys of {next_seq} recorded")
        return OutcomesHeader(int(next_seq), int(held))


@dataclass(frozen=True)
class KnownOutcome:
    """What the store remembers of a committed keyed batch (``outcomes/K`` ‖ digest):
    its log position, its order-index sequence, and the sequence number of the first
    event it appended (None: it appended none)."""

    position: int
    sequence: int
    first_event: int | None

    def encode(self) -> bytes:
        return _OUTCOME_VALUE.pack(self.position, self.sequence,
                                   NO_EVENT if self.first_event is None else self.first_event)

    @staticmethod
    def decode(value: bytes | memoryview, where: str) -> KnownOutcome:
        if len(value) != _OUTCOME_VALUE.size:
            raise CorruptionError(f"{where}: an outcome is {len(value)} bytes, expected {_OUTCOME_VALUE.size}")
        position, sequence, first = _OUTCOME_VALUE.unpack(bytes(value))
        return KnownOutcome(int(position), int(sequence), None if first == NO_EVENT else int(first))


# -- value checksums (§3.0) ------------------------------------------------------------------

#: Bytes of the trailer after a value's record region.
CHECKSUM_BYTES = 8

#: ``ngstore.open(verify=...)``: which reads verify the trailers of the values they use.
VERIFY_MODES = ("off", "read", "always")

#: The seed of each database's checksums: a value moved to another database fails.
_DOMAIN = {db: xxhash.xxh3_64_intdigest(b"ngstore:" + db) for db in SEALED_DBS}

#: Below this many bytes a region and its key are joined and hashed in one call; above,
#: streamed (joining a 64 KiB chunk would copy it, which costs as much as hashing it).
_JOIN_BELOW = 4096


def value_checksum(db: bytes, key: bytes, region: Any) -> int:
    """XXH3-64 of ``region`` ‖ ``key`` with the seed of database ``db`` (§3.0)."""
    if len(region) < _JOIN_BELOW:
        return int(xxhash.xxh3_64_intdigest(bytes(region) + key, seed=_DOMAIN[db]))
    h = xxhash.xxh3_64(seed=_DOMAIN[db])
    h.update(region)
    h.update(key)
    return int(h.intdigest())


def seal(db: bytes, key: bytes, region: bytes | bytearray | memoryview) -> bytes:
    """The value to store for ``region`` under ``key`` of ``db``: region, then trailer."""
    return bytes(region) + _U64.pack(value_checksum(db, key, region))


def seal_into(db: bytes, key: bytes, buf: bytearray, region_bytes: int) -> bytearray:
    """Writes the trailer of ``buf[:region_bytes]`` into ``buf[region_bytes:]`` (a buffer
    of ``region_bytes + CHECKSUM_BYTES``) in place and returns ``buf``."""
    k = len(key)
    if region_bytes >= _JOIN_BELOW and k <= CHECKSUM_BYTES:
        # region || key hashed by one call: the key stands in the trailer's place first.
        # (Streaming it took four calls, two of which released and took back the GIL:
        # the applier seals every chunk it writes, ~1,000 per apply of a 1M-token store.)
        buf[region_bytes:region_bytes + k] = key
        with memoryview(buf) as view:
            h = xxhash.xxh3_64_intdigest(view[:region_bytes + k], seed=_DOMAIN[db])
        _U64.pack_into(buf, region_bytes, h)
        return buf
    _U64.pack_into(buf, region_bytes, value_checksum(db, key, memoryview(buf)[:region_bytes]))
    return buf


def is_sealed(value: Any, region_bytes: int) -> bool:
    """True when ``value`` carries a trailer; False for a version-1 value of exactly
    ``region_bytes``; CorruptionError (naming no place) for any other length."""
    n = len(value)
    if n == region_bytes + CHECKSUM_BYTES:
        return True
    if n == region_bytes:
        return False
    raise CorruptionError(f"a value of {n} bytes, expected {region_bytes + CHECKSUM_BYTES} "
                          f"(or {region_bytes} from format version 1)")


def checksum_mismatch(db: bytes, key: bytes, value: Any, region_bytes: int) -> str | None:
    """Why the trailer of sealed ``value`` does not match its region and key, or None."""
    stored = int(_U64.unpack_from(value, region_bytes)[0])
    computed = value_checksum(db, key, memoryview(value)[:region_bytes])
    if stored == computed:
        return None
    return (f"{describe_key(db, key)}: checksum mismatch (stored {stored:#018x}, "
            f"computed {computed:#018x} over its {region_bytes}-byte record and key)")


def describe_key(db: bytes, key: bytes) -> str:
    """A key as errors and ``check()`` name it: ``connections key 000000010000000200``, and
    for a chunk its number too: ``token chunk 5 (tokens key 00000005)``."""
    raw = bytes(key)
    if db == DB_TOKENS and len(raw) == _CHUNK_KEY.size:
        return f"token chunk {_CHUNK_KEY.unpack(raw)[0]} (tokens key {raw.hex()})"
    if db == DB_META and raw.isascii() and raw.isalnum() is False and raw.replace(b"_", b"").isalnum():
        return f"meta key {raw.decode()}"
    return f"{db.decode()} key {raw.hex()}"


def unseal(db: bytes, key: bytes, value: Any, region_bytes: int, *, verify: bool,
               path: str | None = None, locate: Any = None) -> Any:
    """The record region of ``value`` stored under ``key`` of ``db``: ``value`` itself when
    it is a version-1 value, else a memoryview of its first ``region_bytes`` (zero copy).

    With ``verify`` the trailer is checked. A wrong length or a mismatch raises
    CorruptionError naming the database and key, with ``path`` and the value's offset
    in that file (``locate(value)``, a callable the caller supplies because this module
    has no access to the map; None when it cannot tell)."""
    n = len(value)
    if n == region_bytes:
        return value
    reason: str | None
    if n != region_bytes + CHECKSUM_BYTES:
        reason = (f"{describe_key(db, key)}: a value of {n} bytes, expected {region_bytes + CHECKSUM_BYTES} "
                  f"(or {region_bytes} from format version 1)")
    elif not verify or (reason := checksum_mismatch(db, key, value, region_bytes)) is None:
        return memoryview(value)[:region_bytes]
    raise CorruptionError(reason, path=path, offset=locate(value) if locate is not None else None)


# -- learning statistics (`learn`, §3.3) ---------------------------------------------------

_LEARN_CURSOR_KEY = struct.Struct(">cH")
_LEARN_GROUP_KEY = struct.Struct(">cHQH")
LEARN_CURSOR_KEY_BYTES = _LEARN_CURSOR_KEY.size  # 3
LEARN_GROUP_KEY_BYTES = _LEARN_GROUP_KEY.size    # 13

#: The value of one (bin, action) group: its moments (§3.3).
LEARN_MOMENTS_DTYPE = np.dtype({"names": ["count", "mean", "m2", "action_mean", "state_mean"],
                                "formats": ["<u8", "<f8", "<f8", ("<f8", (8,)), ("<f8", (8,))],
                                "offsets": [0, 8, 16, 24, 88], "itemsize": 152})


def learn_cursor_key(bins_per_dim: int) -> bytes:
    """``learn`` key of a binning's fold cursor: ``C`` ‖ B u16 BE."""
    return _LEARN_CURSOR_KEY.pack(b"C", bins_per_dim)


def learn_group_prefix(bins_per_dim: int) -> bytes:
    """The first 3 bytes of every group key of a binning: ``S`` ‖ B u16 BE."""
    return _LEARN_CURSOR_KEY.pack(b"S", bins_per_dim)


def learn_group_key(bins_per_dim: int, state_bin: int, action: int) -> bytes:
    """``learn`` key of one (bin, action) group: ``S`` ‖ B u16 ‖ bin u64 ‖ action u16, BE."""
    return _LEARN_GROUP_KEY.pack(b"S", bins_per_dim, state_bin, action)


def learn_group_key_fields(key: bytes | memoryview) -> tuple[int, int, int]:
    """(bins_per_dim, bin, action) of a group key; CorruptionError if it is not one."""
    raw = bytes(key)
    if len(raw) != LEARN_GROUP_KEY_BYTES or raw[:1] != b"S":
        raise CorruptionError(f"learn key {raw.hex()} is not a group key")
    _tag, b, state_bin, action = _LEARN_GROUP_KEY.unpack(raw)
    return int(b), int(state_bin), int(action)


@dataclass(frozen=True)
class LearnCursor:
    """A binning's fold cursor (§3.3): ``next_seq`` = where the next fold starts."""

    next_seq: int = 0
    events_counted: int = 0
    events_missed: int = 0
    folds: int = 0

    def encode(self) -> bytes:
        return _LEARN_CURSOR.pack(self.next_seq, self.events_counted, self.events_missed, self.folds)

    @staticmethod
    def decode(value: bytes | memoryview, where: str) -> LearnCursor:
        if len(value) != _LEARN_CURSOR.size:
            raise CorruptionError(f"{where}: a learn cursor is {len(value)} bytes, expected {_LEARN_CURSOR.size}")
        return LearnCursor(*_LEARN_CURSOR.unpack(bytes(value)))


_LEARN_CURSOR = struct.Struct("<4Q")
#: The record region of a learn cursor value (§3.3).
LEARN_CURSOR_BYTES = _LEARN_CURSOR.size


def decode_learn_moments(value: bytes | memoryview, where: str) -> np.ndarray:
    """One group value as a LEARN_MOMENTS_DTYPE record (a copy); CorruptionError if its
    length is wrong."""
    if len(value) != LEARN_MOMENTS_DTYPE.itemsize:
        raise CorruptionError(f"{where}: a learn group value is {len(value)} bytes, "
                              f"expected {LEARN_MOMENTS_DTYPE.itemsize}")
    out: np.ndarray = np.frombuffer(bytes(value), LEARN_MOMENTS_DTYPE).copy()
    return out


# -- meta (§3.1) -----------------------------------------------------------------------------

M_FORMAT = b"format_version"
M_CHUNK_SLOTS = b"chunk_slots"
M_APPLIED = b"applied_position"
M_CREATED = b"created_unix"
M_STORE_ID = b"store_id"  # 16 bytes
M_COUNTERS = b"counters"
M_EVENT_CAPACITY = b"event_capacity"
M_REFLEX_CAPACITY = b"reflex_capacity"
M_SPATIAL = b"spatial_index"  # u64 mask of the indexed layers (§3.5); absent = 0

DEFAULT_CHUNK_SLOTS = 1024
DEFAULT_EVENT_CAPACITY = 1_000_000
DEFAULT_REFLEX_CAPACITY = 65_536


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


@dataclass(slots=True)
class Counters:
    """The live counters kept in ``meta/counters`` as u64[8], in field order. One value,
    so a commit writes one key; the writer keeps the same numbers in memory."""

    tokens_live: int = 0
    tokens_created_total: int = 0
    tokens_deleted_total: int = 0
    connections_live: int = 0
    connections_created_total: int = 0
    events_next_seq: int = 0
    events_live: int = 0
    events_trimmed_total: int = 0

    def values(self) -> tuple[int, ...]:
        return (self.tokens_live, self.tokens_created_total, self.tokens_deleted_total, self.connections_live,
                self.connections_created_total, self.events_next_seq, self.events_live, self.events_trimmed_total)

    def copy(self) -> Counters:
        return Counters(*self.values())

    def stats(self) -> dict[str, int]:
        """The counters as ``store.stats()`` names them (``events_next_seq`` is the count of
        events ever written: ``events_written_total``)."""
        return {"tokens_live": self.tokens_live, "tokens_created_total": self.tokens_created_total,
                "tokens_deleted_total": self.tokens_deleted_total, "connections_live": self.connections_live,
                "connections_created_total": self.connections_created_total, "events_live": self.events_live,
                "events_written_total": self.events_next_seq, "events_trimmed_total": self.events_trimmed_total}

    def encode(self) -> bytes:
        return _COUNTERS.pack(*self.values())

    @staticmethod
    def decode(value: bytes | memoryview | None, where: str) -> Counters:
        if value is None or len(value) != _COUNTERS.size:
            raise CorruptionError(f"{where}: the meta counters are missing or malformed")
        return Counters(*_COUNTERS.unpack(bytes(value)))


_COUNTERS = struct.Struct("<" + "Q" * len(fields(Counters)))


@dataclass(frozen=True)
class Meta:
    """What ``meta`` says about a store, as read in one transaction."""

    format_version: int
    chunk_slots: int
    applied_position: int
    event_capacity: int
    reflex_capacity: int
    counters: Counters
    store_id: bytes = b""
    created_unix: int = 0
    #: the layers the spatial index covers (§3.5), a bit per layer; 0: no index
    spatial_layers: int = 0


def initial_meta(chunk_slots: int, event_capacity: int, reflex_capacity: int,
                 spatial_layers: int = 0) -> list[tuple[bytes, bytes]]:
    """The ``meta`` entries of a new store (sealed values, §3.0)."""
    regions = [(M_FORMAT, encode_u64(FORMAT_VERSION)), (M_CHUNK_SLOTS, encode_u64(chunk_slots)),
               (M_APPLIED, encode_u64(0)), (M_CREATED, encode_u64(int(time.time()))),
               (M_STORE_ID, uuid.uuid4().bytes), (M_EVENT_CAPACITY, encode_u64(event_capacity)),
               (M_REFLEX_CAPACITY, encode_u64(reflex_capacity)), (M_COUNTERS, Counters().encode()),
               (M_SPATIAL, encode_u64(spatial_layers))]
    return [(k, seal_meta(k, v)) for k, v in regions]


def decode_meta(values: Mapping[bytes, bytes | memoryview | None], where: str) -> Meta:
    """A :class:`Meta` from the record regions of the ``meta`` values (``values[key]``
    None when absent; ``unseal`` gives the regions)."""

    def u64(key: bytes, default: int | None = None) -> int:
        v = values.get(key)
        if v is None:
            if default is None:
                raise NotAStoreError(f"{where}: missing {key.decode()} in the meta database")
            return default
        if len(v) != 8:
            raise CorruptionError(f"{where}: meta/{key.decode()} is {len(v)} bytes, expected 8")
        return int(_U64.unpack(bytes(v))[0])

    version = u64(M_FORMAT)
    if version > FORMAT_VERSION:
        raise FormatVersionError(f"{where} has store format {version}; this ngstore reads "
                                 f"up to {FORMAT_VERSION} -- upgrade ngstore")
    sid = values.get(M_STORE_ID)
    slots = u64(M_CHUNK_SLOTS, DEFAULT_CHUNK_SLOTS)
    try:
        ChunkLayout(slots)
    except ValueError as exc:
        raise CorruptionError(f"{where}: meta/{M_CHUNK_SLOTS.decode()}: {exc}") from None
    return Meta(format_version=version, chunk_slots=slots,
                applied_position=u64(M_APPLIED, 0), event_capacity=u64(M_EVENT_CAPACITY, DEFAULT_EVENT_CAPACITY),
                reflex_capacity=u64(M_REFLEX_CAPACITY, DEFAULT_REFLEX_CAPACITY),
                counters=Counters.decode(values.get(M_COUNTERS), where),
                store_id=bytes(sid) if sid is not None else b"", created_unix=u64(M_CREATED, 0),
                spatial_layers=decode_spatial_layers(values.get(M_SPATIAL), where))


def spatial_region_bytes(value: Any) -> int:
    """The record region of a ``spatial`` page value (§3.5, §3.0): its entries are 10
    bytes each, so a sealed page is 8 bytes past a multiple of 10 and a page without a
    trailer is a multiple of 10 (what is neither, ``unseal`` reports)."""
    n = len(value)
    return n - CHECKSUM_BYTES if n % SPATIAL_ENTRY_BYTES == CHECKSUM_BYTES else n


def decode_spatial_layers(value: bytes | memoryview | None, where: str) -> int:
    """The layer mask of meta ``spatial_index`` (absent: 0, no index)."""
    if value is None:
        return 0
    if len(value) != 8:
        raise CorruptionError(f"{where}: meta/{M_SPATIAL.decode()} is {len(value)} bytes, expected 8")
    mask = int(_U64.unpack(bytes(value))[0])
    if mask > 0xFF:
        raise CorruptionError(f"{where}: meta/{M_SPATIAL.decode()} names layers beyond 8 ({mask:#x})")
    return mask


META_KEYS = (M_FORMAT, M_CHUNK_SLOTS, M_APPLIED, M_CREATED, M_STORE_ID, M_COUNTERS, M_EVENT_CAPACITY,
             M_REFLEX_CAPACITY, M_SPATIAL)


# -- the spatial index (§3.5) --------------------------------------------------------------

#: One entry: a token's id and its raw coordinates in the page's layer (10 bytes, packed).
SPATIAL_ENTRY_DTYPE = np.dtype([("id", "<u4"), ("x", "<i2"), ("y", "<i2"), ("z", "<i2")])
SPATIAL_ENTRY_BYTES = 10
SPATIAL_CELL_SHIFT = 6        # cells of 64 raw units, 1024 per axis
SPATIAL_PAGE_MAX = 400        # entries of a page at most (4000 bytes: one LMDB overflow page)
SPATIAL_PAGE_SPLIT = 300      # a page beyond the maximum is cut into pages of about this many
ALL_LAYERS = 0xFF
_PAGE_KEY = struct.Struct(">BQ")


def spatial_page_key(layer: int, sort_key: int) -> bytes:
    """``spatial`` key: layer u8 ‖ sort key u64 BE."""
    return _PAGE_KEY.pack(layer, sort_key)


def spatial_page_key_fields(key: bytes | memoryview) -> tuple[int, int]:
    """(layer, sort key) of a ``spatial`` key; CorruptionError if it is not 9 bytes."""
    if len(key) != _PAGE_KEY.size:
        raise CorruptionError(f"spatial index key of {len(key)} bytes (expected {_PAGE_KEY.size})")
    layer, sk = _PAGE_KEY.unpack(bytes(key))
    return int(layer), int(sk)


def _spread3(v: np.ndarray) -> np.ndarray:
    """The 10 low bits of ``v`` (uint64) moved to bits 0, 3, 6, … 27."""
    v = v & np.uint64(0x3FF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x30000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x300F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x30C30C3)
    out: np.ndarray = (v | (v << np.uint64(2))) & np.uint64(0x9249249)
    return out


def spatial_cells(coords: np.ndarray) -> np.ndarray:
    """Cell coordinates (uint64, 0..1023) of raw i16 coordinates."""
    out: np.ndarray = (coords.astype(np.int64) + 32768).astype(np.uint64) >> np.uint64(SPATIAL_CELL_SHIFT)
    return out


def spatial_zorder(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The 30-bit Morton code (uint64) of the cells of raw coordinates x, y, z."""
    out: np.ndarray = _spread3(spatial_cells(x)) | (_spread3(spatial_cells(y)) << np.uint64(1)) \
        | (_spread3(spatial_cells(z)) << np.uint64(2))
    return out


def spatial_sort_keys(entries: np.ndarray) -> np.ndarray:
    """The sort key (uint64) of each SPATIAL_ENTRY_DTYPE entry: Z << 32 | id."""
    zo = spatial_zorder(entries["x"], entries["y"], entries["z"])
    out: np.ndarray = (zo << np.uint64(32)) | entries["id"].astype(np.uint64)
    return out


def meta_region_bytes(key: bytes) -> int:
    """The record region of ``meta`` value ``key`` (§3.1): 16 for the store id, 64 for
    the counters, 8 (a u64) for every other key."""
    return 16 if key == M_STORE_ID else _COUNTERS.size if key == M_COUNTERS else 8


def seal_meta(key: bytes, region: bytes) -> bytes:
    """The value to store as ``meta`` key ``key``."""
    if len(region) != meta_region_bytes(key):
        raise ValueError(f"meta/{key.decode()} must be {meta_region_bytes(key)} bytes, got {len(region)}")
    return seal(DB_META, key, region)


# -- token chunks (§3.2) -------------------------------------------------------------------

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(bitmap: np.ndarray) -> int:
    return int(_POPCOUNT[bitmap].sum(dtype=np.int64))


class ChunkLayout:
    """Tokens live in chunks of ``slots`` consecutive ids: ``slots * 64`` bytes of
    records at offset 0, then a presence bitmap of ``slots / 8`` bytes (LSB first) --
    together the record region of ``region_bytes`` -- then the checksum trailer (§3.0):
    ``sealed_bytes`` in all. A version-1 chunk is the region alone."""

    __slots__ = ("bitmap_bytes", "full_bitmap", "mask", "records_bytes", "region_bytes", "sealed_bytes", "shift",
                 "slots")

    def __init__(self, slots: int) -> None:
        if not isinstance(slots, int) or slots < 8 or slots & (slots - 1) or slots > 1 << 16:
            raise ValueError(f"chunk slots must be a power of two in 8..65536, got {slots!r}")
        self.slots = slots
        self.shift = slots.bit_length() - 1
        self.mask = slots - 1
        self.records_bytes = slots * 64
        self.bitmap_bytes = slots // 8
        self.region_bytes = self.records_bytes + self.bitmap_bytes
        self.sealed_bytes = self.region_bytes + CHECKSUM_BYTES
        self.full_bitmap = b"\xff" * self.bitmap_bytes

    @staticmethod
    def key(chunk: int) -> bytes:
        return _CHUNK_KEY.pack(chunk)  # big-endian: LMDB's byte order = id order

    @staticmethod
    def chunk_of(key: bytes | memoryview) -> int:
        return int(_CHUNK_KEY.unpack(bytes(key))[0])

    def check(self, value: memoryview | bytes | bytearray, chunk: int) -> None:
        """CorruptionError unless ``value`` has the length of a chunk (sealed, or of
        format version 1). Readers that verify use ``unseal`` instead."""
        n = len(value)
        if n != self.sealed_bytes and n != self.region_bytes:
            raise CorruptionError(
                f"token chunk {chunk} (key {self.key(chunk).hex()}) is {n} bytes, "
                f"expected {self.sealed_bytes} (or {self.region_bytes} from format version 1)")

    def new_value(self) -> bytearray:
        """A zeroed sealed chunk value to fill, then seal with :meth:`seal`."""
        return bytearray(self.sealed_bytes)

    def sealable(self, value: Any) -> bytearray:
        """A writable sealed-size copy of a stored chunk value (either length)."""
        n = len(value)
        if n == self.sealed_bytes:  # one copy (its trailer is written again by seal)
            return bytearray(value)
        buf = bytearray(memoryview(value)[:self.region_bytes])  # one copy, not a zeroing and a copy
        buf += bytes(self.sealed_bytes - min(n, self.region_bytes))
        return buf

    def seal(self, chunk_key: bytes, buf: bytearray) -> bytearray:
        """``buf`` (``sealed_bytes`` long, the region filled) with its trailer written."""
        return seal_into(DB_TOKENS, chunk_key, buf, self.region_bytes)

    def bitmap(self, value: memoryview | bytes | bytearray) -> np.ndarray:
        return np.frombuffer(value, dtype=np.uint8, count=self.bitmap_bytes, offset=self.records_bytes)

    def present(self, value: memoryview | bytes, slot: int) -> bool:
        return bool(value[self.records_bytes + (slot >> 3)] >> (slot & 7) & 1)


# -- the checkpoint file (§4.1) and the LMDB meta page it embeds ----------------------------

# LMDB's meta page (lmdb.h / mdb.c, 64-bit builds): a 16-byte page header, then MDB_meta.
_PAGE_FLAGS_OFF = 10
_P_META = 0x08
_META_MAGIC_OFF = 16
_META_MAGIC = 0xBEEFC0DE
_META_TXNID_OFF = 144
_META_LAST_PGNO_OFF = 136
_META_PSIZE_OFF = 40  # the free database's md_pad holds the page size

_CKPT_MAGIC = b"NGCKPT01"
_CKPT_HEAD = struct.Struct("<8sIIQQ")  # magic, format version, page size, txnid, applied position
CKPT_FORMAT_VERSION = 1


def meta_page_txnid(page: bytes) -> int | None:
    """The transaction id of an LMDB meta page, or None if ``page`` is not one."""
    if len(page) < _META_TXNID_OFF + 8:
        return None
    flags = struct.unpack_from("<H", page, _PAGE_FLAGS_OFF)[0]
    magic = struct.unpack_from("<I", page, _META_MAGIC_OFF)[0]
    if not flags & _P_META or magic != _META_MAGIC:
        return None
    return int(struct.unpack_from("<Q", page, _META_TXNID_OFF)[0])


def meta_page_last_pgno(page: bytes) -> int:
    """The last page number in use that an LMDB meta page records."""
    return int(struct.unpack_from("<Q", page, _META_LAST_PGNO_OFF)[0])


def meta_page_size(page: bytes) -> int:
    """The page size an LMDB meta page records (page 0 of data.mdb)."""
    return int(struct.unpack_from("<I", page, _META_PSIZE_OFF)[0])


def meta_page_for_slot(page: bytes, slot: int) -> bytes:
    """``page`` with its page number set to ``slot`` (LMDB's meta pages are pages 0 and 1)."""
    out = bytearray(page)
    struct.pack_into("<Q", out, 0, slot)
    return bytes(out)


@dataclass(frozen=True)
class Checkpoint:
    page_size: int
    txnid: int
    applied_position: int
    meta_page: bytes


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    if len(ckpt.meta_page) != ckpt.page_size:
        raise ValueError("meta page size mismatch")
    body = _CKPT_HEAD.pack(_CKPT_MAGIC, CKPT_FORMAT_VERSION, ckpt.page_size, ckpt.txnid,
                           ckpt.applied_position) + ckpt.meta_page
    return body + struct.pack("<I", zlib.crc32(body))


#: The largest LMDB page size a checkpoint may name (LMDB's own maximum).
MAX_PAGE_SIZE = 1 << 16


def decode_checkpoint(data: bytes, path: str) -> Checkpoint:
    """The checkpoint ``data`` holds, or CorruptionError naming what is wrong."""
    if len(data) < _CKPT_HEAD.size + 4:
        raise CorruptionError("checkpoint file is truncated", path=path, offset=len(data))
    magic, version, page_size, txnid, applied = _CKPT_HEAD.unpack_from(data, 0)
    if magic != _CKPT_MAGIC:
        raise CorruptionError("bad checkpoint magic", path=path, offset=0)
    if version != CKPT_FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: checkpoint format version {version}; this ngstore reads version "
            f"{CKPT_FORMAT_VERSION} -- upgrade ngstore")
    if not 512 <= page_size <= MAX_PAGE_SIZE:
        raise CorruptionError(f"checkpoint names a page size of {page_size}", path=path, offset=12)
    end = _CKPT_HEAD.size + page_size
    if len(data) != end + 4:
        raise CorruptionError("checkpoint file has the wrong length", path=path, offset=len(data))
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != crc:
        raise CorruptionError("checkpoint checksum mismatch", path=path, offset=end)
    meta = bytes(data[_CKPT_HEAD.size:end])
    if meta_page_txnid(meta) != txnid:
        raise CorruptionError("checkpoint meta page does not match its transaction id", path=path,
                              offset=_CKPT_HEAD.size)
    return Checkpoint(page_size, txnid, applied, meta)

