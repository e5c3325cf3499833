"""Guardian: resource quotas checked before anything of a write happens.

The original measured memory by parsing ``/proc/self/status`` on every call -- the
real cause of its "971x" figure (reference §6.6). Here the store keeps exact counts
of live records in LMDB (updated in the same transaction as the data), and the
Guardian checks a write's *additions* against them: O(1), no system calls.

Accounted bytes (:class:`Usage`, ``memory_used_bytes``) are the store's records and every
large allocation the store makes, each counted so that a batch's share is known before
anything of it is written (``docs/api.md``, quotas):

* ``records``: 64 bytes per token and per connection, 128 per experience event (the
  original's accounting of stored records);
* ``reflex_table``: the reflex table's memory (``ReflexTable.memory_bytes``: segments,
  header, C handle). It grows by doubling as reflexes arrive, so a batch of reflexes is
  charged the growth it may cause (``reflex.plan_room``);
* ``overlay``: commits in the log not yet in LMDB -- their ops and their token index;
* reservations made once (:meth:`Guardian.reserve`): the black box's ring, the stats page,
  the experience stream's ring -- fixed allocations counted at their full size from the
  moment they exist.

The defaults are the original's: 10 000 000 tokens, 1 024 000 000 bytes, and refusal from
80 % of the byte limit ("memory_threshold"). A refusal raises :class:`QuotaExceededError`
naming the quota and the numbers, and leaves the store unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import InvalidArgumentError, QuotaExceededError

DEFAULT_MAX_TOKENS = 10_000_000
DEFAULT_MAX_BYTES = 1_024_000_000
DEFAULT_MEMORY_THRESHOLD = 0.8

TOKEN_BYTES = 64
CONNECTION_BYTES = 64
EVENT_BYTES = 128
#: The reservations the store makes (``stats()`` shows each, 0 when absent).
RESERVATIONS = ("blackbox", "stats_page", "experience_ring")


@dataclass
class Usage:
    """What the Guardian counts, part by part (see the module docstring)."""

    tokens: int = 0
    connections: int = 0
    events: int = 0
    reflex_bytes: int = 0
    overlay_bytes: int = 0
    #: the reservations (:meth:`Guardian.reserve`) by name
    reserved: Mapping[str, int] = field(default_factory=dict)
    #: what batches already accepted in the same commit group will add (not yet anywhere)
    pending_bytes: int = 0

    @property
    def records_bytes(self) -> int:
        return self.tokens * TOKEN_BYTES + self.connections * CONNECTION_BYTES + self.events * EVENT_BYTES

    @property
    def bytes(self) -> int:
        return (self.records_bytes + self.reflex_bytes + self.overlay_bytes + sum(self.reserved.values())
                + self.pending_bytes)

    def parts(self) -> dict[str, int]:
        """``memory_<part>_bytes`` for every part of :attr:`bytes` (what ``stats()`` shows)."""
        return {"memory_records_bytes": self.records_bytes, "memory_reflex_table_bytes": self.reflex_bytes,
                "memory_overlay_bytes": self.overlay_bytes,
                **{f"memory_{name}_bytes": self.reserved.get(name, 0) for name in RESERVATIONS},
                **{f"memory_{name}_bytes": n for name, n in sorted(self.reserved.items()) if name not in RESERVATIONS}}


class Guardian:
    """Quota policy. ``None`` for a limit means unlimited."""

    def __init__(self, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 max_bytes: int | None = DEFAULT_MAX_BYTES,
                 memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
                 enable_aggressive_cleanup: bool = True) -> None:
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
            raise InvalidArgumentError(f"max_tokens must be a non-negative int or None, got {max_tokens!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise InvalidArgumentError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
        if not 0.0 < float(memory_threshold) <= 1.0:
            raise InvalidArgumentError(f"memory_threshold must be in (0, 1], got {memory_threshold!r}")
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes
        self.memory_threshold = float(memory_threshold)
        self.enable_aggressive_cleanup = enable_aggressive_cleanup
        self.quota_exceeded_total = 0
        self.aggressive_cleanups_total = 0
        self._reserved: dict[str, int] = {}
        #: Changes whenever a reservation does: the writer's quota slack, measured under
        #: the old reservations, is measured again. (The limits are fixed for the life of
        #: the Guardian.)
        self.revision = 0

    def reserve(self, name: str, nbytes: int) -> None:
        """Counts a fixed allocation of the store (``name``: ``blackbox``, ``stats_page``,
        ``experience_ring``) from now on; 0 ends it. Never refuses: the allocation is made
        already, and the writes that follow are what the quota refuses."""
        if nbytes:
            self._reserved[name] = int(nbytes)
        else:
            self._reserved.pop(name, None)
        self.revision += 1

    @property
    def reserved(self) -> Mapping[str, int]:
        """The reservations by name (read-only; changed by :meth:`reserve` only)."""
        return self._reserved

    @property
    def byte_limit(self) -> int | None:
        """The byte count from which writes are refused (threshold x max_bytes)."""
        if self.max_bytes is None:
            return None
        return int(self.max_bytes * self.memory_threshold)

    def exceeds(self, usage: Usage, add_tokens: int, add_bytes: int) -> bool:
        """Whether :meth:`check` would refuse (counts nothing)."""
        limit = self.byte_limit
        return bool((self.max_tokens is not None and add_tokens > 0 and usage.tokens + add_tokens > self.max_tokens)
                    or (limit is not None and add_bytes > 0 and usage.bytes + add_bytes > limit))

    def check(self, usage: Usage, add_tokens: int, add_bytes: int) -> None:
        """Raises QuotaExceededError if adding would cross a limit; counts refusals."""
        if self.max_tokens is not None and add_tokens > 0 and usage.tokens + add_tokens > self.max_tokens:
            self.quota_exceeded_total += 1
            raise QuotaExceededError("max_tokens", usage.tokens, add_tokens, self.max_tokens)
        limit = self.byte_limit
        if limit is not None and add_bytes > 0 and usage.bytes + add_bytes > limit:
            self.quota_exceeded_total += 1
            raise QuotaExceededError(
                "max_bytes", usage.bytes, add_bytes, limit,
                detail=f"refused from {self.memory_threshold:.0%} of max_bytes={self.max_bytes}")

    def stats(self, usage: Usage) -> dict[str, float]:
        """The quota part of ``store.stats()``: refusals, cleanups, the memory in use (and
        its parts, ``Usage.parts``) and the limits (0: none)."""
        return {"quota_exceeded_total": self.quota_exceeded_total,
                "aggressive_cleanups_total": self.aggressive_cleanups_total,
                "memory_used_bytes": usage.bytes, **usage.parts(),
                "memory_limit_bytes": self.max_bytes or 0, "token_limit": self.max_tokens or 0,
                "memory_threshold": self.memory_threshold}

    def should_cleanup(self, usage: Usage, margin: float = 0.9) -> bool:
        """True when accounted bytes pass ``margin`` of the refusal point."""
        limit = self.byte_limit
        return bool(self.enable_aggressive_cleanup and limit and usage.bytes >= margin * limit)

    def fraction_used(self, usage: Usage) -> float:
        """The larger of tokens/max_tokens and bytes/byte_limit (0 when unlimited)."""
        parts = [0.0]
        if self.max_tokens:
            parts.append(usage.tokens / self.max_tokens)
        if self.byte_limit:
            parts.append(usage.bytes / self.byte_limit)
        return max(parts)
