"""Compare training runs: per-scenario metrics, mean ± std over seeds, backbone vs +LLM4MSR.

Runs are grouped by (dataset version, backbone, variant); every run in a group is one seed. A
baseline run (`ranker.baseline`, run.json `kind: "baseline"`) is a group of its own, shown first.
Output: Markdown tables (metrics, cost, ΔAUC vs plain with its Welch SE and the "never worse" /
"beats by > 2 SE" verdicts, AUC on knowledge slices) and a PNG plot of ΔAUC per backbone and
scenario with SE bars (per-scenario AUC bars when there is nothing to compare).
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from llm4msr.atomic import write_bytes_atomic, write_text_atomic
from llm4msr.errors import MissingInputError
from ranker.baseline import BASELINE_KIND, BASELINE_VARIANT
from ranker.metrics import MeanDiff, aggregate, mean_diff, mean_std
from ranker.model_io import METRICS_FILE, RUN_FILE
from ranker.slices import HISTORY, SliceAuc, run_slice_aucs, train_rows

log = logging.getLogger(__name__)

PLAIN = "plain"
LLM = "+LLM4MSR"
SELECTED = "+LLM4MSR (select=auto)"  # per seed: the run train.select=auto would have kept
NO_BACKBONE = "–"  # the baseline's backbone cell
MeanStd = tuple[float, float, int]  # ranker.metrics.mean_std: (mean, sample std, n)


@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def variant(self) -> str:
        return variant_name(self.info)

    @property
    def is_baseline(self) -> bool:
        return self.info.get("kind") == BASELINE_KIND

    @property
    def key(self) -> tuple[str, str, str]:
        ds = self.info["dataset"]
        name = (ds.get("source") or {}).get("dataset") or Path(ds["path"]).name
        backbone = NO_BACKBONE if self.is_baseline else self.info["backbone"]
        return (f"{name} ({ds['version'][:8]})", backbone, self.variant)


def variant_name(info: dict[str, Any]) -> str:
    """plain, +LLM4MSR, the ablation (e.g. '+LLM4MSR (scenario level only)', '+knowledge concat'),
    or the baseline."""
    if info.get("kind") == BASELINE_KIND:
        return BASELINE_VARIANT
    if info.get("selected_from"):
        return SELECTED
    if not info.get("use_llm"):
        return PLAIN
    meta = info.get("meta") or {}
    if meta.get("mode") == "concat":
        return "+knowledge concat"
    user, scen = meta.get("user_level", True), meta.get("scenario_level", True)
    if user and scen:
        extra = []
        if meta.get("generated_weights") == "full":
            extra.append("full weights")
        if meta.get("merge") == "gate":
            extra.append("gate merge")
        return LLM + (f" ({', '.join(extra)})" if extra else "")
    return LLM + (" (user level only)" if user else " (scenario level only)")


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Run directories among `paths` or up to two levels below them (sorted, deduplicated)."""
    found: dict[Path, Run] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise MissingInputError(f"run directory {p} does not exist")
        candidates = [p, *p.glob("*"), *p.glob("*/*")]
        for c in candidates:
            if (c / METRICS_FILE).is_file() and (c / RUN_FILE).is_file() and not c.name.startswith("."):
                found[c.resolve()] = Run(
                    c, json.loads((c / RUN_FILE).read_text()), json.loads((c / METRICS_FILE).read_text())
                )
    return [found[k] for k in sorted(found)]


