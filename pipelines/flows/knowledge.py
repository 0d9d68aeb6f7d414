"""Knowledge flows: `nightly_knowledge` (plan -> encode shards -> assemble/publish -> materialize)
and `feature_refresh` (re-encode only what changed, under the current snapshot's rules).

The heavy lifting is `knowledge_service.runner` (plan / encode_shard / assemble) and
`feature_store.materialize`; these flows add orchestration: one Prefect task per stage and per
shard, retries and timeouts from the config, content-hash cache keys (results cached as plain JSON,
never pickled: `common.cached_result`), a per-stage timing report,
and a task runner (threads or a Dask cluster) chosen by `pipelines.task_runner`.

Idempotency and atomicity come from the parts themselves and are relied on here:
- each shard is committed atomically under SNAPSHOT_ROOT/.work/<run_key>/, so a re-run after a
  crash encodes only the missing shards and yields the same snapshot;
- `assemble` publishes a complete snapshot before switching the offline CURRENT;
- `materialize` verifies the new online version before switching the store's pointer.
A failed run therefore leaves both current pointers on the previous version.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from feature_store.materialize import MaterializeReport
from llm4msr.config import DataConfig, KnowledgeConfig, Settings, StoreConfig
from llm4msr.errors import UserError
from llm4msr.secrets import export_password, redact_tree
from pipelines.flows.common import (
    RESULT_SERIALIZER,
    StageTimer,
    cached_result,
    fail_shard_hook,
    file_digest,
    folder_digest,
    load_settings,
    results_folder,
    run_logger,
    with_config,
    write_report,
)
from pipelines.flows.results import (
    DatasetRef,
    KnowledgeFlowResult,
    PlanSummary,
    ShardResult,
    SnapshotInfo,
)


class FlowError(UserError, RuntimeError):
    """A flow cannot proceed (missing inputs, the world changed under it); the message says what to do
    (a UserError: the CLI prints it as one line)."""


# --------------------------------------------------------------------------- plan handoff
# The runner saves each plan as SNAPSHOT_ROOT/.work/<run_key>/plan.json; tasks pass its path and
# sha256 and load it (once per process) instead of shipping prompts between tasks or workers.
_PLAN_LOCK = threading.Lock()
_PLAN_CACHE: dict[tuple[str, str | None], Any] = {}


def _current_snapshot_id(snapshot_root: str) -> str | None:
    from feature_store.offline_store import OfflineStore

    return OfflineStore(snapshot_root).current_id()


def load_plan(plan_path: str, plan_sha256: str | None) -> Any:
    """The KnowledgePlan saved at `plan_path`, checked against the hash the plan task returned."""
    from knowledge_service.runner import KnowledgePlan

    key = (str(plan_path), plan_sha256)
    with _PLAN_LOCK:
        if key not in _PLAN_CACHE:
            actual = file_digest(plan_path)
            if actual is None:
                raise FlowError(
                    f"knowledge plan {plan_path} is gone (published or cleaned up); re-run the flow"
                )
            if plan_sha256 and actual != plan_sha256:
                raise FlowError(
                    f"knowledge plan {plan_path} changed since it was planned ({plan_sha256} -> {actual})"
                )
            _PLAN_CACHE.clear()  # one plan per process: memory stays flat on long-lived workers
            _PLAN_CACHE[key] = KnowledgePlan.load(plan_path)
        return _PLAN_CACHE[key]


def _check_base(snapshot_root: str, base_id: str | None) -> None:
    current = _current_snapshot_id(snapshot_root)
    if current != base_id:
        raise FlowError(
            f"the current snapshot of {snapshot_root} changed during this run ({base_id} -> {current}); "
            "another run published in between: re-run this flow"
        )


# --------------------------------------------------------------------------- tasks
@task(name="locate-dataset", persist_result=False)
def locate_dataset(data: dict[str, Any], build_if_missing: bool) -> DatasetRef:
    """The current canonical dataset folder and its content id; builds it if missing (and allowed)."""
    from feature_store.dataset import DataError

    logger = run_logger()
    cfg = DataConfig.model_validate(data)
    out = Path(cfg.out)
    if not (out / "manifest.json").is_file():
        if not build_if_missing:
            raise DataError(
                f"no canonical dataset at {out} (manifest.json missing); build it with `llm4msr data build` "
                "or set pipelines.build_data_if_missing=true"
            )
        from feature_store.build import build_and_write

        t0 = time.perf_counter()
        build_and_write(cfg, out)
        logger.debug("built canonical dataset %s at %s in %.1fs", cfg.dataset, out, time.perf_counter() - t0)
    dig = folder_digest(out)
    logger.info("canonical dataset %s (content id %s)", out, dig)
    return DatasetRef(path=str(out.resolve()), digest=dig)


@task(name="plan-knowledge", persist_result=False)  # cheap, and must see the current snapshot every time
def plan_knowledge(
    dataset_dir: str, snapshot_root: str, knowledge: dict[str, Any], full: bool
) -> PlanSummary:
    """Render prompts, decide carry-over against the current snapshot, assign shards; save the plan."""
    from feature_store.knowledge_snapshot import read_manifest
    from knowledge_service import runner

    kp = runner.plan(
        Path(dataset_dir), Path(snapshot_root), KnowledgeConfig.model_validate(knowledge), full=full
    )
    plan_path = kp.work_dir / "plan.json"
    if not plan_path.is_file():
        plan_path = kp.save()
    base_id = Path(kp.base_snapshot).name if kp.base_snapshot else None
    n_encode = sum(len(s) for s in kp.shards)
    unchanged = False
    if base_id and n_encode == 0 and not full:
        base_manifest = read_manifest(kp.base_snapshot)
        base_total = sum(int(v) for v in base_manifest.get("counts", {}).values())
        # Same prompts but another dataset id (e.g. only held-out rows changed) still publishes a
        # version (everything carried): training refuses a snapshot whose dataset id is not its data's.
        unchanged = (
            base_manifest.get("signature") == kp.signature
            and base_total == len(kp.prompts)
            and base_manifest.get("dataset_version") == kp.dataset_version
        )
    summary = PlanSummary(
        run_key=kp.run_key,
        plan_path=str(plan_path),
        plan_sha256=file_digest(plan_path),
        num_shards=len(kp.shards),
        shard_sizes=[len(s) for s in kp.shards],
        missing_shards=list(kp.missing_shards()),
        n_prompts=len(kp.prompts),
        n_encode=n_encode,
        n_carry=len(kp.carried),
        n_users_without_history=len(kp.users_without_history),
        base_snapshot_id=base_id,
        unchanged=unchanged,
    )
    run_logger().debug(  # knowledge_service.runner logs the plan
        "plan %s: %d prompts, %d to encode in %d shards (%d already committed), %d carried over from %s%s",
        kp.run_key,
        len(kp.prompts),
        n_encode,
        len(kp.shards),
        len(kp.shards) - len(summary.missing_shards),
        len(kp.carried),
        base_id,
        " (full)" if full else "",
    )
    return summary


def _shard_file_changed(result: ShardResult) -> str | None:
    """A cached shard result holds only while its committed file is still there, unchanged."""
    if not result.path or file_digest(result.path) != result.sha256:
        return f"shard file {result.path} is missing or changed"
    return None


@task(name="encode-shard", persist_result=False)
@cached_result("run_key", "plan_sha256", "shard_index", check=_shard_file_changed)
def encode_shard(
    shard_index: int, run_key: str, plan_path: str, plan_sha256: str | None, results_dir: str
) -> ShardResult:
    """Encode one shard with the process's cached LLM backend; the shard file is committed atomically.

    Cached on (run key, plan hash, shard) as JSON in `results_dir`: a re-run of an interrupted run
    skips finished shards (the runner also skips shards whose committed file matches the plan).
    """
    from knowledge_service import runner

    kp = load_plan(plan_path, plan_sha256)
    if kp.run_key != run_key:
        raise FlowError(f"shard {shard_index}: plan {plan_path} has run key {kp.run_key}, expected {run_key}")
    fail_shard_hook(shard_index)
    t0 = time.perf_counter()
    path = Path(runner.encode_shard(kp, shard_index))
    seconds = time.perf_counter() - t0
    n = len(kp.shards[shard_index])
    run_logger().debug("shard %d: %d prompts encoded in %.2fs -> %s", shard_index, n, seconds, path.name)
    return ShardResult(
        shard=shard_index, n=n, path=str(path), sha256=file_digest(path), seconds=round(seconds, 3)
    )


@task(name="assemble-snapshot", persist_result=False)
def assemble_snapshot(
    run_key: str, plan_path: str, plan_sha256: str | None, shards: list[ShardResult], base_id: str | None
) -> SnapshotInfo:
    """Merge shards + carried vectors, validate, optional PCA, publish as the offline store's CURRENT."""
    from feature_store.knowledge_snapshot import read_manifest
    from knowledge_service import runner

    kp = load_plan(plan_path, plan_sha256)
    _check_base(kp.snapshot_root, base_id)
    for s in shards:
        if s.sha256 and file_digest(s.path) != s.sha256:
            raise FlowError(f"shard file {s.path} changed after it was encoded; re-run the flow")
    path = Path(runner.assemble(kp))
    info = _snapshot_info(path, read_manifest(path))
    run_logger().info(
        "published snapshot %s to %s: %s, %s encoded, %s carried over",
        info.snapshot_id,
        kp.snapshot_root,
        info.counts,
        info.n_encoded,
        info.n_carried,
    )
    return info


