"""Training: one multi-scenario ranker (any backbone, with or without LLM4MSR) -> a run directory.

Run directory (contract 4), built in a temporary sibling folder and renamed when complete:

    config.yaml          resolved settings (train.lr = the learning rate kept by a sweep; `data` = the
                         dataset's own build config from its manifest, not this run's defaults)
    feature_spec.json    ranker.features.FeatureSpec
    model.safetensors    best-epoch weights (validation AUC)
    checkpoints/         epoch_NNN.safetensors of the latest epoch (resume/debug)
    run.json             dataset + knowledge versions (the snapshot's dataset id, `foreign` when it is
                         not the data's), seed, timings, parameter counts, fallback rate
    metrics.json         per-epoch history (+ every sweep LR) and final per-scenario test metrics
    predictions.parquet  test rows + sampled top-K negatives: user_id, item_id, scenario_id, label,
                         score, source ("test" | "sampled")
    valid_predictions.parquet  validation rows scored by the kept model (ranker.selection)

One training loop (`_fit`) serves one process (the reference: `LocalRows`, `Replicas`) and
torchrun ranks (`ranker.distributed`: each rank's share of a batch, gradients summed over ranks).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from torch import nn

from feature_store.build import recorded_data_config
from feature_store.dataset import CanonicalDataset, DataError, load_dataset
from feature_store.knowledge_snapshot import SnapshotError, check_dataset
from llm4msr.atomic import atomic_directory, write_json_atomic, write_text_atomic
from llm4msr.config import ConfigError, EvalConfig, Settings
from llm4msr.errors import OutputExistsError
from llm4msr.progress import Throttle, progress
from llm4msr.provenance import provenance
from ranker import metrics as M
from ranker.features import SPEC_FILE, FeatureSpec, build_spec
from ranker.knowledge import KnowledgeTables, load_knowledge
from ranker.model import RankerModel, build_model, count_parameters, meta_parameters
from ranker.model_io import (
    CONFIG_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUN_FILE,
    VALID_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    run_config_text,
    save_weights,
)
from ranker.selection import paired_auc_delta, z_score

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    lr: float
    best_epoch: int
    best_valid_auc: float
    metrics: dict[str, Any]
    run_info: dict[str, Any] = field(default_factory=dict)


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class Encoded:
    """One split (or candidate set) as tensors; knowledge by index into shared tables."""

    frame: pl.DataFrame  # user_id, item_id, scenario_id, label (+ source)
    ids: torch.Tensor  # int64 [N, F]
    labels: torch.Tensor  # float32 [N]
    uidx: torch.Tensor  # int64 [N], 0 = no user knowledge
    sidx: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return self.ids.shape[0]


class KnowledgeInputs:
    """Turns per-row indices into the model's knowledge inputs (zeros [B, 1] without knowledge)."""

    def __init__(self, kt: KnowledgeTables | None):
        if kt is None:
            self.users = torch.zeros(1, 1)
            self.scenarios = torch.zeros(1, 1)
        else:
            self.users = torch.from_numpy(kt.user_vectors)
            self.scenarios = torch.from_numpy(kt.scenario_vectors)

    def batch(self, enc: Encoded, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        u = enc.uidx[idx]
        return {
            "sparse_ids": enc.ids[idx],
            "user_knowledge": self.users.index_select(0, u),
            "user_has_knowledge": (u > 0).to(torch.float32),
            "scenario_knowledge": self.scenarios.index_select(0, enc.sidx[idx]),
        }


def encode(
    frame: pl.DataFrame, ds: CanonicalDataset, spec: FeatureSpec, kt: KnowledgeTables | None, source: str
) -> Encoded:
    ids = spec.encode_rows(frame, ds.users, ds.items)
    if kt is not None:
        uidx, sidx = kt.lookup(frame, source)
    else:
        uidx = sidx = np.zeros(frame.height, dtype=np.int64)
    return Encoded(
        frame=frame,
        ids=torch.from_numpy(ids),
        labels=torch.from_numpy(frame["label"].cast(pl.Float32).to_numpy().copy()),
        uidx=torch.from_numpy(np.array(uidx, dtype=np.int64)),
        sidx=torch.from_numpy(np.array(sidx, dtype=np.int64)),
    )


def sample_candidates(ds: CanonicalDataset, cfg: EvalConfig) -> pl.DataFrame:
    """Sampled negatives for top-K: per (user, scenario) with test positives, N items of the same
    scenario the user never interacted with positively (all such items if n_negatives is None). Seeded."""
    return candidates_from(ds.interactions.lazy(), cfg)


def candidates_from(inter: pl.LazyFrame, cfg: EvalConfig) -> pl.DataFrame:
    """`sample_candidates` from a (lazy) interactions table. It collects only the (scenario, item)
    pairs, the test-positive (user, scenario) groups and those groups' positives, so a distributed
    run's main process can sample from a Parquet scan without holding the training rows."""
    rng = np.random.default_rng(cfg.seed)
    pairs = inter.select("scenario_id", "item_id").unique().collect()
    pools = {s: np.array(sorted(part["item_id"].to_list())) for (s,), part in pairs.group_by(["scenario_id"])}
    groups = (
        inter.filter((pl.col("split") == "test") & (pl.col("label") == 1))
        .select("user_id", "scenario_id")
        .unique()
        .sort("user_id", "scenario_id")
        .collect()
    )
    positives = (
        inter.filter(pl.col("label") == 1)
        .join(groups.lazy(), on=["user_id", "scenario_id"], how="semi")
        .group_by(["user_id", "scenario_id"])
        .agg(pl.col("item_id").unique().alias("pos"))
        .collect()
    )
    pos_map = {(r["user_id"], r["scenario_id"]): set(r["pos"]) for r in positives.iter_rows(named=True)}
    users, items, scens = [], [], []
    for u, s in groups.iter_rows():
        pool = pools[s]
        seen = pos_map.get((u, s), set())
        if cfg.n_negatives is None or cfg.n_negatives >= pool.size:
            chosen = [i for i in pool if i not in seen]
        else:
            chosen = []
            picked: set[str] = set()
            for _ in range(10):
                cand = pool[rng.choice(pool.size, size=min(pool.size, cfg.n_negatives * 2), replace=False)]
                for i in cand:
                    if i not in seen and i not in picked:
                        picked.add(i)
                        chosen.append(i)
                        if len(chosen) == cfg.n_negatives:
                            break
                if len(chosen) == cfg.n_negatives:
                    break
        users += [u] * len(chosen)
        items += list(chosen)
        scens += [s] * len(chosen)
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "scenario_id": scens, "label": [0] * len(users)},
        schema={"user_id": pl.String, "item_id": pl.String, "scenario_id": pl.String, "label": pl.Int8},
    )


