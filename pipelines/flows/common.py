"""Shared plumbing for the Prefect flows: settings, task options, cache keys, stage timing.

Rules every flow follows (see docs/pipelines.md):
- Flow parameters are JSON values (config path, overrides, flags) so the same flow runs from the
  CLI in-process and from a deployment on a worker.
- Task inputs and outputs are paths, ids and content hashes, never DataFrames or models; cached
  tasks (`cached_result`) are keyed on those hashes and store their result as a plain JSON file in
  `pipelines.results_dir`. Prefect persists no result at all: its cache would deserialize a stored
  record with whatever serializer the record names, pickle included (see `cached_result`).
- Retries and retry delay come from the `pipelines` config section (`with_config`); no task
  timeout (see `task_options`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect.serializers import JSONSerializer

from llm4msr.atomic import write_text_atomic
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


# What Prefect itself writes for these flows is JSON. With persist_result=False it still records a
# failed task or flow run's exception, in its result storage (tasks: pipelines.results_dir; flows:
# PREFECT_LOCAL_STORAGE_PATH); Prefect's JSON encoder writes it as {"__exc_type__", "message"}
# instead of a pickle. No object decoder: a reader using this serializer gets plain dicts (Prefect's
# default decoder imports and instantiates any class a record names). Prefect's reader follows the
# serializer a record names, not this one, which is why task results are cached by `cached_result`.
RESULT_SERIALIZER = JSONSerializer(object_decoder=None)

RESULT_FORMAT = "llm4msr-task-result/1"
MAX_RESULT_BYTES = 16 << 20  # task results are paths, hashes and numbers: kilobytes

P = ParamSpec("P")
R = TypeVar("R")


MISSING: Any = object()  # read_cached_result: no file at the path


class InvalidCachedResult(ValueError):
    """A file at a cached result's path that `write_cached_result` did not write (or not for this key)."""


def result_key(task: str, key: dict[str, Any]) -> str:
    """File stem of a cached result: the task name and a hash of the parameters it is keyed on."""
    return f"llm4msr-{task}-" + digest(key)


