"""How often the ranker report's verdicts flag a difference that is not there: plain against plain.

Issue 11 judges +LLM4MSR per backbone with two rules on 3 seeds: "never worse" (in no scenario,
nor overall, below plain by more than one seed std) and "beats" (overall ΔAUC > 2 Welch SE). This
measures what those rules say when nothing changed: it trains the plain backbone again with other
seeds (the benchmark's plain settings, only `train.seed` differs) and applies the report's rules
(`ranker.report.deltas` / `verdicts`) to "plain, other seeds" against the benchmark's plain runs. A
"never worse" failure here is seed noise alone, the floor under any variant's count.

    python -m bench.noise_floor --root artifacts/bench/ranker/ml-100k --seeds 3,4,5

Runs go to ROOT/noise/ and are reused when their settings match; each call appends its table to
ROOT/noise/results.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from bench.meta_sweep import SweepRow, append_record, best_valid_auc, judge, plain_runs, print_rows
from bench.ranker import ALL_BACKBONES, reusable
from llm4msr.config import load_config
from ranker.report import Run

OTHER_SEEDS = "plain (other seeds)"


class _OtherSeeds(Run):
    """A plain run reported as its own variant, so the report's rules compare it with plain."""

    @property
    def variant(self) -> str:
        return OTHER_SEEDS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.noise_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, help="a `bench ranker` dataset folder (data/, runs/)")
    p.add_argument("--seeds", default="3,4,5", help="seeds of the second plain group")
    p.add_argument("--plain-seeds", default="0,1,2", help="seeds of the benchmark's plain runs")
    p.add_argument("--backbones", default=",".join(ALL_BACKBONES))
    return p.parse_args(argv)


def train_other_seed(root: Path, backbone: str, like: list[int], seed: int) -> Path:
    """The plain run of `backbone` with seed `seed` and the settings of the benchmark's plain runs of
    seeds `like`: of the one with the fewest epochs, since `bench ranker` trains a run again with
    twice the epochs when its best epoch was its last (and the epoch count sets the lr schedule)."""
    from ranker.train import train

    run_dir = root / "noise" / f"{backbone}-plain-seed{seed}"
    configs = [load_config(root / "runs" / f"{backbone}-plain-seed{s}" / "config.yaml") for s in like]
    base = min(configs, key=lambda c: c.train.epochs).model_dump()
    settings = load_config(base=base, overrides=[f"train.seed={seed}"])
    if not reusable(run_dir, settings):
        train(settings, root / "data", None, run_dir, overwrite=True)
    return run_dir


def compare(root: Path, backbones: list[str], plain_seeds: list[int], seeds: list[int]) -> list[SweepRow]:
    """Train what is missing, then one row per backbone: plain (other seeds) against plain."""
    rows = []
    for backbone in backbones:
        plain_dirs = plain_runs(root, backbone, plain_seeds)
        other = [train_other_seed(root, backbone, plain_seeds, s) for s in seeds]
        valid = statistics.fmean(map(best_valid_auc, other)) - statistics.fmean(
            map(best_valid_auc, plain_dirs)
        )
        rows.append(judge(backbone, plain_dirs, other, valid, as_variant=_OtherSeeds))
    return rows


def main(argv: list[str] | None = None) -> int:
    from llm4msr.logs import setup_logging

    args = parse_args(argv)
    setup_logging()
    root = Path(args.root)
    seeds = [int(s) for s in args.seeds.split(",")]
    plain_seeds = [int(s) for s in args.plain_seeds.split(",")]
    if set(seeds) & set(plain_seeds):
        print("python -m bench.noise_floor: error: --seeds must differ from --plain-seeds", file=sys.stderr)
        return 2
    rows = compare(root, args.backbones.split(","), plain_seeds, seeds)
    print_rows(f"{root.name}: plain seeds {args.seeds} against plain seeds {args.plain_seeds}", rows)
    record = {"seeds": seeds, "plain_seeds": plain_seeds, "rows": [asdict(r) for r in rows]}
    append_record(root / "noise" / "results.jsonl", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
