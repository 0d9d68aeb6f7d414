"""Flow-test setup: one temporary Prefect API for the whole session, and a tiny pipeline config.

The data here is smaller than the shared `small_dataset_dir` (40 users) so that every LLM
encoding in these tests takes seconds on a shared 2-core machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

TINY_DATA = {
    "dataset": "synthetic",
    "seed": 0,
    "synthetic": {
        "n_users": 40,
        "n_items": 30,
        "n_interactions": 1000,
        "n_categories": 4,
        "taste_strength": 6.0,
    },
}


@pytest.fixture(scope="session")
def prefect_api() -> object:
    """Prefect's test harness: a temporary API + SQLite database, started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from feature_store.build import build_and_write
    from llm4msr.config import DataConfig

    return build_and_write(
        DataConfig.model_validate(TINY_DATA), tmp_path_factory.mktemp("tiny-data") / "data"
    )


def write_flow_config(root: Path, data_dir: Path, **sections: dict) -> Path:
    """A config that keeps every artifact of a flow run under `root` (pipelines share nothing)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg: dict = {
        "data": {**TINY_DATA, "out": str(data_dir)},
        "knowledge": {
            "backend": "transformers",
            "num_shards": 3,
            "max_prompt_tokens": 160,
            "snapshot_root": str(root / "knowledge"),
        },
        "store": {"url": str(root / "online")},
        "train": {"epochs": 1, "batch_size": 256, "hidden_dims": [32], "runs_dir": str(root / "runs")},
        "export": {"parity_batch_sizes": [1, 2, 7], "variant_eval_rows": 200},
        "pipelines": {
            "work_dir": str(root / "pipelines"),
            "results_dir": str(root / "pipelines" / "results"),
            "registry_dir": str(root / "registry"),
            "task_retries": 0,
            "task_retry_delay_seconds": 0,
            "build_data_if_missing": False,
        },
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def nightly_run(prefect_api: object, tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted, sequential nightly run (transformers backend); later tests compare against it."""
    from pipelines.flows.knowledge import nightly_knowledge

    root = tmp_path_factory.mktemp("nightly")
    cfg = write_flow_config(root, tiny_data_dir)
    report = nightly_knowledge(config=str(cfg))
    return {"root": root, "config": cfg, "report": report}


def snapshot_vectors(path: str | Path) -> dict[tuple[str, str], object]:
    """(kind, entity id) -> float32 vector of a snapshot folder."""
    from feature_store.knowledge_snapshot import load_snapshot

    snap = load_snapshot(path)
    out = {}
    for kind in ("scenario", "user"):
        ids, vecs = snap.vectors_of(kind)
        out.update({(kind, i): v for i, v in zip(ids, vecs, strict=True)})
    return out
