"""Atomic writes: a failure leaves the previous content (or nothing) in place."""

from pathlib import Path

import pytest

from llm4msr.atomic import atomic_directory, write_text_atomic


def test_failed_directory_write_leaves_nothing(tmp_path: Path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "half.parquet").write_text("partial")
        raise RuntimeError("crash midway")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_whole_directory(tmp_path: Path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError), atomic_directory(final):
        pass
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]


def test_failed_overwrite_keeps_old_content(tmp_path: Path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(ValueError), atomic_directory(final, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
        raise ValueError("bad input")
    assert (final / "a").read_text() == "old"


def test_text_write_is_complete(tmp_path: Path):
    p = tmp_path / "x" / "f.txt"
    write_text_atomic(p, "hello")
    assert p.read_text() == "hello"
    assert [q.name for q in p.parent.iterdir()] == ["f.txt"]
