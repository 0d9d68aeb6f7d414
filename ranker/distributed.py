"""Data-parallel training over torch.distributed processes (gloo on CPU, NCCL on GPU).

Launched by torchrun, one process per rank (docs/ranker.md, "Distributed training"):

    torchrun --nproc-per-node 2 -m pipelines.cli train --distributed --data DIR --knowledge K --out RUN

The math is the single-process run's: every rank draws the same seeded permutation of all training
rows, so step t has the same global batch of B rows. Each rank holds a contiguous block of the
training rows, read from `interactions.parquet` in row groups (it never loads the other ranks'
rows), and computes the loss of the batch rows it holds as `sum(loss) / B`; summing the gradients
over ranks (one all-reduce per step) gives the gradient of the single-process batch mean, up to
float summation order. Shares of a batch are uneven (and may be empty), which is why gradients are
all-reduced here rather than by DistributedDataParallel (which averages equal-weight replicas and
needs every rank to run a forward). Only rank 0 evaluates, writes the run directory (the same
layout, through `ranker.train.train_and_write`) and logs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from feature_store import schema
from feature_store.dataset import CanonicalDataset, DataError, version_of
from llm4msr.config import Settings
from ranker.features import FeatureSpec, build_spec
from ranker.knowledge import KnowledgeTables
from ranker.layers import PartitionedNorm
from ranker.model import RankerModel
from ranker.train import (
    Encoded,
    EvalInputs,
    KnowledgeInputs,
    Replicas,
    RunResult,
    _check_knowledge,
    candidates_from,
    described_train_mask,
    encode,
    mask_knowledge,
    train_and_write,
)

log = logging.getLogger(__name__)

ROWS_COLUMNS = ["user_id", "item_id", "scenario_id", "label", "split"]
READ_BATCH = 65_536  # rows per Arrow batch while reading a shard (bounds the read buffer)


class DistributedError(RuntimeError):
    """A rank failed before training could start; every rank raises it with the failing rank named."""


def shard_bounds(row_group_rows: list[int], world_size: int) -> list[tuple[int, int]]:
    """File row ranges [lo, hi) per rank, contiguous and covering the file.

    With at least as many row groups as ranks the cuts fall on row-group boundaries (each rank
    reads whole row groups), balanced by rows; otherwise rows are split evenly and ranks share a
    row group (each reads it and keeps its slice)."""
    total = int(sum(row_group_rows))
    if len(row_group_rows) < world_size:
        return [(k * total // world_size, (k + 1) * total // world_size) for k in range(world_size)]
    ends = np.cumsum(row_group_rows)  # row-group end rows
    cuts = [0]
    for k in range(1, world_size):
        # the group boundary nearest k/W of the rows, leaving at least one group per remaining rank
        lo_g = cuts[-1] + 1
        hi_g = len(row_group_rows) - (world_size - k)
        g = int(np.clip(np.abs(ends - k * total / world_size).argmin() + 1, lo_g, hi_g))
        cuts.append(g)
    cuts.append(len(row_group_rows))
    starts = np.concatenate([[0], ends])
    return [(int(starts[cuts[k]]), int(starts[cuts[k + 1]])) for k in range(world_size)]


def read_train_shard(path: str | Path, lo: int, hi: int) -> pl.DataFrame:
    """The `split == "train"` rows among file rows [lo, hi) of an interactions Parquet file, in file
    order (user_id, item_id, scenario_id, label). Reads only the row groups overlapping the range,
    batch by batch, keeping the train rows of each batch."""
    pf = pq.ParquetFile(path)
    md = pf.metadata
    starts = np.concatenate([[0], np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])])
    groups = [i for i in range(md.num_row_groups) if starts[i + 1] > lo and starts[i] < hi]
    parts: list[pl.DataFrame] = []
    pos = int(starts[groups[0]]) if groups else lo
    for batch in pf.iter_batches(batch_size=READ_BATCH, row_groups=groups, columns=ROWS_COLUMNS):
        a, b = max(lo, pos), min(hi, pos + batch.num_rows)
        if b > a:
            frame = pl.from_arrow(batch.slice(a - pos, b - a))
            assert isinstance(frame, pl.DataFrame)
            parts.append(frame.filter(pl.col("split") == "train").drop("split"))
        pos += batch.num_rows
    if not parts:
        return pl.DataFrame(schema={c: schema.INTERACTIONS_SCHEMA[c] for c in ROWS_COLUMNS[:-1]})
    return pl.concat(parts)


class ShardRows:
    """This rank's block of training rows: global train rows [offset, offset + len(enc))."""

    def __init__(self, enc: Encoded, kin: KnowledgeInputs, offset: int, total: int, device: torch.device):
        self.enc, self.kin, self.offset, self.total, self.device = enc, kin, offset, total, device

    def __len__(self) -> int:
        return self.total

    def loss(self, model: RankerModel, idx: torch.Tensor) -> torch.Tensor:
        """sum of this rank's rows' losses / B: summed over ranks, the batch mean of one process."""
        mine = idx[(idx >= self.offset) & (idx < self.offset + len(self.enc))] - self.offset
        # An empty share still runs the forward: synchronised batch statistics are collectives.
        batch = self.kin.batch(self.enc, mine)
        labels = self.enc.labels[mine]
        if self.device.type != "cpu":
            batch = {k: v.to(self.device) for k, v in batch.items()}
            labels = labels.to(self.device)
        logits = model.logit(**batch)
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / idx.numel()


