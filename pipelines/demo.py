"""The main job end to end on the embedded defaults (`make demo`).

Build the default dataset -> nightly knowledge flow (vLLM on CPU with the shipped MiniLM) ->
materialize to the embedded online store -> train STAR plain and + LLM4MSR (train.select=auto:
the registry gets the variant validation keeps) -> export to ONNX (parity gated) -> register ->
load the registered model in the serving runtime and score a few requests -> print a short
summary: per-scenario test metrics of both variants, what was written where, sample requests.

Everything goes under one work folder, so a demo never touches the production paths.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm4msr.atomic import write_json_atomic
from llm4msr.config import Settings, load_config
from llm4msr.secrets import redact
from pipelines.flows.results import KnowledgeFlowResult, TrainFlowResult, timings_text, to_json

log = logging.getLogger(__name__)

PLAIN_LABEL, LLM_LABEL = "plain", "+LLM4MSR"
METRICS = (("AUC", "auc"), ("gAUC", "gauc"), ("NDCG@10", "ndcg@10"))


def demo_overrides(workdir: Path) -> list[str]:
    """Point every artifact path of the default config into `workdir`; train both variants."""
    from pipelines.api import workdir_overrides

    return [*workdir_overrides(workdir), "train.select=auto"]


@dataclass
class ScoredRequest:
    """One request scored through the serving runtime (the demo's proof that serving works)."""

    user_id: str
    scenario_id: str
    item_ids: list[str]
    latency_ms: float
    top3: list[tuple[str, float]]


@dataclass
class DemoSummary:
    """What the demo prints at the end and writes as demo_report.json."""

    seconds_total: float
    knowledge: KnowledgeFlowResult
    train: TrainFlowResult
    model_dir: str | None
    settings: Settings
    requests: list[ScoredRequest] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)


def _score_requests(settings: Settings, model_dir: Path, n_requests: int = 3) -> list[ScoredRequest]:
    """Score a few real test-split requests through the serving runtime (ONNX + online store)."""
    import polars as pl

    from feature_store.dataset import load_dataset
    from feature_store.online import open_store
    from ranker.serving.runtime import Ranker

    ds = load_dataset(settings.data.out)
    test = ds.interactions.filter(pl.col("split") == "test")
    requests = (
        test.group_by("user_id", "scenario_id", maintain_order=True)
        .agg(pl.col("item_id"))
        .head(n_requests)
        .to_dicts()
    )
    items = ds.items["item_id"].to_list()
    out = []
    with open_store(settings.store.url, settings.store) as store:
        ranker = Ranker(model_dir, store, settings.serve)
        try:
            for req in requests:
                # The user's held-out items plus 9 other catalogue items as candidates.
                candidates = [str(i) for i in dict.fromkeys(req["item_id"] + items[:9])]
                t0 = time.perf_counter()
                scores = ranker.score(req["user_id"], req["scenario_id"], candidates)
                ms = (time.perf_counter() - t0) * 1000
                best = sorted(zip(candidates, scores.tolist(), strict=True), key=lambda x: -x[1])[:3]
                out.append(
                    ScoredRequest(
                        str(req["user_id"]),
                        str(req["scenario_id"]),
                        candidates,
                        round(ms, 2),
                        [(i, round(s, 3)) for i, s in best],
                    )
                )
        finally:
            ranker.close()
    return out


def trained_run_dir(report: TrainFlowResult) -> Path | None:
    """The run folder the train flow trained (and registered), if it has its metrics."""
    path = Path(report.run.run_dir)
    return path if (path / "metrics.json").is_file() else None


def variant_metrics(report: TrainFlowResult) -> dict[str, dict[str, Any]]:
    """Final test metrics by variant label: both variants when the flow selected between them
    (train.select=auto writes both run folders side by side), else the one it trained."""
    run_dir = trained_run_dir(report)
    if run_dir is None:
        return {}
    from ranker.selection import LLM, PLAIN

    if report.run.selection and run_dir.name in (PLAIN, LLM):
        runs = {PLAIN_LABEL: run_dir.parent / PLAIN, LLM_LABEL: run_dir.parent / LLM}
    else:
        use_llm = json.loads((run_dir / "run.json").read_text()).get("use_llm")
        runs = {LLM_LABEL if use_llm else PLAIN_LABEL: run_dir}
    out = {}
    for label, path in runs.items():
        metrics_file = path / "metrics.json"
        if metrics_file.is_file():
            out[label] = json.loads(metrics_file.read_text()).get("final") or {}
    return out


def _num(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, int | float) and v == v else "-"


def metrics_table(variants: dict[str, dict[str, Any]]) -> list[str]:
    """Aligned per-scenario table: each metric for each variant, and the AUC change when there are two.

    gAUC is '-' where every user has one held-out row (one class per user); a metric that is '-'
    everywhere gets no column."""
    labels = list(variants)
    two = len(labels) == 2
    scenarios: list[str] = []
    for final in variants.values():
        scenarios += [s for s in (final.get("per_scenario") or {}) if s not in scenarios]
    rows: list[tuple[str, dict[str, dict[str, Any]]]] = [
        (s, {lab: (variants[lab].get("per_scenario") or {}).get(s, {}) for lab in labels}) for s in scenarios
    ]
    if any("overall" in f for f in variants.values()):
        rows.append(("overall", {lab: variants[lab].get("overall") or {} for lab in labels}))
    # a metric no row has (gAUC with one held-out row per user) is left out rather than shown as '-'
    present = [
        (m, key) for m, key in METRICS if any(_num(r[lab].get(key)) != "-" for _, r in rows for lab in labels)
    ]
    cols = [(f"{m} {lab}" if len(labels) > 1 else m, key, lab) for m, key in present for lab in labels]
    width = max([len("scenario"), *(len(name) for name, _ in rows)]) + 2
    header = f"{'scenario':<{width}}" + "".join(f"{name:>{max(len(name), 6) + 2}}" for name, _, _ in cols)
    if two:
        header += f"{'ΔAUC':>9}"
    lines = [header]
    for name, by_label in rows:
        line = f"{name:<{width}}" + "".join(
            f"{_num(by_label[lab].get(key)):>{max(len(c), 6) + 2}}" for c, key, lab in cols
        )
        if two:
            a, b = (by_label[lab].get("auc") for lab in labels)
            line += f"{_num(b - a, '+.4f') if isinstance(a, float) and isinstance(b, float) else '-':>9}"
        lines.append(line)
    return lines


