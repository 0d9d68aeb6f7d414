"""`llm4msr explain`: why the ranker ranks what it ranks for one user in one scenario.

It crosses layers the way pipelines do: the knowledge snapshot (prompt text, answer, vectors), the
exported ONNX model (rankings), the training run's torch model (the parts the ONNX graph cannot
switch off) and the dataset (candidate items, titles). Nothing is retrained and no LLM runs; the
serving package never imports this module.

What each number comes from (also printed with the report):

* "with knowledge" / "fallback": the exported ONNX model, fed the user's snapshot vector with
  `user_has_knowledge = 1`, or the learned fallback (`user_has_knowledge = 0`, zero vector: what
  serving feeds a user without knowledge). This is the only user-level switch the graph's inputs
  allow.
* "user level off" / "scenario level off": the run's torch model with that meta network removed
  (`RankerModel.user_meta` / `scenario_meta` = None for the call). The ONNX graph has no such
  switch: any `scenario_knowledge` input still goes through the scenario meta network. The torch
  model's full score is compared with the ONNX score and the difference is reported.

The prompt shown is the text stored in the snapshot's `prompts.parquet` (what was encoded),
checked against the `prompt_hash` stored beside the vector; it is also re-rendered from the
dataset with `knowledge_service.prompts` (the snapshot's template, budget and history cap) to say
whether the next knowledge build would encode the same text.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm4msr.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
DEFAULT_NEIGHBOURS = 5
ONNX = "onnx"
TORCH = "torch"


class ExplainError(UserError, ValueError):
    """Bad input to explain (unknown id, mismatched model and snapshot); one line naming the value."""


# --------------------------------------------------------------------------- typed results
@dataclass
class PromptView:
    """The prompt an entity's vector was encoded from, and whether it still renders the same."""

    kind: str
    entity_id: str
    has_vector: bool
    text: str | None  # stored prompt text (None: not stored and not re-renderable)
    prompt_hash: str | None  # sha256 stored with the vector in knowledge.parquet
    text_sha256: str | None  # sha256 of `text`
    matches_snapshot: bool  # text_sha256 == prompt_hash: this is exactly what was encoded
    template_version: str | None = None
    n_tokens: int | None = None
    n_history: int | None = None
    n_dropped: int | None = None
    answer: str | None = None  # two-pass snapshots keep the LLM's answer
    rerender: str = ""  # outcome of re-rendering with knowledge_service.prompts
    chat_wrapped: str | None = None  # the text as sent to the model when a chat template wraps it


@dataclass
class Neighbour:
    entity_id: str
    similarity: float  # cosine (inner product of L2-normalised vectors)


@dataclass
class ItemRow:
    """One candidate in the union of both top-K lists."""

    item_id: str
    title: str | None
    rank_with: int  # 1-based rank among all candidates with the user's knowledge
    rank_without: int  # ... with the fallback vector instead
    score_with: float
    score_without: float
    status: str  # "in": in the top-K only with knowledge; "out": only with the fallback; "kept"

    @property
    def rank_change(self) -> int:
        """Positive: knowledge moved the item up."""
        return self.rank_without - self.rank_with


@dataclass
class LevelEffect:
    """Score change over the candidates when one knowledge path is switched off."""

    name: str
    model: str  # "onnx" or "torch"
    available: bool
    note: str = ""
    mean_change: float = 0.0  # mean of score(off) - score(full) over all candidates
    mean_abs_change: float = 0.0
    max_abs_change: float = 0.0
    topk_kept: int = 0  # items of the full top-K still in the top-K with this path off
    per_item: dict[str, float] = field(default_factory=dict)  # change for the full top-K items


@dataclass
class ExplainReport:
    user_id: str | None
    scenario_id: str
    model_dir: str
    model_id: str | None  # registry id when the model came from the registry
    onnx_file: str
    run_dir: str | None
    snapshot_id: str
    snapshot_path: str
    knowledge_family: str | None
    trained_snapshot_id: str | None  # the snapshot the model was trained on
    dataset_dir: str
    two_pass: bool
    uses_knowledge: bool
    user_has_knowledge: bool
    n_candidates: int
    top_k: int
    prompts: list[PromptView]
    neighbours: dict[str, list[Neighbour]]  # kind -> nearest entities of that kind
    items: list[ItemRow]
    levels: list[LevelEffect]
    torch_onnx_max_diff: float | None  # torch full score vs ONNX score, over the candidates
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, d in zip(self.items, out["items"], strict=True):
            d["rank_change"] = row.rank_change
        return out


