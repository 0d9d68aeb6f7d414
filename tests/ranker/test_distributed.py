"""Distributed data-parallel training (ranker.distributed): shards, synchronised statistics, and
torchrun runs with 2 gloo processes compared with one process (docs/ranker.md, "Distributed training")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from safetensors.numpy import load_file

from llm4msr.atomic import sha256_file, write_json_atomic
from llm4msr.config import ExportConfig
from ranker.distributed import (
    DistributedError,
    DistributedReplicas,
    read_train_shard,
    shard_bounds,
    train_distributed,
)
from ranker.layers import PartitionedNorm
from tests.ranker.conftest import fast_settings
from tests.ranker.helpers import FAST_TRAIN, make_dataset, make_snapshot

REPO = Path(__file__).resolve().parents[2]
# Measured on this 2-core machine (docs/ranker.md): <= 3e-7 after 150 steps; the bound leaves margin
# for other float reduction orders, not for different math.
PARAM_TOL = 1e-5
SCORE_TOL = 1e-5


def _rewrite_row_groups(data: Path, rows_per_group: int) -> None:
    """Rewrite interactions.parquet in small row groups (the tiny builder writes one) and keep the
    manifest's sha256 (the dataset id) consistent with it."""
    path = data / "interactions.parquet"
    pl.read_parquet(path).write_parquet(
        path, row_group_size=rows_per_group, compression="zstd", statistics=True
    )
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"]["interactions.parquet"]["sha256"] = sha256_file(path)
    write_json_atomic(data / "manifest.json", manifest)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """120 users x 24 rows in 6 row groups of 500, and a 16-dim snapshot of it."""
    root = tmp_path_factory.mktemp("dist")
    data, _ = make_dataset(root / "data", n_users=120, per_user=24)
    _rewrite_row_groups(data, 500)
    assert pq.ParquetFile(data / "interactions.parquet").metadata.num_row_groups == 6
    return data, make_snapshot(root / "store", data, dim=16)


def test_shard_bounds_cover_the_file_on_row_group_boundaries() -> None:
    groups = [500, 500, 500, 500, 500, 380]
    for world in (1, 2, 3, 4, 6):
        bounds = shard_bounds(groups, world)
        assert bounds[0][0] == 0 and bounds[-1][1] == sum(groups)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:], strict=False))
        edges = set(np.cumsum([0, *groups]).tolist())
        assert all(lo in edges and hi in edges for lo, hi in bounds)
    assert shard_bounds(groups, 2) == [(0, 1500), (1500, 2880)]
    # fewer row groups than ranks: even row ranges inside the groups
    assert shard_bounds([10], 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds([6, 1], 3) == [(0, 2), (2, 4), (4, 7)]


def test_shards_together_are_the_train_split(grouped: tuple[Path, Path], tiny_data: Path) -> None:
    for data in (grouped[0], tiny_data):  # 6 row groups; 1 row group (ranks split it)
        path = data / "interactions.parquet"
        expected = (
            pl.read_parquet(path)
            .filter(pl.col("split") == "train")
            .select("user_id", "item_id", "scenario_id", "label")
        )
        md = pq.ParquetFile(path).metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        for world in (2, 3):
            parts = [read_train_shard(path, lo, hi) for lo, hi in shard_bounds(sizes, world)]
            assert all(p.height > 0 for p in parts)
            assert pl.concat(parts).equals(expected)


def test_synchronised_partitioned_norm_is_the_layer(tmp_path: Path) -> None:
    """The rank-summed STAR statistics mirror ranker/layers.py: with one rank, outputs, gradients
    and running statistics equal the layer's own forward."""
    # vLLM, loaded earlier in the same pytest process, may already hold a 1-process default group.
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    assert dist.get_world_size() == 1
    try:
        torch.manual_seed(0)
        ref = PartitionedNorm(3, 5)
        with torch.no_grad():
            ref.gamma_s.normal_()
            ref.beta_s.normal_()
        synced = PartitionedNorm(3, 5)
        synced.load_state_dict(ref.state_dict())
        DistributedReplicas(0, 1, torch.device("cpu"), "gloo").prepare(synced)
        x, s, w = torch.randn(12, 5), torch.tensor([0, 1, 1, 2] * 3), torch.randn(12, 5)
        for mode in ("train", "eval"):
            outs = []
            for m in (ref, synced):
                m.train(mode == "train")
                xi = x.clone().requires_grad_(True)
                out = m(xi, s)
                (out * w).sum().backward()
                outs.append((out.detach(), xi.grad))
            torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
        for (name, p), q in zip(ref.named_parameters(), synced.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(ref.running_var, synced.running_var, rtol=0, atol=1e-7)
    finally:
        if created:
            dist.destroy_process_group()


def test_outside_torchrun_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        train_distributed(fast_settings(), tmp_path, None, tmp_path / "run")


# ---------------------------------------------------------------- torchrun (2 gloo processes)
# knowledge dropout draws its masks per rank (docs/ranker.md, Distributed training), so the parity
# tests train without it
SETTINGS = [
    *FAST_TRAIN,
    "train.backbone=shared_bottom",
    "train.epochs=2",
    "train.batch_size=64",
    "train.meta.knowledge_dropout=0",
]


def _torchrun(args: list[str], **kw: object) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "pipelines.cli", "train", "--distributed", *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw
    )


def _run_args(data: Path, knowledge: Path, out: Path, sets: list[str]) -> list[str]:
    return ["--data", str(data), "--knowledge", str(knowledge), "--out", str(out)] + [
        a for s in sets for a in ("--set", s)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["train.meta.mask_described=true"]], ids=["default", "mask"])
