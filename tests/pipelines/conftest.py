"""Flow-test setup: one temporary Prefect API for the whole session, and a tiny pipeline config.

The data here is smaller than the shared `small_dataset_dir` (40 users) so that every LLM
encoding in these tests takes seconds on a shared 2-core machine.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

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


_PICKLE_HEADERS = [b"\x80" + bytes([protocol]) for protocol in range(2, 6)]


def holds_pickle(value: Any) -> bool:
    """True if a JSON value carries a pickle anywhere: a string that is one, or its base64 (Prefect's way)."""
    if isinstance(value, dict):
        return any(holds_pickle(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_pickle(v) for v in value)
    if isinstance(value, str) and len(value) >= 16:
        try:
            blob = base64.b64decode(value.replace("\n", ""), validate=True)
        except (binascii.Error, ValueError):
            blob = b""
        return value.encode("latin-1", "ignore")[:2] in _PICKLE_HEADERS or blob[:2] in _PICKLE_HEADERS
    return False


def assert_json_only(folder: Path) -> list[Path]:
    """Every file under `folder` is JSON data with no pickle in it: a cached task result
    (`cached_result`) or a Prefect record written with the JSON serializer (a failure's exception).
    Returns the cached task results."""
    from pipelines.flows.common import RESULT_FORMAT

    cached = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        assert raw[:2] not in _PICKLE_HEADERS, f"{path} is a pickle"
        record = json.loads(raw.decode("utf-8"))
        assert not holds_pickle(record), f"{path} carries a pickle"
        if record.get("format") == RESULT_FORMAT:
            cached.append(path)
        else:
            assert record["metadata"]["serializer"]["type"] == "json", path
            json.loads(record["result"])
    return cached
