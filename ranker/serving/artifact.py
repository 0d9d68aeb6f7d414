"""The exported model directory (contract 5): layout, lookup tables and a torch-free loader.

    MODEL_DIR/model.onnx            the graph, weights inside (no side .onnx.data file)
    MODEL_DIR/manifest.json         inputs/outputs, feature layout, knowledge, run, parity, provenance
    MODEL_DIR/vocabs.json           {feature: {value: index}}; index 0 = unknown
    MODEL_DIR/users.parquet         user_id + one int32 column per user-side feature (its vocab index)
    MODEL_DIR/items.parquet         item_id + one int32 column per item-side feature
    MODEL_DIR/variants/model.<v>.onnx   optional float16 / int8 variants

Both the exporter (writer) and the serving runtime (reader) use this module, so the lookup that
turns ids into feature indices is the same code online and in the export-time checks. It imports
only numpy, pyarrow and onnxruntime: never torch, vLLM, transformers or knowledge_service.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm4msr.atomic import sha256_file
from llm4msr.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
VOCABS_FILE = "vocabs.json"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
VARIANTS_DIR = "variants"
KEY_COLUMN = "__entity_id__"  # lookup-table key column (feature columns keep their feature names)
SIDES = ("user", "item", "context")
KNOWLEDGE_INPUTS = ("user_knowledge", "user_has_knowledge", "scenario_knowledge")
ALL_INPUTS = ("sparse_ids", *KNOWLEDGE_INPUTS)


class ModelLoadError(UserError, ValueError):
    """An exported model directory is missing, incomplete or corrupt; the message names the file."""


@dataclass(frozen=True)
class Feature:
    name: str
    side: str  # user | item | context
    vocab_size: int


@dataclass
class FeatureLayout:
    """Which column of `sparse_ids` holds which feature, and where its value comes from."""

    features: list[Feature]
    scenario_feature: str
    user_key: str = "user_id"
    item_key: str = "item_id"

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        for f in self.features:
            if f.side not in SIDES:
                raise ValueError(f"feature {f.name!r}: side {f.side!r}, expected one of {SIDES}")
        if self.scenario_feature not in names:
            raise ValueError(f"scenario feature {self.scenario_feature!r} is not among the features {names}")

    def columns(self, side: str) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.side == side]

    def names(self, side: str) -> list[str]:
        return [f.name for f in self.features if f.side == side]

    @property
    def scenario_column(self) -> int:
        return [f.name for f in self.features].index(self.scenario_feature)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [{"name": f.name, "side": f.side, "vocab_size": f.vocab_size} for f in self.features],
            "scenario_feature": self.scenario_feature,
            "user_key": self.user_key,
            "item_key": self.item_key,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureLayout:
        return cls(
            features=[Feature(str(f["name"]), str(f["side"]), int(f["vocab_size"])) for f in d["features"]],
            scenario_feature=str(d["scenario_feature"]),
            user_key=str(d.get("user_key", "user_id")),
            item_key=str(d.get("item_key", "item_id")),
        )


@dataclass
class LookupTable:
    """Entity id -> a row of feature indices. Row 0 is all zeros: the unknown entity."""

    ids: list[str]
    columns: list[str]
    matrix: np.ndarray  # int64 (len(ids) + 1, len(columns)); row i + 1 belongs to ids[i]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {e: i + 1 for i, e in enumerate(self.ids)}

    @classmethod
    def build(cls, ids: list[str], columns: list[str], values: np.ndarray) -> LookupTable:
        values = np.asarray(values, dtype=np.int64).reshape(len(ids), len(columns))
        matrix = np.zeros((len(ids) + 1, len(columns)), dtype=np.int64)
        matrix[1:] = values
        return cls(ids=list(ids), columns=list(columns), matrix=matrix)

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row numbers for ids (0 for unknown ids)."""
        get = self.index.get
        return np.fromiter((get(i, 0) for i in ids), dtype=np.int64, count=len(ids))

    def write(self, path: Path) -> dict[str, Any]:
        arrays = [pa.array(self.ids, pa.string())]
        arrays += [pa.array(self.matrix[1:, j].astype(np.int32)) for j in range(len(self.columns))]
        pq.write_table(
            pa.Table.from_arrays(arrays, names=[KEY_COLUMN, *self.columns]), path, compression="zstd"
        )
        return {
            "file": path.name,
            "key": KEY_COLUMN,
            "columns": self.columns,
            "rows": len(self.ids),
            "sha256": sha256_file(path),
        }

    @classmethod
    def read(cls, path: Path, columns: list[str], key: str = KEY_COLUMN) -> LookupTable:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ModelLoadError(f"{path}: cannot read lookup table ({exc})") from exc
        missing = [c for c in [key, *columns] if c not in table.column_names]
        if missing:
            raise ModelLoadError(f"{path}: missing column(s) {missing}, have {table.column_names}")
        ids = [str(x) for x in table.column(key).to_pylist()]
        values = (
            np.stack([table.column(c).to_numpy().astype(np.int64) for c in columns], axis=1)
            if columns
            else np.zeros((len(ids), 0), dtype=np.int64)
        )
        return cls.build(ids, columns, values)