# --------------------------------------------------------------------------- inputs
@dataclass
class _Knowledge:
    snapshot: Any  # feature_store.knowledge_snapshot.Snapshot
    prompts: dict[tuple[str, str], dict[str, Any]]  # (kind, id) -> prompts.parquet row
    rows: dict[tuple[str, str], int]  # (kind, id) -> row in snapshot.rows

    def vectors(self, kind: str) -> tuple[list[str], np.ndarray]:
        return self.snapshot.vectors_of(kind)


def resolve_model_dir(model: str | Path | None, registry_dir: str | Path) -> tuple[Path, str | None]:
    """(exported model folder, registry id or None): an explicit folder, else the registry's CURRENT."""
    from pipelines.flows.registry import ModelRegistry

    if model is not None:
        return Path(model), None
    reg = ModelRegistry(registry_dir)
    mid = reg.current_id()
    if mid is None:
        raise ExplainError(
            f"model registry {registry_dir} has no CURRENT model; train and register one "
            "(`llm4msr flow run train`) or pass --model DIR"
        )
    return reg.path_of(mid), mid


def _load_knowledge(path: str | Path) -> _Knowledge:
    import pyarrow.parquet as pq

    from feature_store.knowledge_snapshot import load_snapshot
    from knowledge_service.runner import PROMPTS_FILE
    from ranker.knowledge import resolve_snapshot

    folder = resolve_snapshot(path)
    snap = load_snapshot(folder)
    prompts: dict[tuple[str, str], dict[str, Any]] = {}
    if (folder / PROMPTS_FILE).is_file():
        for r in pq.read_table(folder / PROMPTS_FILE).to_pylist():
            prompts[(r["kind"], r["entity_id"])] = r
    rows = {(k, e): i for i, (k, e) in enumerate(zip(snap.rows.kind, snap.rows.entity_id, strict=True))}
    return _Knowledge(snap, prompts, rows)


