"""Knowledge encoders side by side: which encoder's knowledge helps the ranker, at what CPU cost.

For each encoder variant (MiniLM one-pass; SmolLM2 one-pass LAST; SmolLM2 two-pass with the vector
rule last / mean / encoder) this runs the ranker benchmark (bench/ranker.py, unchanged machinery:
its knowledge.* overrides give every variant its own snapshot and +LLM4MSR runs, the plain runs
and the baseline are shared) for each protocol, backbone and seed, then writes one report:

- overall ΔAUC of +LLM4MSR vs plain per variant × backbone × protocol (mean ± std over seeds,
  Welch SE) and the per-scenario "never worse" check (ranker.report.deltas / verdicts);
- encoding throughput of each variant's snapshot build (prompts/s; answer tokens/s in two-pass),
  read from the snapshot manifests (`encoding`, summed over shards, engine start-up excluded);
- the cost of a nightly refresh at 1 % churn: a copy of each snapshot root refreshed from a copy
  of the data in which 1 % of the users' newest training label flipped (bench/simulate.churn; the
  incremental planner re-encodes only their prompts), timed cold (engines released first, as in
  a fresh nightly process);
- a Conclusion section whose sentences are computed from those numbers.

    python -m bench.encoders                                   # ML-100K, 5 variants, 3 seeds, both protocols
    python -m bench.encoders --set data.movielens.max_users=200   # a documented subset (two-pass is slow)
    python -m bench.encoders --variants minilm,smollm2 --protocol temporal --seeds 0 --epochs 2

Every run and snapshot is kept under --work and reused by a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_OUT = "docs/benchmarks/knowledge-encoders.md"


@dataclass(frozen=True)
class Variant:
    """One encoder setting: the knowledge.* overrides the ranker benchmark builds its snapshot with."""

    name: str
    label: str
    overrides: tuple[str, ...]  # {decoder} stands for --decoder (smollm2, or a model folder in tests)
    two_pass: bool


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("minilm", "MiniLM one-pass (MEAN)", ("knowledge.model=minilm",), False),
        Variant(
            "smollm2",
            "SmolLM2 one-pass (LAST)",
            ("knowledge.model={decoder}", "knowledge.pooling=LAST"),
            False,
        ),
        *(
            Variant(
                f"smollm2-2p-{rule}",
                f"SmolLM2 two-pass, vector {rule}",
                ("knowledge.model={decoder}", "knowledge.two_pass=true", f"knowledge.two_pass_vector={rule}"),
                True,
            )
            for rule in ("last", "mean", "encoder")
        ),
    )
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.encoders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument(
        "--datasets", default="ml-100k", help="comma-separated benchmark datasets (bench/ranker.py)"
    )
    p.add_argument("--backbones", default="shared_bottom,star")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (default: train.epochs)")
    p.add_argument("--protocol", choices=["temporal", "random", "both"], default="both")
    p.add_argument("--knowledge-backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument(
        "--decoder", default="smollm2", help="the decoder of the SmolLM2 variants (a model name or folder)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every variant (data.*, knowledge.*, train.*), e.g. data.movielens.max_users=200",
    )
    p.add_argument("--churn", type=float, default=0.01, help="share of users changed for the refresh cost")
    p.add_argument("--work", default="artifacts/bench/encoders", help="data, snapshots, runs, churn copies")
    p.add_argument("--out", default=DEFAULT_OUT)
    return p.parse_args(argv)


def variant_overrides(variant: Variant, decoder: str, common: list[str]) -> list[str]:
    """--set entries of one variant: the common ones, then the variant's (the variant wins)."""
    return [*common, *(o.replace("{decoder}", decoder) for o in variant.overrides)]


def ranker_argv(args: argparse.Namespace, protocol: str, sets: list[str], out: Path) -> list[str]:
    """The `llm4msr bench ranker` command line of one variant and protocol."""
    argv = ["--datasets", args.datasets, "--backbones", args.backbones, "--seeds", args.seeds]
    argv += ["--protocol", protocol, "--knowledge-backend", args.knowledge_backend, "--work", args.work]
    argv += [*(["--epochs", str(args.epochs)] if args.epochs else []), "--out", str(out)]
    return argv + [a for s in sets for a in ("--set", s)]


# ---------------------------------------------------------------------------------------- results


