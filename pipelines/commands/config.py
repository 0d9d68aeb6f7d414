"""`llm4msr config show`: print the resolved configuration (defaults <- file <- overrides)."""

from __future__ import annotations

import argparse

from pipelines.commands.common import config_parent

HEADER = """\
# LLM4MSR default configuration: runs on one machine (2 cores) with the embedded defaults:
# synthetic data, vLLM on CPU with the shipped all-MiniLM-L6-v2, the file-backed online store,
# STAR + LLM4MSR meta networks, onnxruntime serving on loopback.
# This file mirrors the defaults in llm4msr/config.py, where each key is documented (a test keeps
# them equal; regenerate with `llm4msr config show --defaults > configs/default.yaml`).
# A user config lists only what it changes; `--set section.key=value` overrides on the command line.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show the resolved configuration",
        description="Configuration tools. `config show` prints the resolved YAML.",
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser(
        "show",
        parents=[config_parent()],
        help="print the resolved configuration as YAML",
        description="Print defaults <- --config FILE <- --set overrides, validated, as YAML.",
    )
    show.add_argument(
        "--defaults", action="store_true", help="print the defaults with the documentation header"
    )
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    from llm4msr.config import dump_config, load_config

    settings = load_config(None if args.defaults else args.config, [] if args.defaults else args.overrides)
    print((HEADER if args.defaults else "") + dump_config(settings), end="")
    return 0
