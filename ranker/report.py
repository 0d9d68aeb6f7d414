"""Compare training runs: per-scenario metrics, mean ± std over seeds, backbone vs +LLM4MSR.

Runs are grouped by (dataset version, backbone, variant); every run in a group is one seed.
Output: a Markdown table and a PNG plot (per-scenario AUC with error bars).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm4msr.atomic import write_bytes_atomic, write_text_atomic
from ranker.metrics import aggregate, mean_std
from ranker.model_io import METRICS_FILE, RUN_FILE

PLAIN = "plain"
LLM = "+LLM4MSR"


@dataclass
class Run:
    path: Path
    info: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def variant(self) -> str:
        return variant_name(self.info)

    @property
    def key(self) -> tuple[str, str, str]:
        ds = self.info["dataset"]
        name = (ds.get("source") or {}).get("dataset") or Path(ds["path"]).name
        return (f"{name} ({ds['version'][:8]})", self.info["backbone"], self.variant)


def variant_name(info: dict[str, Any]) -> str:
    """plain, +LLM4MSR, or the ablation (e.g. '+LLM4MSR (scenario level only)', '+knowledge concat')."""
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
            raise FileNotFoundError(f"run directory {p} does not exist")
        candidates = [p, *p.glob("*"), *p.glob("*/*")]
        for c in candidates:
            if (c / METRICS_FILE).is_file() and (c / RUN_FILE).is_file() and not c.name.startswith("."):
                found[c.resolve()] = Run(
                    c, json.loads((c / RUN_FILE).read_text()), json.loads((c / METRICS_FILE).read_text())
                )
    return [found[k] for k in sorted(found)]


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One entry per (dataset, backbone, variant): aggregated metrics, seeds, time per epoch, params."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2] != PLAIN, k[2])):
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
            }
        )
    return out


def _fmt(ms: tuple[float, float, int], digits: int = 4) -> str:
    mean, std, n = ms
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown(summary: list[dict[str, Any]], title: str) -> str:
    if not summary:
        return f"# {title}\n\n(no runs)\n"
    k = summary[0]["metrics"]["k"]
    keys = ("auc", "gauc", "logloss", f"recall@{k}", f"ndcg@{k}")
    lines = [
        f"# {title}",
        "",
        "Mean ± sample std over seeds (one run per seed). Metrics on the test split; "
        f"Recall@{k}/NDCG@{k} rank each user's held-out positives among sampled negatives of the same "
        "scenario.",
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
    deltas = _deltas(summary)
    if deltas:
        lines += [
            "",
            "## +LLM4MSR minus plain (AUC, per scenario)",
            "",
            "Difference of seed means; `spread` = the larger of the two seed stds.",
            "",
            "| dataset | backbone | variant | scenario | ΔAUC | spread |",
            "|" + " --- |" * 6,
        ]
        lines += [
            f"| {d['dataset']} | {d['backbone']} | {d['variant']} | {d['scenario']} | {d['delta']:+.4f} | "
            f"{d['spread']:.4f} |"
            for d in deltas
        ]
    return "\n".join(lines) + "\n"


def _deltas(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    plain = {(g["dataset"], g["backbone"]): g for g in summary if g["variant"] == PLAIN}
    out = []
    for g in summary:
        base = plain.get((g["dataset"], g["backbone"]))
        if g["variant"] == PLAIN or base is None:
            continue
        for scen, vals in [*g["metrics"]["per_scenario"].items(), ("overall", g["metrics"]["overall"])]:
            b = base["metrics"]["overall"] if scen == "overall" else base["metrics"]["per_scenario"].get(scen)
            if not b:
                continue
            out.append(
                {
                    "dataset": g["dataset"],
                    "backbone": g["backbone"],
                    "variant": g["variant"],
                    "scenario": scen,
                    "delta": vals["auc"][0] - b["auc"][0],
                    "spread": max(vals["auc"][1], b["auc"][1]),
                }
            )
    return out


def plot(summary: list[dict[str, Any]]) -> bytes:
    """Per-scenario AUC bars (one panel per dataset, one bar per backbone × variant) with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = sorted({g["dataset"] for g in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6, 5 * len(datasets)), 4.5), squeeze=False)
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(
    runs: list[Run], out: str | Path, title: str = "LLM4MSR training report"
) -> tuple[Path, Path]:
    out = Path(out)
    summary = summarize(runs)
    md_path, png_path = out / "report.md", out / "auc_per_scenario.png"
    write_bytes_atomic(png_path, plot(summary))
    write_text_atomic(md_path, markdown(summary, title) + f"\n![per-scenario AUC]({png_path.name})\n")
    return md_path, png_path