def selected_runs(runs: list[Run], min_z: float = 2.0) -> list[Run]:
    """What production ships (`train.select=auto`), as a variant of its own: for each dataset,
    backbone and seed with a plain and a +LLM4MSR run, the run `ranker.selection.select_variant`
    keeps on validation (DeLong, +LLM4MSR only beyond `min_z` SE; test rows never used). Costs no
    training: both runs already hold their validation predictions. Pairs without them are skipped."""
    from ranker.model_io import VALID_PREDICTIONS_FILE
    from ranker.selection import LLM as KEEP_LLM
    from ranker.selection import select_variant

    pairs: dict[tuple[str, str, int], dict[str, Run]] = {}
    for r in runs:
        if r.variant in (PLAIN, LLM):
            pairs.setdefault((r.key[0], r.key[1], r.info["seed"]), {})[r.variant] = r
    out = []
    for key in sorted(pairs):
        plain, llm = pairs[key].get(PLAIN), pairs[key].get(LLM)
        if plain is None or llm is None:
            continue
        if not all((r.path / VALID_PREDICTIONS_FILE).is_file() for r in (plain, llm)):
            continue
        decision = select_variant(plain.path, llm.path, min_z)
        kept = llm if decision.keep == KEEP_LLM else plain
        info = {**kept.info, "selected_from": decision.to_dict()}
        out.append(Run(kept.path, info, kept.metrics))
    return out


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One entry per (dataset, backbone, variant): aggregated metrics, seeds, time per epoch, params."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    out = []
    for key in sorted(groups, key=_group_order):
        rs = groups[key]
        agg = aggregate([r.metrics["final"] for r in rs])
        epoch_s = mean_std(r.info["timings"]["mean_epoch_seconds"] for r in rs)
        fallback = [r.info["fallback"]["users"] for r in rs if r.info.get("fallback")]
        out.append(
            {
                "dataset": key[0],
                "backbone": key[1],
                "variant": key[2],
                "seeds": sorted(r.info["seed"] for r in rs),
                "metrics": agg,
                "epoch_seconds": epoch_s,
                "parameters": rs[0].info["parameters"]["total"],
                "fallback_users": fallback[0] if fallback else None,
                "baseline": rs[0].info.get("baseline"),  # a baseline run's settings and weights
            }
        )
    return out


def _baseline_alpha(group: dict[str, Any]) -> str:
    """The prior strength a baseline run recorded (run.json baseline.settings.config.alpha)."""
    settings = (group.get("baseline") or {}).get("settings") or {}
    alpha = (settings.get("config") or {}).get("alpha")
    return "?" if alpha is None else f"{alpha:g}"


def _group_order(key: tuple[str, str, str]) -> tuple[str, bool, str, bool, str]:
    """Per dataset: the baseline first, then each backbone with plain before its variants."""
    return (key[0], key[2] != BASELINE_VARIANT, key[1], key[2] != PLAIN, key[2])


