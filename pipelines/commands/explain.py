"""`llm4msr explain`: prompt, answer, neighbours and knowledge's effect on one ranking (pipelines/explain.py)."""

from __future__ import annotations

import argparse

from pipelines.commands.common import config_parent, data_parent, json_parent, knowledge_parent, out_parent


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        parents=[
            config_parent(),
            data_parent(help="canonical dataset folder (default: the one the model was trained on)"),
            knowledge_parent(),
            out_parent(metavar="FILE", help="also write a self-contained HTML report to FILE"),
            json_parent("the report"),
        ],
        help="why the ranker ranks these items for a user in a scenario (prompt, answer, knowledge effect)",
        description=(
            "Explain one ranking without retraining: the prompt the user's (and the scenario's) knowledge "
            "vector was encoded from, exactly as stored in the knowledge snapshot, the LLM's answer for a "
            "two-pass snapshot, the nearest users and scenarios by knowledge (cosine, faiss), the top-K of "
            "the scenario's items as the exported ONNX model ranks them with the user's knowledge and with "
            "the fallback vector (which items moved in or out), and the score change with the user level "
            "or the scenario level switched off (the training run's torch model, since the ONNX graph has "
            "no such switch). Without --user: the ranking of a user without knowledge. Uses the registry's "
            "CURRENT model and the snapshot root's CURRENT snapshot unless told otherwise."
        ),
    )
    p.add_argument("--user", metavar="ID", help="user id (omit to explain the scenario alone)")
    p.add_argument("--scenario", required=True, metavar="ID", help="scenario id")
    p.add_argument(
        "--model",
        metavar="DIR",
        help="exported model folder (default: the CURRENT model of pipelines.registry_dir)",
    )
    p.add_argument(
        "--top-k", type=int, default=10, metavar="N", help="items to show per ranking (default 10)"
    )
    p.add_argument(
        "--neighbours", type=int, default=5, metavar="N", help="nearest users/scenarios to show (default 5)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from llm4msr.config import load_config
    from pipelines.explain import explain, render_text, write_html

    settings = load_config(args.config, args.overrides)
    report = explain(
        settings,
        scenario_id=args.scenario,
        user_id=args.user,
        model_dir=args.model,
        knowledge=args.knowledge,
        data_dir=args.data,
        top_k=args.top_k,
        neighbours=args.neighbours,
    )
    if args.out:
        write_html(report, args.out)
    if args.json:
        print(json.dumps(report.to_dict() | {"html": args.out}, indent=2))
    else:
        print(render_text(report))
        if args.out:
            print(f"\nHTML report: {args.out}")
    return 0