def nearest(ids: list[str], vectors: np.ndarray, entity_id: str, k: int) -> list[Neighbour]:
    """The k entities nearest to `entity_id` by cosine: faiss inner product on L2-normalised rows."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    import faiss

    if entity_id not in ids or len(ids) < 2 or k < 1:
        return []
    x = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    i = ids.index(entity_id)
    sims, nn = index.search(x[i : i + 1], min(k + 1, len(ids)))
    return [Neighbour(ids[n], float(s)) for s, n in zip(sims[0], nn[0], strict=True) if n >= 0 and n != i][:k]


def _prompt_view(
    kn: _Knowledge, kind: str, entity_id: str, rerender: tuple[str | None, str, str | None] | None
) -> PromptView:
    from llm4msr.atomic import sha256_text

    j = kn.rows.get((kind, entity_id))
    stored = kn.prompts.get((kind, entity_id))
    rows = kn.snapshot.rows
    text = stored["prompt"] if stored else None
    rendered, outcome, wrapped = rerender if rerender is not None else (None, "", None)
    if text is None and rendered is not None:
        text = rendered  # older snapshot without prompts.parquet: the re-rendered text, if its hash matches
    prompt_hash = rows.prompt_hash[j] if j is not None else None
    text_sha = sha256_text(text) if text is not None else None
    return PromptView(
        kind=kind,
        entity_id=entity_id,
        has_vector=j is not None,
        text=text,
        prompt_hash=prompt_hash,
        text_sha256=text_sha,
        matches_snapshot=text_sha is not None and text_sha == prompt_hash,
        template_version=rows.template_version[j] if j is not None else None,
        n_tokens=stored["n_tokens"] if stored else None,
        n_history=stored["n_history"] if stored else None,
        n_dropped=stored["n_dropped"] if stored else None,
        answer=rows.answer[j] if j is not None else None,
        rerender=outcome,
        chat_wrapped=wrapped,
    )


def _rerender(
    settings: Any, ds: Any, manifest: dict[str, Any], kind: str, entity_id: str, stored_hash: str | None
) -> tuple[str | None, str, str | None]:
    """Render the entity's prompt again with knowledge_service.prompts, using the snapshot's template,
    token budget and history cap and the configured model's tokenizer; (text, outcome, chat-wrapped).
    Any reason it cannot is an outcome, not an error: the stored text is what was encoded."""
    from knowledge_service.models import ChatTokenizer, KnowledgeError, load_tokenizer, model_info
    from knowledge_service.prompts import load_template, scenario_prompts, user_prompts

    cfg = settings.knowledge
    try:
        info = model_info(cfg.model, cfg.model_cache_dir)
    except (KnowledgeError, OSError) as exc:
        return None, f"not re-rendered: knowledge.model {cfg.model!r} cannot be resolved ({exc})", None
    if info.model_id != manifest.get("model_id"):
        return (
            None,
            f"not re-rendered: knowledge.model is {info.model_id}, the snapshot was built with "
            f"{manifest.get('model_id')} (its tokenizer measures the budget); pass --set knowledge.model=...",
            None,
        )
    name = cfg.user_template if kind == "user" else cfg.scenario_template
    template = load_template(name, cfg.template_dir)
    want = (manifest.get("template_hashes") or {}).get(template.version)
    if want != template.sha256:
        return None, f"not re-rendered: template {template.version} changed since the snapshot", None
    base = load_tokenizer(info.path)
    tok: Any = base
    chat_sha = manifest.get("chat_template_sha256")
    if chat_sha:
        if base.chat_template is None:
            return None, f"not re-rendered: {info.path} has no chat template, the snapshot used one", None
        tok = ChatTokenizer(base, base.chat_template)
        if tok.template_sha256 != chat_sha:
            return None, "not re-rendered: the model's chat template changed since the snapshot", None
    budget = int(manifest.get("prompt_budget_tokens") or min(cfg.max_prompt_tokens, info.max_len))
    if kind == "user":
        hist = int(manifest.get("max_history_per_scenario") or cfg.max_history_per_scenario)
        found, _ = user_prompts(ds, template, tok, budget, hist, user_ids={entity_id})
    else:
        found = [p for p in scenario_prompts(ds, template, tok, budget) if p.entity_id == entity_id]
    if not found:
        return None, "re-rendered: no prompt (no training history: the ranker uses its fallback)", None
    p = found[0]
    wrapped = tok.render(p.text) if chat_sha else None
    if stored_hash is None:
        return p.text, "re-rendered (the snapshot has no vector for it)", wrapped
    if p.prompt_hash == stored_hash:
        return p.text, "re-rendered from the dataset: identical (sha256 matches the snapshot)", wrapped
    return (
        p.text,
        "re-rendered from the dataset: DIFFERENT from the snapshot (data changed since; the next "
        "knowledge build re-encodes it)",
        wrapped,
    )


# --------------------------------------------------------------------------- scoring
@dataclass
class ScoringInputs:
    """The four model inputs for one (user, scenario) over the candidates (contract 4)."""

    sparse_ids: np.ndarray
    user_knowledge: np.ndarray
    user_has_knowledge: np.ndarray
    scenario_knowledge: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return asdict(self)

    def with_fallback(self) -> ScoringInputs:
        """The same rows as serving scores a user without knowledge: zero vector, flag 0."""
        return ScoringInputs(
            self.sparse_ids,
            np.zeros_like(self.user_knowledge),
            np.zeros_like(self.user_has_knowledge),
            self.scenario_knowledge,
        )


def build_inputs(
    artifact: Any,
    user_id: str | None,
    scenario_id: str,
    item_ids: list[str],
    user_vector: np.ndarray | None,
    scenario_vector: np.ndarray,
) -> ScoringInputs:
    """Inputs exactly as the serving runtime assembles them (same FeatureAssembler)."""
    n = len(item_ids)
    k = scenario_vector.shape[0]
    sparse = artifact.assembler.build(user_id or "", scenario_id, item_ids)
    has = user_vector is not None
    uk = np.broadcast_to(user_vector if has else np.zeros(k, np.float32), (n, k))
    return ScoringInputs(
        sparse_ids=np.ascontiguousarray(sparse, dtype=np.int64),
        user_knowledge=np.ascontiguousarray(uk, dtype=np.float32),
        user_has_knowledge=np.full(n, 1.0 if has else 0.0, np.float32),
        scenario_knowledge=np.ascontiguousarray(np.broadcast_to(scenario_vector, (n, k)), dtype=np.float32),
    )


@contextlib.contextmanager
def levels_off(model: Any, *, user: bool = False, scenario: bool = False) -> Iterator[Any]:
    """The torch model with its user- and/or scenario-level meta network removed for the block."""
    saved = model.user_meta, model.scenario_meta
    try:
        if user:
            model.user_meta = None
        if scenario:
            model.scenario_meta = None
        yield model
    finally:
        model.user_meta, model.scenario_meta = saved


def _ranks(scores: np.ndarray, item_ids: list[str]) -> np.ndarray:
    """1-based rank per candidate; ties broken by item id so the order is deterministic."""
    order = sorted(range(len(item_ids)), key=lambda i: (-float(scores[i]), item_ids[i]))
    ranks = np.empty(len(item_ids), dtype=np.int64)
    ranks[order] = np.arange(1, len(item_ids) + 1)
    return ranks


def compare_rankings(
    item_ids: list[str], titles: dict[str, str], with_k: np.ndarray, without_k: np.ndarray, top_k: int
) -> list[ItemRow]:
    """Union of both top-K lists, ordered by the rank with knowledge, then by the fallback rank."""
    rw, ro = _ranks(with_k, item_ids), _ranks(without_k, item_ids)
    rows = []
    for i, item in enumerate(item_ids):
        a, b = rw[i] <= top_k, ro[i] <= top_k
        if a or b:
            status = "kept" if a and b else ("in" if a else "out")
            rows.append(
                ItemRow(
                    item,
                    titles.get(item),
                    int(rw[i]),
                    int(ro[i]),
                    float(with_k[i]),
                    float(without_k[i]),
                    status,
                )
            )
    return sorted(rows, key=lambda r: r.rank_with if r.status != "out" else top_k + r.rank_without)


def level_effect(
    name: str,
    model: str,
    item_ids: list[str],
    full: np.ndarray,
    off: np.ndarray,
    top_k: int,
    note: str = "",
) -> LevelEffect:
    d = off.astype(np.float64) - full.astype(np.float64)
    rf, ro = _ranks(full, item_ids), _ranks(off, item_ids)
    top = [i for i in range(len(item_ids)) if rf[i] <= top_k]
    return LevelEffect(
        name=name,
        model=model,
        available=True,
        note=note,
        mean_change=float(d.mean()),
        mean_abs_change=float(np.abs(d).mean()),
        max_abs_change=float(np.abs(d).max()),
        topk_kept=int(sum(1 for i in top if ro[i] <= top_k)),
        per_item={item_ids[i]: float(d[i]) for i in sorted(top, key=lambda i: rf[i])},
    )


# --------------------------------------------------------------------------- the whole explanation
def explain(
    settings: Any,
    *,
    scenario_id: str,
    user_id: str | None = None,
    model_dir: str | Path | None = None,
    knowledge: str | Path | None = None,
    data_dir: str | Path | None = None,
    top_k: int = DEFAULT_TOP_K,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> ExplainReport:
    """Explain the ranking of `scenario_id`'s items for `user_id` (None: a user without knowledge)."""
    import polars as pl
    import torch

    from feature_store.dataset import load_dataset
    from ranker.export import onnx_scores, torch_scores
    from ranker.serving.artifact import load_artifact, open_session

    if top_k < 1:
        raise ExplainError(f"--top-k {top_k}: expected a positive number of items")
    mdir, registry_id = resolve_model_dir(model_dir, settings.pipelines.registry_dir)
    artifact = load_artifact(mdir)
    man = artifact.manifest
    mknow = artifact.knowledge
    run = man.get("training_run") or {}
    kpath = Path(knowledge) if knowledge is not None else Path(settings.knowledge.snapshot_root)
    kn = _load_knowledge(kpath)
    smanifest = kn.snapshot.manifest
    notes: list[str] = []
    uses_knowledge = bool(mknow.get("use_llm")) and int(mknow.get("dimension") or 0) > 0
    dim = max(int(mknow.get("dimension") or 0), 1)
    if uses_knowledge:
        if kn.snapshot.dimension != dim:
            raise ExplainError(
                f"knowledge snapshot {kn.snapshot.path} has dimension {kn.snapshot.dimension}, model {mdir} "
                f"was trained on dimension {dim}; pass the snapshot root it was trained with (--knowledge)"
            )
        fam = mknow.get("family")
        if fam and smanifest.get("knowledge_family") != fam:
            raise ExplainError(
                f"knowledge snapshot {kn.snapshot.path} is of family {smanifest.get('knowledge_family')!r}, "
                f"model {mdir} was trained on family {fam!r} (another LLM, pooling or PCA)"
            )
        if mknow.get("snapshot_id") and mknow["snapshot_id"] != kn.snapshot.snapshot_id:
            notes.append(
                f"model trained on snapshot {mknow['snapshot_id']}; explaining with snapshot "
                f"{kn.snapshot.snapshot_id} (same family: serving would use it the same way)"
            )
    else:
        notes.append("this model was trained without knowledge (use_llm false): knowledge changes nothing")

    ds_path = Path(data_dir) if data_dir else _dataset_dir(run, settings)
    ds = load_dataset(ds_path)
    scen_ids = ds.scenarios["scenario_id"].to_list()
    if scenario_id not in artifact.assembler.scenario_vocab:
        raise ExplainError(
            f"unknown scenario {scenario_id!r}: not in model {mdir} (scenarios {artifact.scenarios})"
        )
    if scenario_id not in scen_ids:
        raise ExplainError(
            f"unknown scenario {scenario_id!r}: not in dataset {ds_path} (scenarios {scen_ids})"
        )
    s_ids, s_vecs = kn.vectors("scenario")
    if uses_knowledge and scenario_id not in s_ids:
        raise ExplainError(
            f"scenario {scenario_id!r} has no vector in knowledge snapshot {kn.snapshot.path} "
            f"(scenarios with one: {s_ids})"
        )
    u_ids, u_vecs = kn.vectors("user")
    user_vector: np.ndarray | None = None
    if user_id is not None:
        known = set(ds.users["user_id"].to_list())
        if user_id not in known and ("user", user_id) not in kn.rows:
            raise ExplainError(
                f"unknown user {user_id!r}: not in dataset {ds_path}/users.parquet ({len(known)} users) "
                f"nor in knowledge snapshot {kn.snapshot.path}"
            )
        if user_id not in artifact.assembler.users.index:
            notes.append(
                f"user {user_id} is not in the model's user lookup: its id features are 'unknown' (0)"
            )
        if user_id in u_ids:
            user_vector = u_vecs[u_ids.index(user_id)]
        else:
            notes.append(
                f"user {user_id} has no knowledge vector (no training history): serving uses the fallback, "
                "so both rankings are the same"
            )

    # candidates: the scenario's items in the dataset that the model knows
    scen_items = (
        ds.interactions.filter(pl.col("scenario_id") == scenario_id)["item_id"].unique().sort().to_list()
    )
    item_ids = [i for i in scen_items if i in artifact.assembler.items.index]
    if len(item_ids) < len(scen_items):
        notes.append(
            f"{len(scen_items) - len(item_ids)} of the scenario's items are not in the model's item lookup"
        )
    if not item_ids:
        raise ExplainError(f"scenario {scenario_id!r} has no items the model knows in dataset {ds_path}")
    titles = dict(zip(ds.items["item_id"].to_list(), ds.items["title"].to_list(), strict=True))
    svec = s_vecs[s_ids.index(scenario_id)] if scenario_id in s_ids else np.zeros(dim, np.float32)

    inputs = build_inputs(artifact, user_id, scenario_id, item_ids, user_vector, svec)
    session = open_session(artifact.onnx_path)
    full = onnx_scores(session, inputs.as_dict())
    fallback = onnx_scores(session, inputs.with_fallback().as_dict())
    items = compare_rankings(item_ids, titles, full, fallback, top_k)

    levels: list[LevelEffect] = []
    if user_vector is not None and uses_knowledge:
        levels.append(
            level_effect(
                "user knowledge -> fallback vector",
                ONNX,
                item_ids,
                full,
                fallback,
                top_k,
                "user_has_knowledge=0: the learned fallback replaces h_u in the user meta layers",
            )
        )
    torch_diff: float | None = None
    run_dir = run.get("path")
    if uses_knowledge and (not run_dir or not Path(run_dir).is_dir()):
        notes.append(
            f"training run {run_dir!r} is not here: 'user level off' and 'scenario level off' need its "
            "torch model (the ONNX graph cannot switch a meta network off)"
        )
    elif uses_knowledge:
        from ranker.model_io import load_run

        torch.set_num_threads(max(1, int(settings.train.threads or 1)))
        model, _ = load_run(run_dir)
        x = inputs.as_dict()
        t_full = torch_scores(model, x)
        torch_diff = float(np.abs(t_full - full).max())
        for name, off in (("user level off", {"user": True}), ("scenario level off", {"scenario": True})):
            module = model.user_meta if "user" in off else model.scenario_meta
            if module is None:
                levels.append(
                    LevelEffect(
                        name, TORCH, False, note=f"the model has no {name.split()[0]}-level meta network"
                    )
                )
                continue
            with levels_off(model, **off):
                t_off = torch_scores(model, x)
            levels.append(
                level_effect(
                    name,
                    TORCH,
                    item_ids,
                    t_full,
                    t_off,
                    top_k,
                    f"torch model of run {run_dir} with {name.removesuffix(' off')} meta network removed "
                    "(changes against the torch full score)",
                )
            )

    two_pass = bool(smanifest.get("two_pass"))
    prompts: list[PromptView] = []
    entities = ([("user", user_id)] if user_id is not None else []) + [("scenario", scenario_id)]
    for kind, eid in entities:
        j = kn.rows.get((kind, eid))
        stored_hash = kn.snapshot.rows.prompt_hash[j] if j is not None else None
        rr = _rerender(settings, ds, smanifest, kind, eid, stored_hash)
        prompts.append(_prompt_view(kn, kind, eid, rr))
    near = {"scenario": nearest(s_ids, s_vecs, scenario_id, neighbours)}
    if user_id is not None:
        near["user"] = nearest(u_ids, u_vecs, user_id, neighbours)
    return ExplainReport(
        user_id=user_id,
        scenario_id=scenario_id,
        model_dir=str(mdir),
        model_id=registry_id,
        onnx_file=str(artifact.onnx_path),
        run_dir=run_dir,
        snapshot_id=kn.snapshot.snapshot_id,
        snapshot_path=str(kn.snapshot.path),
        knowledge_family=smanifest.get("knowledge_family"),
        trained_snapshot_id=mknow.get("snapshot_id"),
        dataset_dir=str(ds_path),
        two_pass=two_pass,
        uses_knowledge=uses_knowledge,
        user_has_knowledge=user_vector is not None,
        n_candidates=len(item_ids),
        top_k=top_k,
        prompts=prompts,
        neighbours=near,
        items=items,
        levels=levels,
        torch_onnx_max_diff=torch_diff,
        notes=notes,
    )


