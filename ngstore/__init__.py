"""ngstore: the NeuroGraph OS core as an embedded, crash-safe, persistent store.

The public names are listed in ``__all__``; everything else is internal.
"""
from __future__ import annotations

from .batch import Batch
from .config import IntuitionConfig
from .connections import Connection, ConnectionArray
from .errors import (
    CorruptionError,
    DiskFullError,
    FormatVersionError,
    InvalidArgumentError,
    NativeError,
    NgStoreError,
    NotAStoreError,
    NotFoundError,
    OutcomeUnknownError,
    QuotaExceededError,
    ReadOnlyFileSystemError,
    StorageError,
    StorageIOError,
    StoragePermissionError,
    StoreClosedError,
    StoreLockedError,
    StoreState,
    ValidationError,
)
from .experience import (
    Event,
    ExperienceStream,
    Mixed,
    PrioritizedByReward,
    RecencyWeighted,
    Uniform,
)
from .intuition import IntuitionEngine
from .options import Options
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
from .snapshot import Snapshot
from .store import Store, open
from .tokens import Token, TokenArray

__version__ = "0.1.0"
__author__ = "ngstore developers (after the NeuroGraph OS core by Chernov Denys)"
__license__ = "AGPL-3.0"

__all__ = [
    "CONNECTION_DTYPE",
    "EVENT_DTYPE",
    "SCALE_FACTORS",
    "TOKEN_DTYPE",
    "Batch",
    "Connection",
    "ConnectionArray",
    "ConnectionFlags",
    "CorruptionError",
    "DiskFullError",
    "EntityType",
    "Event",
    "EventType",
    "ExperienceStream",
    "FormatVersionError",
    "IntuitionConfig",
    "IntuitionEngine",
    "InvalidArgumentError",
    "Mixed",
    "Mutability",
    "NativeError",
    "NgStoreError",
    "NotAStoreError",
    "NotFoundError",
    "Options",
    "OutcomeUnknownError",
    "PrioritizedByReward",
    "QuotaExceededError",
    "ReadOnlyFileSystemError",
    "RecencyWeighted",
    "Snapshot",
    "StorageError",
    "StorageIOError",
    "StoragePermissionError",
    "Store",
    "StoreClosedError",
    "StoreLockedError",
    "StoreState",
    "Token",
    "TokenArray",
    "TokenFlags",
    "Uniform",
    "ValidationError",
    "create_id",
    "open",
]
