"""Structured logs: a context-carrying adapter, and an opt-in JSON formatter.

The library logs to the ``"ngstore"`` logger and installs **no handler** (the application
decides where logs go; Python's last-resort handler prints WARNING and above to stderr).
``enable_json_logging()`` is the one call that adds a handler, for applications and the
``ngstore serve`` sidecar that want one JSON object per line.

Every record made through ``Observability.logger`` carries ``store_path``; a call may add
``log_position``, ``batch_id``, ``trace_id`` (or any other field) with
``logger.info("commit", extra={"batch_id": 7, "log_position": 4096})``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import IO, Any

__all__ = [
    "LOGGER_NAME",
    "JsonFormatter",
    "StoreLoggerAdapter",
    "disable_json_logging",
    "enable_json_logging",
    "store_logger",
]

LOGGER_NAME = "ngstore"
CONTEXT_FIELDS = ("store_path", "log_position", "batch_id", "trace_id")

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                       "taskName"}


class StoreLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Merges the adapter's context (``store_path``) with the call's ``extra`` (the call wins).

    The standard adapter replaces a call's ``extra`` with its own; merging is what 3.13's
    ``merge_extra=True`` does, written out for 3.10-3.12.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        call_extra = kwargs.get("extra")
        if call_extra:
            extra.update(call_extra)
        kwargs["extra"] = extra
        return msg, kwargs


def store_logger(store_path: str, logger: logging.Logger | None = None) -> StoreLoggerAdapter:
    """The adapter an ``Observability`` exposes as ``.logger``."""
    return StoreLoggerAdapter(logger or logging.getLogger(LOGGER_NAME), {"store_path": store_path})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``timestamp`` (ISO 8601 UTC, ms), ``unix_time``, ``level``,
    ``logger``, ``message``, every ``extra`` field, and ``exception`` text when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "unix_time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class _NgJsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker subclass so enabling twice does not add a second handler."""


def enable_json_logging(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Install (or replace) a JSON-lines handler on the ``"ngstore"`` logger; return it.

    ``stream`` defaults to ``sys.stderr``. Sets the logger's level to ``level``.
    """
    logger = logging.getLogger(LOGGER_NAME)
    disable_json_logging()
    handler = _NgJsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def disable_json_logging() -> None:
    """Remove the handler ``enable_json_logging`` installed, if any."""
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if isinstance(h, _NgJsonHandler):
            logger.removeHandler(h)
