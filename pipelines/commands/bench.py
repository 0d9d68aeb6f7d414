"""`llm4msr bench AREA [ARGS...]`: run one benchmark (or all) and write docs/benchmarks/AREA.md."""

from __future__ import annotations

import argparse
import importlib
import logging

AREAS = ["data", "knowledge", "store", "ranker", "train", "serving"]
log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run benchmarks (results under docs/benchmarks/)",
        description=(
            "Run a benchmark and write its Markdown report to docs/benchmarks/AREA.md. Areas: "
            + ", ".join(AREAS)
            + ". 'all' runs each in its quick mode. Arguments after AREA go to the benchmark "
            "(try `llm4msr bench data --help`). `llm4msr bench serving --http` measures the real server "
            "under concurrency beside the runtime in-process (docs/benchmarks/serving-http.md)."
        ),
    )
    p.add_argument("area", choices=[*AREAS, "all"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    areas = AREAS if args.area == "all" else [args.area]
    status = 0
    for area in areas:
        try:
            module = importlib.import_module(f"bench.{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{area}":
                raise
            log.warning("benchmark %s is not written yet; skipping", area)
            continue
        argv = list(args.args) if args.area != "all" else ["--quick"]
        log.info("benchmark %s %s", area, " ".join(argv))
        status = max(status, int(module.main(argv) or 0))
    return status
