"""Broken snapshots and a second writer, as a user meets them through `llm4msr store materialize`:
one line naming the file, key or lock and what was expected, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from feature_store.materialize import materialize
from feature_store.online import open_store
from llm4msr.atomic import sha256_file, write_sha256_sidecar
from llm4msr.config import StoreConfig

LLM4MSR = str(Path(sys.executable).parent / "llm4msr")


def _materialize_cli(snapshot: Path, store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLM4MSR, "store", "materialize", "--knowledge", str(snapshot), "--store", store],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(out: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("llm4msr store"), lines
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _edit_manifest(snap: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite the manifest and reseal it (as a buggy or older writer would have sealed it)."""
    path = snap / "manifest.json"
    manifest = json.loads(path.read_text())
    new = edit(manifest)
    path.write_text(new if isinstance(new, str) else json.dumps(manifest if new is None else new))
    write_sha256_sidecar(path)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda m: m.pop("snapshot_id") and None,
            ["manifest.json: key 'snapshot_id' None is not valid", "expected"],
        ),
        (lambda m: "{not json", ["manifest.json: not valid JSON", "expected the snapshot's manifest object"]),
        (lambda m: [m], ["manifest.json: a JSON list, expected an object"]),
        (
            lambda m: m.pop("dimension") and None,
            ["manifest.json: key 'dimension' is None; expected a positive integer"],
        ),
        (
            lambda m: m.update(checksums=["x"]),
            ["manifest.json: key 'checksums' is ['x']; expected {file name: sha256}"],
        ),
    ],
)
def test_broken_manifest(snapshot_factory, tmp_path: Path, edit, expected: list[str]) -> None:  # noqa: ANN001
    snap, _ = snapshot_factory("v1", n_users=5)
    _edit_manifest(snap, edit)
    store = tmp_path / "online"
    _one_line_error(_materialize_cli(snap, str(store)), 2, str(snap / "manifest.json"), *expected)
    assert not store.exists()  # nothing written


@pytest.mark.parametrize("where", ["middle", "footer"])
def test_damaged_parquet_with_matching_checksum(snapshot_factory, tmp_path: Path, where: str) -> None:  # noqa: ANN001
    """Damaged before it was sealed: the checksum matches, the content does not parse. Before: an
    OSError traceback (middle) or pyarrow's message without the file (footer)."""
    snap, _ = snapshot_factory("v1", n_users=5)
    path = snap / "knowledge.parquet"
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if where == "middle" else len(data) - 12
    data[at : at + 64] = b"\0" * len(data[at : at + 64])
    path.write_bytes(bytes(data))
    _edit_manifest(snap, lambda m: m["checksums"].update({"knowledge.parquet": sha256_file(path)}))
    store = tmp_path / "online"
    _one_line_error(
        _materialize_cli(snap, str(store)), 2, f"{path}: not a readable Parquet file", "rebuild the snapshot"
    )
    assert not store.exists()


def test_second_writer_on_a_local_store_is_refused(snapshot_factory, tmp_path: Path) -> None:  # noqa: ANN001
    """Before: two materializations of one local store interleaved their staging files and pointer
    updates. Now the second is refused while the first holds the store, and nothing of it is written."""
    url = str(tmp_path / "online")
    snap1, _ = snapshot_factory("v1", n_users=60, seed=1)
    snap2, _ = snapshot_factory("v2", n_users=60, seed=2)
    seen: list[subprocess.CompletedProcess[str]] = []

    def second_writer(kind: str, chunk: int, n_chunks: int) -> None:
        if kind == "user" and chunk == 1 and not seen:
            seen.append(_materialize_cli(snap2, url))

    cfg = StoreConfig(write_chunk=10, pointer_cache_ms=0)
    report = materialize(snap1, url, cfg, on_chunk=second_writer)
    line = _one_line_error(seen[0], 1, f"{url}/.writer.lock: another writer (pid ", "one writer per store")
    assert "wait for it to finish" in line
    store = open_store(url, cfg)
    assert report.version == "v1" and store.current().version == "v1"
    assert [v.version for v in store.list_versions()] == ["v1"] and store.incomplete_versions() == []
    # Once the first writer is done the second one runs.
    assert _materialize_cli(snap2, url).returncode == 0 and store.current().version == "v2"
