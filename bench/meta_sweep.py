"""Meta-network settings compared against the ranker benchmark's plain runs, on validation and test.

Issue 11 asks that the +LLM4MSR defaults be chosen on validation, never on test. This trains
+LLM4MSR with extra `--set train.*` overrides for each backbone and seed on the data and knowledge
snapshot that `llm4msr bench ranker` built under ROOT, beside the plain runs it trained there, and
prints per backbone:

- valid Δ: mean over seeds of the best validation AUC minus plain's (what a choice may read);
- test Δ overall ± Welch SE, the scenarios where the variant is below plain by more than one seed
  std ("never worse" fails) and whether it beats plain by more than 2 SE (the report's rules).

Runs go to ROOT/sweeps/<name>/ and are reused when their settings match; each call appends its
table to ROOT/sweeps/results.jsonl.

    python -m bench.meta_sweep --root artifacts/bench/ranker/ml-100k --name lrs0.1 \\
        --set train.meta.lr_scale=0.1
    python -m bench.meta_sweep --root artifacts/bench/ranker/ml-100k-random --name raw   # the defaults
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.ranker import ALL_BACKBONES, reusable
from llm4msr.config import load_config


@dataclass(frozen=True)
class SweepRow:
    """One backbone of one setting: validation and test AUC change against plain, over seeds."""

    backbone: str
    valid_delta: float
    test_delta: float
    test_se: float
    worse_in: list[str]
    beats: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.meta_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, help="a `bench ranker` dataset folder (data/, knowledge/, runs/)")
    p.add_argument("--name", required=True, help="name of this setting (folder under ROOT/sweeps)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--backbones", default=",".join(ALL_BACKBONES))
    p.add_argument("--seeds", default="0,1,2")
    return p.parse_args(argv)


def train_variant(root: Path, name: str, overrides: list[str], backbone: str, seed: int) -> Path:
    """The +LLM4MSR run of one backbone and seed with `overrides` (reused when already trained)."""
    from ranker.train import train

    run_dir = root / "sweeps" / name / f"{backbone}-llm-seed{seed}"
    # the plain run's settings with knowledge on and the default meta networks (a plain run's meta
    # settings are whatever its benchmark was given), then the overrides
    plain = load_config(root / "runs" / f"{backbone}-plain-seed{seed}" / "config.yaml").model_dump()
    del plain["train"]["meta"]
    settings = load_config(base=plain, overrides=["train.use_llm=true", *overrides])
    if not reusable(run_dir, settings):
        train(settings, root / "data", root / "knowledge", run_dir, overwrite=True)
    return run_dir


def compare(
    root: Path, name: str, overrides: list[str], backbones: list[str], seeds: list[int]
) -> list[SweepRow]:
    """Train what is missing, then one SweepRow per backbone (plain runs must exist under ROOT/runs)."""
    rows = []
    for backbone in backbones:
        plain_dirs = plain_runs(root, backbone, seeds)
        llm_dirs = [train_variant(root, name, overrides, backbone, s) for s in seeds]
        valid = [best_valid_auc(b) - best_valid_auc(a) for a, b in zip(plain_dirs, llm_dirs, strict=True)]
        rows.append(judge(backbone, plain_dirs, llm_dirs, statistics.fmean(valid)))
    return rows


def plain_runs(root: Path, backbone: str, seeds: list[int]) -> list[Path]:
    """The benchmark's plain run folders of `backbone` (an error if one is missing)."""
    dirs = [root / "runs" / f"{backbone}-plain-seed{s}" for s in seeds]
    missing = [str(d) for d in dirs if not (d / "metrics.json").is_file()]
    if missing:
        raise SystemExit(f"error: plain runs missing (run `llm4msr bench ranker` first): {missing}")
    return dirs


def best_valid_auc(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["best_valid_auc"]


def judge(
    backbone: str,
    plain_dirs: list[Path],
    other_dirs: list[Path],
    valid_delta: float,
    as_variant: type | None = None,
) -> SweepRow:
    """The report's rules (`ranker.report.deltas` / `verdicts`) for the runs of `other_dirs` against
    plain; `as_variant` (a `ranker.report.Run` subclass) relabels them when they are plain runs too."""
    from ranker.report import deltas, find_runs, summarize, verdicts

    others = find_runs(other_dirs)
    if as_variant is not None:
        others = [as_variant(r.path, r.info, r.metrics) for r in others]
    verdict = verdicts(deltas(summarize([*find_runs(plain_dirs), *others])))[0]
    assert verdict.overall is not None
    return SweepRow(
        backbone,
        valid_delta,
        verdict.overall.delta,
        verdict.overall.se,
        verdict.worse_scenarios or [],
        bool(verdict.beats_overall),
    )


def print_rows(title: str, rows: list[SweepRow]) -> None:
    """One line per backbone and the counts of the two rules."""
    print(title)
    for r in rows:
        print(
            f"  {r.backbone:14s} valid Δ {r.valid_delta:+.4f}  test Δ {r.test_delta:+.4f} ± {r.test_se:.4f}"
            f"  worse in: {','.join(r.worse_in) or '-':24s} beats: {'yes' if r.beats else 'no'}"
        )
    never = sum(not r.worse_in for r in rows)
    beats = sum(r.beats for r in rows)
    mean_valid = statistics.fmean(r.valid_delta for r in rows)
    print(
        f"  never worse {never}/{len(rows)}, beats > 2 SE {beats}/{len(rows)}, mean valid Δ {mean_valid:+.4f}"
    )


def append_record(path: Path, record: dict) -> None:
    """One JSON line per call, so every comparison made stays on record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    from llm4msr.logs import setup_logging

    args = parse_args(argv)
    setup_logging()
    root = Path(args.root)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = compare(root, args.name, args.overrides, args.backbones.split(","), seeds)
    print_rows(f"{root.name} {args.name} {' '.join(args.overrides) or '(defaults)'}", rows)
    record = {"name": args.name, "overrides": args.overrides, "rows": [asdict(r) for r in rows]}
    append_record(root / "sweeps" / "results.jsonl", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