@torch.no_grad()
def predict(
    model: RankerModel,
    enc: Encoded,
    kin: KnowledgeInputs,
    batch_size: int = 8192,
    device: torch.device | None = None,
) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(enc), batch_size):
        batch = kin.batch(enc, slice(i, i + batch_size))
        if device is not None and device.type != "cpu":
            batch = {k: v.to(device) for k, v in batch.items()}
        out.append(model(**batch).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _scheduler(opt: torch.optim.Optimizer, kind: str, epochs: int, steps: int):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps * max(1, epochs // 3)), gamma=0.3)
    return None


class TrainRows(Protocol):
    """The training rows a process holds; step batches are indices into all rows of the run."""

    def __len__(self) -> int:
        """Training rows of the whole run (all processes), which sizes the epoch permutation."""
        ...

    def loss(self, model: RankerModel, idx: torch.Tensor) -> torch.Tensor | None:
        """A loss whose gradient is this process's part of the batch-mean loss gradient of `idx`
        (None: no row of `idx` is here)."""
        ...


@dataclass
class LocalRows:
    """All training rows in this process: the single-process (reference) path."""

    enc: Encoded
    kin: KnowledgeInputs
    loss_fn: nn.Module = field(default_factory=nn.BCEWithLogitsLoss)

    def __len__(self) -> int:
        return len(self.enc)

    def loss(self, model: RankerModel, idx: torch.Tensor) -> torch.Tensor | None:
        return self.loss_fn(model.logit(**self.kin.batch(self.enc, idx)), self.enc.labels[idx])


class Replicas:
    """How a training step is shared between processes. This base is one process (no-ops); the
    torch.distributed version is `ranker.distributed.DistributedReplicas`. One training loop
    (`_fit`) serves both, so the single-process run stays the reference."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module) -> None:
        """Adapt a freshly built model to the processes (batch statistics over all of them)."""

    def reduce_gradients(self, model: nn.Module) -> None:
        """Make every replica's gradients the batch's (sum of the processes' parts)."""

    def end_epoch(self, model: nn.Module, loss_sum: float) -> float:
        """Run-wide sum of the epoch's training loss; replicas' buffers made equal before evaluation."""
        return loss_sum

    def from_main(self, values: list[float]) -> list[float]:
        """The main process's values (validation metrics) on every process, so all stop together."""
        return values

    def describe(self) -> dict[str, Any]:
        """What run.json records about the processes (only written for more than one)."""
        return {"world_size": self.world_size}


def best_is_last_epoch(history: list[dict[str, Any]], best_epoch: int, epochs: int) -> bool:
    """The best validation epoch is the last of its (phase's) epoch budget: the run may not have
    converged. A warm-start run's phases each get `epochs`."""
    last = history[-1] if history else {}
    return best_epoch == last.get("epoch") and last.get("phase_epoch", best_epoch) == epochs


def _fit(
    settings: Settings,
    spec: FeatureSpec,
    lr: float,
    train: TrainRows,
    valid: Encoded | None,
    kin: KnowledgeInputs,
    ckpt_dir: Path | None,
    replicas: Replicas | None = None,
) -> tuple[RankerModel, list[dict[str, Any]], int, float]:
    """Train with one learning rate; returns (best model, history, best epoch, best valid AUC).

    `valid` and `ckpt_dir` are None on processes other than the main one, which alone evaluates
    and writes; `replicas` None is one process."""
    cfg = settings.train
    rep = replicas or Replicas()
    set_seeds(cfg.seed)
    model = build_model(spec, cfg)
    if cfg.use_llm:
        model.set_knowledge_stats(kin.users[1:], kin.scenarios)
    if rep.device.type != "cpu":
        model.to(rep.device)
    rep.prepare(model)
    meta = meta_parameters(model)
    meta_ids = {id(p) for p in meta}
    backbone = [p for p in model.parameters() if id(p) not in meta_ids]
    steps = max(1, (len(train) + cfg.batch_size - 1) // cfg.batch_size)

    def optimiser(phase: str) -> tuple[torch.optim.Optimizer, Any]:
        train_backbone, train_meta = phase != "knowledge", phase != "plain"
        for p in backbone:
            p.requires_grad_(train_backbone)
        for p in meta:
            p.requires_grad_(train_meta)
        groups = [
            {"params": backbone if train_backbone else [], "weight_decay": cfg.weight_decay},
            {
                "params": meta if train_meta else [],
                "weight_decay": cfg.meta.weight_decay,
                "lr": lr * cfg.meta.lr_scale,
            },
        ]
        opt = torch.optim.Adam([g for g in groups if g["params"]], lr=lr)
        return opt, _scheduler(opt, cfg.lr_schedule, cfg.epochs, steps)

    # meta.warm_start: phase "plain" trains embeddings and backbone with the meta networks frozen at
    # their identity start (that is the plain model), phase "knowledge" trains only the meta networks
    # on that model's best epoch, frozen; the best validation epoch of both is kept, so knowledge that
    # does not help on validation leaves the plain model. Phase "all" is the one-phase default.
    phases = ["plain", "knowledge"] if cfg.use_llm and cfg.meta.warm_start and meta else ["all"]
    history: list[dict[str, Any]] = []
    best_state, best_auc, best_epoch, bad = None, -1.0, 0, 0
    epoch_lines = Throttle()  # one line per epoch when epochs are slow; else the run's line says it
    epoch = 0
    last_plain_scores: np.ndarray | None = None
    plain_best_scores: np.ndarray | None = None  # validation scores of the plain phase's best epoch
    for phase in phases:
        if phase == "knowledge":
            model.load_state_dict(best_state)
        opt, sched = optimiser(phase)
        first, bad = epoch, 0
        for epoch in range(first + 1, first + cfg.epochs + 1):
            model.train()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm = torch.randperm(len(train), generator=gen)
            t0 = time.perf_counter()
            total, n = 0.0, 0
            bar = progress(steps, f"epoch {epoch} lr={lr:g}", "step", logger=log, leave=False)
            for step in range(steps):
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                if idx.numel() < 2:
                    continue
                loss = train.loss(model, idx)
                opt.zero_grad(set_to_none=True)
                if loss is not None:
                    loss.backward()
                    total += float(loss.detach()) * idx.numel()
                rep.reduce_gradients(model)
                opt.step()
                if sched is not None:
                    sched.step()
                n += idx.numel()
                bar.update(1)
            bar.close()
            total = rep.end_epoch(model, total)
            seconds = time.perf_counter() - t0
            v_auc = v_logloss = z_vs_plain = float("nan")
            if valid is not None:
                scores = predict(model, valid, kin, cfg.eval_batch_size, rep.device)
                y = valid.labels.numpy()
                v_auc, v_logloss = M.auc(y, scores), M.logloss(y, scores)
                if phase == "plain":
                    last_plain_scores = scores
                elif plain_best_scores is not None:
                    z_vs_plain = _paired_z(y, plain_best_scores, scores)
            v_auc, v_logloss, z_vs_plain = rep.from_main([v_auc, v_logloss, z_vs_plain])
            rec = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": total / max(n, 1),
                "valid_auc": v_auc,
                "valid_logloss": v_logloss,
                "seconds": seconds,
            }
            if len(phases) > 1:
                rec |= {"phase": phase, "phase_epoch": epoch - first}
                if phase == "knowledge":
                    rec["z_vs_plain"] = z_vs_plain if np.isfinite(z_vs_plain) else None
            history.append(rec)
            log.log(
                epoch_lines.level(),
                "lr=%g epoch %d: loss %.4f valid AUC %.4f (%.1fs)",
                lr,
                epoch,
                rec["train_loss"],
                v_auc,
                seconds,
            )
            if ckpt_dir is not None:
                for old in ckpt_dir.glob("epoch_*.safetensors"):
                    old.unlink()
                save_weights(model, ckpt_dir / f"epoch_{epoch:03d}.safetensors")
            if np.isnan(v_auc):
                raise DataError("validation split has a single class; cannot early-stop on AUC")
            # warm start: a knowledge epoch replaces the plain model only beyond warm_start_min_z
            # paired SE on validation (the two share the backbone, so the SE is small)
            gated = phase == "knowledge" and not z_vs_plain > cfg.meta.warm_start_min_z
            if v_auc > best_auc and not gated:
                best_auc, best_epoch, bad = v_auc, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if phase == "plain":
                    plain_best_scores = last_plain_scores
            else:
                bad += 1
                if bad >= cfg.patience:
                    log.debug("early stop after epoch %d (best %d)", epoch, best_epoch)
                    break
    assert best_state is not None
    if cfg.epochs > 1 and best_is_last_epoch(history, best_epoch, cfg.epochs):
        log.warning(
            "lr=%g: the best validation AUC is at the last epoch (%d): the model may not have converged; "
            "compare variants only when both converged (raise train.epochs)",
            lr,
            best_epoch,
        )
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best_epoch, best_auc


@dataclass
class EvalInputs:
    """What the main process needs besides the training rows: the data's identity, the knowledge,
    the valid/test rows and sampled candidates (encoded), and the run-wide row counts / fallback."""

    ds: CanonicalDataset  # manifest (id, source, build config); interactions are not used here
    data_dir: str | Path
    kt: KnowledgeTables | None
    kcheck: dict[str, Any]
    splits: dict[str, pl.DataFrame]  # "valid", "test": user_id, item_id, scenario_id, label
    enc: dict[str, Encoded]  # "valid", "test"
    cands: pl.DataFrame
    enc_cand: Encoded
    rows: dict[str, int]  # rows per split of the whole run
    fallback: dict[str, Any] | None


def _check_knowledge(
    settings: Settings, data_dir: str | Path, knowledge: str | Path | None, data_version: str
) -> tuple[KnowledgeTables | None, dict[str, Any]]:
    """Knowledge tables (None without use_llm) and the dataset-id check, before anything is written."""
    cfg = settings.train
    if not cfg.use_llm:
        return None, {}
    if knowledge is None:
        raise ConfigError(
            "train.use_llm is true but no knowledge snapshot was given (--knowledge DIR, or --no-llm)"
        )
    kt = load_knowledge(knowledge, cfg.knowledge_dim)
    # Before anything else: knowledge of another dataset id can leak held-out labels.
    kcheck = check_dataset(
        kt.manifest, kt.path, data_version, data_dir, allow_foreign=cfg.allow_foreign_knowledge
    )
    return kt, kcheck


def train(
    settings: Settings,
    data_dir: str | Path,
    knowledge: str | Path | None,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> RunResult:
    """Train, pick the best LR/epoch on validation AUC, evaluate on test, write the run dir atomically.

    Args:
        settings: resolved settings; `train` and `eval` are used (`data` only to record provenance).
        data_dir: a dataset folder (`llm4msr data build`).
        knowledge: a snapshot folder or an offline-store root (CURRENT); None for a plain model.
        out: the run directory to write (layout in the module docstring).
        overwrite: replace an existing `out` (otherwise `OutputExistsError`).

    Returns:
        RunResult: run directory, kept LR and epoch, best validation AUC, metrics and run.json info.

    Raises:
        ForeignKnowledgeError: the snapshot was built from another dataset id (see docs/ranker.md).
    """
    cfg = settings.train
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"run directory {out} already exists (use another --out or --overwrite)")
    ds = load_dataset(data_dir)
    kt, kcheck = _check_knowledge(settings, data_dir, knowledge, ds.version())
    spec = build_spec(ds, kt.dimension if kt else 0)
    inter = ds.interactions
    splits = {
        s: inter.filter(pl.col("split") == s).select("user_id", "item_id", "scenario_id", "label")
        for s in ("train", "valid", "test")
    }
    for name, frame in splits.items():
        if frame.height == 0:
            raise DataError(f"{data_dir}/interactions.parquet: no rows with split == {name!r}")
    if kt is not None:  # every scenario in the data must have a vector
        kt.lookup(inter.select("user_id", "scenario_id"), f"{data_dir}/interactions.parquet")
    enc = {name: encode(frame, ds, spec, kt, f"{data_dir}/{name}") for name, frame in splits.items()}
    fallback = _fallback_rates(enc, inter) if kt is not None else None
    if kt is not None and cfg.use_llm and cfg.meta.mask_described:
        fallback = (fallback or {}) | {
            "masked_train_rows": mask_knowledge(
                enc["train"], described_train_mask(inter.lazy(), ds.users, kt)
            )
        }
    cands = sample_candidates(ds, settings.eval)
    enc_cand = encode(cands, ds, spec, kt, f"{data_dir}/sampled candidates")
    kin = KnowledgeInputs(kt)
    ev = EvalInputs(
        ds=ds,
        data_dir=data_dir,
        kt=kt,
        kcheck=kcheck,
        splits={s: splits[s] for s in ("valid", "test")},
        enc={s: enc[s] for s in ("valid", "test")},
        cands=cands,
        enc_cand=enc_cand,
        rows={name: len(e) for name, e in enc.items()},
        fallback=fallback,
    )
    result = train_and_write(settings, spec, kin, LocalRows(enc["train"], kin), ev, out, overwrite, t_start)
    assert result is not None
    return result


def train_and_write(
    settings: Settings,
    spec: FeatureSpec,
    kin: KnowledgeInputs,
    rows: TrainRows,
    ev: EvalInputs | None,
    out: Path,
    overwrite: bool,
    t_start: float,
    replicas: Replicas | None = None,
) -> RunResult | None:
    """The LR sweep, then (main process only: `ev` given) test scoring and the run directory,
    written atomically. Other processes train alongside and return None."""
    cfg = settings.train
    rep = replicas or Replicas()
    lrs = list(cfg.lr_sweep) or [cfg.lr]
    if ev is None:  # a helper process: same sweep, nothing written
        for lr in lrs:
            _fit(settings, spec, lr, rows, None, kin, None, rep)
        return None
    with atomic_directory(out, overwrite=overwrite) as tmp:
        ckpt = tmp / "checkpoints"
        ckpt.mkdir()
        sweep, best = [], None
        for lr in lrs:
            model, history, best_epoch, best_auc = _fit(
                settings, spec, lr, rows, ev.enc["valid"], kin, ckpt, rep
            )
            sweep.append({"lr": lr, "best_epoch": best_epoch, "best_valid_auc": best_auc, "history": history})
            if best is None or best_auc > best[3]:
                best = (model, history, best_epoch, best_auc, lr)
        assert best is not None
        model, history, best_epoch, best_auc, lr = best

        dev = rep.device
        test_scores = predict(model, ev.enc["test"], kin, cfg.eval_batch_size, dev)
        cand_scores = predict(model, ev.enc_cand, kin, cfg.eval_batch_size, dev)
        pred = pl.concat(
            [
                ev.splits["test"].with_columns(
                    score=pl.Series(test_scores, dtype=pl.Float32), source=pl.lit("test")
                ),
                ev.cands.with_columns(
                    score=pl.Series(cand_scores, dtype=pl.Float32), source=pl.lit("sampled")
                ),
            ]
        )
        final = M.evaluate(pred, settings.eval.k)

        resolved = settings.model_copy(deep=True)
        resolved.train.lr = lr
        write_text_atomic(
            tmp / CONFIG_FILE,
            run_config_text(resolved, recorded_data_config(ev.ds, ev.data_dir), ev.data_dir),
        )
        spec.save(tmp / SPEC_FILE)
        save_weights(model, tmp / WEIGHTS_FILE)
        pred.write_parquet(tmp / PREDICTIONS_FILE)
        valid_scores = predict(model, ev.enc["valid"], kin, cfg.eval_batch_size, dev)
        ev.splits["valid"].with_columns(score=pl.Series(valid_scores, dtype=pl.Float32)).write_parquet(
            tmp / VALID_PREDICTIONS_FILE
        )
        kt, kcheck, ds = ev.kt, ev.kcheck, ev.ds
        epoch_seconds = [h["seconds"] for h in history]
        metrics = {
            "epochs": history,
            "best_epoch": best_epoch,
            # the best epoch is the last one: validation AUC was still rising (maybe not converged)
            "best_is_last_epoch": best_is_last_epoch(history, best_epoch, cfg.epochs),
            "best_valid_auc": best_auc,
            "lr": lr,
            "lr_sweep": sweep if len(lrs) > 1 else [],
            "fallback": ev.fallback,
            # True: trained with knowledge of another dataset id (train.allow_foreign_knowledge)
            "foreign_knowledge": bool(kcheck.get("foreign")),
            "final": final,
        }
        run_info = {
            "dataset": {
                "path": str(ev.data_dir),
                "version": ds.version(),
                "source": (ds.manifest or {}).get("source"),
            },
            "knowledge": None
            if kt is None
            else {
                "snapshot_id": kt.snapshot_id,
                "family": kt.family,
                "dimension": kt.dimension,
                "path": kt.path,
                **kcheck,
            },
            "backbone": cfg.backbone,
            "use_llm": cfg.use_llm,
            "meta": cfg.meta.model_dump() if cfg.use_llm else None,
            "seed": cfg.seed,
            "lr": lr,
            "best_epoch": best_epoch,
            "timings": {
                "epoch_seconds": epoch_seconds,
                "mean_epoch_seconds": float(np.mean(epoch_seconds)) if epoch_seconds else None,
                "total_seconds": time.perf_counter() - t_start,
            },
            "parameters": {
                "total": count_parameters(model),
                "backbone": count_parameters(model.backbone),
                "embedding": count_parameters(model.embedding),
                "user_meta": count_parameters(model.user_meta),
                "scenario_meta": count_parameters(model.scenario_meta),
                "concat": count_parameters(model.concat),
            },
            "rows": ev.rows | {"sampled_candidates": len(ev.enc_cand)},
            "fallback": ev.fallback,
            "provenance": provenance("torch", "polars", "numpy"),
        }
        if rep.world_size > 1:
            run_info["distributed"] = rep.describe()
        run_info["timings"]["total_seconds"] = time.perf_counter() - t_start
        write_json_atomic(tmp / METRICS_FILE, metrics)
        write_json_atomic(tmp / RUN_FILE, run_info)
    log.info(
        "run %s: %s use_llm=%s lr=%g best epoch %d of %d (valid AUC %.4f, %.1fs/epoch), test AUC %.4f",
        out,
        cfg.backbone,
        cfg.use_llm,
        lr,
        best_epoch,
        len(history),
        best_auc,
        run_info["timings"]["mean_epoch_seconds"] or 0.0,
        final["overall"]["auc"],
    )
    return RunResult(
        run_dir=out, lr=lr, best_epoch=best_epoch, best_valid_auc=best_auc, metrics=metrics, run_info=run_info
    )


def _paired_z(labels: np.ndarray, plain_scores: np.ndarray, scores: np.ndarray) -> float:
    """(AUC of `scores` − AUC of `plain_scores`) in DeLong standard errors on the same rows."""
    a, b, se = paired_auc_delta(labels, plain_scores, scores)
    return z_score(b - a, se)


def described_train_mask(
    interactions: pl.LazyFrame, users: pl.DataFrame, kt: KnowledgeTables, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """meta.mask_described: for the training rows of `interactions` (file rows [lo, hi) of `rows`
    only, in order), True where the user's prompt lists the row with its label
    (`knowledge_service.prompts.described_rows`, with the snapshot's max_history_per_scenario)."""
    from knowledge_service.prompts import described_rows

    n_hist = kt.manifest.get("max_history_per_scenario")
    if n_hist is None:
        raise SnapshotError(
            f"knowledge snapshot {kt.path} does not record max_history_per_scenario, which "
            "train.meta.mask_described needs; rebuild it or set train.meta.mask_described=false"
        )
    listed = described_rows(interactions, users, int(n_hist)).collect()["row"]
    train = interactions.with_row_index("row").filter(pl.col("split") == "train")
    if rows is not None:
        train = train.filter(pl.col("row").is_between(rows[0], rows[1], closed="left"))
    return train.select(pl.col("row").is_in(listed.implode())).collect().to_series().to_numpy()


def mask_knowledge(enc: Encoded, mask: np.ndarray) -> float:
    """Rows of `mask` see no user knowledge (index 0: the learned fallback); returns their share."""
    if mask.shape[0] != len(enc):
        raise ValueError(f"mask of {mask.shape[0]} rows for {len(enc)} training rows")
    enc.uidx[torch.from_numpy(mask)] = 0
    return float(mask.mean()) if mask.size else 0.0


def _fallback_rates(enc: dict[str, Encoded], inter: pl.DataFrame) -> dict[str, Any]:
    """Share of rows (per split) and of users whose knowledge is the learned fallback."""
    rows = {name: float((e.uidx == 0).to(torch.float32).mean()) if len(e) else 0.0 for name, e in enc.items()}
    users = pl.concat(
        [e.frame.select("user_id").with_columns(has=pl.Series((e.uidx > 0).numpy())) for e in enc.values()]
    ).unique("user_id")
    return {"rows": rows, "users": float(1.0 - users["has"].cast(pl.Float64).mean()), "n_users": users.height}