class FeatureAssembler:
    """(user id, scenario id, item ids, context features) -> the `sparse_ids` [B, F] int64 matrix."""

    def __init__(
        self, layout: FeatureLayout, vocabs: dict[str, dict[str, int]], users: LookupTable, items: LookupTable
    ):
        self.layout = layout
        self.vocabs = vocabs
        self.users = users
        self.items = items
        self.user_cols = np.array(layout.columns("user"), dtype=np.int64)
        self.item_cols = np.array(layout.columns("item"), dtype=np.int64)
        self.context_cols = layout.columns("context")
        self.context_names = layout.names("context")
        if users.columns != layout.names("user"):
            raise ModelLoadError(
                f"users lookup columns {users.columns} != user-side features {layout.names('user')}"
            )
        if items.columns != layout.names("item"):
            raise ModelLoadError(
                f"items lookup columns {items.columns} != item-side features {layout.names('item')}"
            )
        self.scenario_vocab = vocabs.get(layout.scenario_feature, {})
        self.width = len(layout.features)

    def index_of(self, feature: str, value: Any) -> int:
        return int(self.vocabs.get(feature, {}).get(str(value), 0))

    def build(
        self, user_id: str, scenario_id: str, item_ids: list[str], features: dict[str, Any] | None = None
    ) -> np.ndarray:
        n = len(item_ids)
        out = np.empty((n, self.width), dtype=np.int64)
        out[:, self.item_cols] = self.items.matrix[self.items.rows(item_ids)]
        out[:, self.user_cols] = self.users.matrix[self.users.index.get(user_id, 0)]
        for col, name in zip(self.context_cols, self.context_names, strict=True):
            if name == self.layout.scenario_feature:
                out[:, col] = self.scenario_vocab.get(scenario_id, 0)
            else:
                value = (features or {}).get(name)
                out[:, col] = 0 if value is None else self.index_of(name, value)
        return out

    def build_rows(
        self,
        user_ids: list[str],
        scenario_ids: list[str],
        item_ids: list[str],
        features: dict[str, list[Any]] | None = None,
    ) -> np.ndarray:
        """Row-wise variant (one user/scenario per row), for offline checks and parity batches."""
        n = len(item_ids)
        out = np.empty((n, self.width), dtype=np.int64)
        out[:, self.item_cols] = self.items.matrix[self.items.rows(item_ids)]
        out[:, self.user_cols] = self.users.matrix[self.users.rows(user_ids)]
        for col, name in zip(self.context_cols, self.context_names, strict=True):
            if name == self.layout.scenario_feature:
                out[:, col] = [self.scenario_vocab.get(s, 0) for s in scenario_ids]
            else:
                values = (features or {}).get(name) or [None] * n
                out[:, col] = [0 if v is None else self.index_of(name, v) for v in values]
        return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc


