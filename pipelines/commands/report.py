"""`llm4msr report`: per-scenario comparison table + plot from training run directories."""

from __future__ import annotations

import argparse

from llm4msr.errors import UserError
from pipelines.commands.common import out_parent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        parents=[out_parent(required=True, help="output folder for report.md and the plot")],
        help="Markdown table + PNG plot comparing training runs (mean ± std over seeds)",
        description=(
            "Read run directories (or folders containing them, e.g. the seed_N folders of `train --seeds`), "
            "group them by dataset, backbone and variant (plain / +LLM4MSR / ablations), and write "
            "DIR/report.md (per-scenario AUC, gAUC, Logloss, Recall@K, NDCG@K, mean ± std over seeds, "
            "training time per epoch) and DIR/auc_per_scenario.png (backbone vs +LLM4MSR, error bars)."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or folders containing them")
    p.add_argument("--title", default="LLM4MSR training report", help="report title")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from ranker.report import find_runs, write_report

    runs = find_runs(args.runs)
    if not runs:
        raise UserError(f"no run directories (with metrics.json) found under {args.runs}")
    md, png = write_report(runs, args.out, title=args.title)
    print(f"wrote {md} and {png} ({len(runs)} runs)")
    return 0
