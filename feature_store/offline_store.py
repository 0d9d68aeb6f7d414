"""Versioned offline store for knowledge snapshots (local folder; same layout on shared storage).

    ROOT/versions/<snapshot_id>/   immutable snapshot folders (see knowledge_snapshot)
    ROOT/CURRENT                   the current snapshot id (one line), replaced atomically
    ROOT/HISTORY                   ids that were current, oldest first (for rollback)

A version is written to a temporary folder, fsynced and renamed into `versions/` only when
complete (llm4msr.atomic), then CURRENT is switched; readers therefore see the previous version or
the new one, never a partial one. `publish` = switch + retention of the newest `keep` versions;
`rollback` goes back one step in HISTORY.

Feast: `export_feast(out)` writes one Parquet file per kind with an entity key column
(`user_id` / `scenario_id`), a timestamp-typed `event_timestamp` (UTC) and `vector`
(list<float32>), the layout a Feast `FileSource(path=..., timestamp_field="event_timestamp")`
reads (see docs/store.md). The snapshot's own `generated_at` is int64 unix seconds, which Feast
does not accept as a timestamp field, hence the export.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from feature_store.knowledge_snapshot import KNOWLEDGE_FILE, MANIFEST_FILE, SnapshotError, read_manifest
from llm4msr.atomic import atomic_directory, write_sha256_sidecar
from llm4msr.versioned import VersionedFolders

log = logging.getLogger(__name__)


def new_snapshot_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


class OfflineStore(VersionedFolders):
    """Knowledge snapshots: versions/<id>/ + CURRENT + HISTORY (see llm4msr.versioned)."""

    kind = "offline store"
    marker = MANIFEST_FILE
    error = SnapshotError

    def validate(self, path: Path) -> None:
        read_manifest(path)

    # ---- writing
    @contextlib.contextmanager
    def new_version(self, snapshot_id: str | None = None) -> Iterator[tuple[str, Path]]:
        """Yield (id, temp folder). On clean exit the folder becomes versions/<id> (not yet current).

        The manifest is sealed (manifest.sha256) here, after the caller's last edit of it, and the
        folder is checked before the rename: a non-snapshot or a manifest naming another id is
        never published."""
        sid = snapshot_id or new_snapshot_id()
        final = self.dir_of(sid)
        with atomic_directory(final) as tmp:
            yield sid, tmp
            if (tmp / MANIFEST_FILE).is_file():
                write_sha256_sidecar(tmp / MANIFEST_FILE)
            got = read_manifest(tmp).get("snapshot_id")
            if got != sid:
                raise SnapshotError(f"{tmp / MANIFEST_FILE}: key 'snapshot_id' is {got!r}, expected {sid!r}")

    def publish(self, snapshot_id: str, keep: int | None = None) -> list[str]:
        """Make a complete version current, then (if `keep`) prune old versions; returns deleted ids."""
        self.set_current(snapshot_id)
        return self.retain(keep) if keep else []

    def describe(self) -> dict[str, Any]:
        """Versions with their manifest summary, the current id and the history (for listings)."""
        versions = []
        for vid in self.list_versions():
            entry: dict[str, Any] = {"id": vid}
            try:
                m = read_manifest(self.versions_dir / vid)
                entry.update(
                    {k: m.get(k) for k in ("counts", "dimension", "dtype", "knowledge_family", "model_id")}
                )
                entry["created_at"] = (m.get("provenance") or {}).get("created_at")
            except (SnapshotError, ValueError) as exc:
                entry["error"] = str(exc)
            versions.append(entry)
        return {
            "root": str(self.root),
            "current": self.current_id(),
            "history": self.history(),
            "versions": versions,
        }

    def export_feast(self, out_dir: str | Path, snapshot_id: str | None = None) -> dict[str, Path]:
        """Write a Feast-readable copy of a snapshot (default: current): OUT/<kind>.parquet with
        `<kind>_id` (string), `event_timestamp` (timestamp[us, UTC]), `vector` (list<float32>),
        `knowledge_version` (string). Returns {kind: path}. Written atomically as one folder."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        sid = snapshot_id or self.current_id()
        if sid is None:
            raise SnapshotError(f"offline store {self.root}: no current version to export")
        src = self.path_of(sid) / KNOWLEDGE_FILE
        table = pq.read_table(src, columns=["kind", "entity_id", "vector", "generated_at"])
        out: dict[str, Path] = {}
        with atomic_directory(out_dir, overwrite=True) as tmp:
            for kind in sorted(pc.unique(table.column("kind")).to_pylist()):
                sub = table.filter(pc.equal(table.column("kind"), kind))
                vec = sub.column("vector").combine_chunks()
                flat = pc.cast(vec.flatten(), pa.float32())
                feast = pa.table(
                    {
                        f"{kind}_id": sub.column("entity_id"),
                        "event_timestamp": pc.cast(  # unix seconds -> timestamp (parquet stores us)
                            pc.cast(sub.column("generated_at"), pa.timestamp("s", tz="UTC")),
                            pa.timestamp("us", tz="UTC"),
                        ),
                        "vector": pa.ListArray.from_arrays(
                            pa.array(range(0, len(flat) + 1, vec.type.list_size), pa.int32()), flat
                        ),
                        "knowledge_version": pa.array([sid] * len(sub), pa.string()),
                    }
                )
                pq.write_table(feast, tmp / f"{kind}.parquet")
                out[kind] = Path(out_dir) / f"{kind}.parquet"
        return out