def _fmt(ms: tuple[float, float, int], digits: int = 4) -> str:
    mean, std, n = ms
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown(
    summary: list[dict[str, Any]],
    title: str,
    *,
    intro: str = "",
    slices: SliceReport | None = None,
) -> str:
    """The report: metrics, cost, ΔAUC vs plain (SE, verdicts), verdict per backbone, slices.
    `intro` (Markdown) goes under the title, e.g. the protocol and split of a benchmark."""
    if not summary:
        return f"# {title}\n\n" + (f"{intro.rstrip()}\n\n" if intro else "") + "(no runs)\n"
    k = summary[0]["metrics"]["k"]
    keys = ("auc", "gauc", "logloss", f"recall@{k}", f"ndcg@{k}")
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro.rstrip(), ""]
    lines += [
        "Mean ± sample std over seeds (one run per seed). Metrics on the test split; "
        f"Recall@{k}/NDCG@{k} rank each user's held-out positives among sampled negatives of the same "
        "scenario.",
        "",
    ]
    alphas = sorted({_baseline_alpha(g) for g in summary if g["variant"] == BASELINE_VARIANT} - {"?"})
    if any(g["variant"] == BASELINE_VARIANT for g in summary):
        lines += [
            f"`{BASELINE_VARIANT}`: logistic regression on the train-split mean label of the user and "
            f"of the item (smoothed toward the global mean, prior strength α = {' / '.join(alphas) or '?'}) "
            "and the scenario one-hot; deterministic, one run, evaluated on the same test rows and "
            "sampled candidates (docs/ranker.md, Baseline).",
            "",
        ]
    lines += [
        f"| dataset | backbone | variant | scenario | AUC | gAUC | Logloss | Recall@{k} | NDCG@{k} | seeds |",
        "|" + " --- |" * 10,
    ]
    for g in summary:
        m = g["metrics"]
        scen_rows = [(s, m["per_scenario"][s]) for s in m["per_scenario"]] + [("**overall**", m["overall"])]
        for scen, vals in scen_rows:
            cells = " | ".join(_fmt(vals[key]) for key in keys)
            lines.append(
                f"| {g['dataset']} | {g['backbone']} | {g['variant']} | {scen} | {cells} | {len(g['seeds'])} |"
            )
    lines += [
        "",
        "## Cost",
        "",
        "| dataset | backbone | variant | parameters | s / epoch | time ratio vs plain | users on fallback |",
        "|" + " --- |" * 7,
    ]
    plain_time = {
        (g["dataset"], g["backbone"]): g["epoch_seconds"][0] for g in summary if g["variant"] == PLAIN
    }
    for g in summary:
        base = plain_time.get((g["dataset"], g["backbone"]))
        ratio = f"{g['epoch_seconds'][0] / base:.2f}×" if base else "–"
        fb = f"{g['fallback_users']:.1%}" if g["fallback_users"] is not None else "–"
        lines.append(
            f"| {g['dataset']} | {g['backbone']} | {g['variant']} | {g['parameters']:,} | "
            f"{_fmt(g['epoch_seconds'], 2)} | {ratio} | {fb} |"
        )
    if any(g["variant"] == BASELINE_VARIANT for g in summary):
        lines += ["", "(baseline: `s / epoch` is the time of its whole fit.)"]
    rows = deltas(summary)
    if rows:
        lines += ["", *_delta_table(rows), "", *_verdict_table(rows)]
    if slices is not None:
        lines += ["", *_slice_table(slices)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- deltas


@dataclass(frozen=True)
class DeltaRow:
    """One (dataset, backbone, variant, scenario): the variant's AUC minus plain's, over seeds."""

    dataset: str
    backbone: str
    variant: str
    scenario: str  # a scenario id, or "overall"
    plain: MeanStd
    other: MeanStd
    diff: MeanDiff  # other − plain, Welch SE
    baseline: float | None  # the baseline's AUC on the same rows (None: no baseline run)


def deltas(summary: list[dict[str, Any]]) -> list[DeltaRow]:
    """ΔAUC of every non-plain variant against plain of the same dataset and backbone."""
    plain = {(g["dataset"], g["backbone"]): g for g in summary if g["variant"] == PLAIN}
    baseline = {g["dataset"]: g for g in summary if g["variant"] == BASELINE_VARIANT}
    out = []
    for g in summary:
        base = plain.get((g["dataset"], g["backbone"]))
        if g["variant"] in (PLAIN, BASELINE_VARIANT) or base is None:
            continue
        lr = baseline.get(g["dataset"])
        for scen, vals in [*g["metrics"]["per_scenario"].items(), ("overall", g["metrics"]["overall"])]:
            b = _scenario_metrics(base, scen)
            if not b:
                continue
            lr_vals = _scenario_metrics(lr, scen) if lr else None
            out.append(
                DeltaRow(
                    dataset=g["dataset"],
                    backbone=g["backbone"],
                    variant=g["variant"],
                    scenario=scen,
                    plain=b["auc"],
                    other=vals["auc"],
                    diff=mean_diff(b["auc"], vals["auc"]),
                    baseline=lr_vals["auc"][0] if lr_vals else None,
                )
            )
    return out


def _scenario_metrics(group: dict[str, Any], scen: str) -> dict[str, Any] | None:
    m = group["metrics"]
    return m["overall"] if scen == "overall" else m["per_scenario"].get(scen)


def _yes_no(flag: bool | None, reason: str = "n/a (< 2 seeds)") -> str:
    return reason if flag is None else ("**yes**" if flag else "no")


def _diff_cell(d: MeanDiff) -> str:
    if not math.isfinite(d.delta):
        return "n/a"
    return f"{d.delta:+.4f} ± {d.se:.4f}" if d.has_se else f"{d.delta:+.4f}"


def _delta_table(rows: list[DeltaRow]) -> list[str]:
    lines = [
        "## Variant minus plain (AUC, per scenario)",
        "",
        "ΔAUC = difference of seed means ± its standard error (Welch: sqrt(s²_plain/n_plain + "
        "s²_variant/n_variant), seeds are not paired); `spread` = the larger of the two seed stds. "
        "`worse by > 1 std`: the variant's mean is below plain's by more than the spread (the "
        '"never worse" criterion fails); `beats by > 2 SE`: ΔAUC > 2 SE. `plain − baseline`: how '
        "far the plain backbone is above the trivial baseline.",
        "",
        "| dataset | backbone | variant | scenario | AUC plain | AUC variant | ΔAUC ± SE | spread | "
        "worse by > 1 std | beats by > 2 SE | plain − baseline |",
        "|" + " --- |" * 11,
    ]
    for d in rows:
        gap = (
            f"{d.plain[0] - d.baseline:+.4f}" if d.baseline is not None and math.isfinite(d.baseline) else "–"
        )
        spread = f"{d.diff.spread:.4f}" if d.diff.has_se else "–"
        lines.append(
            f"| {d.dataset} | {d.backbone} | {d.variant} | {d.scenario} | {_fmt(d.plain)} | {_fmt(d.other)} | "
            f"{_diff_cell(d.diff)} | {spread} | {_yes_no(d.diff.worse_by_spread())} | "
            f"{_yes_no(d.diff.beats_by_se())} | {gap} |"
        )
    return lines


@dataclass(frozen=True)
class Verdict:
    """The issue's two criteria for one (dataset, backbone, variant)."""

    dataset: str
    backbone: str
    variant: str
    worse_scenarios: list[str] | None  # scenarios (or "overall") below plain by > 1 std; None: < 2 seeds
    overall: MeanDiff | None
    beats_overall: bool | None


def verdicts(rows: list[DeltaRow]) -> list[Verdict]:
    groups: dict[tuple[str, str, str], list[DeltaRow]] = {}
    for d in rows:
        groups.setdefault((d.dataset, d.backbone, d.variant), []).append(d)
    out = []
    for (ds, bb, var), rs in groups.items():
        flags = [d.diff.worse_by_spread() for d in rs]  # every scenario and overall
        worse = None if None in flags else [d.scenario for d, f in zip(rs, flags, strict=True) if f]
        overall = next((d.diff for d in rs if d.scenario == "overall"), None)
        out.append(Verdict(ds, bb, var, worse, overall, overall.beats_by_se() if overall else None))
    return out


def _verdict_table(rows: list[DeltaRow]) -> list[str]:
    lines = [
        "## Verdict per backbone",
        "",
        "`never worse`: in no scenario (nor overall) is the variant below plain by more than one seed "
        "std; otherwise the rows where it is are listed. "
        "`beats plain overall`: overall ΔAUC > 2 SE. Both need at least 2 seeds per variant.",
        "",
        "| dataset | backbone | variant | never worse | overall ΔAUC ± SE | beats plain overall by > 2 SE |",
        "|" + " --- |" * 6,
    ]
    for v in verdicts(rows):
        if v.worse_scenarios is None:
            never = "n/a (< 2 seeds)"
        else:
            never = "**yes**" if not v.worse_scenarios else f"no ({', '.join(v.worse_scenarios)})"
        overall = _diff_cell(v.overall) if v.overall else "–"
        lines.append(
            f"| {v.dataset} | {v.backbone} | {v.variant} | {never} | {overall} | {_yes_no(v.beats_overall)} |"
        )
    return lines


# ---------------------------------------------------------------------------------------- slices


@dataclass(frozen=True)
class SliceRow:
    """AUC on one slice for one (dataset, backbone, variant) against plain, over seeds."""

    dataset: str
    backbone: str
    variant: str
    family: str
    name: str
    rows: int
    baseline: float | None
    plain: MeanStd | None
    other: MeanStd | None
    diff: MeanDiff | None


@dataclass(frozen=True)
class SliceReport:
    rows: list[SliceRow]
    skipped: list[str]  # why some runs have no slices (dataset folder gone or rebuilt, no dump)


SliceCells = dict[tuple[str, str], tuple[int, MeanStd]]  # (family, name) -> (rows, AUC over seeds)


def _aggregate_slices(per_run: list[list[SliceAuc]]) -> SliceCells:
    """Mean ± std over seeds of each slice's AUC (seeds where it is NaN are left out)."""
    by_cell: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], int] = {}
    for aucs in per_run:
        for s in aucs:
            by_cell.setdefault((s.family, s.name), []).append(s.auc)
            rows.setdefault((s.family, s.name), s.rows)  # the same test rows in every run
    return {cell: (rows[cell], mean_std(values)) for cell, values in by_cell.items()}


