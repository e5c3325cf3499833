"""Structured logs: context fields, the JSON formatter, no handler unless asked."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ngstore.obs import Observability
from ngstore.obs.logs import JsonFormatter, disable_json_logging, enable_json_logging


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[ListHandler]:
    logger = logging.getLogger("ngstore")
    h = ListHandler()
    old_level = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    yield h
    logger.removeHandler(h)
    logger.setLevel(old_level)
    disable_json_logging()


def test_no_handler_is_installed_by_default(tmp_path: Any) -> None:
    Observability(str(tmp_path), tracing=False).logger.debug("quiet")
    assert [h for h in logging.getLogger("ngstore").handlers
            if type(h).__module__.startswith("ngstore")] == []


def test_records_carry_the_store_path_and_the_call_context(tmp_path: Any, captured: ListHandler) -> None:
    obs = Observability(str(tmp_path), tracing=False)
    obs.logger.info("commit", extra={"log_position": 4096, "batch_id": 7, "trace_id": "ab" * 16})
    obs.logger.warning("checkpoint slow")
    first, second = captured.records
    assert first.name == "ngstore" and first.getMessage() == "commit"
    assert first.store_path == str(tmp_path)  # type: ignore[attr-defined]
    assert (first.log_position, first.batch_id) == (4096, 7)  # type: ignore[attr-defined]
    assert first.trace_id == "ab" * 16  # type: ignore[attr-defined]
    assert second.store_path == str(tmp_path)  # type: ignore[attr-defined]
    assert not hasattr(second, "batch_id")


def test_a_given_logger_is_used(tmp_path: Any) -> None:
    mine = logging.getLogger("myapp.store")
    h = ListHandler()
    mine.addHandler(h)
    mine.setLevel(logging.INFO)
    try:
        Observability(str(tmp_path), tracing=False, logger=mine).logger.info("x")
    finally:
        mine.removeHandler(h)
    assert h.records[0].store_path == str(tmp_path)  # type: ignore[attr-defined]


def test_json_logging_writes_one_parseable_object_per_line(tmp_path: Any, captured: ListHandler) -> None:
    stream = io.StringIO()
    enable_json_logging(stream)
    enable_json_logging(stream)  # idempotent: still one handler
    obs = Observability(str(tmp_path), tracing=False)
    obs.logger.info("commit %d", 3, extra={"batch_id": 9, "log_position": 128})
    try:
        raise ValueError("bad")
    except ValueError:
        obs.logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    a, b = (json.loads(line) for line in lines)
    assert a["message"] == "commit 3" and a["level"] == "INFO" and a["logger"] == "ngstore"
    assert a["store_path"] == str(tmp_path) and a["batch_id"] == 9 and a["log_position"] == 128
    assert a["timestamp"].endswith("Z") and isinstance(a["unix_time"], float)
    assert b["level"] == "ERROR" and "ValueError: bad" in b["exception"]
    disable_json_logging()
    assert not any(type(h).__name__ == "_NgJsonHandler" for h in logging.getLogger("ngstore").handlers)


def test_json_formatter_survives_unserialisable_fields() -> None:
    rec = logging.LogRecord("ngstore", logging.INFO, __file__, 1, "m", (), None)
    rec.thing = object()  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(rec))["thing"].startswith("<object")