def _snapshot_info(path: Path, manifest: dict[str, Any], *, unchanged: bool = False) -> SnapshotInfo:
    """A snapshot's summary from its manifest; `unchanged`: reused as is (nothing encoded by this run)."""
    return SnapshotInfo(
        snapshot_id=manifest["snapshot_id"],
        path=str(path),
        knowledge_family=manifest.get("knowledge_family"),
        dimension=manifest.get("dimension"),
        counts=manifest.get("counts"),
        n_encoded=0 if unchanged else manifest.get("n_encoded"),
        n_carried=sum(manifest.get("counts", {}).values()) if unchanged else manifest.get("n_carried"),
        manifest_sha256=folder_digest(path),
    )


def _discard_plan(plan_path: str) -> None:
    """Remove the work folder of a plan that will not be encoded (it holds nothing but plan.json)."""
    work = Path(plan_path).parent
    if work.is_dir() and all(p.name == "plan.json" for p in work.iterdir()):
        shutil.rmtree(work, ignore_errors=True)


def _current_snapshot_info(snapshot_root: str) -> SnapshotInfo:
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore

    path = OfflineStore(snapshot_root).current_path()
    if path is None:
        raise FlowError(f"no current snapshot in {snapshot_root}")
    return _snapshot_info(path, read_manifest(path), unchanged=True)


