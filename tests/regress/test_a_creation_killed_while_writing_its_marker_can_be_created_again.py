"""A creation killed between writing ``NGSTORE.tmp`` and renaming it over ``NGSTORE`` left a
directory the next ``create=True`` refused as "not an ngstore store": the marker's own
temporary was not among the names ngstore knows as its own. (Found by
tests/crash/test_creation_crash.py's kill at every step.)"""
from __future__ import annotations

import os

import ngstore
from ngstore.errors import NotAStoreError
from ngstore.layout import MARKER_FILE, TMP_SUFFIX

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)


def test_a_directory_holding_only_the_marker_temporary_is_created_over(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / (MARKER_FILE + TMP_SUFFIX)).write_bytes(b"ngstore store directory\nform")  # torn
    try:
        ngstore.open(str(path), create=False, **OPEN)
    except NotAStoreError:
        pass
    else:  # pragma: no cover - the assertion below names the failure
        raise AssertionError("a directory without a marker opened as a store")
    with ngstore.open(str(path), create=True, **OPEN) as s:
        assert len(s) == 0
    assert os.path.exists(path / MARKER_FILE)
    assert not os.path.exists(path / (MARKER_FILE + TMP_SUFFIX))


def test_a_foreign_file_beside_it_still_makes_the_directory_foreign(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / (MARKER_FILE + TMP_SUFFIX)).write_bytes(b"x")
    (path / "thesis.tex").write_text("mine")
    try:
        ngstore.open(str(path), create=True, **OPEN)
    except NotAStoreError as exc:
        assert "thesis.tex" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("created a store over a directory holding someone else's file")
    assert (path / "thesis.tex").read_text() == "mine"
