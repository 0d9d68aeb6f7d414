"""Cached task results are plain JSON data, and nothing in the results folder is ever unpickled.

Prefect's own cache deserializes a stored record with the serializer the record names, so a record
planted in the results folder that names `pickle` runs code even for a task whose serializer is
JSON (the control below shows it). The flows therefore persist nothing through Prefect and cache
their results as JSON files themselves (`pipelines.flows.common.cached_result`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines.flows.common import (
    MISSING,
    InvalidCachedResult,
    read_cached_result,
    result_key,
    write_cached_result,
)
from tests.pipelines.conftest import assert_json_only, write_flow_config


class _TouchOnLoad:
    """Unpickling this creates `marker`: stands for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def raw_pickle(marker: Path) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(_TouchOnLoad(marker))


def prefect_pickle_record(marker: Path) -> bytes:
    """A Prefect result record (the JSON layout Prefect writes) whose metadata names the pickle serializer."""
    record = {
        "metadata": {
            "storage_key": "planted",
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None},
            "prefect_version": "3.7.7",
            "storage_block_id": None,
        },
        "result": base64.encodebytes(raw_pickle(marker)).decode(),
    }
    return json.dumps(record).encode()


def test_reader_only_accepts_its_own_json_records(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    key = {"dataset_digest": "abc", "train_digest": "def"}
    path = tmp_path / f"{result_key('train-ranker', key)}.json"
    assert read_cached_result(path, "train-ranker", key) is MISSING

    write_cached_result(path, "train-ranker", key, {"run_dir": "/runs/a", "weights_sha256": "00ff"})
    assert read_cached_result(path, "train-ranker", key) == {"run_dir": "/runs/a", "weights_sha256": "00ff"}
    with pytest.raises(InvalidCachedResult, match="another key"):
        read_cached_result(path, "train-ranker", {**key, "train_digest": "other"})
    with pytest.raises(InvalidCachedResult, match="another key"):
        read_cached_result(path, "export-model", key)

    for planted, why in (
        (raw_pickle(marker), "not a JSON document"),
        (prefect_pickle_record(marker), "not an llm4msr task result"),
        (b'{"format": "llm4msr-task-result/1"}', "not an llm4msr task result"),
    ):
        path.write_bytes(planted)
        with pytest.raises(InvalidCachedResult, match=why):
            read_cached_result(path, "train-ranker", key)
    assert not marker.exists()

    with pytest.raises(TypeError, match="not plain JSON data.*paths, ids, hashes and numbers"):
        write_cached_result(path, "train-ranker", key, {"model": object()})


def test_train_flow_results_are_json_and_a_planted_pickle_never_runs(
    nightly_run: dict, tiny_data_dir: Path, tmp_path: Path
) -> None:
    from prefect._internal.result_records import ResultRecord
    from prefect.settings import get_current_settings

    from pipelines.flows.train import train_flow

    shutil.copytree(nightly_run["root"] / "knowledge", tmp_path / "knowledge")
    cfg = write_flow_config(tmp_path, tiny_data_dir)
    results = tmp_path / "pipelines" / "results"
    prefect_storage = Path(get_current_settings().results.local_storage_path)
    before = set(prefect_storage.rglob("*")) if prefect_storage.exists() else set()

    first = train_flow(config=str(cfg))
    files = assert_json_only(results)
    assert files == sorted(p for p in results.rglob("*") if p.is_file())  # nothing but cached results
    names = {re.fullmatch(r"llm4msr-(.+)-[0-9a-f]{16}\.json", p.name) for p in files}
    assert {m.group(1) for m in names if m} == {"train-ranker", "export-model"} and None not in names
    after = set(prefect_storage.rglob("*")) if prefect_storage.exists() else set()
    ours = [p for p in after - before if p.is_file() and str(tmp_path) in p.read_text(errors="ignore")]
    assert ours == []  # Prefect itself persisted no result of this run anywhere

    # Unchanged inputs: the cached run is reused, not trained again.
    again = train_flow(config=str(cfg))
    assert again.run.run_dir == first.run.run_dir

    # Plant a Prefect record naming the pickle serializer at the train task's cached result, and at
    # the key path Prefect's own cache would read for it. Control: Prefect's reader runs it.
    marker = tmp_path / "PWNED"
    planted = prefect_pickle_record(marker)
    ResultRecord.deserialize(planted)
    assert marker.exists(), "the planted record must be live for this test to mean anything"
    marker.unlink()
    (train_file,) = [p for p in files if "-train-ranker-" in p.name]
    train_file.write_bytes(planted)
    (results / train_file.stem).write_bytes(planted)

    third = train_flow(config=str(cfg))
    assert not marker.exists()
    assert third.run.run_dir != first.run.run_dir  # the planted result was ignored: trained again
    assert (
        read_cached_result(train_file, "train-ranker", json.loads(train_file.read_text())["key"])
        == third.run.to_dict()
    )
    (results / train_file.stem).unlink()  # the planted copy nobody reads
    assert_json_only(results)
