"""Outputs are written to a temporary file and renamed: an interrupted write
leaves neither a half-written target nor a stray temporary file."""

import os

import pytest

from quantgate.report.files import atomic_write


def test_atomic_write_replaces_whole_files(tmp_path):
    p = tmp_path / "out" / "r.json"
    atomic_write(p, "first")
    atomic_write(p, "second")
    assert p.read_text() == "second" and sorted(x.name for x in p.parent.iterdir()) == ["r.json"]


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    atomic_write(p, "old")

    def crash(src, dst):
        raise KeyboardInterrupt  # the user pressed Ctrl-C between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, "new content that must not appear")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]
