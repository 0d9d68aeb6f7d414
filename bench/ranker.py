"""Ranker benchmark: each backbone plain vs +LLM4MSR on real data, several seeds.

For each dataset: build the canonical tables (feature_store), build a knowledge snapshot with the
configured LLM backend (knowledge_service; all-MiniLM-L6-v2 by default), then train every
backbone without and with the meta networks for each seed and write the per-scenario comparison
(AUC / gAUC / Logloss / Recall@10 / NDCG@10, mean ± std) and training time per epoch (meta
overhead as a ratio) to docs/benchmarks/ranker-<datasets>.md, with the command that produced it.

    llm4msr bench ranker --quick          # ML-100K, 2 backbones, 1 seed, 2 epochs (minutes)
    llm4msr bench ranker                  # ML-100K + Amazon Food-Kitchen, 6 backbones, 3 seeds
    llm4msr bench ranker --quick --protocol random   # random 8:1:1 split instead of leave-last-one
    llm4msr bench ranker --protocol both             # both protocols, one report each

Protocols (`--protocol`): `temporal` (default, production-realistic: each user's last
interaction is test, the one before valid; data.split.strategy=leave_last_n) and `random`
(seeded random 8:1:1 train/valid/test rows, comparable with published multi-scenario
benchmarks; data.split.strategy=random, valid_ratio=test_ratio=0.1). Each protocol has its own
dataset, snapshot and runs (WORK/NAME for temporal, WORK/NAME-random) and report
(ranker-<datasets>.md, ranker-<datasets>-random.md).

Every report has a trivial baseline (ranker.baseline: logistic regression on smoothed user/item
mean labels + scenario one-hot, train rows only), ΔAUC vs plain with its Welch SE and the
"never worse" / "beats by > 2 SE" verdicts, AUC on knowledge slices (ranker.slices: history
length in the row's scenario, multi- vs single-scenario users) and a ΔAUC plot.

A run whose best validation epoch is its last (it may not have converged) is trained again with
twice the epochs (`--no-extend`: not); the report names those runs, and any that still peak at
their last epoch, so plain and +LLM4MSR are compared once both have converged.

`--set data.*` settings (split details, seed, adapter options) build their own dataset, snapshot
and runs (under WORK/NAME[-random]+data-<hash>, report ranker-<datasets>[-random]+data-<hash>.md);
a data.split.strategy that contradicts --protocol is an error. The report states the split each
dataset actually has, read from its manifest. data.dataset/path/out are refused.

`--set knowledge.*` settings (encoder model, pooling, two-pass and its vector rule, ...) build
their own snapshot (WORK/NAME[-random][+data-<hash>]/knowledge+knowledge-<hash>) and their own
+LLM4MSR runs (runs+knowledge-<hash>), so runs made with one encoder are never reused for
another; the plain runs and the baseline do not read knowledge and stay shared (WORK/.../runs),
so every encoder is compared against the same plain runs. The report is named with the same
+knowledge-<hash> suffix and states the encoder settings read from the snapshot's manifest.
knowledge.snapshot_root and knowledge.backend are refused (use --work, --knowledge-backend).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from llm4msr.atomic import sha256_text, write_text_atomic
from llm4msr.config import REPO_ROOT, ConfigError, DataConfig, KnowledgeConfig, Settings, load_config

log = logging.getLogger(__name__)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DATASETS = {
    "ml-100k": {"dataset": "movielens", "path": str(SHARED_DATA / "ml-100k")},
    "amazon-food-kitchen": {"dataset": "amazon", "path": str(SHARED_DATA / "amazon-food-kitchen")},
}
ALL_BACKBONES = ["shared_bottom", "mmoe", "ple", "star", "pepnet", "m2m"]


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol = how the data is split; a benchmark runs one or both."""

    name: str
    overrides: tuple[str, ...]  # data.* settings it stands for (before the user's --set data.*)
    strategies: tuple[str, ...]  # data.split.strategy values consistent with it
    label: str  # short, for titles
    description: str
    suffix: str  # of work folders and report names ("" for the default, so they stay as they were)