@task(name="materialize-online", persist_result=False)  # never cached: the store may have been wiped
def materialize_online(
    snapshot_dir: str, snapshot_id: str, store_url: str, store: dict[str, Any]
) -> MaterializeReport:
    """Write the snapshot as a new online version; the store's pointer switches only after verification.

    Idempotent: `materialize` does nothing when the version is already current and resumes a
    half-written version.
    """
    from feature_store.materialize import materialize

    cfg = StoreConfig.model_validate(store)
    report = materialize(Path(snapshot_dir), store_url, cfg)
    run_logger().debug(  # feature_store.materialize logs the write
        "materialized %s into %s (%s): %d keys written, %d skipped in %.2fs%s",
        snapshot_id,
        report.store,
        report.backend,
        report.keys_written,
        report.keys_skipped,
        report.seconds,
        " (already current)" if report.already_current else "",
    )
    return report


# --------------------------------------------------------------------------- task runners / subflow
def make_task_runner(settings: Settings) -> Any:
    """Threads in-process (default), or prefect-dask's DaskTaskRunner (a LocalCluster or an address)."""
    p = settings.pipelines
    if p.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if p.dask_address:
            return DaskTaskRunner(address=p.dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": p.dask_n_workers,
                "threads_per_worker": p.dask_threads_per_worker,
                "processes": p.dask_processes,
                "dashboard_address": None,
            },
        )
    return ThreadPoolTaskRunner(max_workers=p.max_workers)


