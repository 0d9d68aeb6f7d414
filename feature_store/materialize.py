"""Materialization: knowledge snapshot (offline) -> online store version -> current pointer.

Steps: verify the snapshot's checksums, write every entity as version = snapshot id (chunked,
resumable: an interrupted run continues from the progress recorded in the version metadata),
verify counts and a seeded sample of value checksums, and only then switch the pointer. Running it
again for a version that is already current does nothing; the previous version stays current on
any failure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.knowledge_snapshot import KNOWLEDGE_FILE, MANIFEST_FILE, SnapshotError, read_manifest
from feature_store.offline_store import OfflineStore
from feature_store.online import EntityBatch, OnlineStore, open_store
from llm4msr.atomic import sha256_file
from llm4msr.config import StoreConfig
from llm4msr.ids import unkeyable

log = logging.getLogger(__name__)


@dataclass
class MaterializeReport:
    version: str
    snapshot_path: str
    store: str
    backend: str
    knowledge_family: str
    counts: dict[str, int]
    keys_written: int = 0
    keys_skipped: int = 0
    write_seconds: float = 0.0
    seconds: float = 0.0
    keys_per_second: float = 0.0  # keys_written / write_seconds
    verified: dict[str, Any] = field(default_factory=dict)
    previous: str | None = None
    already_current: bool = False
    resumed: bool = False
    restarts: int = 0  # times the version was rewritten because the store lost it mid-write

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_snapshot(path: str | Path) -> Path:
    """A snapshot folder, or an offline-store root (-> its current version)."""
    path = Path(path)
    if (path / KNOWLEDGE_FILE).is_file():
        return path
    if (path / "versions").is_dir() or (path / "CURRENT").is_file():
        current = OfflineStore(path).current_path()
        if current is None:
            raise SnapshotError(f"offline store {path} has no current version (CURRENT missing or empty)")
        return current
    raise SnapshotError(f"{path}: neither a knowledge snapshot ({KNOWLEDGE_FILE}) nor an offline-store root")


COLUMNS = ["kind", "entity_id", "vector", "generated_at"]


def _manifest(snapshot_dir: Path) -> dict[str, Any]:
    """The snapshot's manifest (read_manifest: seal, id), refused with the file and key named when
    it is not JSON, not an object, or lacks what materialization needs."""
    mpath = snapshot_dir / MANIFEST_FILE
    if mpath.is_file():
        try:
            parsed = json.loads(mpath.read_bytes())
        except ValueError as exc:
            raise SnapshotError(
                f"{mpath}: not valid JSON ({exc}); expected the snapshot's manifest object"
            ) from exc
        if not isinstance(parsed, dict):
            raise SnapshotError(
                f"{mpath}: a JSON {type(parsed).__name__}, expected an object (the snapshot manifest)"
            )
    manifest = read_manifest(snapshot_dir)
    dim = manifest.get("dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise SnapshotError(f"{mpath}: key 'dimension' is {dim!r}; expected a positive integer")
    checksums = manifest.get("checksums", {})
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise SnapshotError(
            f"{mpath}: key 'checksums' is {str(checksums)[:80]}; expected {{file name: sha256}}"
        )
    return manifest


def _read_knowledge(path: Path) -> pa.Table:
    """knowledge.parquet's columns; a damaged file (its checksum matched, so it was damaged before
    the manifest was written) or a missing column is a SnapshotError naming the file."""
    try:
        have = pq.read_schema(path).names
        missing = [c for c in COLUMNS if c not in have]
        if not missing:
            return pq.read_table(path, columns=COLUMNS)
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotError(
            f"{path}: not a readable Parquet file ({' '.join(str(exc).split())}); its checksum matches "
            "the manifest, so it was written damaged: rebuild the snapshot (llm4msr knowledge build)"
        ) from exc
    raise SnapshotError(f"{path}: missing column(s) {missing}; expected {COLUMNS} (have {have})")


def load_entities(snapshot_dir: Path, value_dtype: str) -> tuple[dict[str, Any], dict[str, EntityBatch]]:
    """Manifest + per-kind batches, after checking the snapshot's checksums and values."""
    manifest = _manifest(snapshot_dir)
    for fname, expected in manifest.get("checksums", {}).items():
        actual = sha256_file(snapshot_dir / fname)
        if actual != expected:
            raise SnapshotError(f"{snapshot_dir / fname}: checksum {actual[:12]} != manifest {expected[:12]}")
    table = _read_knowledge(snapshot_dir / KNOWLEDGE_FILE)
    dim = int(manifest["dimension"])
    out: dict[str, EntityBatch] = {}
    for kind in sorted(pc.unique(table.column("kind")).to_pylist()):
        sub = table.filter(pc.equal(table.column("kind"), kind))
        vec = sub.column("vector").combine_chunks()
        size = getattr(vec.type, "list_size", None)  # a fixed-size list column, as written
        if size != dim:
            raise SnapshotError(
                f"{snapshot_dir / KNOWLEDGE_FILE}: column 'vector' is {vec.type} (size {size}), "
                f"expected fixed-size lists of the manifest dimension {dim}"
            )
        vectors = vec.values.to_numpy(zero_copy_only=False).reshape(len(sub), dim)
        if np.dtype(value_dtype) == np.float16 and vectors.dtype != np.float16:
            big = np.abs(vectors).max(axis=1) > np.finfo(np.float16).max
            if big.any():
                i = int(np.flatnonzero(big)[0])
                raise SnapshotError(
                    f"{snapshot_dir / KNOWLEDGE_FILE}: column 'vector' of {kind} {sub.column('entity_id')[i]} has "
                    f"|value| {float(np.abs(vectors[i]).max()):.3g} > float16 max; set store.value_dtype=float32"
                )
        gen = sub.column("generated_at").to_numpy(zero_copy_only=False)
        ids = sub.column("entity_id").to_pylist()
        # numpy would turn a null into "None" and drop trailing NULs ("u1\0" -> "u1"): refuse both
        if bad := [i for i, e in enumerate(ids) if e is None][:1] or unkeyable(ids):
            raise SnapshotError(
                f"{snapshot_dir / KNOWLEDGE_FILE}: column 'entity_id' of {kind} row {bad[0]} is "
                f"{ids[bad[0]]!r}: expected a non-null id without NUL characters"
            )
        out[kind] = EntityBatch(np.asarray(ids, dtype=str), vectors, gen)
    return manifest, out