def slice_report(runs: list[Run]) -> SliceReport:
    """Slice AUCs of every run (its predictions.parquet + its dataset's train split), aggregated
    over seeds and paired with plain like the ΔAUC table."""
    trains: dict[tuple[str, str], pl.DataFrame] = {}
    per_key: dict[tuple[str, str, str], list[list[SliceAuc]]] = {}
    skipped = []
    for r in runs:
        ds = r.info["dataset"]
        where = (str(ds["path"]), str(ds["version"]))
        try:
            if where not in trains:
                trains[where] = train_rows(ds["path"], ds["version"])
            per_key.setdefault(r.key, []).append(run_slice_aucs(r.path, trains[where]))
        except (OSError, ValueError) as exc:  # DataError is a ValueError
            skipped.append(f"{r.path}: {exc}")
            log.warning("slices skipped for %s: %s", r.path, exc)
    cells = {key: _aggregate_slices(v) for key, v in per_key.items()}
    baseline_of = {k[0]: k for k in cells if k[2] == BASELINE_VARIANT}
    has_partner = {(k[0], k[1]) for k in cells if k[2] not in (PLAIN, BASELINE_VARIANT)}
    rows = []
    for key in sorted(cells, key=_group_order):
        ds_name, backbone, variant = key
        if variant == BASELINE_VARIANT or (variant == PLAIN and (ds_name, backbone) in has_partner):
            continue  # the baseline is a column; plain is paired with its variants
        plain = cells.get((ds_name, backbone, PLAIN), {})
        other = cells[key] if variant != PLAIN else {}
        base = cells[baseline_of[ds_name]] if ds_name in baseline_of else {}
        for cell, (n, _) in cells[key].items():
            p, o, b = (part[cell][1] if cell in part else None for part in (plain, other, base))
            rows.append(
                SliceRow(
                    dataset=ds_name,
                    backbone=backbone,
                    variant=variant,
                    family=cell[0],
                    name=cell[1],
                    rows=n,
                    baseline=b[0] if b is not None and b[2] else None,
                    plain=p,
                    other=o,
                    diff=mean_diff(p, o) if p is not None and o is not None else None,
                )
            )
    return SliceReport(rows, skipped)