@dataclass
class Cell:
    """One variant × dataset × backbone × protocol: overall ΔAUC vs plain and the scenario check."""

    variant: str
    dataset: str
    backbone: str
    protocol: str
    plain: tuple[float, float, int]
    other: tuple[float, float, int]
    delta: float
    se: float | None  # Welch SE; None with < 2 seeds on either side
    beats: bool | None  # ΔAUC > 2 SE
    worse: list[str] | None  # scenarios (or "overall") below plain by > 1 std; None: < 2 seeds
    per_scenario: dict[str, tuple[float, float | None]]  # scenario -> (ΔAUC, SE)


@dataclass
class Throughput:
    variant: str
    protocol: str
    dataset: str
    model: str
    dimension: int | None
    prompts: int | None
    seconds: float | None
    prompts_per_s: float | None
    answer_tokens: int | None
    answer_tokens_per_s: float | None


@dataclass
class Refresh:
    variant: str
    dataset: str
    protocol: str
    users_changed: int
    users: int
    encoded: int
    carried: int
    wall_s: float  # plan + engine start-up + encode + assemble, engines released first
    encoding_s: float | None  # the encoding alone (manifest)
    full_encoding_s: float | None  # the full build's encoding of the same variant (manifest)


def collect_cells(variant: str, protocol: str, dataset: str, rows: list[Any]) -> list[Cell]:
    """Cells of one variant, protocol and dataset from ranker.report.deltas rows (+LLM4MSR vs plain)."""
    from ranker.report import LLM, verdicts

    rows = [d for d in rows if d.variant == LLM]
    verdict = {(v.dataset, v.backbone): v for v in verdicts(rows)}
    out = []
    for d in rows:
        if d.scenario != "overall":
            continue
        v = verdict[(d.dataset, d.backbone)]
        scen = {
            r.scenario: (r.diff.delta, r.diff.se if r.diff.has_se else None)
            for r in rows
            if (r.dataset, r.backbone) == (d.dataset, d.backbone) and r.scenario != "overall"
        }
        out.append(
            Cell(
                variant,
                dataset,
                d.backbone,
                protocol,
                d.plain,
                d.other,
                d.diff.delta,
                d.diff.se if d.diff.has_se else None,
                d.diff.beats_by_se(),
                v.worse_scenarios,
                scen,
            )
        )
    return out


def throughput_of(variant: str, protocol: str, dataset: str, used: dict[str, Any]) -> Throughput:
    enc = used.get("encoding") or {}
    return Throughput(
        variant,
        protocol,
        dataset,
        str(used.get("model_id")),
        used.get("dimension"),
        enc.get("prompts"),
        enc.get("seconds"),
        enc.get("prompts_per_s"),
        enc.get("answer_tokens") if used.get("two_pass") else None,
        enc.get("answer_tokens_per_s") if used.get("two_pass") else None,
    )


def measure_refresh(
    variant: str,
    dataset: str,
    protocol: str,
    data_dir: Path,
    kn_root: Path,
    cfg: Any,
    scratch: Path,
    share: float,
) -> Refresh:
    """Time an incremental refresh of a copy of `kn_root` after `share` of the users changed."""
    from bench.simulate import churn
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore
    from knowledge_service.backends import release_backends
    from knowledge_service.runner import build_knowledge

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    root = scratch / "knowledge"
    shutil.copytree(kn_root, root, ignore=shutil.ignore_patterns(".work"))
    full = read_manifest(OfflineStore(root).current_path())
    churned, changed = churn(data_dir, scratch / "data", fraction=share)
    release_backends()  # a nightly refresh starts a fresh process: engine start-up is part of its cost
    t0 = time.perf_counter()
    report = build_knowledge(churned, root, cfg.model_copy(update={"snapshot_root": str(root)}))
    wall = time.perf_counter() - t0
    enc = read_manifest(report.path).get("encoding") or {}
    release_backends()
    return Refresh(
        variant,
        dataset,
        protocol,
        len(changed),
        report.n_users,
        report.n_encoded,
        report.n_carried,
        wall,
        enc.get("seconds"),
        (full.get("encoding") or {}).get("seconds"),
    )


# ---------------------------------------------------------------------------------------- report


def _f(x: float | None, fmt: str = ".4f", none: str = "–") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _ms(ms: tuple[float, float, int]) -> str:
    mean, std, n = ms
    return f"{mean:.4f} ± {std:.4f} (n={n})" if n > 1 else f"{mean:.4f} (n=1)"


def _delta(delta: float, se: float | None) -> str:
    return f"{delta:+.4f} ± {se:.4f}" if se is not None else f"{delta:+.4f}"


def _never(worse: list[str] | None) -> str:
    if worse is None:
        return "n/a (< 2 seeds)"
    return "**yes**" if not worse else f"no ({', '.join(worse)})"