def test_two_processes_train_the_one_process_model(
    grouped: tuple[Path, Path], tmp_path: Path, extra: list[str]
) -> None:
    from ranker.export import export_run
    from ranker.train import train

    data, knowledge = grouped
    single = tmp_path / "single"
    sets = [*SETTINGS, *extra]
    train(fast_settings(*sets[len(FAST_TRAIN) :]), data, knowledge, single)
    proc = _torchrun(_run_args(data, knowledge, tmp_path / "dist", sets))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    dist_run = tmp_path / "dist"

    assert {p.name for p in dist_run.iterdir()} == {p.name for p in single.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    for rel in ("model.safetensors", "checkpoints/epoch_002.safetensors"):
        a, b = load_file(str(single / rel)), load_file(str(dist_run / rel))
        assert a.keys() == b.keys()
        diff = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a if a[k].size)
        assert diff <= PARAM_TOL, f"{rel}: max |param diff| {diff:.2e}"
    pa, pb = (
        pl.read_parquet(single / "predictions.parquet"),
        pl.read_parquet(dist_run / "predictions.parquet"),
    )
    assert pa.drop("score").equals(pb.drop("score"))  # same test rows and sampled candidates
    assert float((pa["score"] - pb["score"]).abs().max()) <= SCORE_TOL
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (single, dist_run))
    assert mb["best_epoch"] == ma["best_epoch"]
    for ea, eb in zip(ma["epochs"], mb["epochs"], strict=True):
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], abs=1e-6)
        assert eb["valid_auc"] == pytest.approx(ea["valid_auc"], abs=1e-4)
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (single, dist_run))
    assert rb["rows"] == ra["rows"] and rb["parameters"] == ra["parameters"]
    assert rb["fallback"] == ra["fallback"] and rb["dataset"] == ra["dataset"]
    assert ("masked_train_rows" in ra["fallback"]) == bool(extra)  # each rank masked its own rows
    if extra:
        assert 0 < ra["fallback"]["masked_train_rows"] < 1
    assert rb["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    # only rank 0 logs: one line for the run
    assert output.count(" best epoch ") == 1, output
    # the run exports like a single-process run
    report = export_run(dist_run, tmp_path / "model", ExportConfig(exporter="legacy"))
    assert (tmp_path / "model" / "model.onnx").is_file() and report is not None


def _worker_pids(agent: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun's agent (our child) started."""
    out: dict[int, int] = {}
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0][5:])] = int(child)
    return out


@pytest.mark.slow
def test_a_failed_rank_stops_the_job(grouped: tuple[Path, Path], tmp_path: Path) -> None:
    data, knowledge = grouped
    out = tmp_path / "run"
    sets = [*FAST_TRAIN, "train.epochs=500", "train.patience=500", "train.batch_size=64"]
    proc = _torchrun(_run_args(data, knowledge, out, sets))
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob(".run.*/checkpoints/epoch_*.safetensors")):  # training has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.5)
        os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "ChildFailedError" in output and "Signal 9 (SIGKILL)" in output, output
    assert not out.exists() and not list(tmp_path.glob(".run.*"))  # nothing published, temp removed

    # an error on one rank before training: every rank stops, naming it
    out.mkdir()
    proc = _torchrun(_run_args(data, knowledge, out, sets))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "already exists" in output and "rank 0/2 failed while loading the dataset" in output, output


def test_shard_masks_together_are_the_one_process_mask(grouped: tuple[Path, Path]) -> None:
    """train.meta.mask_described: each rank masks its own rows exactly as one process masks all."""
    from ranker.knowledge import load_knowledge
    from ranker.train import described_train_mask

    data, knowledge = grouped
    kt = load_knowledge(knowledge)
    path = data / "interactions.parquet"
    users = pl.read_parquet(data / "users.parquet")
    full = described_train_mask(pl.scan_parquet(path), users, kt)
    assert 0 < full.mean() < 1 and full.size == read_train_shard(path, 0, 10**9).height
    md = pq.ParquetFile(path).metadata
    bounds = shard_bounds([md.row_group(i).num_rows for i in range(md.num_row_groups)], 3)
    parts = [described_train_mask(pl.scan_parquet(path), users, kt, b) for b in bounds]
    assert [p.size for p in parts] == [read_train_shard(path, *b).height for b in bounds]
    assert np.array_equal(np.concatenate(parts), full)
