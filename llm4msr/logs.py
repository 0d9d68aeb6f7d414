"""One logging setup for every command (`logging.config.dictConfig`), so the output is for a person.

- The project's loggers (PROJECT_PACKAGES, plus Prefect's flow/task run loggers, which carry the
  flows' own messages) log at INFO; third-party libraries at WARNING; vLLM and torch, whose
  warnings on CPU are about builds we do not use (Triton, tcmalloc, thread binding), at ERROR.
- One stderr handler on the root logger; a filter on it enforces those levels by logger name,
  because Prefect and torch reset their loggers' levels when they are imported (after this
  runs). Each record is printed once: nothing else adds handlers to the loggers we print.
- Prefect's per-task lifecycle lines ("Finished in state Completed()", "Beginning flow run ...")
  are dropped below --verbose; failures and retries stay.
- In-process runs send no Prefect telemetry/analytics (the temporary server's telemetry service
  failed offline and once raced the flows for its sqlite database) and, without a Prefect server
  (PREFECT_API_URL), no logs to the temporary API. Set through environment variables that are
  only defaults: a variable already set wins.

Levels: default (INFO), quiet (warnings only), verbose (DEBUG for the project, INFO for the rest,
nothing dropped). LLM4MSR_LOG_LEVEL sets the default for commands that are not given one.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
import warnings
from typing import Any, TextIO

from llm4msr.errors import UserError

# Top-level packages of this repository: their loggers are "ours".
PROJECT_PACKAGES = ("llm4msr", "pipelines", "feature_store", "knowledge_service", "ranker", "bench")
# Prefect loggers whose records are our flows' and tasks' own messages (get_run_logger()).
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# Libraries that log per-request or per-start-up chatter at INFO and harmless warnings.
THIRD_PARTY = (
    "httpx",
    "httpcore",
    "prefect",
    "urllib3",
    "asyncio",
    "filelock",
    "transformers",
    "huggingface_hub",
    "uvicorn",
    "onnxruntime",
    "onnxscript",
    "onnx_ir",
    "numba",
    "distributed",
    "fsspec",
    "matplotlib",
    "PIL",
    "faiss",
)
NOISY = ("vllm", "torch")  # warnings about builds/features unused here: shown from ERROR

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Prefect's lifecycle lines for each flow and task run; they say nothing the flows do not.
_LIFECYCLE = re.compile(
    r"^(Finished in state (Completed|Cached)\(|Beginning (sub)?flow run |Created (sub)?flow run |"
    r"Created task run |Executing '|View at )"
)

_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the temporary server's telemetry service
    "DO_NOT_TRACK": "1",  # Prefect's client-side SDK analytics
    "VLLM_CONFIGURE_LOGGING": "0",  # vLLM logs through our handler, not its own
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar (local weights, milliseconds)
}
_ENV_QUIET_LIBS = {
    "TORCH_LOGS": "-all",  # torch's own handler (e.g. "Triton not available") from ERROR
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings printed from C++ (NUMA binding)
}


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class _ByOrigin(logging.Filter):
    """Per-origin thresholds on the one handler, and Prefect's lifecycle lines dropped."""

    def __init__(self, project: int, third_party: int, noisy: int, lifecycle: bool) -> None:
        super().__init__()
        self.project, self.third_party, self.noisy, self.lifecycle = project, third_party, noisy, lifecycle

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if _matches(name, PROJECT_PACKAGES) or name in RUN_LOGGERS or name == "__main__":
            if not self.lifecycle and record.levelno == logging.INFO and name in RUN_LOGGERS:
                return not _LIFECYCLE.match(record.getMessage())
            return record.levelno >= self.project
        if _matches(name, NOISY):
            return record.levelno >= self.noisy
        return record.levelno >= self.third_party


class CurrentStderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is when a record is emitted, never the stream of setup
    time: a caller that swaps stderr (pytest's capture, a notebook, a redirect) and closes its
    stream later must not leave every later log call writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__/setStream assign it
        pass


def resolve_level(level: str | None = None, *, quiet: bool = False, verbose: bool = False) -> str:
    """The project log level from --quiet/--verbose/--log-level or LLM4MSR_LOG_LEVEL."""
    if quiet and verbose:
        raise UserError("--quiet and --verbose contradict each other; give one")
    if verbose:
        return "DEBUG"
    if quiet:
        return "WARNING"
    source = "--log-level" if level else "LLM4MSR_LOG_LEVEL"
    value = (level or os.environ.get("LLM4MSR_LOG_LEVEL") or "INFO").strip().upper()
    if value not in LEVELS:
        raise UserError(
            f"{source} {value.lower()!r}: expected one of {', '.join(LEVELS)} (or --quiet/--verbose)"
        )
    return value


def logging_config(level: str) -> dict[str, Any]:
    """The dictConfig for a project level (DEBUG, INFO, WARNING, ERROR)."""
    project = logging.getLevelName(level)
    verbose = project <= logging.DEBUG
    third_party = logging.INFO if verbose else max(project, logging.WARNING)
    noisy = logging.INFO if verbose else max(project, logging.ERROR)
    lowest = min(project, third_party)
    loggers: dict[str, Any] = {name: {"level": level} for name in PROJECT_PACKAGES}
    loggers.update({name: {"level": logging.getLevelName(third_party)} for name in THIRD_PARTY})
    loggers.update({name: {"level": logging.getLevelName(noisy)} for name in NOISY})
    loggers.update({name: {"level": level} for name in RUN_LOGGERS})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "datefmt": "%H:%M:%S"}
        },
        "filters": {
            "by_origin": {
                "()": _ByOrigin,
                "project": project,
                "third_party": third_party,
                "noisy": noisy,
                "lifecycle": verbose,
            }
        },
        "handlers": {
            "stderr": {
                "()": CurrentStderr,
                "formatter": "plain",
                "filters": ["by_origin"],
            }
        },
        "loggers": loggers,
        "root": {"level": logging.getLevelName(lowest), "handlers": ["stderr"]},
    }


def setup_logging(level: str | None = None, *, quiet: bool = False, verbose: bool = False) -> str:
    """Configure logging, warnings and the libraries' logging environment once per process;
    returns the project level. Safe to call again (replaces, never adds, the handler)."""
    resolved = resolve_level(level, quiet=quiet, verbose=verbose)
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not os.environ.get("PREFECT_API_URL"):
        # Only the temporary in-process API would receive them; nobody reads them there.
        os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    if resolved != "DEBUG":
        for key, value in _ENV_QUIET_LIBS.items():
            os.environ.setdefault(key, value)
        # Deprecation notices raised inside libraries are for their maintainers, not our users.
        libs = r"(vllm|torch|transformers|prefect|pydantic|httpx|onnxscript|onnx|distributed)(\.|$)"
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=libs)
    logging.config.dictConfig(logging_config(resolved))
    return resolved
