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


def test_a_model_file_is_hashed_once_per_process_until_it_changes(tmp_path):
    """hash_files keeps each hash by the files' inode, size and times: a model loaded again is not
    read again, and a weight rewritten in place, or replaced, hashes anew."""
    import time

    from quantgate.models import _HASHED, hash_files
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"a" * 4096)
    first = hash_files([w])
    assert hash_files([w]) == first and len([k for k in _HASHED if str(w) in k[0][0]]) == 1
    time.sleep(0.02)                              # past the filesystem clock's tick (a few ms)
    with open(w, "r+b") as f:                     # same size, same inode, new bytes
        f.write(b"b")
    rewritten = hash_files([w])
    assert rewritten != first
    tmp = tmp_path / "new"
    tmp.write_bytes(b"a" * 4096)
    os.replace(tmp, w)                            # replaced by a file with the first one's bytes
    assert hash_files([w]) == first