def conclusion(
    cells: list[Cell], tput: list[Throughput], refresh: list[Refresh], labels: dict[str, str]
) -> list[str]:
    """Sentences derived from the numbers only (no verdict is written by hand)."""
    lines: list[str] = []
    variants = list(dict.fromkeys(c.variant for c in cells))
    if not variants:
        return ["No +LLM4MSR runs were found: nothing to conclude."]
    mean_delta = {v: statistics.fmean(c.delta for c in cells if c.variant == v) for v in variants}
    n_cells = {v: sum(1 for c in cells if c.variant == v) for v in variants}
    beats = {v: sum(1 for c in cells if c.variant == v and c.beats) for v in variants}
    never = {v: all(c.worse is not None and not c.worse for c in cells if c.variant == v) for v in variants}
    known = {v: all(c.worse is not None for c in cells if c.variant == v) for v in variants}
    speed: dict[str, float] = {}
    for v in variants:
        rates = [t.prompts_per_s for t in tput if t.variant == v and t.prompts_per_s]
        if rates:
            speed[v] = statistics.fmean(rates)
    for v in sorted(variants, key=lambda v: -mean_delta[v]):
        never_text = (
            "never worse than plain in any scenario of any cell"
            if never[v]
            else (
                "worse than plain by > 1 std somewhere" if known[v] else "never-worse check n/a (< 2 seeds)"
            )
        )
        rate = f", {speed[v]:.2f} prompts/s" if v in speed else ""
        lines.append(
            f"- {labels[v]}: mean overall ΔAUC {mean_delta[v]:+.4f} over {n_cells[v]} backbone × protocol "
            f"cells; beats plain by > 2 SE in {beats[v]} of {n_cells[v]}; {never_text}{rate}."
        )
    best = max(variants, key=lambda v: mean_delta[v])
    lines.append("")
    lines.append(f"Largest mean overall ΔAUC: **{labels[best]}** ({mean_delta[best]:+.4f}).")
    if speed:
        fastest = max(speed, key=lambda v: speed[v])
        for v in speed:
            if v != fastest:
                lines.append(
                    f"{labels[v]} encodes {speed[fastest] / speed[v]:.1f}x slower than {labels[fastest]} "
                    "on this machine."
                )
    # Rule (stated, applied to the numbers): among the variants never worse in every cell, those
    # whose mean ΔAUC is within 2 pooled SE of the best such variant tie; the fastest of them is
    # the candidate CPU default.
    safe = [v for v in variants if never[v]]
    lines.append("")
    lines.append(
        "Rule for the CPU default: among the variants never worse than plain in every cell, take the "
        "best mean overall ΔAUC; every variant within 2 SE of it (SE pooled over its cells) ties with "
        "it; the fastest of the tied is the default."
    )
    if not safe:
        lines.append(
            "No variant passes the never-worse check in every cell (or there are < 2 seeds): the rule "
            "names no default; keep the current one until a run with more seeds decides."
        )
        return lines
    top = max(safe, key=lambda v: mean_delta[v])

    def pooled_se(v: str) -> float | None:
        ses = [c.se for c in cells if c.variant == v]
        if any(s is None for s in ses):
            return None
        return math.sqrt(sum(s * s for s in ses)) / len(ses)

    tied = []
    for v in safe:
        se_v, se_top = pooled_se(v), pooled_se(top)
        if v == top or (
            se_v is not None
            and se_top is not None
            and mean_delta[top] - mean_delta[v] <= 2 * math.sqrt(se_v**2 + se_top**2)
        ):
            tied.append(v)
    pick = max(tied, key=lambda v: speed.get(v, 0.0))
    lines.append(
        f"Never worse everywhere: {', '.join(labels[v] for v in safe)}. Best of them: {labels[top]}; "
        f"tied within 2 SE: {', '.join(labels[v] for v in tied)}. By this rule the CPU default is "
        f"**{labels[pick]}**."
    )
    for r in refresh:
        if r.variant == pick:
            lines.append(
                f"Its nightly refresh at {100 * r.users_changed / max(r.users, 1):.1f} % churn took "
                f"{r.wall_s:.0f} s wall ({r.encoded} prompts encoded) on {r.dataset} ({r.protocol})."
            )
    return lines


