"""`llm4msr`: one command, one subcommand per stage of the pipeline.

Each subcommand lives in `pipelines/commands/<name>.py` and exposes `register(subparsers)`.
Registration only builds argparse parsers; heavy imports (torch, vLLM, redis) happen inside the
handlers, so `llm4msr --help` is instant and the serving command never imports LLM code.
Handlers return an exit code; errors the user can fix (bad input, bad config) are raised as
`UserError` (or subclasses of ValueError/FileNotFoundError) and printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from llm4msr.errors import UserError
from llm4msr.logs import setup_logging
from pipelines.commands.common import add_config_args

__all__ = ["UserError", "add_config_args", "build_parser", "main"]

# Order = order in --help. A module that is not written yet is skipped.
COMMAND_MODULES = [
    "demo",
    "config",
    "data",
    "knowledge",
    "store",
    "train",
    "report",
    "export",
    "serve",
    "explain",
    "flow",
    "bench",
]

log = logging.getLogger("llm4msr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm4msr",
        description=(
            "LLM-enhanced multi-scenario recommendation. Offline: build canonical data, encode "
            "scenario/user prompts with an LLM into knowledge snapshots, publish them to the online "
            "store, train a multi-scenario ranker with hierarchical meta networks, export it to ONNX. "
            "Online: serve the ONNX ranker with cached knowledge (no LLM on the request path)."
        ),
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pipelines.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pipelines.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        from llm4msr.config import ConfigError

        return int(args.handler(args) or 0)
    except (UserError, ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"llm4msr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
