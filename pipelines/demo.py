"""The main job end to end on the embedded defaults (`make demo`).

Build the default dataset -> nightly knowledge flow (vLLM on CPU with the shipped MiniLM) ->
materialize to the embedded online store -> train STAR + LLM4MSR -> export to ONNX (parity
gated) -> register -> load the registered model in the serving runtime and score a few requests
-> print per-scenario metrics, stage times and where everything was written.

Everything goes under one work folder, so a demo never touches the production paths.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from llm4msr.config import Settings, load_config
from llm4msr.secrets import redact

log = logging.getLogger(__name__)


def demo_overrides(workdir: Path) -> list[str]:
    """Point every artifact path of the default config into `workdir`."""
    w = workdir.resolve()
    return [
        f"data.out={w / 'data'}",
        f"knowledge.snapshot_root={w / 'knowledge'}",
        f"store.url={w / 'online_store'}",
        f"train.runs_dir={w / 'runs'}",
        f"export.models_dir={w / 'models'}",
        f"pipelines.work_dir={w / 'pipelines'}",
        f"pipelines.results_dir={w / 'pipelines' / 'prefect-results'}",
        f"pipelines.registry_dir={w / 'models' / 'registry'}",
    ]


def _score_requests(settings: Settings, model_dir: Path, n_requests: int = 3) -> list[dict[str, Any]]:
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
                candidates = list(dict.fromkeys(req["item_id"] + items[:9]))
                t0 = time.perf_counter()
                scores = ranker.score(req["user_id"], req["scenario_id"], candidates)
                ms = (time.perf_counter() - t0) * 1000
                best = sorted(zip(candidates, scores.tolist(), strict=True), key=lambda x: -x[1])[:3]
                out.append(
                    {
                        "user_id": req["user_id"],
                        "scenario_id": req["scenario_id"],
                        "candidates": len(candidates),
                        "latency_ms": round(ms, 2),
                        "top3": best,
                    }
                )
        finally:
            ranker.close()
    return out


def _print_metrics(run_dir: Path) -> None:
    """Test-split metrics of the run. gAUC is '-' where every user has one held-out row (one class)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = metrics.get("final") or {}
    per = final.get("per_scenario", {})
    print(f"{'scenario':<14}{'AUC':>8}{'gAUC':>8}{'Logloss':>9}{'Recall@10':>11}{'NDCG@10':>9}")
    rows = list(per.items()) + ([("overall", final["overall"])] if "overall" in final else [])
    for name, m in rows:

        def f(key: str, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return f"{v:.4f}" if isinstance(v, int | float) and v == v else "-"

        print(f"{name:<14}{f('auc'):>8}{f('gauc'):>8}{f('logloss'):>9}{f('recall@10'):>11}{f('ndcg@10'):>9}")


def trained_run_dir(report: dict) -> Path | None:
    """The run folder a train-flow report trained (nested under `run`), if it has its metrics."""
    run_dir = (report.get("run") or {}).get("run_dir")
    path = Path(run_dir) if run_dir else None
    return path if path is not None and (path / "metrics.json").is_file() else None


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
    stages["nightly_knowledge_flow"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train_flow(config=config, overrides=all_overrides)
    stages["train_flow"] = time.perf_counter() - t0

    registry = ModelRegistry(settings.pipelines.registry_dir)
    model_dir = registry.current_path()
    if model_dir is None:
        print("no model was registered; see the train flow report above")
        return 1
    t0 = time.perf_counter()
    scored = _score_requests(settings, model_dir)
    stages["serve_requests"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start

    print(f"\n== LLM4MSR demo finished in {total:.1f}s")
    print("stage times (s):")
    for flow_name, rep in (("nightly_knowledge", know), ("train", trained)):
        for stage, secs in (rep.get("timings") or {}).items():
            print(f"  {flow_name}.{stage:<20} {secs:8.1f}")
    for stage, secs in stages.items():
        print(f"  {stage:<38} {secs:8.1f}")
    print(
        "knowledge: "
        + ", ".join(
            f"{k} {know[k]}" for k in ("status", "snapshot_id", "n_encoded", "n_carried") if k in know
        )
    )
    run_dir = trained_run_dir(trained)
    if run_dir is not None:
        use_llm = json.loads((run_dir / "run.json").read_text()).get("use_llm")
        print(f"\nper-scenario test metrics ({settings.train.backbone}{' + LLM4MSR' if use_llm else ''}):")
        _print_metrics(run_dir)
    print("\nserving runtime (ONNX + embedded online store), a few test requests:")
    for r in scored:
        print(
            f"  user={r['user_id']} scenario={r['scenario_id']} candidates={r['candidates']} "
            f"latency={r['latency_ms']}ms top3={[(i, round(s, 3)) for i, s in r['top3']]}"
        )
    print("\nwritten:")
    for label, path in (
        ("dataset", settings.data.out),
        ("knowledge snapshots", settings.knowledge.snapshot_root),
        ("online store", redact(settings.store.url)),
        ("training runs", settings.train.runs_dir),
        ("registered model", model_dir),
        ("flow reports", settings.pipelines.work_dir),
    ):
        print(f"  {label:<20} {path}")
    summary = {
        "seconds_total": round(total, 1),
        "stages": {k: round(v, 1) for k, v in stages.items()},
        "knowledge": know.get("timings"),
        "train": trained.get("timings"),
        "requests": scored,
    }
    (workdir / "demo_report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0
