"""Ranker benchmark: each backbone plain vs +LLM4MSR on real data, several seeds.

For each dataset: build the canonical tables (feature_store), build a knowledge snapshot with the
configured LLM backend (knowledge_service; all-MiniLM-L6-v2 by default), then train every
backbone without and with the meta networks for each seed and write the per-scenario comparison
(AUC / gAUC / Logloss / Recall@10 / NDCG@10, mean ± std) and training time per epoch (meta
overhead as a ratio) to docs/benchmarks/ranker-<datasets>.md, with the command that produced it.

    llm4msr bench ranker --quick          # ML-100K, 2 backbones, 1 seed, 2 epochs (minutes)
    llm4msr bench ranker                  # ML-100K + Amazon Food-Kitchen, 6 backbones, 3 seeds
    llm4msr bench ranker --quick --set data.split.strategy=random   # data overrides are honoured

`--set data.*` settings (split, seed, adapter options) build their own dataset, snapshot and runs
(under WORK/NAME+data-<hash>, report ranker-<datasets>+data-<hash>.md); the report states the
split each dataset actually has, read from its manifest. data.dataset/path/out are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from llm4msr.atomic import sha256_text, write_text_atomic
from llm4msr.config import REPO_ROOT, ConfigError, DataConfig, KnowledgeConfig, Settings, load_config

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
        help="extra config override, e.g. train.lr=0.002 or data.split.strategy=random (repeatable); data.* "
        "settings build their own dataset, knowledge and runs under WORK/NAME+data-<hash>",
    )
    p.add_argument("--work", default="artifacts/bench/ranker", help="where datasets, snapshots and runs go")
    p.add_argument(
        "--out",
        default=None,
        help="report file (default docs/benchmarks/ranker-<datasets>.md; the PNG goes beside it)",
    )
    return p.parse_args(argv)


# Chosen per benchmark dataset (DATASETS), so an override of them would not describe the data.
FIXED_DATA_KEYS = ("data", "data.dataset", "data.path", "data.out")


def data_overrides(overrides: list[str]) -> list[str]:
    """The `data.*` entries of --set; the fixed keys are refused (choose data with --datasets)."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in FIXED_DATA_KEYS:
            raise ConfigError(
                f"bench ranker: --set {o}: {key} is fixed per benchmark dataset ({DATASETS}); "
                "choose datasets with --datasets, or build the data yourself and run `llm4msr train`"
            )
        if key.startswith("data."):
            out.append(o)
    return out


def data_config(name: str, overrides: list[str]) -> DataConfig:
    """The data section one benchmark dataset is built with: its source + every data.* override."""
    src = DATASETS[name]
    sets = [f"data.dataset={src['dataset']}", f"data.path={src['path']}", *data_overrides(overrides)]
    return load_config(overrides=sets).data


def data_tag(overrides: list[str]) -> str:
    """Suffix of data folders and reports: none for the adapter settings as shipped, else
    +data-<hash of the data overrides>."""
    extra = sorted(data_overrides(overrides))
    return f"+data-{sha256_text(repr(extra))[:8]}" if extra else ""


def dataset_root(name: str, work: Path, overrides: list[str]) -> Path:
    """WORK/NAME (+data-<hash> with data overrides): a benchmark never reuses data, knowledge or
    runs built from other data settings."""
    return work / f"{name}{data_tag(overrides)}"


def prepare_data(cfg: DataConfig, data_dir: Path) -> Path:
    """Build the dataset, or reuse the one at `data_dir` if its manifest says it was built from
    `cfg` (a folder built from other settings is an error, never silently reused)."""
    from feature_store.build import build_and_write

    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return build_and_write(cfg, data_dir)
    source = json.loads(manifest.read_text()).get("source") or {}
    want = cfg.model_dump(mode="json", exclude={"out"})
    recorded = source.get("config")
    if recorded is None:  # built before manifests recorded their config: compare what they did record
        recorded = {k: source.get(k) for k in ("dataset", "seed", "split")}
        want = {k: want[k] for k in recorded}
    if recorded != want:
        diff = sorted(k for k in want if recorded.get(k) != want[k])
        raise ConfigError(
            f"{manifest}: the dataset there was built with other data settings ({diff}: "
            f"{ {k: recorded.get(k) for k in diff} }, wanted { {k: want[k] for k in diff} }); "
            f"remove {data_dir.parent} or use another --work"
        )
    return data_dir


