"""Shared plumbing for the Prefect flows: settings, task options, cache keys, stage timing.

Rules every flow follows (see docs/pipelines.md):
- Flow parameters are JSON values (config path, overrides, flags) so the same flow runs from the
  CLI in-process and from a deployment on a worker.
- Task inputs and outputs are paths, ids and content hashes, never DataFrames or models; cache
  keys are built from those hashes (`cache_on`), and results persist to `pipelines.results_dir`.
- Retries, retry delay and timeout come from the `pipelines` config section (`with_config`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm4msr.config import Settings, load_config

log = logging.getLogger(__name__)

# Test/ops hook: `LLM4MSR_FLOW_FAIL_SHARD=3` makes the knowledge shard task fail on shard 3
# (after any earlier shards are done), to rehearse an interrupted run. Never set in production.
FAIL_SHARD_ENV = "LLM4MSR_FLOW_FAIL_SHARD"


def load_settings(config: str | None, overrides: list[str] | None) -> Settings:
    """The flow's settings: defaults <- config file <- overrides (same rules as the CLI)."""
    return load_config(config, list(overrides or []))


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run (shown in the UI), the module logger otherwise."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run context
        return log


def digest(obj: Any) -> str:
    """A stable short hash of a JSON-able value (settings sections, parameter sets)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def section_digest(settings: Settings, *sections: str) -> str:
    return digest({s: getattr(settings, s).model_dump(mode="json") for s in sections})


def file_digest(path: str | Path) -> str | None:
    """sha256 (16 hex) of one file's bytes, or None when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def folder_digest(path: str | Path, manifest: str = "manifest.json") -> str | None:
    """Content id of an artifact folder: the hash of its manifest (which lists file checksums)."""
    return file_digest(Path(path) / manifest)


def cache_on(*params: str) -> Callable[[Any, dict[str, Any]], str | None]:
    """A `cache_key_fn` keyed on the task name and the named (JSON-able) parameters.

    Callers pass content hashes among the parameters, so a changed input is a cache miss.
    """

    def key_fn(context: Any, parameters: dict[str, Any]) -> str | None:
        name = getattr(getattr(context, "task", None), "name", "task")
        return f"llm4msr-{name}-" + digest({p: parameters.get(p) for p in params})

    return key_fn


def task_options(settings: Settings) -> dict[str, Any]:
    """Retries, retry delay, timeout and result persistence from the pipelines config."""
    p = settings.pipelines
    return {
        "retries": p.task_retries,
        "retry_delay_seconds": p.task_retry_delay_seconds,
        "timeout_seconds": p.task_timeout_seconds,
        "result_storage": result_storage(settings),
    }


def with_config(task_obj: Any, settings: Settings, **extra: Any) -> Any:
    """`task.with_options(...)` with the configured retries/timeouts/result storage."""
    opts = task_options(settings)
    opts.update(extra)
    return task_obj.with_options(**opts)


def result_storage(settings: Settings) -> Path:
    """Folder for persisted task results (Prefect's cache reads them back on a hit).

    A `Path` makes Prefect use a LocalFileSystem there without a server-side block, so runs work
    the same against the temporary local API and a real server.
    """
    base = Path(settings.pipelines.results_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return base


class StageTimer:
    """Collects wall time per stage and logs one line per stage (what was done, how long)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 3)
            run_logger().info("stage %s took %.2fs", name, self.timings[name])


def fail_shard_hook(shard_index: int) -> None:
    """Raise if the rehearsal hook names this shard (see FAIL_SHARD_ENV)."""
    raw = os.environ.get(FAIL_SHARD_ENV, "").strip()
    if raw and int(raw) == shard_index:
        raise RuntimeError(f"{FAIL_SHARD_ENV}={raw}: failing shard {shard_index} on purpose (rehearsal)")


def write_report(settings: Settings, flow_name: str, report: dict[str, Any]) -> Path:
    """Write the flow's report (what it did, timings) atomically under pipelines.work_dir/reports."""
    from llm4msr.atomic import write_json_atomic
    from llm4msr.provenance import utc_now_iso

    stamp = utc_now_iso().replace(":", "").replace("+0000", "Z")
    out = Path(settings.pipelines.work_dir) / "reports" / flow_name / f"{stamp}.json"
    write_json_atomic(out, report)
    write_json_atomic(out.parent / "latest.json", report)
    return out
