"""`llm4msr demo`: the main job end to end on the embedded defaults (what `make demo` runs)."""

from __future__ import annotations

import argparse

from pipelines.commands.common import config_parent, deprecated_alias, out_parent

DEFAULT_OUT = "artifacts/demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded defaults",
        description=(
            "Build the default synthetic dataset, encode scenario/user knowledge with vLLM (MiniLM on "
            "CPU), publish it to the embedded online store, train STAR plain and + LLM4MSR "
            "(train.select=auto), export the kept variant to ONNX, register it, score a few requests "
            "through the serving runtime, and end with a short summary: per-scenario test metrics of "
            "both variants, what was written where, and how to serve it."
        ),
        parents=[
            config_parent(),
            out_parent(help=f"folder the demo writes everything to (default: {DEFAULT_OUT})"),
        ],
    )
    deprecated_alias(p, "--workdir", "--out", "out")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config
    from pipelines.demo import run_demo

    load_config(args.config, args.overrides)  # fail fast on a bad config, before any work
    return run_demo(args.config, args.overrides, args.out or DEFAULT_OUT)