def _slice_name(family: str, name: str) -> str:
    if family == HISTORY:
        return f"history {name}"
    kind = {"0": "no train rows", "1": "single-scenario user", "2+": "multi-scenario user"}.get(name, "")
    return f"{name} scenario{'' if name == '1' else 's'} ({kind})" if kind else f"{name} scenarios"


def _auc_cell(ms: MeanStd | None) -> str:
    if ms is None:
        return "–"
    return "n/a" if ms[2] == 0 else _fmt(ms)


def _slice_table(report: SliceReport) -> list[str]:
    lines = [
        "## Slices where knowledge should matter (AUC, test rows)",
        "",
        "`history N`: the user's train interactions in the row's scenario (0 = cold start there). "
        "`K scenarios`: how many scenarios the user has train interactions in (2+ = multi-scenario "
        "user, whose other scenarios the user-level knowledge describes). Mean ± std over seeds; "
        "Δ = variant − plain ± Welch SE; n/a: the slice has one class (or no rows).",
        "",
        "| dataset | backbone | variant | slice | n rows | AUC baseline | AUC plain | AUC variant | Δ ± SE |",
        "|" + " --- |" * 9,
    ]
    for s in report.rows:
        base = f"{s.baseline:.4f}" if s.baseline is not None else "n/a"
        lines.append(
            f"| {s.dataset} | {s.backbone} | {s.variant} | {_slice_name(s.family, s.name)} | {s.rows:,} | "
            f"{base} | {_auc_cell(s.plain)} | {_auc_cell(s.other)} | "
            f"{_diff_cell(s.diff) if s.diff else '–'} |"
        )
    if report.skipped:
        lines += ["", "Slices skipped for some runs:", "", *(f"- {why}" for why in report.skipped)]
    return lines


# ------------------------------------------------------------------------------------------ plot


