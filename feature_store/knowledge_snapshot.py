"""Knowledge snapshot format: the contract between knowledge_service (writer), the offline and
online stores (publish/materialize) and the ranker (training reads it).

A snapshot is an immutable folder:

    knowledge.parquet   kind ("scenario"|"user"), entity_id (str), vector (fixed_size_list<float32|float16>[dim]),
                        prompt_hash (str), model_id (str), template_version (str),
                        generated_at (int64, unix seconds), answer (str | null)
    manifest.json       format_version, snapshot_id, dimension, dtype, model_id, pooling, backend,
                        knowledge_family, template_hashes, counts, checksums, pca, dataset_version, provenance
    pca.npz             (optional) mean + components of the PCA applied to the raw LLM vectors
    manifest.sha256     sha256 of manifest.json (`sha256sum` format): the manifest lists the other files'
                        checksums, this one covers the manifest itself; checked by `read_manifest`

`knowledge_family` identifies the embedding space (model, pooling, PCA, dimension): vectors of two
snapshots of the same family are comparable; serving refuses a store of another family.

`dataset_version` is the content id of the canonical dataset the prompts were rendered from
(`CanonicalDataset.version()`, which covers the split). Training and export refuse a snapshot of
another dataset id (`check_dataset`): the prompts' leakage guard holds only for that dataset.
`dataset_source` (`CanonicalDataset.source_id()`) names the source and split without the rows;
serving compares it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm4msr.atomic import (
    read_sha256_sidecar,
    sha256_file,
    sha256_text,
    sidecar_path,
    write_json_atomic,
    write_sha256_sidecar,
)
from llm4msr.errors import UserError
from llm4msr.ids import check_id

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KNOWLEDGE_FILE = "knowledge.parquet"
MANIFEST_FILE = "manifest.json"
PCA_FILE = "pca.npz"
KINDS = ("scenario", "user")
DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}


class SnapshotError(UserError, ValueError):
    """A folder is not a valid snapshot, or two snapshots/stores disagree (dimension, family)."""


class ForeignKnowledgeError(SnapshotError):
    """The snapshot was built from another dataset id than the data it is used with."""


OVERRIDE_KEY = "train.allow_foreign_knowledge"


def check_dataset(
    manifest: dict[str, Any],
    snapshot_path: str | Path,
    dataset_version: str,
    data_dir: str | Path,
    *,
    allow_foreign: bool = False,
) -> dict[str, Any]:
    """Refuse a snapshot built from another dataset id than `dataset_version`; returns the record
    that run.json, exported manifests and flow reports keep.

    User prompts keep out the valid/test rows *of the dataset they were rendered from*. With another
    split or other content, a snapshot's prompts can describe rows that are held out here, and the
    evaluation then measures leaked labels (a snapshot of a random 8:1:1 split of ML-100K, used with
    the leave-last-one split, gave a fake +0.106 AUC). `allow_foreign` goes ahead and says so.
    """
    snap_version = manifest.get("dataset_version")
    record: dict[str, Any] = {
        "dataset_version": snap_version,
        "dataset_source": manifest.get("dataset_source"),
        "data_version": dataset_version,
        "foreign": snap_version != dataset_version,
        "allow_foreign_knowledge": allow_foreign,
    }
    if not record["foreign"]:
        return record
    where = f"knowledge snapshot {manifest.get('snapshot_id')} ({snapshot_path})"
    rebuild = f"rebuild it from this dataset (`llm4msr knowledge build --data {data_dir}`)"
    if snap_version is None:
        problem = (
            f"{where}: {MANIFEST_FILE} has no dataset_version (written before snapshots recorded the "
            f"dataset they were built from), so it cannot be checked against dataset {data_dir} "
            f"(dataset id {dataset_version}); {rebuild}"
        )
    else:
        problem = (
            f"{where} was built from dataset id {snap_version}, but dataset {data_dir} has id "
            f"{dataset_version}: another split or other content, so its user prompts may describe rows "
            f"that are valid/test here (leaked labels); {rebuild}"
        )
    if not allow_foreign:
        raise ForeignKnowledgeError(f"{problem}, or set {OVERRIDE_KEY}=true for an experiment")
    log.warning("%s; going ahead because %s is true (recorded as foreign)", problem, OVERRIDE_KEY)
    return record


def knowledge_family(model_id: str, pooling: str, dimension: int, pca_fingerprint: str | None = None) -> str:
    return sha256_text(f"{model_id}|{pooling}|{dimension}|{pca_fingerprint or 'nopca'}")[:12]


def arrow_schema(dimension: int, dtype: str) -> pa.Schema:
    return pa.schema(
        [
            ("kind", pa.string()),
            ("entity_id", pa.string()),
            ("vector", pa.list_(DTYPES[dtype][1], dimension)),
            ("prompt_hash", pa.string()),
            ("model_id", pa.string()),
            ("template_version", pa.string()),
            ("generated_at", pa.int64()),
            ("answer", pa.string()),
        ]
    )


@dataclass
class KnowledgeRows:
    """Columnar rows of a snapshot; `vectors` is a (n, dim) array in the storage dtype."""

    kind: list[str]
    entity_id: list[str]
    vectors: np.ndarray
    prompt_hash: list[str]
    model_id: list[str]
    template_version: list[str]
    generated_at: list[int]
    answer: list[str | None]

    def __len__(self) -> int:
        return len(self.entity_id)

    def to_table(self, dtype: str) -> pa.Table:
        np_dtype, pa_dtype = DTYPES[dtype]
        vecs = np.ascontiguousarray(self.vectors, dtype=np_dtype)
        n, dim = vecs.shape
        flat = pa.array(vecs.reshape(-1), type=pa_dtype)
        vector = pa.FixedSizeListArray.from_arrays(flat, dim)
        return pa.Table.from_arrays(
            [
                pa.array(self.kind, pa.string()),
                pa.array(self.entity_id, pa.string()),
                vector,
                pa.array(self.prompt_hash, pa.string()),
                pa.array(self.model_id, pa.string()),
                pa.array(self.template_version, pa.string()),
                pa.array(self.generated_at, pa.int64()),
                pa.array(self.answer, pa.string()),
            ],
            schema=arrow_schema(dim, dtype),
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> KnowledgeRows:
        col = table.column("vector").combine_chunks()
        dim = col.type.list_size
        values = col.values.to_numpy(zero_copy_only=False)
        return cls(
            kind=table.column("kind").to_pylist(),
            entity_id=table.column("entity_id").to_pylist(),
            vectors=values.reshape(len(table), dim),
            prompt_hash=table.column("prompt_hash").to_pylist(),
            model_id=table.column("model_id").to_pylist(),
            template_version=table.column("template_version").to_pylist(),
            generated_at=table.column("generated_at").to_pylist(),
            answer=table.column("answer").to_pylist(),
        )


@dataclass
class Snapshot:
    path: Path
    manifest: dict[str, Any]
    rows: KnowledgeRows

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest["snapshot_id"])

    def vectors_of(self, kind: str) -> tuple[list[str], np.ndarray]:
        """(entity ids, float32 matrix) for one kind, in file order."""
        idx = [i for i, k in enumerate(self.rows.kind) if k == kind]
        ids = [self.rows.entity_id[i] for i in idx]
        return ids, self.rows.vectors[idx].astype(np.float32)


def write_snapshot_files(
    folder: Path,
    rows: KnowledgeRows,
    manifest: dict[str, Any],
    dtype: str,
    pca: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the parquet (+ PCA) into `folder` (a temp dir owned by the caller) and the manifest.

    Fills in format_version, dimension, dtype, counts, checksums. Returns the final manifest.
    """
    if dtype not in DTYPES:
        raise SnapshotError(f"storage dtype {dtype!r} not supported, expected one of {list(DTYPES)}")
    if rows.vectors.ndim != 2 or len(rows) != rows.vectors.shape[0]:
        raise SnapshotError(f"vectors have shape {rows.vectors.shape}, expected ({len(rows)}, dim)")
    bad_kinds = set(rows.kind) - set(KINDS)
    if bad_kinds:
        raise SnapshotError(f"unknown kind(s) {sorted(bad_kinds)}, expected {KINDS}")
    if not np.isfinite(rows.vectors.astype(np.float32)).all():
        raise SnapshotError("vectors contain NaN or inf")
    pq.write_table(rows.to_table(dtype), folder / KNOWLEDGE_FILE, compression="zstd")
    checksums = {KNOWLEDGE_FILE: sha256_file(folder / KNOWLEDGE_FILE)}
    if pca is not None:
        np.savez(folder / PCA_FILE, **pca)
        checksums[PCA_FILE] = sha256_file(folder / PCA_FILE)
    out = dict(manifest)
    out.update(
        format_version=FORMAT_VERSION,
        dimension=int(rows.vectors.shape[1]),
        dtype=dtype,
        counts={k: sum(1 for x in rows.kind if x == k) for k in KINDS},
        checksums=checksums,
    )
    write_json_atomic(folder / MANIFEST_FILE, out)
    write_sha256_sidecar(folder / MANIFEST_FILE)  # a writer that edits the manifest afterwards re-seals
    return out


