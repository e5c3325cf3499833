"""The three fixed-size records of the NeuroGraph core, bit-exact with the original.

This module owns the byte layouts (see ``docs/format.md`` §2): numpy structured dtypes
with explicit offsets, checked at import, and the named constants of each record
(flag bits, entity types, connection-type blocks, event types). Nothing here touches
disk or the store; ``codec`` holds the coordinate arithmetic, ``tokens`` and
``connections`` the thin record objects.
"""
from __future__ import annotations

import enum
import time

import numpy as np

TOKEN_SIZE = 64
CONNECTION_SIZE = 64
EVENT_SIZE = 128

LAYERS = 8
AXES = 3

#: Fixed-point scale of each layer (L1..L8); all three axes of a layer share it.
SCALE_FACTORS = (100, 10000, 1000, 10000, 10000, 10000, 100, 10000)

#: Token, ``#[repr(C, packed)]`` in the original: alignment 1, little-endian.
TOKEN_DTYPE = np.dtype(
    {
        "names": ["coordinates", "id", "flags", "weight", "field_radius", "field_strength", "timestamp"],
        "formats": [("<i2", (LAYERS, AXES)), "<u4", "<u2", "<f4", "u1", "u1", "<u4"],
        "offsets": [0, 48, 52, 54, 58, 59, 60],
        "itemsize": TOKEN_SIZE,
    }
)

#: Connection v3 (64 bytes; the original aligns it to 64 in memory, numpy cannot, and
#: the byte image is what matters).
CONNECTION_DTYPE = np.dtype(
    {
        "names": [
            "token_a", "token_b", "connection_type", "rigidity", "active_levels", "flags",
            "activation_count", "pull_strength", "preferred_distance", "created_at",
            "last_activation", "mutability", "confidence", "evidence_count", "last_update",
            "learning_rate", "decay_rate", "pad", "source_id", "target_vector",
        ],
        "formats": [
            "<u4", "<u4", "u1", "u1", "u1", "u1", "<u4", "<f4", "<f4", "<u4", "<u4", "u1",
            "u1", "<u2", "<u4", "u1", "u1", "<u2", "<u4", ("<i2", (LAYERS,)),
        ],
        "offsets": [0, 4, 8, 9, 10, 11, 12, 16, 20, 24, 28, 32, 33, 34, 36, 40, 41, 42, 44, 48],
        "itemsize": CONNECTION_SIZE,
    }
)

#: ExperienceEvent (128 bytes). ``event_id`` is a u128, kept as two u64 halves
#: (``event_id_lo`` at 0, ``event_id_hi`` at 8) because numpy has no u128.
EVENT_DTYPE = np.dtype(
    {
        "names": [
            "event_id_lo", "event_id_hi", "timestamp_us", "episode_id", "step", "event_type",
            "flags", "state", "action", "reward_homeostasis", "reward_curiosity",
            "reward_efficiency", "reward_goal", "adna_hash", "sequence",
        ],
        "formats": [
            "<u8", "<u8", "<u8", "<u8", "<u4", "<u2", "<u2", ("<f4", (LAYERS,)),
            ("<f4", (LAYERS,)), "<f4", "<f4", "<f4", "<f4", "<u4", "<u4",
        ],
        "offsets": [0, 8, 16, 24, 32, 36, 38, 40, 72, 104, 108, 112, 116, 120, 124],
        "itemsize": EVENT_SIZE,
    }
)

#: An opaque 64-byte row: fancy-indexing this is ~10x faster than a structured dtype.
RAW64 = np.dtype("V64")


def _check_layouts() -> None:
    assert TOKEN_DTYPE.itemsize == TOKEN_SIZE and CONNECTION_DTYPE.itemsize == CONNECTION_SIZE
    assert EVENT_DTYPE.itemsize == EVENT_SIZE
    token, connection, event = TOKEN_DTYPE.fields, CONNECTION_DTYPE.fields, EVENT_DTYPE.fields
    assert token is not None and connection is not None and event is not None
    assert [token[n][1] for n in TOKEN_DTYPE.names or ()] == [0, 48, 52, 54, 58, 59, 60]
    assert connection["target_vector"][1] == 48
    assert event["sequence"][1] == 124
    assert len(SCALE_FACTORS) == LAYERS


_check_layouts()


class TokenFlags(enum.IntFlag):
    """System flags (bits 0-7) and user flags (bits 12-15) of ``Token.flags``."""

    ACTIVE = 0x0001
    PERSISTENT = 0x0002
    MUTABLE = 0x0004
    SYNCHRONIZED = 0x0008
    COMPRESSED = 0x0010
    ENCRYPTED = 0x0020
    DIRTY = 0x0040
    LOCKED = 0x0080
    USER1 = 0x1000
    USER2 = 0x2000
    USER3 = 0x4000
    USER4 = 0x8000


ENTITY_TYPE_MASK = 0x0F00
ENTITY_TYPE_SHIFT = 8


class EntityType(enum.IntEnum):
    """Entity type, stored in bits 8-11 of ``flags`` and (independently) bits 24-27 of ``id``."""

    UNDEFINED = 0
    OBJECT = 1
    EVENT = 2
    STATE = 3
    PROCESS = 4
    CONCEPT = 5
    RELATION = 6
    PATTERN = 7
    RULE = 8
    GOAL = 9
    MEMORY = 10
    SENSOR = 11
    ACTUATOR = 12
    CONTROLLER = 13
    BUFFER = 14
    RESERVED = 15