def curl_line(req: ScoredRequest, host: str, port: int, n_items: int = 5) -> str:
    """A copy-pasteable request to `llm4msr serve` for one of the scored users."""
    body = json.dumps(
        {"user_id": req.user_id, "scenario_id": req.scenario_id, "item_ids": req.item_ids[:n_items]}
    )
    return f"curl -s -X POST http://{host}:{port}/score -H 'content-type: application/json' -d {shlex.quote(body)}"


def summary_lines(s: DemoSummary) -> list[str]:
    """The demo's closing summary (what a person reads): metrics, what was written where, requests."""
    know, train = s.knowledge, s.train
    cfg = s.settings
    lines = [f"== LLM4MSR demo finished in {s.seconds_total:.1f}s"]
    # the flows' stage times, printed once here rather than as one log line per stage
    lines += [
        f"  {name:<16}seconds {timings_text(timings)}"
        for name, timings in (("knowledge flow", know.timings), ("train flow", train.timings))
        if timings
    ]
    lines.append("")
    variants = variant_metrics(train)
    backbone = cfg.train.backbone
    if variants:
        lines.append(f"test metrics per scenario ({backbone}; {' vs '.join(variants)}):")
        lines += ["  " + line for line in metrics_table(variants)]
        if train.run.selection:
            lines.append(f"  kept: {train.run.selection.get('reason') or train.run.selection.get('keep')}")
        lines.append("")
    registry = (
        f"registered {train.registry.model_id}"
        if train.registered
        else f"current stays {train.registry.current_model_id}: {train.reason}"
    )
    store = know.materialize
    written = [
        ("dataset", f"{know.dataset.path}  ({know.dataset.digest})"),
        (
            "knowledge snapshot",
            f"{know.snapshot.path}  ({know.status}: {know.plan.n_encode} encoded, {know.plan.n_carry} carried)",
        ),
        (
            "online store",
            f"{redact(cfg.store.url)}  (version {store.version if store else '-'})",
        ),
        ("training run", train.run.run_dir),
        ("registry", f"{cfg.pipelines.registry_dir}  ({registry})"),
        ("knowledge report", str(know.report_path)),
        ("train report", str(train.report_path)),
    ]
    width = max(len(k) for k, _ in written) + 2
    lines.append("written:")
    lines += [f"  {k:<{width}}{v}" for k, v in written]
    if s.requests:
        lines += ["", "serving runtime (ONNX + online store), test requests:"]
        for r in s.requests:
            top = ", ".join(f"{i} {sc:.3f}" for i, sc in r.top3)
            lines.append(
                f"  user {r.user_id} scenario {r.scenario_id}: {len(r.item_ids)} candidates in "
                f"{r.latency_ms:.1f} ms, top 3: {top}"
            )
        if s.model_dir:
            lines += [
                "",
                "serve it:",
                f"  llm4msr serve --model {s.model_dir} --store {redact(cfg.store.url)}",
                "  " + curl_line(s.requests[0], cfg.serve.host, cfg.serve.port),
            ]
    return lines


def demo_report(s: DemoSummary) -> dict[str, Any]:
    """demo_report.json: times, where the two flow reports are, the model and the scored requests."""
    return {
        "seconds_total": s.seconds_total,
        "stages": s.stages,
        "knowledge": {"timings": s.knowledge.timings, "report": s.knowledge.report_path},
        "train": {"timings": s.train.timings, "report": s.train.report_path},
        "model_dir": s.model_dir,
        "requests": to_json(s.requests),
    }


def run_demo(config: str | None, overrides: list[str], workdir: str | Path) -> int:
    from pipelines.flows.knowledge import nightly_knowledge
    from pipelines.flows.registry import ModelRegistry
    from pipelines.flows.train import train_flow

    workdir = Path(workdir)
    all_overrides = demo_overrides(workdir) + list(overrides)
    settings = load_config(config, all_overrides)
    t_start = time.perf_counter()
    stages: dict[str, float] = {}

    t0 = time.perf_counter()
    know = nightly_knowledge(config=config, overrides=all_overrides)
    stages["knowledge flow"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    trained = train_flow(config=config, overrides=all_overrides)
    stages["train flow"] = round(time.perf_counter() - t0, 1)

    model_dir = ModelRegistry(settings.pipelines.registry_dir).current_path()
    scored: list[ScoredRequest] = []
    if model_dir is not None:
        t0 = time.perf_counter()
        scored = _score_requests(settings, model_dir)
        stages["serve requests"] = round(time.perf_counter() - t0, 1)
    summary = DemoSummary(
        seconds_total=round(time.perf_counter() - t_start, 1),
        knowledge=know,
        train=trained,
        model_dir=str(model_dir) if model_dir else None,
        settings=settings,
        requests=scored,
        stages=stages,
    )
    print("\n" + "\n".join(summary_lines(summary)))
    write_json_atomic(workdir / "demo_report.json", demo_report(summary))
    if model_dir is None:
        print("\nno model was registered; see the train flow report", trained.report_path)
        return 1
    return 0
