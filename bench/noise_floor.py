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
import json
import sys
from dataclasses import asdict
from pathlib import Path

from bench.meta_sweep import SweepRow
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
    from ranker.report import deltas, find_runs, summarize, verdicts

    rows = []
    for backbone in backbones:
        plain_dirs = [root / "runs" / f"{backbone}-plain-seed{s}" for s in plain_seeds]
        missing = [str(d) for d in plain_dirs if not (d / "metrics.json").is_file()]
        if missing:
            raise SystemExit(f"error: plain runs missing (run `llm4msr bench ranker` first): {missing}")
        other = [train_other_seed(root, backbone, plain_seeds, s) for s in seeds]
        runs = [*find_runs(plain_dirs), *(_OtherSeeds(r.path, r.info, r.metrics) for r in find_runs(other))]
        verdict = verdicts(deltas(summarize(runs)))[0]
        valid = [json.loads((d / "metrics.json").read_text())["best_valid_auc"] for d in other]
        base = [json.loads((d / "metrics.json").read_text())["best_valid_auc"] for d in plain_dirs]
        assert verdict.overall is not None
        rows.append(
            SweepRow(
                backbone,
                sum(valid) / len(valid) - sum(base) / len(base),
                verdict.overall.delta,
                verdict.overall.se,
                verdict.worse_scenarios or [],
                bool(verdict.beats_overall),
            )
        )
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
    print(f"{root.name}: plain seeds {args.seeds} against plain seeds {args.plain_seeds}")
    for r in rows:
        print(
            f"  {r.backbone:14s} valid Δ {r.valid_delta:+.4f}  test Δ {r.test_delta:+.4f} ± {r.test_se:.4f}"
            f"  worse in: {','.join(r.worse_in) or '-':24s} beats: {'yes' if r.beats else 'no'}"
        )
    never = sum(not r.worse_in for r in rows)
    print(f"  never worse {never}/{len(rows)}, beats > 2 SE {sum(r.beats for r in rows)}/{len(rows)}")
    out = root / "noise" / "results.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        record = {"seeds": seeds, "plain_seeds": plain_seeds, "rows": [asdict(r) for r in rows]}
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
