"""`llm4msr`: one command, one subcommand per stage of the pipeline.

Each subcommand lives in `pipelines/commands/<name>.py` and exposes `register(subparsers)`.
Registration only builds argparse parsers; heavy imports (torch, vLLM, redis) happen inside the
handlers, so `llm4msr --help` is instant and the serving command never imports LLM code.
Handlers return an exit code; errors the user can fix (bad input, bad config) are raised as
`llm4msr.errors.UserError` (or a subclass) and printed as one line; anything else is a bug and
prints its traceback. Shared options come from `pipelines.commands.common` (one flag per noun).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import typing

from llm4msr.errors import UserError
from llm4msr.logs import LEVELS, setup_logging
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


class Parser(argparse.ArgumentParser):
    """argparse with option errors on one line (the usage is one `--help` away)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--quiet/--verbose/--log-level/--debug on the top parser and, so that they also work after
    the subcommand (`llm4msr train ... -q`), on every subparser (there without defaults, so they
    never overwrite a value given before the subcommand)."""
    default: dict[str, object] = {} if top else {"default": argparse.SUPPRESS}
    g = parser.add_argument_group("output")
    levels = g.add_mutually_exclusive_group()
    levels.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only", **default)
    levels.add_argument(
        "-v", "--verbose", action="store_true", help="debug messages, and every library's INFO", **default
    )
    levels.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        help="log level of the project's messages (default INFO, or LLM4MSR_LOG_LEVEL)",
        **default,
    )
    g.add_argument("--debug", action="store_true", help="show the traceback of user errors too", **default)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(p): p for p in action.choices.values()}.values():
                _add_global_options(child, top=False)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="llm4msr",
        description=(
            "LLM-enhanced multi-scenario recommendation. Offline: build canonical data, encode "
            "scenario/user prompts with an LLM into knowledge snapshots, publish them to the online "
            "store, train a multi-scenario ranker with hierarchical meta networks, export it to ONNX. "
            "Online: serve the ONNX ranker with cached knowledge (no LLM on the request path)."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pipelines.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pipelines.commands.{name}":
                continue
            raise
        module.register(sub)
    _add_global_options(parser, top=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A `UserError` (bad input, config or option; ConfigError, DataError, ...
    subclass it) prints one line and exits 2; any other exception is a bug and keeps its
    traceback; --debug shows the traceback of user errors too."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # "llm4msr store materialize": the command and its action, as the user typed them.
    keys = ["command", *sorted(k for k in vars(args) if k.endswith("_command"))]
    where = " ".join(["llm4msr", *(str(getattr(args, k)) for k in keys if getattr(args, k, None))])
    try:
        setup_logging(args.log_level, quiet=args.quiet, verbose=args.verbose)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 0 if args.command is None else 2
        return int(args.handler(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
