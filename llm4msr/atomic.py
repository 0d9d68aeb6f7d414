"""Atomic writes: readers see the old file/folder or the complete new one, never a partial one.

Every artifact the pipeline publishes (datasets, snapshots, models, reports) goes through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm4msr.errors import OutputExistsError, UserError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is fsynced and renamed to `final`.

    On any exception the temporary folder is removed and `final` is untouched. With
    overwrite=True an existing `final` is replaced (moved aside first, then deleted), so a
    reader never finds the path missing for longer than two renames.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} already exists (refusing to overwrite)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                fd = os.open(Path(root) / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if final.exists():
            trash = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            remove_tree(trash, final.parent)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        remove_tree(tmp, final.parent)
        raise


class UnsafeDeleteError(UserError, ValueError):
    """A recursive delete whose target is not strictly inside the folder it should be in."""


def remove_tree(path: str | Path, parent: str | Path, *, ignore_errors: bool = True) -> None:
    """`shutil.rmtree(path)`, but only when `path` resolves to something strictly inside `parent`.

    Why: version folders are named by ids; an id like '..' or '.', or a symlink, would otherwise
    turn "delete this version" into "delete the whole store". A symlink itself is refused too (a
    version folder is never one). Missing paths are fine (nothing to delete)."""
    path, parent = Path(path), Path(parent)
    real, base = path.resolve(), parent.resolve()
    if base not in real.parents or path.is_symlink():
        raise UnsafeDeleteError(
            f"refusing to delete {path} (resolves to {real}): expected a folder strictly inside {base}"
        )
    shutil.rmtree(path, ignore_errors=ignore_errors)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """`manifest.json` -> `manifest.sha256`: where the checksum of a file that lists the others lives."""
    return Path(path).with_suffix(".sha256")


def write_sha256_sidecar(path: str | Path) -> str:
    """Record the sha256 of `path` next to it, in `sha256sum` format (`sha256sum -c` checks it)."""
    path = Path(path)
    digest = sha256_file(path)
    write_text_atomic(sidecar_path(path), f"{digest}  {path.name}\n")
    return digest


def read_sha256_sidecar(path: str | Path) -> str | None:
    """The recorded sha256 of `path`, or None when there is no sidecar (written before they existed)."""
    side = sidecar_path(path)
    try:
        text = side.read_text()
    except FileNotFoundError:
        return None
    digest = text.split()[0] if text.split() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{side}: {digest[:70]!r} is not a sha256 digest (expected 64 hex characters)")
    return digest