def _dataset_dir(run: dict[str, Any], settings: Any) -> Path:
    """The dataset the model was trained on (recorded in the export manifest), else data.out."""
    ds = run.get("dataset")
    path = ds.get("path") if isinstance(ds, dict) else None
    return Path(path) if path else Path(settings.data.out)


# --------------------------------------------------------------------------- rendering
def _subject(r: ExplainReport) -> str:
    who = f"user {r.user_id}" if r.user_id is not None else "a user without knowledge"
    return f"{who} in scenario {r.scenario_id}"


def render_text(r: ExplainReport) -> str:
    """Aligned terminal report."""
    out = [f"explain: {_subject(r)}"]
    model = f"{r.model_dir}" + (f" (registry {r.model_id})" if r.model_id else "")
    out.append(f"  model     {model}")
    out.append(
        f"  knowledge snapshot {r.snapshot_id} ({r.snapshot_path}), family {r.knowledge_family}"
        + (", two-pass" if r.two_pass else ", one-pass")
    )
    out.append(f"  data      {r.dataset_dir}: {r.n_candidates} candidate items in the scenario")
    for n in r.notes:
        out.append(f"  note: {n}")
    for p in r.prompts:
        out.append("")
        head = f"--- {p.kind} {p.entity_id} prompt"
        if p.text is None:
            out.append(f"{head}: none ({'no vector' if not p.has_vector else 'text not stored'})")
        else:
            check = (
                "= the encoded text (sha256 matches the snapshot)"
                if p.matches_snapshot
                else ("DOES NOT match the snapshot's prompt hash")
            )
            extra = f", {p.n_tokens} tokens" if p.n_tokens is not None else ""
            if p.n_history is not None and p.kind == "user":
                extra += f", {p.n_history} history entries, {p.n_dropped} dropped by the budget"
            out.append(f"{head} ({p.template_version}{extra}) {check}")
            out.append(p.text)
        if p.rerender:
            out.append(f"    [{p.rerender}]")
        if p.answer:
            out.append(f"--- {p.kind} {p.entity_id} LLM answer")
            out.append(p.answer)
        elif r.two_pass and p.has_vector:
            out.append(f"--- {p.kind} {p.entity_id} LLM answer: (empty)")
    for kind, nn in r.neighbours.items():
        out.append("")
        ent = r.user_id if kind == "user" else r.scenario_id
        if not nn:
            out.append(f"nearest {kind}s of {ent}: none ({kind} has no vector or is alone)")
            continue
        out.append(f"nearest {kind}s of {ent} by knowledge (cosine, faiss):")
        w = max(len(n.entity_id) for n in nn)
        out += [f"  {n.entity_id:<{w}}  {n.similarity:+.4f}" for n in nn]
    out.append("")
    out.append(
        f"top-{r.top_k} of {r.n_candidates} items (ONNX {Path(r.onnx_file).name}): "
        + (
            "with the user's knowledge vs the fallback vector"
            if r.user_has_knowledge
            else "the fallback vector (no user knowledge: both columns are the same)"
        )
    )
    tw = max([len(_title(i)) for i in r.items] + [5])
    iw = max([len(i.item_id) for i in r.items] + [4])
    out.append(
        f"  {'rank':>4}  {'item':<{iw}}  {'title':<{tw}}  {'score':>7}  {'fallback':>8}  {'fb rank':>7}  moved"
    )
    for i in r.items:
        rank = f"{i.rank_with:>4}" if i.status != "out" else "   -"
        mark = {"in": "IN (knowledge)", "out": f"OUT (fallback #{i.rank_without})"}.get(i.status, "")
        if i.status == "kept" and i.rank_change:
            mark = f"{i.rank_change:+d}"
        out.append(
            f"  {rank}  {i.item_id:<{iw}}  {_title(i):<{tw}}  {i.score_with:7.4f}  {i.score_without:8.4f}  "
            f"{i.rank_without:>7}  {mark}"
        )
    if r.levels:
        out.append("")
        out.append("score change when a knowledge path is off (off - full, over all candidates):")
        nw = max(len(lv.name) for lv in r.levels)
        out.append(
            f"  {'path':<{nw}}  model  {'mean':>8}  {'mean |d|':>8}  {'max |d|':>8}  top-{r.top_k} kept"
        )
        for lv in r.levels:
            if not lv.available:
                out.append(f"  {lv.name:<{nw}}  {lv.model:<5}  n/a: {lv.note}")
                continue
            out.append(
                f"  {lv.name:<{nw}}  {lv.model:<5}  {lv.mean_change:+8.4f}  {lv.mean_abs_change:8.4f}  "
                f"{lv.max_abs_change:8.4f}  {lv.topk_kept}/{min(r.top_k, r.n_candidates)}"
            )
        if r.torch_onnx_max_diff is not None:
            out.append(
                f"  (torch rows use the run's torch model {r.run_dir}; its full score differs from ONNX by "
                f"at most {r.torch_onnx_max_diff:.1e})"
            )
    return "\n".join(line.rstrip() for line in out)


