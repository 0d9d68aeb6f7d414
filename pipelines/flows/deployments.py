"""Prefect deployments of the three flows, with cron schedules from the `pipelines` config.

`register_deployments` talks to the Prefect server named by PREFECT_API_URL, creates the process
work pool if it does not exist, and creates/updates one deployment per flow:

    nightly-knowledge/nightly   pipelines.nightly_knowledge_cron (02:00)
    train/after-knowledge       pipelines.train_cron (04:00, after the nightly run)
    feature-refresh/hourly      pipelines.feature_refresh_cron (every hour)

all in `pipelines.timezone`. Entrypoints are module paths (`pipelines.flows.knowledge.nightly_knowledge`),
so a worker on a machine with this package installed runs them without code storage or images;
each run gets the config file path and overrides as parameters, and the process worker starts it
in `working_dir` (relative artifact paths resolve there).

The schedules have one source, the config: `deploy/prefect.yaml` (for `prefect deploy`) is
generated from it by `prefect_yaml` (`llm4msr flow deploy --prefect-yaml`), and a test keeps the
committed file equal to what the default config generates.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm4msr.config import Settings
from llm4msr.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DeploymentSpec:
    flow: str  # key of pipelines.flows.flows()
    name: str
    entrypoint: str
    cron: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


def deployment_specs(
    settings: Settings, config: str | None = None, overrides: list[str] | None = None
) -> list[DeploymentSpec]:
    """What `register_deployments` creates, from the pipelines config (also used by docs/tests)."""
    p = settings.pipelines
    params = {"config": str(Path(config).resolve()) if config else None, "overrides": list(overrides or [])}
    return [
        DeploymentSpec(
            "nightly-knowledge",
            "nightly",
            "pipelines.flows.knowledge.nightly_knowledge",
            p.nightly_knowledge_cron,
            "Nightly knowledge run: incremental LLM encoding, publish offline, materialize online.",
            {**params, "full": False},
        ),
        DeploymentSpec(
            "train",
            "after-knowledge",
            "pipelines.flows.train.train_flow",
            p.train_cron,
            "Train + export + register the ranker on the current data and knowledge snapshot.",
            dict(params),
        ),
        DeploymentSpec(
            "feature-refresh",
            "hourly",
            "pipelines.flows.knowledge.feature_refresh",
            p.feature_refresh_cron,
            "Re-encode users whose history changed and push them to the online store.",
            dict(params),
        ),
    ]


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool if missing; returns True if it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            log.info("created process work pool %s", name)
            return True


def register_deployments(
    settings: Settings,
    config: str | None = None,
    overrides: list[str] | None = None,
    working_dir: str | Path | None = None,
    create_pool: bool = True,
    paused: bool = False,
) -> list[dict[str, Any]]:
    """Create/update the three deployments on the server at PREFECT_API_URL; returns what was registered."""
    from prefect import deploy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL

    from pipelines.flows import flows

    if not PREFECT_API_URL.value():
        raise UserError(
            "PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (see docs/pipelines.md)"
        )
    pool = settings.pipelines.work_pool
    if create_pool:
        ensure_work_pool(pool)
    wd = str(Path(working_dir or os.getcwd()).resolve())
    by_name = flows()
    specs = deployment_specs(settings, config, overrides)
    deployments = [
        by_name[s.flow].to_deployment(
            name=s.name,
            schedules=[Cron(s.cron, timezone=settings.pipelines.timezone)],
            parameters=s.parameters,
            description=s.description,
            tags=["llm4msr", s.flow],
            work_pool_name=pool,
            job_variables={"working_dir": wd},
            entrypoint_type=EntrypointType.MODULE_PATH,
            paused=paused,
        )
        for s in specs
    ]
    ids = deploy(
        *deployments,
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    out = [
        {
            "deployment": s.full_name,
            "id": str(i),
            "cron": s.cron,
            "timezone": settings.pipelines.timezone,
            "work_pool": pool,
            "entrypoint": s.entrypoint,
        }
        for s, i in zip(specs, ids, strict=True)
    ]
    for row in out:
        log.info(
            "deployment %s: cron %r (%s) on pool %s", row["deployment"], row["cron"], row["timezone"], pool
        )
    return out


PREFECT_YAML_HEADER = """\
# GENERATED by `llm4msr flow deploy --prefect-yaml > deploy/prefect.yaml` from the `pipelines`
# config section (schedules, timezone, work pool): change the config, then regenerate; a test
# checks that this file matches configs/default.yaml. The same three deployments
# `llm4msr flow deploy` registers, for teams that prefer the Prefect CLI. From the repository root:
#   prefect deploy --prefect-file deploy/prefect.yaml --all
# Environment values are templated from the deploying shell ({{ $VAR }}); no secrets in this file.
"""


def prefect_yaml(settings: Settings) -> str:
    """deploy/prefect.yaml for these settings: the deployments of `deployment_specs`, with file-path
    entrypoints and parameters templated from the deploying shell's environment."""
    from prefect import __version__ as prefect_version

    p = settings.pipelines
    lines = [
        PREFECT_YAML_HEADER.rstrip("\n"),
        "name: llm4msr",
        f"prefect-version: {prefect_version}",
        "",
        "pull:",
        "  - prefect.deployments.steps.set_working_directory:",
        '      directory: "{{ $LLM4MSR_WORKDIR }}"',
        "",
        "definitions:",
        "  work_pool: &pool",
        f"    name: {p.work_pool}",
        "    job_variables:",
        '      working_dir: "{{ $LLM4MSR_WORKDIR }}"',
        "  parameters: &params",
        '    config: "{{ $LLM4MSR_CONFIG }}"',
        "    overrides:",
        '      - "store.url={{ $LLM4MSR_REDIS_URL }}"',
        "",
        "deployments:",
    ]
    for spec in deployment_specs(settings):
        module, _, func = spec.entrypoint.rpartition(".")
        lines += [
            f"  - name: {spec.name}",
            f"    entrypoint: {module.replace('.', '/')}.py:{func}",
            f"    description: {json.dumps(spec.description)}",
            "    parameters: *params",
            "    work_pool: *pool",
            "    schedules:",
            f'      - cron: "{spec.cron}"',
            f"        timezone: {p.timezone}",
        ]
    return "\n".join(lines) + "\n"