def read_cached_result(path: Path, task: str, key: dict[str, Any]) -> Any:
    """The result `write_cached_result` stored at `path` for (task, key), or MISSING if there is no file.

    Only `json.loads` ever sees the bytes: no pickle, no class named by the file is imported.
    Anything else at the path (another format, another task or key, a pickle) raises
    InvalidCachedResult with the reason.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return MISSING
    if size > MAX_RESULT_BYTES:
        raise InvalidCachedResult(f"{size} bytes, more than the {MAX_RESULT_BYTES} a task result may have")
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidCachedResult(f"not a JSON document ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT or "result" not in record:
        raise InvalidCachedResult(f"not an llm4msr task result (expected format {RESULT_FORMAT!r})")
    if record.get("task") != task or record.get("key") != key:
        raise InvalidCachedResult(f"stored for task {record.get('task')!r} with another key")
    return record["result"]


def write_cached_result(path: Path, task: str, key: dict[str, Any], result: Any) -> None:
    """Store a task result as plain JSON (atomically); a value that is not JSON data is an error."""
    record = {"format": RESULT_FORMAT, "task": task, "key": key, "result": result}
    try:
        text = json.dumps(record, sort_keys=True, indent=1)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"task {task} returned a value that is not plain JSON data ({exc}); cached task results "
            "must be paths, ids, hashes and numbers"
        ) from exc
    write_text_atomic(path, text + "\n")


def cached_result(
    *params: str, check: Callable[[Any], str | None] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Reuse a task's earlier result when the named parameters (content hashes) are unchanged.

    Why not Prefect's cache (`cache_key_fn` + persisted results): on a hit Prefect deserializes the
    stored record with the serializer the *record* names, so whoever can write the results folder
    can plant a record naming `pickle` and run code in the flow, whatever serializer the task was
    given. Here the task itself stores its result as plain JSON in `<results_dir>/<key>.json` (its
    `results_dir` parameter) and reads it back with `json.loads` only; a file there that is not
    such a record is logged and replaced by a fresh result. `check(result)` says why a cached
    result no longer holds (e.g. the file it names changed), or None; then the task runs again.
    The task name is the function name with dashes (train_ranker -> train-ranker). A result
    dataclass (pipelines.flows.results) is stored as its JSON form and rebuilt as the function's
    annotated return type.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        from pipelines.flows.results import from_json, to_json

        task = fn.__name__.replace("_", "-")
        signature = inspect.signature(fn)
        if "results_dir" not in signature.parameters or not set(params) <= set(signature.parameters):
            raise TypeError(f"{fn.__name__}: cached_result needs a results_dir parameter and {params}")
        returns = typing.get_type_hints(fn).get("return", Any)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            # as it reads back from JSON (tuples become lists); a parameter that is not JSON is an error
            key = json.loads(json.dumps({p: bound.arguments[p] for p in params}))
            path = Path(bound.arguments["results_dir"]) / f"{result_key(task, key)}.json"
            logger = run_logger()
            try:
                cached = read_cached_result(path, task, key)
                if cached is not MISSING:
                    try:
                        cached = from_json(returns, cached)
                    except TypeError as exc:
                        raise InvalidCachedResult(f"not a {task} result ({exc})") from None
            except InvalidCachedResult as exc:
                logger.warning("ignoring %s (%s); computing the result again", path, exc)
                cached = MISSING
            stale = None if cached is MISSING or check is None else check(cached)
            if cached is not MISSING and stale is None:
                logger.info("%s: reusing the cached result %s", task, path.name)
                return cached
            if stale:
                logger.info(
                    "%s: cached result %s no longer holds (%s); running again", task, path.name, stale
                )
            result = fn(*args, **kwargs)
            write_cached_result(path, task, key, to_json(result))
            return result

        return wrapper

    return decorate


def task_options(settings: Settings) -> dict[str, Any]:
    """Retries and retry delay from the pipelines config. Prefect persists no task result
    (`cached_result` caches them as JSON); what it does write (a failure's exception) is JSON, in
    pipelines.results_dir.

    No task timeout: Prefect runs these sync tasks in worker threads, where a timeout cannot stop
    a blocking call (an LLM batch, a training epoch in C code); it only marks the task failed once
    the call returns, and warned on every run. Hard limits belong to the process running the flow
    (the work pool's job, a Dask worker's lifetime); see docs/pipelines.md.
    """
    p = settings.pipelines
    return {
        "retries": p.task_retries,
        "retry_delay_seconds": p.task_retry_delay_seconds,
        "persist_result": False,
        "result_serializer": RESULT_SERIALIZER,
        # a Path: Prefect uses a LocalFileSystem there without a server-side block, so runs work the
        # same against the temporary local API and a real server
        "result_storage": Path(results_folder(settings)),
    }


def with_config(task_obj: Any, settings: Settings, **extra: Any) -> Any:
    """`task.with_options(...)` with the configured retries and JSON-only result records."""
    opts = task_options(settings)
    opts.update(extra)
    return task_obj.with_options(**opts)


def results_folder(settings: Settings) -> str:
    """Folder of the cached task results (`cached_result`), created if missing, absolute."""
    base = Path(settings.pipelines.results_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    return str(base)


class StageTimer:
    """Collects wall time per stage for the flow's result (its `timings`, printed by the summaries);
    each stage's own line says what it did, so the time goes to DEBUG only."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 3)
            run_logger().debug("stage %s took %.2fs", name, self.timings[name])


def fail_shard_hook(shard_index: int) -> None:
    """Raise if the rehearsal hook names this shard (see FAIL_SHARD_ENV)."""
    raw = os.environ.get(FAIL_SHARD_ENV, "").strip()
    if raw and int(raw) == shard_index:
        raise RuntimeError(f"{FAIL_SHARD_ENV}={raw}: failing shard {shard_index} on purpose (rehearsal)")


def write_report(settings: Settings, flow_name: str, report: Any) -> Path:
    """Write the flow's report (a result dataclass, as JSON) atomically under
    pipelines.work_dir/reports/<flow>/<stamp>.json and latest.json; returns the stamped path."""
    from llm4msr.atomic import write_json_atomic
    from llm4msr.provenance import utc_now_iso
    from pipelines.flows.results import to_json

    report = to_json(report)

    stamp = utc_now_iso().replace(":", "").replace("+0000", "Z")
    out = Path(settings.pipelines.work_dir) / "reports" / flow_name / f"{stamp}.json"
    write_json_atomic(out, report)
    write_json_atomic(out.parent / "latest.json", report)
    return out