def plot(summary: list[dict[str, Any]], title: str | None = None) -> bytes:
    """ΔAUC (variant − plain) per backbone and scenario (+ overall) with Welch SE bars and a zero
    line, one panel per dataset: what the benchmark exists for. Without any variant/plain pair,
    the per-scenario AUC bars instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = deltas(summary)
    if not rows:
        return _auc_plot(summary, title)
    datasets = sorted({d.dataset for d in rows})
    n_bars = max(len({(d.backbone, d.variant) for d in rows if d.dataset == ds}) for ds in datasets)
    n_scens = max(len({d.scenario for d in rows if d.dataset == ds}) for ds in datasets)
    width_in = max(9.0, 0.3 * n_bars * n_scens + 3)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(width_in, 4.2 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets, strict=True):
        here = [d for d in rows if d.dataset == ds]
        series = list(dict.fromkeys((d.backbone, d.variant) for d in here))
        scens = list(dict.fromkeys(d.scenario for d in here if d.scenario != "overall")) + ["overall"]
        width = 0.8 / max(1, len(series))
        x = np.arange(len(scens), dtype=float)
        any_se = False
        # one colour per backbone, one hatch per variant: a backbone's variants sit side by side
        backbones = list(dict.fromkeys(bb for bb, _ in series))
        variant_order = list(dict.fromkeys(var for _, var in series))
        colours = plt.get_cmap("tab10")
        for i, (bb, var) in enumerate(series):
            by_scen = {d.scenario: d.diff for d in here if (d.backbone, d.variant) == (bb, var)}
            means = np.array([by_scen[s].delta if s in by_scen else np.nan for s in scens])
            ses = np.array([by_scen[s].se if s in by_scen and by_scen[s].has_se else np.nan for s in scens])
            label = bb if len(variant_order) == 1 else f"{bb} {var}"
            has_se = bool(np.isfinite(ses).any())
            any_se |= has_se
            v = variant_order.index(var)
            ax.bar(
                x + i * width - 0.4 + width / 2,
                means,
                width,
                yerr=np.where(np.isfinite(ses), ses, 0.0) if has_se else None,
                capsize=2,
                label=label,
                color=colours(backbones.index(bb) % 10),
                alpha=1.0 if v == 0 else 0.55,
                hatch=(None, "//", "..", "xx")[v % 4],
                edgecolor="white" if v else None,
            )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.axvline(len(scens) - 1.5, color="grey", linewidth=0.6, linestyle=":")  # scenarios | overall
        ax.set_xticks(x, scens)
        variants = sorted({d.variant for d in here})
        ax.set_ylabel(f"ΔAUC ({' / '.join(variants)} − plain)")
        note = "bars: ± SE over seeds (Welch)" if any_se else "1 seed: no SE"
        ax.set_title(f"{ds}: test ΔAUC per scenario; {note}", fontsize=10)
        ax.grid(axis="y", linewidth=0.3)
        ax.legend(fontsize=7, ncol=min(3, len(series)), loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _auc_plot(summary: list[dict[str, Any]], title: str | None = None) -> bytes:
    """Per-scenario AUC bars (one panel per dataset, one bar per backbone × variant) with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = sorted({g["dataset"] for g in summary})
    fig, axes = plt.subplots(
        1, max(1, len(datasets)), figsize=(max(6, 5 * len(datasets)), 4.5), squeeze=False
    )
    for ax, ds in zip(axes[0], datasets, strict=True):
        groups = [g for g in summary if g["dataset"] == ds]
        scens = sorted({s for g in groups for s in g["metrics"]["per_scenario"]})
        width = 0.8 / max(1, len(groups))
        x = np.arange(len(scens))
        lows = []
        for i, g in enumerate(groups):
            vals = [g["metrics"]["per_scenario"].get(s, {}).get("auc", (np.nan, 0, 0)) for s in scens]
            means = np.array([v[0] for v in vals])
            stds = np.array([v[1] for v in vals])
            lows.append(np.nanmin(means - stds) if np.isfinite(means).any() else 0.5)
            hatch = "" if g["variant"] == PLAIN else "//"
            ax.bar(
                x + i * width - 0.4 + width / 2,
                means,
                width,
                yerr=stds,
                capsize=2,
                hatch=hatch,
                label=f"{g['backbone']} {g['variant']}",
            )
        ax.set_xticks(x, scens, rotation=20)
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.set_title(ds)
        ax.set_ylim(max(0.0, min(lows) - 0.02), None)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def write_report(
    runs: list[Run], out: str | Path, title: str = "LLM4MSR training report"
) -> tuple[Path, Path]:
    out = Path(out)
    summary = summarize(runs)
    md_path, png_path = out / "report.md", out / "auc_per_scenario.png"
    write_bytes_atomic(png_path, plot(summary))
    text = markdown(summary, title, slices=slice_report(runs))
    write_text_atomic(md_path, text + f"\n![ΔAUC per scenario]({png_path.name})\n")
    return md_path, png_path
