"""A log record holding an op kind this version does not know (a newer ngstore wrote it:
the learning update, op 10, is one this release adds) was a CorruptionError, "unknown op
type", as if the log were damaged. It is a FormatVersionError naming the op kind, and the
open changes nothing on disk: the newer version still finds its record."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore import ops, wal
from ngstore.errors import CorruptionError, FormatVersionError

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None)


def _digest(path: str) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f in ("data.mdb", "lock.mdb", "state") or f.endswith(".lock"):  # the writer's bookkeeping
                continue
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_an_unknown_op_kind_in_a_sound_log_record_is_a_format_version_error(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(10)))
        applied = s.stats()["applied_position"]
    payload = bytearray(ops.encode_ops([ops.Op(ops.OP_TOKEN_PUT, make_tokens(np.arange(10, 12)))]))
    payload[8:10] = (250).to_bytes(2, "little")  # the first op's kind (format.md §5): unknown
    log, _ = wal.Log.open(os.path.join(path, "wal"), start_after=applied)
    log.append([(wal.RECORD_BATCH, bytes(payload))])
    log.sync()
    log.close()
    before = _digest(path)
    with pytest.raises(FormatVersionError, match="op kind 250") as info:
        ngstore.open(path, **OPEN)
    assert not isinstance(info.value, CorruptionError)
    assert _digest(path) == before  # the record is still there for the version that wrote it
