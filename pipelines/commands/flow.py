"""`llm4msr flow run|deploy`: run a Prefect flow in-process, or register the scheduled deployments."""

from __future__ import annotations

import argparse
import json

from llm4msr.errors import UserError
from pipelines.commands.common import config_parent, json_parent
from pipelines.flows import FLOW_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flow",
        help="run the Prefect flows (nightly knowledge, train, feature refresh) or deploy them",
        description=(
            "Orchestration with Prefect 3. `flow run NAME` runs one flow in this process against a "
            "temporary local Prefect API (or the server in PREFECT_API_URL, if set), with retries, "
            "timeouts and cached task results as configured in the `pipelines` section. `flow deploy` "
            "registers the three flows as deployments with cron schedules on a running Prefect server "
            "(PREFECT_API_URL) for a process work pool. See docs/pipelines.md."
        ),
    )
    fsub = p.add_subparsers(dest="flow_command", metavar="ACTION")

    run = fsub.add_parser(
        "run",
        help="run one flow in-process",
        description=(
            "Run a flow now, in this process. nightly-knowledge: canonical data -> prompts -> LLM "
            "vectors in shards -> snapshot published to the offline store -> materialized to the online "
            "store (incremental unless --full). train: train on the current data and knowledge snapshot, "
            "export to ONNX with the parity gate, register the model unless it is worse than the current "
            "one by more than pipelines.max_auc_regression. feature-refresh: re-encode only users whose "
            "history changed and push them to the online store. Prints a short summary (the full "
            "report is written under pipelines.work_dir/reports and printed with --json). Exit code 3: "
            "the train flow completed but refused the model."
        ),
        parents=[config_parent(), json_parent("the flow's full report")],
    )
    run.add_argument("name", choices=FLOW_NAMES, help="which flow")
    run.add_argument(
        "--full",
        action="store_true",
        help="nightly-knowledge: re-encode every entity instead of carrying unchanged ones over",
    )
    run.add_argument(
        "--no-materialize",
        action="store_true",
        help="knowledge flows: publish the snapshot offline but do not write the online store",
    )
    run.set_defaults(handler=_run)

    dep = fsub.add_parser(
        "deploy",
        help="register the scheduled deployments on a Prefect server",
        description=(
            "Create or update the deployments nightly-knowledge/nightly, train/after-knowledge and "
            "feature-refresh/hourly on the Prefect server at PREFECT_API_URL, with the cron schedules and "
            "timezone of the `pipelines` config section, for the process work pool pipelines.work_pool "
            "(created if missing). Runs get --config (as an absolute path) and --set overrides as "
            "parameters and start in --workdir. Then start a worker: "
            "`prefect worker start --pool <pipelines.work_pool>`."
        ),
        parents=[config_parent()],
    )
    dep.add_argument(
        "--workdir",
        default=None,
        help="folder the worker runs flows in (relative artifact paths resolve there; default: cwd)",
    )
    dep.add_argument("--paused", action="store_true", help="create the schedules paused")
    dep.add_argument("--dry-run", action="store_true", help="print what would be registered and exit")
    dep.add_argument(
        "--prefect-yaml",
        action="store_true",
        help="print deploy/prefect.yaml (for `prefect deploy`) generated from this config and exit",
    )
    dep.set_defaults(handler=_deploy)

    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def flow_overrides(overrides: list[str], password_env: str, *, deploy: bool = False) -> list[str]:
    """The --set overrides as they may be recorded as flow parameters (the Prefect server stores
    them): a password in `store.url` moves to the environment variable `password_env` of this
    process, which runs the flow (the URL keeps `***`, which the store resolves from there). A
    deployment runs elsewhere, later: refused; so is a password in any other override."""
    from llm4msr.secrets import export_password, redact

    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if redact(value) == value:
            out.append(item)
        elif key.strip() == "store.url" and not deploy:
            out.append(f"{key}={export_password(value, password_env)}")
        else:
            raise UserError(
                f"--set {redact(item)}: a password in an override would be stored as a Prefect "
                f"parameter; give it in the environment variable {password_env} (store.password_env) "
                + ("of the worker " if deploy else "")
                + "instead"
            )
    return out


def _run(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config

    settings = load_config(args.config, args.overrides)  # fail fast on a bad config, before Prefect starts
    overrides = flow_overrides(list(args.overrides), settings.store.password_env)
    from pipelines.flows import flows
    from pipelines.flows.results import TrainFlowResult

    fl = flows()[args.name]
    kwargs: dict[str, object] = {"config": args.config, "overrides": overrides}
    if args.name == "nightly-knowledge":
        kwargs["full"] = bool(args.full)
    elif args.full:
        raise UserError(f"--full applies to nightly-knowledge only, not {args.name}")
    if args.name != "train":
        kwargs["materialize"] = not args.no_materialize
    elif args.no_materialize:
        raise UserError("--no-materialize applies to the knowledge flows only")
    report = fl(**kwargs)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.summary_lines()))
    if isinstance(report, TrainFlowResult) and not report.accepted:
        return 3  # completed, but the model was refused (the report says why)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config
    from pipelines.flows.deployments import deployment_specs, register_deployments

    settings = load_config(args.config, args.overrides)
    flow_overrides(list(args.overrides), settings.store.password_env, deploy=True)  # no secrets
    if args.prefect_yaml:
        from pipelines.flows.deployments import prefect_yaml

        print(prefect_yaml(settings), end="")
        return 0
    if args.dry_run:
        for s in deployment_specs(settings, args.config, args.overrides):
            print(
                f"{s.full_name:32} cron {s.cron!r} ({settings.pipelines.timezone}) pool "
                f"{settings.pipelines.work_pool} -> {s.entrypoint} {json.dumps(s.parameters)}"
            )
        return 0
    rows = register_deployments(
        settings, args.config, args.overrides, working_dir=args.workdir, paused=args.paused
    )
    for r in rows:
        print(f"{r['deployment']:32} {r['id']} cron {r['cron']!r} ({r['timezone']}) pool {r['work_pool']}")
    print(f"start a worker: prefect worker start --pool {settings.pipelines.work_pool}")
    return 0
