"""``load_dump`` accepted any JSON object with ``events`` and ``stats`` keys, whatever their
values: ``ngstore blackbox --show latest`` then failed with a ``TypeError`` on a
``timestamp_us`` that was not a number, and ``iter_event_types`` with a ``KeyError`` or
``TypeError`` on an event that was not an object with an ``event_type``. A file of another
shape is not a dump: ``ValueError``, as documented. Found by the ``blackbox_dump`` fuzz
target."""
from __future__ import annotations

import json

import pytest

from ngstore.obs import blackbox

GOOD = {"timestamp_us": 5, "stats": {}, "events": [{"event_type": "open", "timestamp_us": 1, "data": []}]}


@pytest.mark.parametrize("change", [
    {"events": [{"timestamp_us": 1}]}, {"events": ["open"]}, {"events": {"a": 1}},
    {"stats": []}, {"timestamp_us": [1]}, {"timestamp_us": "soon"}, {"timestamp_us": True},
])
def test_load_dump_refuses_a_document_that_is_not_of_a_dumps_shape(tmp_path, change):
    path = tmp_path / "blackbox-1-1-1.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ValueError, match="not a black-box dump"):
        blackbox.load_dump(str(path))


def test_a_dump_of_the_right_shape_loads(tmp_path):
    path = tmp_path / "blackbox-1-1-1.json"
    path.write_text(json.dumps(GOOD))
    assert list(blackbox.iter_event_types(blackbox.load_dump(str(path)))) == ["open"]