def _title(i: ItemRow) -> str:
    t = i.title or ""
    return t if len(t) <= 40 else t[:39] + "…"


def _png(r: ExplainReport) -> str | None:
    """A small bar chart (base64 PNG) of what the user's knowledge adds to each item's score (with
    knowledge - fallback; absolute scores of neighbouring items differ too little to see), or None
    when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = r.items
    if not rows:
        return None
    colours = {"in": "tab:green", "out": "tab:red", "kept": "tab:blue"}
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2), dpi=90)
    y = np.arange(len(rows))
    ax.barh(y, [i.score_with - i.score_without for i in rows], 0.6, color=[colours[i.status] for i in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{i.item_id} {_title(i)[:24]}" for i in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("score with knowledge - score with the fallback vector (ONNX)", fontsize=8)
    ax.set_title("green: in the top-K only with knowledge; red: only with the fallback", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(r: ExplainReport) -> str:
    """A self-contained HTML page (inline CSS, the chart as a data URI)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>llm4msr explain: {e(_subject(r))}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "pre{background:#f5f5f5;padding:.8em;white-space:pre-wrap}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td.l,th.l{text-align:left}"
        ".in{background:#e3f6e3}.out{background:#fbe3e3}.muted{color:#777}</style></head><body>",
        f"<h1>Why these items for {e(_subject(r))}</h1>",
        "<ul>",
        f"<li>model <code>{e(r.model_dir)}</code>{' (registry ' + e(r.model_id) + ')' if r.model_id else ''}</li>",
        f"<li>knowledge snapshot <code>{e(r.snapshot_id)}</code> ({e(r.snapshot_path)}), family "
        f"{e(str(r.knowledge_family))}, {'two-pass' if r.two_pass else 'one-pass'}</li>",
        f"<li>dataset <code>{e(r.dataset_dir)}</code>: {r.n_candidates} candidate items</li>",
        *[f"<li class='muted'>{e(n)}</li>" for n in r.notes],
        "</ul>",
    ]
    for p in r.prompts:
        parts.append(f"<h2>{e(p.kind)} {e(p.entity_id)}: prompt</h2>")
        if p.text is None:
            parts.append("<p>No prompt (no vector).</p>")
        else:
            ok = (
                "equals the encoded text (sha256 matches the snapshot)"
                if p.matches_snapshot
                else ("does NOT match the snapshot's prompt hash")
            )
            parts.append(
                f"<p class='muted'>{e(str(p.template_version))}, {ok}; sha256 {e(str(p.text_sha256))}</p>"
            )
            parts.append(f"<pre>{e(p.text)}</pre>")
        if p.rerender:
            parts.append(f"<p class='muted'>{e(p.rerender)}</p>")
        if p.chat_wrapped:
            parts.append(
                f"<details><summary>as sent (chat template)</summary><pre>{e(p.chat_wrapped)}</pre></details>"
            )
        if p.answer:
            parts.append(f"<h3>LLM answer</h3><pre>{e(p.answer)}</pre>")
    for kind, nn in r.neighbours.items():
        parts.append(f"<h2>Nearest {e(kind)}s by knowledge (cosine)</h2>")
        parts.append("<table><tr><th class='l'>id</th><th>cosine</th></tr>")
        parts += [f"<tr><td class='l'>{e(n.entity_id)}</td><td>{n.similarity:+.4f}</td></tr>" for n in nn]
        parts.append("</table>")
    what = (
        "with the user's knowledge vs the fallback vector" if r.user_has_knowledge else "the fallback vector"
    )
    parts.append(f"<h2>Top-{r.top_k}: {what} (ONNX)</h2>")
    parts.append(
        "<table><tr><th>rank</th><th class='l'>item</th><th class='l'>title</th><th>score</th>"
        "<th>fallback score</th><th>fallback rank</th><th class='l'>moved</th></tr>"
    )
    for i in r.items:
        moved = {"in": "in (knowledge)", "out": "out (fallback only)"}.get(i.status, f"{i.rank_change:+d}")
        parts.append(
            f"<tr class='{i.status}'><td>{i.rank_with if i.status != 'out' else '-'}</td>"
            f"<td class='l'>{e(i.item_id)}</td><td class='l'>{e(i.title or '')}</td><td>{i.score_with:.4f}</td>"
            f"<td>{i.score_without:.4f}</td><td>{i.rank_without}</td><td class='l'>{e(moved)}</td></tr>"
        )
    parts.append("</table>")
    png = _png(r)
    if png:
        parts.append(
            f"<p><img alt='score change from the user knowledge per item' src='data:image/png;base64,{png}'></p>"
        )
    if r.levels:
        parts.append("<h2>Score change when a knowledge path is off</h2>")
        parts.append(
            "<table><tr><th class='l'>path</th><th class='l'>model</th><th>mean</th><th>mean |Δ|</th>"
            f"<th>max |Δ|</th><th>top-{r.top_k} kept</th><th class='l'>how</th></tr>"
        )
        for lv in r.levels:
            if not lv.available:
                parts.append(
                    f"<tr><td class='l'>{e(lv.name)}</td><td class='l'>{lv.model}</td>"
                    f"<td colspan='4'>n/a</td><td class='l'>{e(lv.note)}</td></tr>"
                )
                continue
            parts.append(
                f"<tr><td class='l'>{e(lv.name)}</td><td class='l'>{lv.model}</td><td>{lv.mean_change:+.4f}</td>"
                f"<td>{lv.mean_abs_change:.4f}</td><td>{lv.max_abs_change:.4f}</td><td>{lv.topk_kept}</td>"
                f"<td class='l'>{e(lv.note)}</td></tr>"
            )
        parts.append("</table>")
        if r.torch_onnx_max_diff is not None:
            parts.append(
                f"<p class='muted'>torch full score vs ONNX: max |Δ| {r.torch_onnx_max_diff:.1e}</p>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(r: ExplainReport, path: str | Path) -> Path:
    from llm4msr.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, render_html(r))
    return path