class DistributedReplicas(Replicas):
    """torch.distributed collectives for `ranker.train._fit` (one all-reduce per step)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, backend: str):
        self.rank, self.world_size, self.device, self.backend = rank, world_size, device, backend

    def prepare(self, model: nn.Module) -> None:
        """Batch statistics over the global batch: every `PartitionedNorm` (STAR) sums its
        per-scenario statistics over ranks, as one process computes them over the whole batch."""
        for m in model.modules():
            if isinstance(m, PartitionedNorm):
                m.forward = types.MethodType(_synced_partitioned_norm, m)  # type: ignore[method-assign]

    def reduce_gradients(self, model: nn.Module) -> None:
        """Sum gradients over ranks in one flat buffer, with one has-gradient flag per parameter: a
        parameter no rank touched keeps grad None, as in one process (Adam then skips it)."""
        params = [p for p in model.parameters() if p.requires_grad]
        sizes = [p.numel() for p in params]
        n = sum(sizes)
        flat = torch.zeros(n + len(params), device=self.device)  # fresh: the grads become views of it
        o = 0
        for i, (p, k) in enumerate(zip(params, sizes, strict=True)):
            if p.grad is not None:
                flat[o : o + k].copy_(p.grad.reshape(-1))
                flat[n + i] = 1.0
            o += k
        dist.all_reduce(flat)
        touched = flat[n:].tolist()
        o = 0
        for p, k, t in zip(params, sizes, touched, strict=True):
            p.grad = flat[o : o + k].view_as(p) if t > 0 else None
            o += k

    def end_epoch(self, model: nn.Module, loss_sum: float) -> float:
        """Run-wide loss sum. Buffers need no sync: running statistics come from synchronised batch
        statistics (`prepare`), so they are the same on every rank."""
        t = torch.tensor([loss_sum], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def from_main(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return [float(v) for v in t.tolist()]

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "device": self.device.type}

    def sum_ints(self, values: list[int]) -> list[int]:
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def agree(self, error: BaseException | None, what: str) -> None:
        """Collective check after a phase: if any rank failed, every rank raises naming it (so the
        job stops with that rank's message, not with a collective timeout)."""
        errors: list[Any] = [None] * self.world_size
        dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            if error is not None:
                raise error
            r, e = failed[0]
            raise DistributedError(f"rank {r}/{self.world_size} failed while {what}: {e}")


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks with its gradient: each rank's input feeds every rank's output, so the
    backward sums the output gradients over ranks too."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _synced_partitioned_norm(self: PartitionedNorm, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
    """`PartitionedNorm.forward` with the training statistics' sums and counts all-reduced over the
    ranks (with autograd: the backward all-reduces their gradients), so mean, variance, running
    statistics and gradients are those of the global batch. Evaluation is the layer's own forward.
    The math mirrors ranker/layers.py; tests/ranker/test_distributed.py checks they agree."""
    if not self.training:
        return PartitionedNorm.forward(self, x, scenario)
    onehot = F.one_hot(scenario, self.n_scenarios).to(x.dtype)  # [b, S]
    count = onehot.sum(0)
    dist.all_reduce(count)
    denom = count.clamp(min=1.0).unsqueeze(1)
    mean_s = _SumOverRanks.apply(onehot.t() @ x) / denom
    centred = x - mean_s.index_select(0, scenario)
    var_s = _SumOverRanks.apply(onehot.t() @ centred.pow(2)) / denom
    with torch.no_grad():
        seen = (count > 0).unsqueeze(1)
        m = self.momentum
        self.running_mean.copy_(
            torch.where(seen, (1 - m) * self.running_mean + m * mean_s, self.running_mean)
        )
        self.running_var.copy_(torch.where(seen, (1 - m) * self.running_var + m * var_s, self.running_var))
    normed = centred / torch.sqrt(var_s.index_select(0, scenario) + self.eps)
    gamma = self.gamma * self.gamma_s.index_select(0, scenario)
    beta = self.beta + self.beta_s.index_select(0, scenario)
    return normed * gamma + beta


def _terminated(signum: int, frame: Any) -> None:
    raise DistributedError(
        f"rank {os.environ.get('RANK', '?')}: stopped by signal {signum} (another rank failed or the job was stopped)"
    )


def init_from_env(backend: str | None = None) -> DistributedReplicas:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
    NCCL with one GPU per local rank when CUDA is available, else gloo on CPU."""
    missing = [
        v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ
    ]
    if missing:
        raise DistributedError(
            f"--distributed needs torchrun's environment ({', '.join(missing)} unset); launch with "
            "`torchrun --nproc-per-node N -m pipelines.cli train --distributed ...`"
        )
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    # torchrun stops the other workers with SIGTERM when one fails: raise, so that the temporary
    # run directory is removed on the way out (Python's default SIGTERM exits without cleanup).
    signal.signal(signal.SIGTERM, _terminated)
    if rank != 0:  # only rank 0 logs; other ranks still report errors
        logging.disable(logging.WARNING)
    return DistributedReplicas(rank, world, device, backend)


def _read_tables(data_dir: Path) -> CanonicalDataset:
    """Users, items, scenarios, vocabs and manifest; interactions left empty (read in shards)."""
    manifest_path = data_dir / schema.MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{data_dir} is not a canonical dataset: {schema.MANIFEST_FILE} is missing")
    tables = {
        t: pl.read_parquet(data_dir / fname) for t, (fname, _) in schema.TABLES.items() if t != "interactions"
    }
    vocab_path = data_dir / schema.VOCABS_FILE
    return CanonicalDataset(
        interactions=pl.DataFrame(schema=schema.INTERACTIONS_SCHEMA),
        **tables,
        vocabs=json.loads(vocab_path.read_text()) if vocab_path.is_file() else None,
        manifest=json.loads(manifest_path.read_text()),
    )


def _spec_on_main(ds: CanonicalDataset, scan: pl.LazyFrame, dim: int) -> FeatureSpec:
    """`build_spec` without the training rows: it only needs the distinct (scenario, user) and
    (scenario, item) pairs of the training split, so it gets a frame of those (user pairs, then
    item pairs, nulls elsewhere), which fits vocabularies and finds scenario-constant features
    exactly as the rows would."""
    train = scan.filter(pl.col("split") == "train")
    null = pl.lit(None, dtype=pl.String)
    users = train.select("scenario_id", "user_id").unique().sort("scenario_id", "user_id").collect()
    items = train.select("scenario_id", "item_id").unique().sort("scenario_id", "item_id").collect()
    ids = pl.concat(
        [
            users.with_columns(null.alias("item_id")).select("user_id", "item_id", "scenario_id"),
            items.with_columns(null.alias("user_id")).select("user_id", "item_id", "scenario_id"),
        ]
    ).with_columns(pl.lit("train").alias("split"))
    view = CanonicalDataset(
        interactions=ids, users=ds.users, items=ds.items, scenarios=ds.scenarios, vocabs=ds.vocabs
    )
    return build_spec(view, dim)


def _eval_inputs(
    settings: Settings,
    ds: CanonicalDataset,
    data_dir: Path,
    scan: pl.LazyFrame,
    spec: FeatureSpec,
    kt: KnowledgeTables | None,
    kcheck: dict[str, Any],
) -> EvalInputs:
    """Rank 0's valid/test rows and candidates, read from a Parquet scan (no training rows)."""
    splits = {
        s: scan.filter(pl.col("split") == s).select("user_id", "item_id", "scenario_id", "label").collect()
        for s in ("valid", "test")
    }
    for name, frame in splits.items():
        if frame.height == 0:
            raise DataError(f"{data_dir}/interactions.parquet: no rows with split == {name!r}")
    if kt is not None:  # every scenario in the data must have a vector
        scen = scan.select("scenario_id").unique().collect().with_columns(user_id=pl.lit(""))
        kt.lookup(scen, f"{data_dir}/interactions.parquet")
    enc = {name: encode(frame, ds, spec, kt, f"{data_dir}/{name}") for name, frame in splits.items()}
    cands = candidates_from(scan, settings.eval)
    return EvalInputs(
        ds=ds,
        data_dir=data_dir,
        kt=kt,
        kcheck=kcheck,
        splits=splits,
        enc=enc,
        cands=cands,
        enc_cand=encode(cands, ds, spec, kt, f"{data_dir}/sampled candidates"),
        rows={},
        fallback=None,
    )


def _fallback(
    ev: EvalInputs, kt: KnowledgeTables, scan: pl.LazyFrame, train_no_knowledge: int, n_train: int
) -> dict[str, Any]:
    """`ranker.train._fallback_rates` for a sharded run: train rows counted over ranks."""
    # float32 like the single-process share (a mean of float32 flags)
    rows = {"train": float(torch.tensor(train_no_knowledge, dtype=torch.float32) / n_train)}
    rows |= {s: float((e.uidx == 0).to(torch.float32).mean()) if len(e) else 0.0 for s, e in ev.enc.items()}
    users = scan.select("user_id").unique().collect()
    uidx, _ = kt.lookup(users.with_columns(scenario_id=pl.lit(next(iter(kt.scenario_index)))), "users")
    return {"rows": rows, "users": float(1.0 - np.mean(uidx > 0)), "n_users": users.height}


def train_distributed(
    settings: Settings,
    data_dir: str | Path,
    knowledge: str | Path | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    replicas: DistributedReplicas | None = None,
) -> RunResult | None:
    """`ranker.train.train` over the torch.distributed ranks: RunResult on rank 0, None elsewhere.

    The data and knowledge folders must be readable by every rank (shared storage across nodes);
    the run directory is written by rank 0 only."""
    rep = replicas or init_from_env()
    try:
        return _train(rep, settings, Path(data_dir), knowledge, Path(out), overwrite)
    finally:
        if replicas is None:
            dist.destroy_process_group()


def _train(
    rep: DistributedReplicas,
    settings: Settings,
    data_dir: Path,
    knowledge: str | Path | None,
    out: Path,
    overwrite: bool,
) -> RunResult | None:
    cfg = settings.train
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    path = data_dir / schema.INTERACTIONS_FILE
    ds = kt = spec_dict = ev = scan = None
    kcheck: dict[str, Any] = {}
    error: BaseException | None = None
    try:  # every rank: tables and knowledge; rank 0: spec and evaluation rows
        if rep.is_main and out.exists() and not overwrite:
            raise FileExistsError(f"run directory {out} already exists (use another --out or --overwrite)")
        ds = _read_tables(data_dir)
        if not path.is_file():
            raise DataError(f"{data_dir} is not a canonical dataset: {schema.INTERACTIONS_FILE} is missing")
        kt, kcheck = _check_knowledge(settings, data_dir, knowledge, version_of(ds.manifest))
        if rep.is_main:
            scan = pl.scan_parquet(path)
            spec = _spec_on_main(ds, scan, kt.dimension if kt else 0)
            spec_dict = spec.to_dict()
            ev = _eval_inputs(settings, ds, data_dir, scan, spec, kt, kcheck)
    except Exception as exc:  # noqa: BLE001 - reported to every rank by agree()
        error = exc
    rep.agree(error, "loading the dataset and knowledge")
    box = [spec_dict]
    dist.broadcast_object_list(box, src=0)
    spec = FeatureSpec.from_dict(box[0])
    assert ds is not None

    try:  # every rank: its block of training rows
        md = pq.ParquetFile(path).metadata
        lo, hi = shard_bounds([md.row_group(i).num_rows for i in range(md.num_row_groups)], rep.world_size)[
            rep.rank
        ]
        frame = read_train_shard(path, lo, hi)
        enc = encode(frame, ds, spec, kt, f"{path} rows {lo}:{hi}")
        no_knowledge = int((enc.uidx == 0).sum())  # before masking: users without knowledge
        masked = 0
        if kt is not None and cfg.use_llm and cfg.meta.mask_described:
            mask = described_train_mask(pl.scan_parquet(path), ds.users, kt, (lo, hi))
            mask_knowledge(enc, mask)
            masked = int(mask.sum())
        error = None
    except Exception as exc:  # noqa: BLE001
        error = exc
    rep.agree(error, "reading its training rows")
    counts = [0] * rep.world_size
    counts[rep.rank] = len(enc)
    *counts, no_knowledge, masked = rep.sum_ints([*counts, no_knowledge, masked])
    n_train = sum(counts)
    if n_train == 0:
        raise DataError(f"{path}: no rows with split == 'train'")
    kin = KnowledgeInputs(kt)
    rows = ShardRows(enc, kin, offset=sum(counts[: rep.rank]), total=n_train, device=rep.device)
    if ev is not None:
        ev.rows = {"train": n_train, **{s: len(e) for s, e in ev.enc.items()}}
        ev.fallback = _fallback(ev, kt, scan, no_knowledge, n_train) if kt is not None else None
        if ev.fallback is not None and cfg.use_llm and cfg.meta.mask_described:
            ev.fallback["masked_train_rows"] = masked / n_train
    log.info(
        "distributed training: %d ranks (%s), %d training rows, per rank %s",
        rep.world_size,
        rep.backend,
        n_train,
        counts,
    )
    result = train_and_write(settings, spec, kin, rows, ev, out, overwrite, t_start, rep)
    dist.barrier()  # the job ends when rank 0 has published the run directory
    return result
