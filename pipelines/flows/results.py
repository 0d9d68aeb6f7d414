"""Typed results of the flows and their tasks (instead of `dict[str, Any]`).

Every result is a dataclass of JSON values (str, numbers, bools, None, lists, dicts, and nested
result dataclasses), so that it can be

- cached by `common.cached_result` as plain JSON (`to_json`) and read back as the same type
  (`from_json`, driven by the field annotations: no class is ever named by the file), and
- written as a flow report (`common.write_report`): the report file is `to_json(result)`.

Flow reports keep the keys they had as dicts; fields that a run did not produce (a knowledge run
that encoded nothing has no `shards`; `--no-materialize` has no `materialize`) are `null`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from feature_store.materialize import MaterializeReport
from pipelines.flows.registry import Decision

T = TypeVar("T")


def to_json(value: Any) -> Any:
    """A result as JSON data: dataclasses become dicts (recursively), tuples become lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_json(tp: Any, data: Any) -> Any:
    """Rebuild a value of type `tp` from `to_json` output; dataclass fields follow their annotations.

    Only the types named in the code are built (never one named by the data); a dict missing a
    field without a default, or carrying an unknown one, is a TypeError.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return from_json(args[0], data) if len(args) == 1 else data
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(data, tp):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{tp.__name__}: expected a JSON object, got {type(data).__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(data) - names
        if unknown:
            raise TypeError(f"{tp.__name__}: unknown fields {sorted(unknown)}")
        return tp(**{k: from_json(hints[k], v) for k, v in data.items()})
    if origin is list and isinstance(data, list):
        (item,) = typing.get_args(tp) or (Any,)
        return [from_json(item, v) for v in data]
    return data


class JsonResult:
    """Mixin: `to_dict()` / `from_dict()` for the result dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return from_json(cls, data)


# --------------------------------------------------------------------------- shared
@dataclass
class DatasetRef(JsonResult):
    """The canonical dataset folder a flow used and its content id (manifest hash)."""

    path: str
    digest: str | None


# --------------------------------------------------------------------------- knowledge flows
@dataclass
class PlanSummary(JsonResult):
    """What the plan task decided: shards to encode, entities carried over, the base snapshot."""

    run_key: str
    plan_path: str
    plan_sha256: str | None
    num_shards: int
    shard_sizes: list[int]
    missing_shards: list[int]
    n_prompts: int
    n_encode: int
    n_carry: int
    n_users_without_history: int
    base_snapshot_id: str | None
    unchanged: bool


@dataclass
class ShardResult(JsonResult):
    """One encoded shard (cached): its committed file and that file's hash."""

    shard: int
    n: int
    path: str
    sha256: str | None
    seconds: float


@dataclass
class SnapshotInfo(JsonResult):
    """A published (or the current, unchanged) knowledge snapshot."""

    snapshot_id: str
    path: str
    knowledge_family: str | None
    dimension: int | None
    counts: dict[str, int] | None
    n_encoded: int | None
    n_carried: int | None
    manifest_sha256: str | None


@dataclass
class KnowledgeFlowResult(JsonResult):
    """Report of `nightly-knowledge` / `feature-refresh` (also written as the flow's report file).

    status: "published" (a new snapshot version) or "up-to-date" (no prompt changed).
    retained_deleted: snapshot versions removed by `store.keep_versions` after this run's switch.
    """

    flow: str
    full: bool
    snapshot_root: str
    dataset: DatasetRef
    base_snapshot_id: str | None
    plan: PlanSummary
    snapshot: SnapshotInfo
    snapshot_id: str
    status: str
    shards: list[ShardResult] | None = None
    materialize: MaterializeReport | None = None
    retained_deleted: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report_path: str | None = None

    def summary_lines(self) -> list[str]:
        """A few lines for a person (`llm4msr flow run` without --json)."""
        p = self.plan
        lines = [
            f"{self.flow}: {self.status}, snapshot {self.snapshot_id} "
            f"({p.n_encode if self.status == 'published' else 0} encoded, {p.n_carry} carried over"
            f"{', base ' + self.base_snapshot_id if self.base_snapshot_id else ''})",
            f"  snapshot   {self.snapshot.path}",
        ]
        if self.materialize is not None:
            m = self.materialize
            state = "already current" if m.already_current else f"{m.keys_written} keys written"
            lines.append(f"  online     {m.store} version {m.version} ({state})")
        else:
            lines.append("  online     not written (--no-materialize)")
        if self.retained_deleted:
            lines.append(
                f"  removed    old snapshots {', '.join(self.retained_deleted)} (store.keep_versions)"
            )
        lines += [_timings_line(self.timings), f"  report     {self.report_path}"]
        return lines


# --------------------------------------------------------------------------- train flow
@dataclass
class KnowledgeRef(JsonResult):
    """The current knowledge snapshot the train flow used (all None when training without it)."""

    path: str | None
    snapshot_id: str | None
    digest: str | None
    dataset_check: dict[str, Any] | None = None


@dataclass
class TrainedRun(JsonResult):
    """A training run folder (cached): its weights hash and, with train.select=auto, the decision."""

    run_dir: str
    weights_sha256: str | None
    selection: dict[str, Any] | None = None


@dataclass
class Evaluation(JsonResult):
    """The run's overall validation AUC (promotion criterion) and final test-split metrics."""

    valid_auc: float | None
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportedModel(JsonResult):
    """An exported, parity-checked model folder (cached on the run's weights hash)."""

    model_dir: str
    parity: dict[str, Any]
    exporter: str | None


@dataclass
class Registration(JsonResult):
    """What the registry did with the candidate and why."""

    decision: Decision
    registered: bool
    model_id: str | None
    current_model_id: str | None
    model_dir: str | None = None
    already_current: bool = False


@dataclass
class TrainFlowResult(JsonResult):
    """Report of the `train` flow. `registered` / `reason` repeat `registry` for quick reading."""

    flow: str
    dataset: DatasetRef
    knowledge: KnowledgeRef
    run: TrainedRun
    evaluation: Evaluation
    export: ExportedModel
    registry: Registration
    registered: bool
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    report_path: str | None = None

    @property
    def accepted(self) -> bool:
        """The flow's model is the current one (newly registered, or the same weights already were)."""
        return self.registered or self.registry.already_current

    def summary_lines(self) -> list[str]:
        """A few lines for a person (`llm4msr flow run` without --json)."""
        auc = self.evaluation.valid_auc
        if self.registered:
            head = f"train: registered model {self.registry.model_id}"
        elif self.registry.already_current:
            head = f"train: model {self.registry.model_id} is already current"
        else:
            head = f"train: NOT registered (current stays {self.registry.current_model_id})"
        lines = [
            head,
            f"  reason     {self.reason}",
            f"  run        {self.run.run_dir} (validation AUC {'n/a' if auc is None else f'{auc:.4f}'})",
        ]
        if self.run.selection:
            lines.append(f"  selection  {self.run.selection.get('reason') or self.run.selection.get('keep')}")
        if self.registry.model_dir:
            lines.append(f"  model      {self.registry.model_dir}")
        lines += [_timings_line(self.timings), f"  report     {self.report_path}"]
        return lines


def timings_text(timings: dict[str, float]) -> str:
    """Total and per-stage seconds on one line: `12.3 (data 0.1, plan 0.2, encode 12.0)`."""
    return f"{sum(timings.values()):.1f} (" + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + ")"


def _timings_line(timings: dict[str, float]) -> str:
    return f"  seconds    {timings_text(timings)}"


FlowResult = KnowledgeFlowResult | TrainFlowResult