PROTOCOLS: dict[str, Protocol] = {
    "temporal": Protocol(
        "temporal",
        ("data.split.strategy=leave_last_n",),
        ("leave_last_n", "ratio"),
        "temporal leave-last-one",
        "temporal leave-last-one: per user, the last interaction is test and the one before it "
        "valid (production-realistic: the model only sees the past)",
        "",
    ),
    "random": Protocol(
        "random",
        ("data.split.strategy=random", "data.split.valid_ratio=0.1", "data.split.test_ratio=0.1"),
        ("random",),
        "random 8:1:1",
        "random 8:1:1: each interaction goes to train / valid / test with probability 0.8 / 0.1 / "
        "0.1, seeded (comparable with published multi-scenario benchmarks; the future leaks into "
        "train)",
        "-random",
    ),
}


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
    p.add_argument(
        "--no-extend",
        dest="extend",
        action="store_false",
        help="do not train a run again with twice the epochs when its best epoch is its last",
    )
    p.add_argument(
        "--protocol",
        choices=[*PROTOCOLS, "both"],
        default="temporal",
        help="temporal leave-last-one (default), random 8:1:1, or both (one report each)",
    )
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


def section_overrides(overrides: list[str], section: str, fixed: tuple[str, ...], why: str) -> list[str]:
    """The `<section>.*` entries of --set; a key in `fixed` is refused with `why`."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in fixed:
            raise ConfigError(f"bench ranker: --set {o}: {key} {why}")
        if key.startswith(f"{section}."):
            out.append(o)
    return out


def data_overrides(overrides: list[str]) -> list[str]:
    """The `data.*` entries of --set; the fixed keys are refused (choose data with --datasets)."""
    return section_overrides(
        overrides,
        "data",
        FIXED_DATA_KEYS,
        f"is fixed per benchmark dataset ({DATASETS}); choose datasets with --datasets, or build the "
        "data yourself and run `llm4msr train`",
    )


# The benchmark places snapshots itself and picks the backend with --knowledge-backend.
FIXED_KNOWLEDGE_KEYS = ("knowledge", "knowledge.snapshot_root", "knowledge.backend")


def knowledge_overrides(overrides: list[str]) -> list[str]:
    """The `knowledge.*` entries of --set; the fixed keys are refused (the bench places snapshots)."""
    return section_overrides(
        overrides,
        "knowledge",
        FIXED_KNOWLEDGE_KEYS,
        "is chosen by the benchmark (snapshots live under --work, the backend is --knowledge-backend)",
    )


def knowledge_config(overrides: list[str], backend: str, snapshot_root: Path) -> KnowledgeConfig:
    """The knowledge section a benchmark snapshot is built with: the defaults, the backend, then
    every knowledge.* override (a misspelled key is an error before anything is built)."""
    sets = [f"knowledge.backend={backend}", *knowledge_overrides(overrides)]
    return load_config(overrides=[*sets, f"knowledge.snapshot_root={snapshot_root}"]).knowledge


def knowledge_tag(overrides: list[str]) -> str:
    """Suffix of knowledge snapshots, +LLM4MSR run folders and reports: none for the shipped
    encoder settings, else +knowledge-<hash of the knowledge overrides>."""
    extra = sorted(knowledge_overrides(overrides))
    return f"+knowledge-{sha256_text(repr(extra))[:8]}" if extra else ""


def knowledge_root(root: Path, overrides: list[str]) -> Path:
    """ROOT/knowledge[+knowledge-<hash>]: one snapshot root per encoder setting."""
    return root / f"knowledge{knowledge_tag(overrides)}"


def runs_dir(root: Path, overrides: list[str], use_llm: bool) -> Path:
    """ROOT/runs for plain runs and the baseline (they do not read knowledge), and
    ROOT/runs[+knowledge-<hash>] for +LLM4MSR runs."""
    return root / f"runs{knowledge_tag(overrides) if use_llm else ''}"


def convergence_note(runs: list, epochs: int) -> str:
    """The report's line on convergence: runs whose best validation epoch is their last may not
    have converged, so a comparison involving them is not between converged models (issue 16)."""
    last = sorted(
        f"{r.key[1]} {r.variant} seed {r.info['seed']}"
        for r in runs
        if not r.is_baseline and not r.info.get("selected_from") and r.metrics.get("best_is_last_epoch")
    )
    longer = sorted(
        f"{r.key[1]} {r.variant} seed {r.info['seed']} ({len(r.metrics['epochs'])} epochs run)"
        for r in runs
        if not r.is_baseline
        and not r.info.get("selected_from")
        and load_config(r.path / "config.yaml").train.epochs > epochs
    )
    extended_text = (
        f" Trained again with twice the epochs because their best epoch was the last: {', '.join(longer)}."
        if longer
        else ""
    )
    if not last:
        return "Convergence: no run's best validation epoch is its last epoch." + extended_text
    log.warning(
        "%d run(s) peaked at their last epoch (may not have converged): %s", len(last), ", ".join(last)
    )
    return (
        f"**Convergence warning: {len(last)} run(s) peaked at their last epoch** and may not have "
        f"converged (raise train.epochs): {', '.join(last)}." + extended_text
    )


def bench_runs(root: Path, overrides: list[str], backbones: list[str], seeds: list[int]) -> list:
    """The runs of one dataset a report compares: the baseline, the shared plain runs and the
    +LLM4MSR runs of these knowledge settings (never another encoder's)."""
    from ranker.report import find_runs

    runs = find_runs([root / "runs"])
    llm_dir = runs_dir(root, overrides, True)
    if llm_dir != root / "runs":
        runs = [r for r in runs if r.is_baseline or not r.info.get("use_llm")]
        runs += find_runs([llm_dir]) if llm_dir.exists() else []
    return [r for r in runs if r.is_baseline or (r.info["backbone"] in backbones and r.info["seed"] in seeds)]


def knowledge_used(kn_root: Path) -> dict:
    """The encoder settings of a snapshot root's current snapshot, from its manifest."""
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore

    current = OfflineStore(kn_root).current_path()
    man = read_manifest(current) if current is not None else {}
    return {
        "model_id": man.get("model_id"),
        "pooling": man.get("pooling"),
        "two_pass": man.get("two_pass"),
        "two_pass_vector": man.get("two_pass_vector"),
        "max_new_tokens": man.get("max_new_tokens"),
        "answer_model_id": man.get("answer_model_id"),
        "backend": man.get("backend"),
        "dimension": man.get("dimension"),
        "encoding": man.get("encoding"),
    }


def describe_knowledge(used: dict) -> str:
    """One line: model id, pooling, two-pass and its vector rule (what the report states)."""
    text = f"model {used['model_id']}, pooling {used['pooling']}, dimension {used['dimension']}, "
    if used["two_pass"]:
        text += f"two-pass (vector {used['two_pass_vector']}, max_new_tokens {used['max_new_tokens']}"
        text += f", answer encoder {used['answer_model_id']})" if used["answer_model_id"] else ")"
    else:
        text += "one-pass"
    return text + f", backend {used['backend']}"


def data_config(name: str, overrides: list[str], protocol: Protocol | None = None) -> DataConfig:
    """The data section one benchmark dataset is built with: its source, the protocol's split,
    then every data.* override (a split strategy that contradicts the protocol is an error)."""
    src = DATASETS[name]
    sets = [
        f"data.dataset={src['dataset']}",
        *([f"data.path={src['path']}"] if src.get("path") else []),  # none for generated data
        *(protocol.overrides if protocol else ()),
        *data_overrides(overrides),
    ]
    cfg = load_config(overrides=sets).data
    if protocol is not None and cfg.split.strategy not in protocol.strategies:
        other = next((p.name for p in PROTOCOLS.values() if cfg.split.strategy in p.strategies), None)
        raise ConfigError(
            f"bench ranker: --set data.split.strategy={cfg.split.strategy} contradicts --protocol "
            f"{protocol.name} (split {' / '.join(protocol.strategies)})"
            + (f"; use --protocol {other}" if other else "")
        )
    return cfg


def data_tag(overrides: list[str]) -> str:
    """Suffix of data folders and reports: none for the adapter settings as shipped, else
    +data-<hash of the data overrides>."""
    extra = sorted(data_overrides(overrides))
    return f"+data-{sha256_text(repr(extra))[:8]}" if extra else ""


def dataset_root(name: str, work: Path, overrides: list[str], protocol: Protocol | None = None) -> Path:
    """WORK/NAME (-random for that protocol, +data-<hash> with data overrides): a benchmark never
    reuses data, knowledge or runs built from other data settings."""
    return work / f"{name}{protocol.suffix if protocol else ''}{data_tag(overrides)}"


def report_path(
    datasets: list[str], overrides: list[str], protocol: Protocol, quick: bool, out: str | None, both: bool
) -> Path:
    """docs/benchmarks/ranker-<datasets>[-random][+data-<hash>][+knowledge-<hash>][-quick].md, or --out (with
    --protocol both: --out with -<protocol> before its suffix, one report per protocol)."""
    if out:
        path = Path(out)
        return path.with_name(f"{path.stem}-{protocol.name}{path.suffix}") if both else path
    quick_tag = "-quick" if quick else ""  # a quick run never replaces a full report
    tags = f"{data_tag(overrides)}{knowledge_tag(overrides)}"
    name = f"ranker-{'+'.join(datasets)}{protocol.suffix}{tags}{quick_tag}.md"
    return REPO_ROOT / "docs" / "benchmarks" / name


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
    else:  # a key added since (e.g. movielens.max_users) reads as its default, which is what was built
        # a key since removed fails validation: compared as recorded, so the difference is reported
        with contextlib.suppress(ValidationError):
            recorded = DataConfig.model_validate({**recorded, "out": cfg.out}).model_dump(
                mode="json", exclude={"out"}
            )
    if recorded != want:
        diff = sorted(k for k in want if recorded.get(k) != want[k])
        raise ConfigError(
            f"{manifest}: the dataset there was built with other data settings ({diff}: "
            f"{ {k: recorded.get(k) for k in diff} }, wanted { {k: want[k] for k in diff} }); "
            f"remove {data_dir.parent} or use another --work"
        )
    return data_dir


def strategy_used(data_dir: Path) -> str | None:
    """The split strategy a built dataset really has (a temporal one falls back to random when
    the source has no timestamps), from its manifest."""
    source = json.loads((data_dir / "manifest.json").read_text()).get("source") or {}
    return source.get("split_strategy_used") or (source.get("split") or {}).get("strategy")


def split_used(data_dir: Path) -> str:
    """The split a built dataset actually has, from its own manifest (what the report states)."""
    source = json.loads((data_dir / "manifest.json").read_text()).get("source") or {}
    split = dict(source.get("split") or {})
    used = strategy_used(data_dir)
    if used == "leave_last_n":
        detail = f"n_valid={split.get('n_valid')}, n_test={split.get('n_test')}"
    else:
        detail = f"valid_ratio={split.get('valid_ratio')}, test_ratio={split.get('test_ratio')}"
    if used != "random":
        detail += f", per_scenario={split.get('per_scenario')}"
    if used != split.get("strategy"):
        detail += f"; {split.get('strategy')} was asked for, the source has no timestamps"
    return f"split {used} ({detail}), seed {source.get('seed')}"


def prepare(
    cfg: DataConfig, root: Path, backend: str, overrides: list[str] | None = None
) -> tuple[Path, Path, float]:
    """Canonical dataset + a current knowledge snapshot built from it with the knowledge.*
    overrides (each reused when present; a snapshot of another dataset id is rebuilt
    incrementally, since training would refuse it)."""
    from feature_store.dataset import read_version
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore
    from knowledge_service.runner import build_knowledge

    overrides = overrides or []
    data_dir, kn_root = prepare_data(cfg, root / "data"), knowledge_root(root, overrides)
    t0 = time.perf_counter()
    current = OfflineStore(kn_root).current_path()
    if current is None or read_manifest(current).get("dataset_version") != read_version(data_dir):
        build_knowledge(data_dir, kn_root, knowledge_config(overrides, backend, kn_root))
    return data_dir, kn_root, time.perf_counter() - t0


def extended(settings: Settings) -> Settings:
    """The budget a run gets when it peaked at its last epoch: twice the epochs (a fresh run with
    its own schedule, not a continuation), so each variant is compared once it has converged."""
    longer = settings.model_copy(deep=True)
    longer.train.epochs = settings.train.epochs * 2
    return longer


def peaked_last(run_dir: Path) -> bool:
    """The run's best validation epoch is its last one (metrics.json `best_is_last_epoch`)."""
    return bool(json.loads((run_dir / "metrics.json").read_text()).get("best_is_last_epoch"))


def reusable(run_dir: Path, settings: Settings) -> bool:
    """A finished run made with the same training and evaluation settings (resume a benchmark
    without mixing in runs of another configuration)."""
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    saved = load_config(run_dir / "config.yaml")
    if saved.eval != settings.eval:
        return False
    if settings.train.use_llm:
        return saved.train == settings.train
    # a plain run has no meta networks: their settings do not change it, so variants of them share it
    meta = {"meta"}
    return saved.train.model_dump(exclude=meta) == settings.train.model_dump(exclude=meta)


def ensure_baseline(data_dir: Path, run_dir: Path, settings: Settings) -> None:
    """The baseline run of a dataset (reused when its dataset id, eval settings and config match)."""
    from ranker.baseline import BaselineConfig, baseline_reusable, run_baseline

    if baseline_reusable(run_dir, data_dir, settings.eval, BaselineConfig()):
        return
    run_baseline(data_dir, settings.eval, run_dir, overwrite=True)


def run_protocol(
    args: argparse.Namespace,
    argv: list[str] | None,
    protocol: Protocol,
    datasets: list[str],
    backbones: list[str],
    seeds: list[int],
    epochs: int,
) -> Path:
    """Data, knowledge, baseline and every run of one protocol, then its report -> report path."""
    from llm4msr.atomic import write_bytes_atomic
    from ranker.report import markdown, plot, selected_runs, slice_report, summarize
    from ranker.train import train

    data_cfgs = {name: data_config(name, args.overrides, protocol) for name in datasets}
    work = Path(args.work)
    notes, splits, encoders = [], [], []
    trained = reused = 0
    t_start = time.perf_counter()
    roots = {name: dataset_root(name, work, args.overrides, protocol) for name in datasets}
    for name in datasets:
        data_dir, kn_root, kn_seconds = prepare(
            data_cfgs[name], roots[name], args.knowledge_backend, args.overrides
        )
        encoders.append(f"- {name}: {describe_knowledge(knowledge_used(kn_root))} ({kn_root}).")
        used = strategy_used(data_dir)
        mismatch = (
            f" **Not the {protocol.name} protocol: the data has a {used} split.**"
            if used not in protocol.strategies
            else ""
        )
        splits.append(f"- {name}: {split_used(data_dir)}.{mismatch}")
        notes.append(
            f"- {name}: data {data_dir}; "
            + (
                f"knowledge snapshot built in {kn_seconds:.0f} s ({args.knowledge_backend})"
                if kn_seconds > 1
                else f"knowledge snapshot reused from {kn_root}"
            )
        )
        baseline_dir = runs_dir(roots[name], args.overrides, False) / "baseline"
        ensure_baseline(data_dir, baseline_dir, load_config(overrides=args.overrides))
        for backbone in backbones:
            for use_llm in (False, True):
                for seed in seeds:
                    run_dir = (
                        runs_dir(roots[name], args.overrides, use_llm)
                        / f"{backbone}-{'llm' if use_llm else 'plain'}-seed{seed}"
                    )
                    settings = load_config(
                        overrides=[
                            f"train.backbone={backbone}",
                            f"train.use_llm={use_llm}",
                            f"train.seed={seed}",
                            f"train.epochs={epochs}",
                            *args.overrides,
                        ]
                    )
                    longer = extended(settings)
                    knowledge = kn_root if use_llm else None
                    if reusable(run_dir, settings) or (args.extend and reusable(run_dir, longer)):
                        reused += 1
                    else:
                        if (run_dir / "metrics.json").is_file():
                            log.info("%s was trained with other settings: training it again", run_dir)
                        train(settings, data_dir, knowledge, run_dir, overwrite=True)
                        trained += 1
                    if args.extend and peaked_last(run_dir) and not reusable(run_dir, longer):
                        log.warning(
                            "%s peaked at its last epoch (%d): training it again with %d epochs",
                            run_dir.name,
                            settings.train.epochs,
                            longer.train.epochs,
                        )
                        train(longer, data_dir, knowledge, run_dir, overwrite=True)
                        trained += 1
    runs = [r for name in datasets for r in bench_runs(roots[name], args.overrides, backbones, seeds)]
    runs += selected_runs(runs)  # what train.select=auto would ship, per seed (no extra training)
    summary = summarize(runs)
    out = report_path(datasets, args.overrides, protocol, args.quick, args.out, args.protocol == "both")
    png = out.with_suffix(".png")
    write_bytes_atomic(png, plot(summary, f"{protocol.label} protocol"))
    data_sets = data_overrides(args.overrides)
    knowledge_sets = knowledge_overrides(args.overrides)
    train_sets = [o for o in args.overrides if o not in data_sets and o not in knowledge_sets]
    command = "llm4msr bench ranker " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    intro = (
        f"**Protocol: {protocol.name}** — {protocol.description}. Split of each dataset, read from "
        "its manifest:\n\n"
        + "\n".join(splits)
        + "\n\nKnowledge encoder of the +LLM4MSR runs, read from each snapshot's manifest:\n\n"
        + "\n".join(encoders)
        + "\n\n"
        + convergence_note(runs, epochs)
    )
    text = (
        markdown(
            summary,
            f"Ranker benchmark: backbones plain vs +LLM4MSR ({protocol.name} protocol)",
            intro=intro,
            slices=slice_report(runs),
        )
        + f"\n![ΔAUC per backbone and scenario]({png.name})\n\n## How this was produced\n\n```\n{command}\n```\n\n"
        + f"Protocol {protocol.name} ({' '.join(protocol.overrides)}). "
        + f"Training config: defaults of llm4msr/config.py with train.epochs={epochs}"
        + (f" and {' '.join(train_sets)}" if train_sets else "")
        + ". Data: each dataset's adapter settings"
        + (f" with {' '.join(data_sets)}" if data_sets else "")
        + "; the split each one actually has is stated at the top, read from its manifest. "
        + "Knowledge: "
        + (" ".join(knowledge_sets) if knowledge_sets else "the shipped knowledge settings")
        + f" with --knowledge-backend {args.knowledge_backend}. "
        + f"Total wall time {time.perf_counter() - t_start:.0f} s ({trained} runs trained, {reused} reused "
        "from earlier invocations) on a 2-core machine shared with other "
        "jobs: timings are noisy; the overhead ratio compares runs measured in the same session.\n\n"
        + "\n".join(notes)
        + "\n\nInterpretation (where the knowledge helps and where it does not): "
        "[ranker-findings.md](ranker-findings.md).\n"
    )
    write_text_atomic(out, text)
    print(f"wrote {out} ({len(runs)} runs)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = (args.datasets or ("ml-100k" if args.quick else "ml-100k,amazon-food-kitchen")).split(",")
    backbones = (args.backbones or ("shared_bottom,star" if args.quick else ",".join(ALL_BACKBONES))).split(
        ","
    )
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    epochs = args.epochs or (2 if args.quick else load_config().train.epochs)
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        print(f"unknown dataset(s) {unknown}; expected {sorted(DATASETS)}", file=sys.stderr)
        return 2
    protocols = list(PROTOCOLS.values()) if args.protocol == "both" else [PROTOCOLS[args.protocol]]
    try:  # every protocol's data settings are checked before anything is built or trained
        for protocol in protocols:
            for name in datasets:
                data_config(name, args.overrides, protocol)
        knowledge_config(args.overrides, args.knowledge_backend, Path(args.work))
    except ConfigError as exc:
        print(f"llm4msr bench ranker: error: {exc}", file=sys.stderr)
        return 2
    for protocol in protocols:
        run_protocol(args, argv, protocol, datasets, backbones, seeds, epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
