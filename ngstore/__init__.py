"""ngstore: the NeuroGraph OS core as an embedded, crash-safe, persistent store.

The public names are listed in ``__all__``; everything else is internal.
"""
from __future__ import annotations

from .errors import (
    CorruptionError,
    FormatVersionError,
    InvalidArgumentError,
    NativeError,
    NgStoreError,
    NotAStoreError,
    NotFoundError,
    QuotaExceededError,
    StoreClosedError,
    StoreLockedError,
    ValidationError,
)
from .records import (
    CONNECTION_DTYPE,
    EVENT_DTYPE,
    SCALE_FACTORS,
    TOKEN_DTYPE,
    ConnectionFlags,
    EntityType,
    EventType,
    Mutability,
    TokenFlags,
    create_id,
)
from .config import IntuitionConfig
from .connections import Connection, ConnectionArray
from .experience import (
    Event,
    ExperienceStream,
    Mixed,
    PrioritizedByReward,
    RecencyWeighted,
    Uniform,
)
from .intuition import IntuitionEngine
from .batch import Batch
from .options import Options
from .snapshot import Snapshot
from .store import Store, open
from .tokens import Token, TokenArray

__version__ = "0.1.0"
__author__ = "ngstore developers (after the NeuroGraph OS core by Chernov Denys)"
__license__ = "AGPL-3.0"

__all__ = [
    "open", "Options", "Store", "Batch", "Snapshot", "Token", "TokenArray",
    "Connection", "ConnectionArray", "IntuitionEngine", "IntuitionConfig",
    "ExperienceStream", "Event", "Uniform", "PrioritizedByReward", "RecencyWeighted", "Mixed",
    "TOKEN_DTYPE", "CONNECTION_DTYPE", "EVENT_DTYPE", "SCALE_FACTORS",
    "TokenFlags", "EntityType", "EventType", "ConnectionFlags", "Mutability", "create_id",
    "NgStoreError", "InvalidArgumentError", "NotFoundError", "StoreLockedError",
    "StoreClosedError", "CorruptionError", "FormatVersionError", "NotAStoreError",
    "QuotaExceededError", "ValidationError", "NativeError",
]
