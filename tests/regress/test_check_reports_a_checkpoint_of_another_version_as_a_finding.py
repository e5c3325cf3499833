"""``check()`` reports damage as findings and never raises for damage it can describe, but
a ``checkpoint`` file whose version field was damaged (a flipped bit: version 65,537) made
``decode_checkpoint`` raise ``FormatVersionError``, which ``check()`` let through: a
read-only ``check()`` of the store raised instead of reporting. (A writer's open replaces
such a checkpoint.) Found by the corruption campaign."""
from __future__ import annotations

import os
import struct

import ngstore
from ngstore.layout import CHECKPOINT_FILE


def test_a_checkpoint_of_another_version_is_a_finding_of_check(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path) as s:
        s.put_tokens(ngstore.Token.create_batch(3))
    with open(os.path.join(path, CHECKPOINT_FILE), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 65_537))
    with ngstore.open(path, readonly=True) as r:
        report = r.check()
        assert r.count() == 3
    assert not report.ok
    [finding] = [x for x in report.findings if x.file == CHECKPOINT_FILE]
    assert "version 65537" in finding.reason and finding.offset == 8
