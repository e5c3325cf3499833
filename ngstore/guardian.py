"""Guardian: resource quotas checked before anything of a write happens.

The original measured memory by parsing ``/proc/self/status`` on every call -- the
real cause of its "971x" figure (reference §6.6). Here the store keeps exact counts
of live records in LMDB (updated in the same transaction as the data), and the
Guardian checks a write's *additions* against them: O(1), no system calls.

Accounted bytes are the record bytes a store holds: 64 per token, 64 per connection,
128 per experience event, and the reflex table's slot bytes. The defaults are the
original's: 10 000 000 tokens, 1 024 000 000 bytes, and refusal from 80 % of the byte
limit ("memory_threshold"). A refusal raises :class:`QuotaExceededError` naming the
quota and the numbers, and leaves the store unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgumentError, QuotaExceededError

DEFAULT_MAX_TOKENS = 10_000_000
DEFAULT_MAX_BYTES = 1_024_000_000
DEFAULT_MEMORY_THRESHOLD = 0.8

TOKEN_BYTES = 64
CONNECTION_BYTES = 64
EVENT_BYTES = 128


@dataclass
class Usage:
    tokens: int = 0
    connections: int = 0
    events: int = 0
    reflex_bytes: int = 0

    @property
    def bytes(self) -> int:
        return (self.tokens * TOKEN_BYTES + self.connections * CONNECTION_BYTES
                + self.events * EVENT_BYTES + self.reflex_bytes)


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

    @property
    def byte_limit(self) -> int | None:
        """The byte count from which writes are refused (threshold x max_bytes)."""
        if self.max_bytes is None:
            return None
        return int(self.max_bytes * self.memory_threshold)

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