def create_id(local: int, entity: int = 0, domain: int = 0) -> int:
    """Packs ``domain << 28 | entity << 24 | (local & 0xFFFFFF)`` like the original."""
    if not (0 <= entity <= 15 and 0 <= domain <= 15):
        raise ValueError(f"entity and domain must be in 0..15, got {entity}, {domain}")
    return (domain & 0xF) << 28 | (entity & 0xF) << 24 | (local & 0xFFFFFF)


def local_id(token_id: int) -> int:
    return token_id & 0xFFFFFF


def id_entity_type(token_id: int) -> int:
    return (token_id >> 24) & 0xF


def id_domain(token_id: int) -> int:
    return (token_id >> 28) & 0xF


class ConnectionFlags(enum.IntFlag):
    ACTIVE = 0x01
    PERSISTENT = 0x02
    BIDIRECTIONAL = 0x04
    INHIBITORY = 0x08
    MODIFIED = 0x10
    REINFORCED = 0x20
    DECAYING = 0x40
    USER_FLAG = 0x80


class Mutability(enum.IntEnum):
    IMMUTABLE = 0
    LEARNABLE = 1
    HYPOTHESIS = 2


#: First code of each 16-code connection-type block, and the block's default mutability.
CONNECTION_TYPE_BLOCKS = {
    0x00: ("Semantic", Mutability.IMMUTABLE),
    0x10: ("Causal", Mutability.LEARNABLE),
    0x20: ("Temporal", Mutability.LEARNABLE),
    0x30: ("Spatial", Mutability.IMMUTABLE),
    0x40: ("Logical", Mutability.IMMUTABLE),
    0x50: ("Associative", Mutability.LEARNABLE),
    0x60: ("Structural", Mutability.IMMUTABLE),
    0x70: ("Functional", Mutability.LEARNABLE),
    0x80: ("Emotional", Mutability.LEARNABLE),
    0x90: ("Rule", Mutability.IMMUTABLE),
    0xA0: ("Dynamic", Mutability.LEARNABLE),
}
MAX_CONNECTION_TYPE = 0xAF
ASSOCIATED_WITH = 0x50


class EventType(enum.IntEnum):
    SYSTEM_STARTUP = 0x0001
    SYSTEM_SHUTDOWN = 0x0002
    CDNA_UPDATED = 0x0010
    ADNA_UPDATED = 0x0011
    TOKEN_CREATED = 0x0100
    TOKEN_DELETED = 0x0101
    TOKEN_ACTIVATED = 0x0102
    CONNECTION_CREATED = 0x0110
    CONNECTION_DELETED = 0x0111
    CONNECTION_ACTIVATED = 0x0112
    ACTION_STARTED = 0x0200
    ACTION_COMPLETED = 0x0201
    ACTION_FAILED = 0x0202
    HOMEOSTASIS_REWARD = 0x0300
    CURIOSITY_REWARD = 0x0301
    EFFICIENCY_REWARD = 0x0302
    GOAL_REWARD = 0x0303
    PROPOSAL_GENERATED = 0x0400
    PROPOSAL_ACCEPTED = 0x0401
    PROPOSAL_REJECTED = 0x0402
    CUSTOM_USER_EVENT = 0xF000


class EventFlags(enum.IntFlag):
    URGENT = 0x1
    TRAJECTORY = 0x2
    ERROR = 0x4
    PERSIST = 0x8
    FULLY_APPRAISED = 0x10


MAX_TOKEN_ID = 0xFFFF_FFFF


# -- record timestamps ---------------------------------------------------------------------
# Token.timestamp and Connection.created_at/last_update are u32 Unix seconds (the original
# wraps in 2106: ``as u32``). ``int(time.time()) & 0xFFFFFFFF`` costs about half as much
# as the rest of ``Token(id)``, so the record constructors keep the second they last saw:
# a clock reading inside it needs two float comparisons, not a conversion.

#: ``(start, end, seconds)``: the Unix second ``[start, end)`` last seen and its u32 value.
#: One tuple in a list, so that a reader in another thread always sees a consistent triple.
CURRENT_SECOND: list[tuple[float, float, int]] = [(0.0, 0.0, 0)]


def new_second(now: float) -> tuple[float, float, int]:
    """Makes ``now`` (``time.time()``) the current second and returns its triple.

    Callers read ``CURRENT_SECOND[0]`` and call this only when ``now`` falls outside it;
    the result's third item is ``int(now) & 0xFFFFFFFF``, as ``unix_seconds()``.
    """
    s = int(now)
    sec = (float(s), float(s + 1), s & 0xFFFF_FFFF) if now >= 0 else (now, now, s & 0xFFFF_FFFF)
    CURRENT_SECOND[0] = sec
    return sec


def unix_seconds() -> int:
    """The current Unix time in whole seconds as a u32 (the original's ``as u32``)."""
    now = time.time()
    sec = CURRENT_SECOND[0]
    if not sec[0] <= now < sec[1]:
        sec = new_second(now)
    return sec[2]