def write_report(
    out: Path,
    args: argparse.Namespace,
    argv: list[str],
    cells: list[Cell],
    tput: list[Throughput],
    refresh: list[Refresh],
    datasets_text: list[str],
    encoders_text: list[str],
    started: str,
    wall: float,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    from llm4msr.atomic import write_text_atomic

    labels = {v.name: v.label for v in VARIANTS.values()}
    cmd = "python -m bench.encoders " + " ".join(shlex.quote(a) for a in argv)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    lines = [
        "# Knowledge encoders compared: MiniLM vs SmolLM2 one-pass vs SmolLM2 two-pass",
        "",
        "Generated by `bench/encoders.py` from the runs and snapshots under "
        f"`{args.work}`; every number below is read from them.",
        "",
        f"- Command: `{cmd}`",
        f"- Date: {started} (UTC), total wall time {wall / 60:.1f} min",
        f"- Machine: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; load average "
        f"{' / '.join(f'{x:.1f}' for x in load[0])} at the start, {' / '.join(f'{x:.1f}' for x in load[1])} at "
        "the end (shared with other jobs: timings are noisy)",
        f"- Backbones {args.backbones}; seeds {args.seeds}; epochs "
        f"{args.epochs or 'train.epochs (default)'}; knowledge backend {args.knowledge_backend}"
        + (f"; common settings {' '.join(args.overrides)}" if args.overrides else ""),
        "",
        "Data (read from each dataset's manifest):",
        "",
        *datasets_text,
        "",
        "Encoders (read from each snapshot's manifest):",
        "",
        *encoders_text,
        "",
        "## Overall ΔAUC of +LLM4MSR vs plain",
        "",
        "Mean ± sample std over seeds; ΔAUC = difference of the seed means ± its Welch SE (plain runs are "
        "shared by all variants). `beats`: ΔAUC > 2 SE. `never worse`: in no scenario (nor overall) below "
        "plain by more than one seed std.",
        "",
        "| variant | dataset | backbone | protocol | AUC plain | AUC +LLM4MSR | ΔAUC ± SE | beats by > 2 SE | "
        "never worse |",
        "|" + " --- |" * 9,
    ]
    for c in cells:
        beats = "n/a (< 2 seeds)" if c.beats is None else ("**yes**" if c.beats else "no")
        lines.append(
            f"| {labels[c.variant]} | {c.dataset} | {c.backbone} | {c.protocol} | {_ms(c.plain)} | {_ms(c.other)} | "
            f"{_delta(c.delta, c.se)} | {beats} | {_never(c.worse)} |"
        )
    scenarios = sorted({s for c in cells for s in c.per_scenario})
    lines += [
        "",
        "## Per-scenario ΔAUC (never-worse check)",
        "",
        "ΔAUC ± SE per scenario; the last column repeats the check.",
        "",
        "| variant | dataset | backbone | protocol | " + " | ".join(scenarios) + " | never worse |",
        "|" + " --- |" * (5 + len(scenarios)),
    ]
    for c in cells:
        per = [_delta(*c.per_scenario[s]) if s in c.per_scenario else "–" for s in scenarios]
        lines.append(
            f"| {labels[c.variant]} | {c.dataset} | {c.backbone} | {c.protocol} | "
            + " | ".join(per)
            + f" | {_never(c.worse)} |"
        )
    lines += [
        "",
        "## Encoding throughput",
        "",
        "The snapshot build of each variant, from its manifest's `encoding` block: the time spent in the "
        "shards (batches of prompts; engine start-up excluded), summed over shards. Two-pass: answer "
        "tokens generated and their rate over the generation time alone.",
        "",
        "| variant | dataset | protocol | model | dimension | prompts | encoding s | prompts/s | answer tokens | "
        "answer tokens/s |",
        "|" + " --- |" * 10,
    ]
    for t in tput:
        lines.append(
            f"| {labels[t.variant]} | {t.dataset} | {t.protocol} | {t.model} | {t.dimension} | {t.prompts or '–'} | "
            f"{_f(t.seconds, '.1f')} | {_f(t.prompts_per_s, '.2f')} | {t.answer_tokens or '–'} | "
            f"{_f(t.answer_tokens_per_s, '.1f')} |"
        )
    lines += [
        "",
        f"## Nightly refresh at {100 * args.churn:g} % churn",
        "",
        "A copy of each variant's snapshot root, refreshed from a copy of the data in which the newest "
        "training label of that share of the users flipped (bench/simulate.churn): the planner carries "
        "every unchanged prompt over and re-encodes the rest. Wall = plan + engine start-up + encoding + "
        "assemble in a process whose engines were released first (as a nightly job starts).",
        "",
        "| variant | dataset | protocol | users changed | encoded | carried | wall s | encoding s | "
        "full build encoding s |",
        "|" + " --- |" * 9,
    ]
    for r in refresh:
        lines.append(
            f"| {labels[r.variant]} | {r.dataset} | {r.protocol} | {r.users_changed} of {r.users} | {r.encoded} | "
            f"{r.carried} | {r.wall_s:.1f} | {_f(r.encoding_s, '.1f')} | {_f(r.full_encoding_s, '.1f')} |"
        )
    lines += [
        "",
        "## Conclusion",
        "",
        "_Generated from the tables above by `bench.encoders.conclusion`; no sentence here is written by hand._",
        "",
        *conclusion(cells, tput, refresh, labels),
        "",
        f"Per-variant ranker reports (all metrics, slices, plots): `{Path(args.work) / 'reports'}`.",
    ]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out, text)
    return text


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import bench.ranker as rb
    from llm4msr.config import ConfigError
    from ranker.report import deltas, summarize

    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; expected {list(VARIANTS)}", file=sys.stderr)
        return 2
    protocols = ["temporal", "random"] if args.protocol == "both" else [args.protocol]
    datasets, backbones = args.datasets.split(","), args.backbones.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    try:  # every variant's settings are checked before anything is built or trained
        for n in names:
            sets = variant_overrides(VARIANTS[n], args.decoder, args.overrides)
            rb.knowledge_config(sets, args.knowledge_backend, Path(args.work))
            for p in protocols:
                for d in datasets:
                    rb.data_config(d, sets, rb.PROTOCOLS[p])
    except (ConfigError, KeyError) as exc:
        print(f"bench encoders: error: {exc}", file=sys.stderr)
        return 2

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    load0, t0 = os.getloadavg(), time.perf_counter()
    reports = Path(args.work) / "reports"
    cells: list[Cell] = []
    tput: list[Throughput] = []
    refresh: list[Refresh] = []
    datasets_text: list[str] = []
    encoders_text: list[str] = []
    for n in names:
        sets = variant_overrides(VARIANTS[n], args.decoder, args.overrides)
        for p in protocols:
            log.info("variant %s, protocol %s: ranker benchmark", n, p)
            code = rb.main(ranker_argv(args, p, sets, reports / f"ranker-{n}-{p}.md"))
            if code != 0:
                print(
                    f"bench encoders: the ranker benchmark of {n} ({p}) failed with {code}", file=sys.stderr
                )
                return code
            protocol = rb.PROTOCOLS[p]
            for d in datasets:
                root = rb.dataset_root(d, Path(args.work), sets, protocol)
                runs = rb.bench_runs(root, sets, backbones, seeds)
                cells += collect_cells(n, p, d, deltas(summarize(runs)))
                used = rb.knowledge_used(rb.knowledge_root(root, sets))
                tput.append(throughput_of(n, p, d, used))
                encoders_text.append(f"- {VARIANTS[n].label}, {d} ({p}): {rb.describe_knowledge(used)}.")
                line = f"- {d} ({p}): {rb.split_used(root / 'data')}; {_data_size(root / 'data')}."
                if line not in datasets_text:
                    datasets_text.append(line)
        # refresh cost: the first dataset and protocol (the cost does not depend on the split)
        d, p = datasets[0], protocols[0]
        root = rb.dataset_root(d, Path(args.work), sets, rb.PROTOCOLS[p])
        kn_root = rb.knowledge_root(root, sets)
        cfg = rb.knowledge_config(sets, args.knowledge_backend, kn_root)
        log.info("variant %s: nightly refresh at %.1f %% churn", n, 100 * args.churn)
        refresh.append(
            measure_refresh(n, d, p, root / "data", kn_root, cfg, Path(args.work) / "churn" / n, args.churn)
        )
    text = write_report(
        Path(args.out),
        args,
        argv,
        cells,
        tput,
        refresh,
        datasets_text,
        encoders_text,
        started,
        time.perf_counter() - t0,
        (load0, os.getloadavg()),
    )
    print(text)
    print(f"wrote {args.out}")
    return 0


def _data_size(data_dir: Path) -> str:
    """Users / interactions of a built dataset and the MovieLens subset setting, from its manifest."""
    man = json.loads((data_dir / "manifest.json").read_text())
    source = man.get("source") or {}
    counts = man.get("counts") or man.get("rows") or {}
    ml = ((source.get("config") or {}).get("movielens") or {}).get("max_users")
    subset = f"subset: the first {ml} users by id (data.movielens.max_users)" if ml else "all users"
    sizes = ", ".join(f"{v} {k}" for k, v in counts.items() if isinstance(v, int))
    return f"{sizes}; {subset}" if sizes else subset


if __name__ == "__main__":
    sys.exit(main())