def split_used(data_dir: Path) -> str:
    """The split a built dataset actually has, from its own manifest (what the report states)."""
    source = json.loads((data_dir / "manifest.json").read_text()).get("source") or {}
    split = dict(source.get("split") or {})
    used = source.get("split_strategy_used") or split.get("strategy")
    if used == "leave_last_n":
        detail = f"n_valid={split.get('n_valid')}, n_test={split.get('n_test')}"
    else:
        detail = f"valid_ratio={split.get('valid_ratio')}, test_ratio={split.get('test_ratio')}"
    if used != "random":
        detail += f", per_scenario={split.get('per_scenario')}"
    if used != split.get("strategy"):
        detail += f"; {split.get('strategy')} was asked for, the source has no timestamps"
    return f"split {used} ({detail}), seed {source.get('seed')}"


def prepare(cfg: DataConfig, root: Path, backend: str) -> tuple[Path, Path, float]:
    """Canonical dataset + a current knowledge snapshot built from it (each reused when present;
    a snapshot of another dataset id is rebuilt incrementally, since training would refuse it)."""
    from feature_store.dataset import read_version
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore
    from knowledge_service.runner import build_knowledge

    data_dir, kn_root = prepare_data(cfg, root / "data"), root / "knowledge"
    t0 = time.perf_counter()
    current = OfflineStore(kn_root).current_path()
    if current is None or read_manifest(current).get("dataset_version") != read_version(data_dir):
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
    try:
        data_cfgs = {name: data_config(name, args.overrides) for name in datasets}
    except ConfigError as exc:
        print(f"llm4msr bench ranker: error: {exc}", file=sys.stderr)
        return 2
    from ranker.report import find_runs, markdown, plot
    from ranker.train import train

    work = Path(args.work)
    notes = []
    t_start = time.perf_counter()
    roots = {name: dataset_root(name, work, args.overrides) for name in datasets}
    for name in datasets:
        data_dir, kn_root, kn_seconds = prepare(data_cfgs[name], roots[name], args.knowledge_backend)
        notes.append(
            f"- {name}: {split_used(data_dir)} (from {data_dir}/manifest.json); "
            + (
                f"knowledge snapshot built in {kn_seconds:.0f} s ({args.knowledge_backend})"
                if kn_seconds > 1
                else f"knowledge snapshot reused from {kn_root}"
            )
        )
        for backbone in backbones:
            for use_llm in (False, True):
                for seed in seeds:
                    run_dir = roots[name] / "runs" / f"{backbone}-{'llm' if use_llm else 'plain'}-seed{seed}"
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
        for r in find_runs([roots[name] / "runs"])
        if r.info["backbone"] in backbones and r.info["seed"] in seeds
    ]
    from ranker.report import summarize

    summary = summarize(runs)
    quick = "-quick" if args.quick else ""  # a quick run never replaces a full report
    tag = data_tag(args.overrides)  # other data settings get their own report
    out = Path(args.out or REPO_ROOT / "docs" / "benchmarks" / f"ranker-{'+'.join(datasets)}{tag}{quick}.md")
    png = out.with_suffix(".png")
    from llm4msr.atomic import write_bytes_atomic

    write_bytes_atomic(png, plot(summary))
    data_sets = data_overrides(args.overrides)
    train_sets = [o for o in args.overrides if o not in data_sets]
    command = "llm4msr bench ranker " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    text = (
        markdown(summary, "Ranker benchmark: backbones plain vs +LLM4MSR")
        + f"\n![per-scenario AUC]({png.name})\n\n## How this was produced\n\n```\n{command}\n```\n\n"
        + f"Training config: defaults of llm4msr/config.py with train.epochs={epochs}"
        + (f" and {' '.join(train_sets)}" if train_sets else "")
        + ". Data: each dataset's adapter settings"
        + (f" with {' '.join(data_sets)}" if data_sets else "")
        + "; the split each one actually has is listed below, read from its manifest. "
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