@flow(name="encode-knowledge-shards", persist_result=False, result_serializer=RESULT_SERIALIZER)
def encode_shards(config: str | None, overrides: list[str] | None, plan: dict[str, Any]) -> list[ShardResult]:
    """Fan the shards out over the configured task runner (a subflow, so the runner follows the config)."""
    settings = load_settings(config, overrides)
    futures = with_config(encode_shard, settings).map(
        list(range(plan["num_shards"])),
        run_key=unmapped(plan["run_key"]),
        plan_path=unmapped(plan["plan_path"]),
        plan_sha256=unmapped(plan["plan_sha256"]),
        results_dir=unmapped(results_folder(settings)),
    )
    return [f.result() for f in futures]


def _run_knowledge(
    config: str | None, overrides: list[str] | None, full: bool, *, refresh: bool, materialize: bool
) -> KnowledgeFlowResult:
    settings = load_settings(config, overrides)
    logger = run_logger()
    timer = StageTimer()
    kn = settings.knowledge.model_dump(mode="json")
    root = settings.knowledge.snapshot_root
    flow_name = "feature-refresh" if refresh else "nightly-knowledge"

    with timer.stage("data"):
        dataset = with_config(locate_dataset, settings)(
            settings.data.model_dump(mode="json"), settings.pipelines.build_data_if_missing
        )
    if refresh:
        _check_refresh_rules(settings, _current_snapshot_id(root))
    with timer.stage("plan"):
        plan = with_config(plan_knowledge, settings)(dataset.path, root, kn, full)
    base_id = plan.base_snapshot_id

    shards: list[ShardResult] | None = None
    if plan.unchanged:
        # Nothing to encode and the current snapshot already holds exactly these entities: do not
        # publish a copy. The online step still runs (a no-op when it already serves this version),
        # which also completes an earlier run whose materialization failed.
        logger.info(
            "%s: no prompt changed since snapshot %s; nothing to encode or publish", flow_name, base_id
        )
        snap = _current_snapshot_info(root)
        status = "up-to-date"
        _discard_plan(plan.plan_path)
    else:
        with timer.stage("encode"):
            shards = encode_shards.with_options(task_runner=make_task_runner(settings))(
                config, overrides, plan.to_dict()
            )
        with timer.stage("assemble"):
            snap = with_config(assemble_snapshot, settings)(
                plan.run_key, plan.plan_path, plan.plan_sha256, shards, base_id
            )
        status = "published"
    mat = None
    if materialize:
        with timer.stage("materialize"):
            # Task parameters are recorded: the store's password travels in store.password_env.
            store_url = export_password(settings.store.url, settings.store.password_env)
            mat = with_config(materialize_online, settings)(
                snap.path,
                snap.snapshot_id,
                store_url,
                redact_tree(settings.store.model_dump(mode="json")),
            )
    # Only after the switch (offline CURRENT and, when materializing, the online pointer)
    # succeeded: a failed run never deletes anything.
    deleted = retain_snapshots(settings)
    report = KnowledgeFlowResult(
        flow=flow_name,
        full=full,
        snapshot_root=root,
        dataset=dataset,
        base_snapshot_id=base_id,
        plan=plan,
        snapshot=snap,
        snapshot_id=snap.snapshot_id,
        status=status,
        shards=shards,
        materialize=mat,
        retained_deleted=deleted,
        timings=timer.timings,
    )
    logger.info(
        "%s done (%s): snapshot %s, %d encoded, %d carried over in %.1fs",
        flow_name,
        status,
        snap.snapshot_id,
        plan.n_encode if status == "published" else 0,
        plan.n_carry,
        sum(timer.timings.values()),
    )
    report.report_path = str(write_report(settings, flow_name, report))
    return report


