"""Ranker benchmark: each backbone plain vs +LLM4MSR on real data, several seeds.

For each dataset: build the canonical tables (feature_store), build a knowledge snapshot with the
configured LLM backend (knowledge_service; all-MiniLM-L6-v2 by default), then train every
backbone without and with the meta networks for each seed and write the per-scenario comparison
(AUC / gAUC / Logloss / Recall@10 / NDCG@10, mean ± std) and training time per epoch (meta
overhead as a ratio) to docs/benchmarks/ranker-<datasets>.md, with the command that produced it.

    llm4msr bench ranker --quick          # ML-100K, 2 backbones, 1 seed, 2 epochs (minutes)
    llm4msr bench ranker                  # ML-100K + Amazon Food-Kitchen, 6 backbones, 3 seeds
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from llm4msr.atomic import write_text_atomic
from llm4msr.config import REPO_ROOT, DataConfig, KnowledgeConfig, Settings, load_config

log = logging.getLogger(__name__)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DATASETS = {
    "ml-100k": {"dataset": "movielens", "path": str(SHARED_DATA / "ml-100k")},
    "amazon-food-kitchen": {"dataset": "amazon", "path": str(SHARED_DATA / "amazon-food-kitchen")},
}
ALL_BACKBONES = ["shared_bottom", "mmoe", "ple", "star", "pepnet", "m2m"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llm4msr bench ranker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="small run: ml-100k, shared_bottom+star, 1 seed, 2 epochs"
    )
    p.add_argument("--datasets", default=None, help=f"comma-separated, from {sorted(DATASETS)}")
    p.add_argument("--backbones", default=None, help="comma-separated backbones (default: all six)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (early stopping on validation AUC)")
    p.add_argument("--knowledge-backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for training, e.g. train.lr=0.002 (repeatable)",
    )
    p.add_argument("--work", default="artifacts/bench/ranker", help="where datasets, snapshots and runs go")
    p.add_argument(
        "--out",
        default=None,
        help="report file (default docs/benchmarks/ranker-<datasets>.md; the PNG goes beside it)",
    )
    return p.parse_args(argv)


def prepare(name: str, work: Path, backend: str) -> tuple[Path, Path, float]:
    """Canonical dataset + current knowledge snapshot for one dataset (reused when present)."""
    from feature_store.build import build_and_write
    from feature_store.offline_store import OfflineStore
    from knowledge_service.runner import build_knowledge

    data_dir, kn_root = work / name / "data", work / name / "knowledge"
    if not (data_dir / "manifest.json").is_file():
        build_and_write(DataConfig.model_validate(DATASETS[name]), data_dir)
    t0 = time.perf_counter()
    if OfflineStore(kn_root).current_id() is None:
        build_knowledge(data_dir, kn_root, KnowledgeConfig(backend=backend, snapshot_root=str(kn_root)))
    return data_dir, kn_root, time.perf_counter() - t0


def reusable(run_dir: Path, settings: Settings) -> bool:
    """A finished run made with the same training and evaluation settings (resume a benchmark
    without mixing in runs of another configuration)."""
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    saved = load_config(run_dir / "config.yaml")
    if saved.train == settings.train and saved.eval == settings.eval:
        return True
    log.info("%s was trained with other settings: training it again", run_dir)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = (args.datasets or ("ml-100k" if args.quick else "ml-100k,amazon-food-kitchen")).split(",")
    backbones = (args.backbones or ("shared_bottom,star" if args.quick else ",".join(ALL_BACKBONES))).split(
        ","
    )
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    epochs = args.epochs or (2 if args.quick else 10)
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        print(f"unknown dataset(s) {unknown}; expected {sorted(DATASETS)}", file=sys.stderr)
        return 2
    from ranker.report import find_runs, markdown, plot
    from ranker.train import train

    work = Path(args.work)
    notes = []
    t_start = time.perf_counter()
    for name in datasets:
        data_dir, kn_root, kn_seconds = prepare(name, work, args.knowledge_backend)
        notes.append(
            f"- {name}: knowledge snapshot built in {kn_seconds:.0f} s ({args.knowledge_backend})"
            if kn_seconds > 1
            else f"- {name}: knowledge snapshot reused from {kn_root}"
        )
        for backbone in backbones:
            for use_llm in (False, True):
                for seed in seeds:
                    run_dir = work / name / "runs" / f"{backbone}-{'llm' if use_llm else 'plain'}-seed{seed}"
                    settings = load_config(
                        overrides=[
                            f"train.backbone={backbone}",
                            f"train.use_llm={use_llm}",
                            f"train.seed={seed}",
                            f"train.epochs={epochs}",
                            *args.overrides,
                        ]
                    )
                    if reusable(run_dir, settings):
                        continue
                    train(settings, data_dir, kn_root if use_llm else None, run_dir, overwrite=True)
    runs = [
        r
        for name in datasets
        for r in find_runs([work / name / "runs"])
        if r.info["backbone"] in backbones and r.info["seed"] in seeds
    ]
    from ranker.report import summarize

    summary = summarize(runs)
    quick = "-quick" if args.quick else ""  # a quick run never replaces a full report
    out = Path(args.out or REPO_ROOT / "docs" / "benchmarks" / f"ranker-{'+'.join(datasets)}{quick}.md")
    png = out.with_suffix(".png")
    from llm4msr.atomic import write_bytes_atomic

    write_bytes_atomic(png, plot(summary))
    command = "llm4msr bench ranker " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    text = (
        markdown(summary, "Ranker benchmark: backbones plain vs +LLM4MSR")
        + f"\n![per-scenario AUC]({png.name})\n\n## How this was produced\n\n```\n{command}\n```\n\n"
        + f"Training config: defaults of llm4msr/config.py with train.epochs={epochs}"
        + (f" and {' '.join(args.overrides)}" if args.overrides else "")
        + ". "
        + f"Total wall time {time.perf_counter() - t_start:.0f} s on a 2-core machine shared with other "
        "jobs: timings are noisy; the overhead ratio compares runs measured in the same session.\n\n"
        + "\n".join(notes)
        + "\n\nInterpretation (where the knowledge helps and where it does not): "
        "[ranker-findings.md](ranker-findings.md).\n"
    )
    write_text_atomic(out, text)
    print(f"wrote {out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
