"""`llm4msr train`: train a multi-scenario ranker (backbone [+ LLM4MSR meta networks]) into a run directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llm4msr.errors import UserError
from pipelines.commands.common import (
    backbone_parent,
    choices,
    config_parent,
    data_parent,
    knowledge_parent,
    out_parent,
)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        parents=[
            config_parent(),
            data_parent(),
            knowledge_parent(),
            backbone_parent(),
            out_parent(metavar="RUN_DIR", required=True, help="run directory to create"),
        ],
        help="train a ranker (backbone + LLM4MSR meta networks) into a run directory",
        description=(
            "Train one multi-scenario ranker on a canonical dataset and write a run directory: "
            "config.yaml, feature_spec.json, model.safetensors, run.json (data + knowledge versions, "
            "timings), metrics.json (per epoch + final per-scenario AUC/gAUC/Logloss/Recall@K/NDCG@K) "
            "and predictions.parquet. Adam with the configured LR schedule, early stopping on validation "
            "AUC, seeded. With train.lr_sweep set, trains once per LR and keeps the best on validation."
        ),
    )
    p.add_argument(
        "--no-llm", action="store_true", help="train the plain backbone (no knowledge, no meta networks)"
    )
    p.add_argument("--seed", type=int, help="random seed (default: train.seed)")
    p.add_argument(
        "--seeds",
        metavar="N,N,...",
        help="train once per seed into RUN_DIR/seed_N (for mean ± std in `llm4msr report`)",
    )
    p.add_argument(
        "--select",
        choices=choices("train", "select"),
        help="auto: also train the plain backbone into RUN_DIR/plain (+LLM4MSR into RUN_DIR/llm4msr) and "
        "keep +LLM4MSR only if it beats plain on validation by more than train.select_min_z standard "
        "errors; the decision goes to RUN_DIR/selection.json (default: train.select)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training over torch.distributed ranks (gloo on CPU, NCCL on GPU); launch with "
        "`torchrun --nproc-per-node N -m pipelines.cli train --distributed ...` (docs/ranker.md)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(handler=_train)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise UserError("--seeds: no seed given")
    return seeds


def _train(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config

    overrides = list(args.overrides)
    if args.backbone:
        overrides.append(f"train.backbone={args.backbone}")
    if args.no_llm:
        overrides.append("train.use_llm=false")
    if args.select:
        overrides.append(f"train.select={args.select}")
    settings = load_config(args.config, overrides)
    data = Path(args.data or settings.data.out)
    if not data.is_dir():
        raise UserError(
            f"dataset folder {data} does not exist; build it with `llm4msr data build` or pass --data"
        )
    knowledge = args.knowledge or (settings.knowledge.snapshot_root if settings.train.use_llm else None)
    if settings.train.use_llm and knowledge is not None and not Path(knowledge).exists():
        raise UserError(
            f"knowledge snapshot {knowledge} does not exist; build it with `llm4msr knowledge build`, "
            "pass --knowledge, or train without it (--no-llm)"
        )
    from ranker.train import train

    seeds = (
        _parse_seeds(args.seeds)
        if args.seeds
        else [args.seed if args.seed is not None else settings.train.seed]
    )
    out = Path(args.out)
    select = settings.train.select == "auto"
    if select and (not settings.train.use_llm or args.seeds):
        raise UserError("--select auto compares plain with +LLM4MSR for one seed: drop --no-llm / --seeds")
    if args.distributed:
        if select or args.seeds:
            raise UserError("--distributed trains one run: drop --seeds / --select auto")
        from ranker.distributed import DistributedError, train_distributed

        try:
            result = train_distributed(
                settings, data, knowledge if settings.train.use_llm else None, out, overwrite=args.overwrite
            )
        except DistributedError as exc:
            raise UserError(str(exc)) from exc
        if result is not None:  # rank 0
            print(f"{out}: distributed run, test AUC={result.metrics['final']['overall']['auc']:.4f}")
        return 0
    if select:
        from ranker.selection import train_selected

        chosen = train_selected(settings, data, knowledge, out, overwrite=args.overwrite)
        print(f"{out}: {chosen.decision.reason} -> {chosen.kept.run_dir}")
        return 0
    for seed in seeds:
        s = settings.model_copy(deep=True)
        s.train.seed = seed
        run_dir = out / f"seed_{seed}" if args.seeds else out
        result = train(s, data, knowledge if s.train.use_llm else None, run_dir, overwrite=args.overwrite)
        overall = result.metrics["final"]["overall"]
        print(
            f"{run_dir}: {s.train.backbone}{' + LLM4MSR' if s.train.use_llm else ''} seed={seed} "
            f"lr={result.lr:g} best_epoch={result.best_epoch} test AUC={overall['auc']:.4f} "
            f"gAUC={overall['gauc']:.4f} Logloss={overall['logloss']:.4f}"
        )
    return 0
