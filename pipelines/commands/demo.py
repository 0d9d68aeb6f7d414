"""`llm4msr demo`: the main job end to end on the embedded defaults (what `make demo` runs)."""

from __future__ import annotations

import argparse

from pipelines.cli import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded defaults",
        description=(
            "Build the default synthetic dataset, encode scenario/user knowledge with vLLM (MiniLM on "
            "CPU), publish it to the embedded online store, train STAR + LLM4MSR, export to ONNX, "
            "score a few requests through the serving runtime, and print per-scenario metrics and "
            "where everything was written. Stages that are not available yet are skipped with a note."
        ),
    )
    add_config_args(p)
    p.add_argument("--workdir", default="artifacts/demo", help="where the demo writes everything")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config
    from pipelines.demo import run_demo

    load_config(args.config, args.overrides)  # fail fast on a bad config, before any work
    return run_demo(args.config, args.overrides, args.workdir)