def pinned_snapshots(settings: Settings) -> set[str]:
    """Snapshot versions that must outlive retention although they are not current: the one the
    current registered model was trained on (retraining, explanations, rollback of the model)."""
    from pipelines.flows.registry import ModelRegistry

    pinned: set[str] = set()
    registry_dir = Path(settings.pipelines.registry_dir)
    if registry_dir.is_dir():
        try:
            entry = ModelRegistry(registry_dir).current_entry() or {}
        except (OSError, ValueError) as exc:  # a damaged registry must not stop the knowledge flow
            run_logger().warning("model registry %s unreadable (%s); pinning nothing", registry_dir, exc)
            entry = {}
        if entry.get("knowledge_snapshot_id"):
            pinned.add(str(entry["knowledge_snapshot_id"]))
    return pinned


def retain_snapshots(settings: Settings) -> list[str]:
    """Apply store.keep_versions to the offline store: keep the newest versions, never the current
    one nor a pinned one (`pinned_snapshots`); returns the deleted ids."""
    from feature_store.offline_store import OfflineStore

    return OfflineStore(settings.knowledge.snapshot_root).retain(
        settings.store.keep_versions, protect=pinned_snapshots(settings)
    )


def _check_refresh_rules(settings: Settings, base_id: str | None) -> None:
    """A refresh extends the current snapshot; it never changes the embedding space (knowledge family)."""
    if base_id is None:
        raise FlowError(
            f"feature refresh needs a current snapshot in {settings.knowledge.snapshot_root}; "
            "run the nightly-knowledge flow first"
        )
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore
    from knowledge_service.models import model_info

    manifest = read_manifest(OfflineStore(settings.knowledge.snapshot_root).path_of(base_id))
    info = model_info(settings.knowledge.model, settings.knowledge.model_cache_dir)
    pooling = info.pooling(settings.knowledge.pooling)
    mismatches = [
        f"{name}: current {manifest.get(name)!r}, config {value!r}"
        for name, value in (
            ("model_id", info.model_id),
            ("pooling", pooling),
            ("dtype", settings.knowledge.storage_dtype),
        )
        if manifest.get(name) is not None and manifest.get(name) != value
    ]
    if mismatches:
        raise FlowError(
            "feature refresh keeps the current snapshot's rules, but the configuration differs ("
            + "; ".join(mismatches)
            + "): run `llm4msr flow run nightly-knowledge --full` to change them"
        )


# --------------------------------------------------------------------------- flows
@flow(name="nightly-knowledge", log_prints=True, persist_result=False, result_serializer=RESULT_SERIALIZER)
def nightly_knowledge(
    config: str | None = None,
    overrides: list[str] | None = None,
    full: bool = False,
    materialize: bool = True,
) -> KnowledgeFlowResult:
    """Canonical data -> prompts -> LLM vectors (sharded) -> snapshot (offline) -> online store.

    Incremental by default: entities whose prompt, model and template are unchanged are carried
    over from the current snapshot; `full=True` re-encodes everything.
    """
    return _run_knowledge(config, overrides, full, refresh=False, materialize=materialize)


@flow(name="feature-refresh", log_prints=True, persist_result=False, result_serializer=RESULT_SERIALIZER)
def feature_refresh(
    config: str | None = None, overrides: list[str] | None = None, materialize: bool = True
) -> KnowledgeFlowResult:
    """Re-encode the users (and scenarios) whose training history changed since the current snapshot.

    Under the current snapshot's rules: same model, pooling, storage dtype and PCA transform
    (the runner reuses the current PCA), so the new version stays in the same knowledge family
    and the serving model keeps accepting it. Publishes a new snapshot version (carried +
    re-encoded vectors) and a new online version, switched atomically; does nothing when no
    prompt changed.
    """
    return _run_knowledge(config, overrides, False, refresh=True, materialize=materialize)