def materialize(
    snapshot_dir: str | Path,
    store: OnlineStore | str,
    cfg: StoreConfig | None = None,
    *,
    on_chunk: Callable[[str, int, int], None] | None = None,
    seed: int = 0,
) -> MaterializeReport:
    """Write the snapshot as a new online-store version, verify it, then make it current."""
    t0 = time.perf_counter()
    cfg = cfg or StoreConfig()
    snap = resolve_snapshot(snapshot_dir)
    owned = not isinstance(store, OnlineStore)
    st = open_store(str(store), cfg) if owned else store
    try:
        manifest, entities = load_entities(snap, st.cfg.value_dtype)  # all checks before any write
        with st.writer():  # one writer from the pointer check to the switch
            return _write_and_switch(st, snap, manifest, entities, cfg, on_chunk, seed, t0)
    finally:
        if owned:
            st.close()


def _write_and_switch(
    st: OnlineStore,
    snap: Path,
    manifest: dict[str, Any],
    entities: dict[str, EntityBatch],
    cfg: StoreConfig,
    on_chunk: Callable[[str, int, int], None] | None,
    seed: int,
    t0: float,
) -> MaterializeReport:
    """materialize() under the store's writer lock: pointer check, write, verify, switch."""
    version = str(manifest["snapshot_id"])
    family = str(manifest.get("knowledge_family", "unknown"))
    report = MaterializeReport(
        version=version,
        snapshot_path=str(snap),
        store=st.redacted_url,
        backend=st.backend,
        knowledge_family=family,
        counts={k: len(b.ids) for k, b in entities.items()},
    )
    previous = st.current()
    report.previous = previous.version if previous else None
    if previous is not None and previous.version == version:
        report.already_current = True
        report.keys_skipped = sum(report.counts.values())
        report.seconds = time.perf_counter() - t0
        log.info("materialize: version %s is already current in %s; nothing to do", version, st.redacted_url)
        return report
    if previous is not None and previous.knowledge_family != family:
        log.warning(
            "materialize: knowledge family changes %s -> %s; serving models trained on the old "
            "family will refuse this store",
            previous.knowledge_family,
            family,
        )
    stats = st.write_version(
        version,
        knowledge_family=family,
        snapshot_id=version,
        entities=entities,
        on_chunk=on_chunk,
        dataset_version=manifest.get("dataset_version"),
        dataset_source=manifest.get("dataset_source"),
    )
    report.keys_written, report.keys_skipped = stats.keys_written, stats.keys_skipped
    report.resumed = stats.keys_skipped > 0 and not stats.already_complete
    report.restarts = stats.restarts
    report.write_seconds = stats.seconds
    report.keys_per_second = stats.keys_written / stats.seconds if stats.seconds > 0 else 0.0
    report.verified = st.verify_version(version, entities, cfg.verify_sample, seed=seed)
    st.set_current(version)
    report.seconds = time.perf_counter() - t0
    log.info(
        "materialize: %s -> %s: %d keys written (%d skipped) in %.1fs (%.0f keys/s), now current",
        snap,
        st.redacted_url,
        report.keys_written,
        report.keys_skipped,
        report.write_seconds,
        report.keys_per_second,
    )
    return report