_unsealed_warned: set[str] = set()  # legacy manifests already warned about (once per path)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    mpath = folder / MANIFEST_FILE
    if not folder.is_dir() or not mpath.is_file() or not (folder / KNOWLEDGE_FILE).is_file():
        raise SnapshotError(
            f"{folder} is not a knowledge snapshot (expected {KNOWLEDGE_FILE} and {MANIFEST_FILE})"
        )
    raw = mpath.read_bytes()  # hashed and parsed from the same bytes
    manifest = json.loads(raw)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{mpath}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    try:
        expected = read_sha256_sidecar(mpath)
    except ValueError as exc:
        raise SnapshotError(str(exc)) from exc
    if expected is None:  # written before manifests were sealed: accepted (the id is still checked)
        if str(mpath) not in _unsealed_warned:
            _unsealed_warned.add(str(mpath))
            log.warning("%s: no %s (written before manifest checksums)", mpath, sidecar_path(mpath).name)
    elif (actual := hashlib.sha256(raw).hexdigest()) != expected:
        raise SnapshotError(
            f"{mpath}: sha256 {actual[:12]}… != {sidecar_path(mpath).name} {expected[:12]}…: the manifest "
            "was changed after the snapshot was written"
        )
    check_id(manifest.get("snapshot_id"), "key 'snapshot_id'", mpath, SnapshotError)
    return manifest


def load_snapshot(folder: str | Path, *, verify: bool = True) -> Snapshot:
    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        for fname, expected in manifest["checksums"].items():
            actual = sha256_file(folder / fname)
            if actual != expected:
                raise SnapshotError(f"{folder / fname}: checksum {actual[:12]}… != manifest {expected[:12]}…")
    rows = KnowledgeRows.from_table(pq.read_table(folder / KNOWLEDGE_FILE))
    if rows.vectors.shape[1] != manifest["dimension"]:
        raise SnapshotError(
            f"{folder}: vectors have dimension {rows.vectors.shape[1]}, manifest says {manifest['dimension']}"
        )
    return Snapshot(path=folder, manifest=manifest, rows=rows)