def _entry(obj: Any, key: str, path: Path, expected: str, where: str = "") -> dict[str, Any]:
    """`obj[key]`, an object with the string fields `file` and `sha256`, or a ModelLoadError naming
    the file, the key and what was expected (an older or hand-edited manifest)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    name = repr(f"{where}{key}")
    if not isinstance(value, dict) or not all(isinstance(value.get(f), str) for f in ("file", "sha256")):
        got = "missing" if value is None else f"{json.dumps(value)[:80]}"
        raise ModelLoadError(
            f"{path}: key {name} is {got}; expected {expected} "
            '({"file": ..., "sha256": ...}); re-export the model with `llm4msr export`'
        )
    return value


@dataclass
class ModelArtifact:
    """A loaded model directory: manifest, feature assembler and the path of the ONNX file to run."""

    path: Path
    manifest: dict[str, Any]
    layout: FeatureLayout
    assembler: FeatureAssembler
    onnx_path: Path
    variant: str

    @property
    def scenarios(self) -> list[str]:
        return list(self.manifest.get("scenarios") or self.assembler.scenario_vocab)

    @property
    def knowledge(self) -> dict[str, Any]:
        return dict(self.manifest.get("knowledge") or {})

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.manifest.get("inputs") or []]


def load_artifact(model_dir: str | Path, variant: str = "float32", *, verify: bool = True) -> ModelArtifact:
    """Read and check a model directory. Raises ModelLoadError naming the file that is wrong."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    manifest = _read_json(path / MANIFEST_FILE)
    if not isinstance(manifest, dict):
        raise ModelLoadError(
            f"{path / MANIFEST_FILE}: a JSON {type(manifest).__name__}, expected an object (the export manifest)"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path / MANIFEST_FILE}: format_version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    mpath = path / MANIFEST_FILE
    if variant == "float32":
        onnx_path, meta = path / MODEL_FILE, _entry(manifest, "model", mpath, "the ONNX file's entry")
    else:
        variants = manifest.get("variants") or {}
        if not isinstance(variants, dict) or not variants.get(variant):
            have = sorted(variants) if isinstance(variants, dict) else variants
            raise ModelLoadError(f"{path}: no {variant!r} variant was exported (have {have})")
        meta = _entry(variants, variant, mpath, f"the {variant} variant's entry", "variants.")
        onnx_path = path / meta["file"]
    if not onnx_path.is_file():
        raise ModelLoadError(f"model file {onnx_path} is missing")
    if verify:
        actual = sha256_file(onnx_path)
        if actual != meta["sha256"]:
            raise ModelLoadError(
                f"model file {onnx_path} is corrupt: sha256 {actual[:12]}… differs from the "
                f"manifest's {meta['sha256'][:12]}…"
            )
    try:
        layout = FeatureLayout.from_dict(manifest["layout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path / MANIFEST_FILE}: invalid 'layout' ({exc})") from exc
    vocabs = _read_json(path / VOCABS_FILE)
    if not isinstance(vocabs, dict):
        raise ModelLoadError(f"{path / VOCABS_FILE}: a JSON {type(vocabs).__name__}, expected an object")
    lookups = manifest.get("lookups")
    if not isinstance(lookups, dict):
        raise ModelLoadError(
            f"{mpath}: key 'lookups' is {'missing' if lookups is None else json.dumps(lookups)[:80]}; expected "
            '{"users": {"file", "sha256"}, "items": {...}} (the id lookup tables); re-export the model'
        )
    for name in ("users", "items"):
        _entry(lookups, name, mpath, f"the {name} lookup table's entry", "lookups.")
    for name in ("users", "items"):
        f = path / lookups[name]["file"]
        if not f.is_file():
            raise ModelLoadError(f"lookup table {f} is missing")
        if verify and sha256_file(f) != lookups[name]["sha256"]:
            raise ModelLoadError(f"lookup table {f} is corrupt: sha256 differs from the manifest")
    users = LookupTable.read(path / lookups["users"]["file"], layout.names("user"))
    items = LookupTable.read(path / lookups["items"]["file"], layout.names("item"))
    assembler = FeatureAssembler(layout, vocabs, users, items)
    return ModelArtifact(
        path=path, manifest=manifest, layout=layout, assembler=assembler, onnx_path=onnx_path, variant=variant
    )


def session_options(intra_op_threads: int = 1, inter_op_threads: int = 1, optimization: str = "all") -> Any:
    """onnxruntime SessionOptions with explicit thread counts (0 = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.log_severity_level = 3
    return opts


def open_session(
    onnx_path: str | Path, intra_op_threads: int = 1, inter_op_threads: int = 1, optimization: str = "all"
) -> Any:
    """An onnxruntime InferenceSession on CPU; a corrupt file raises ModelLoadError."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(onnx_path),
            sess_options=session_options(intra_op_threads, inter_op_threads, optimization),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ModelLoadError(f"model file {onnx_path} cannot be loaded by onnxruntime: {exc}") from exc


def graph_io(onnx_path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's actual inputs and outputs (name, dtype, shape with symbolic dims as names)."""
    sess = open_session(onnx_path)

    def describe(args: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": a.name,
                "dtype": a.type.removeprefix("tensor(").removesuffix(")"),
                "shape": [d if isinstance(d, int | str) else None for d in a.shape],
            }
            for a in args
        ]

    return describe(sess.get_inputs()), describe(sess.get_outputs())
