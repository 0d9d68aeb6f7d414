"""Serving benchmark, side by side in one run, for 100 and 1000 candidates per request.

Measures, on one STAR + LLM4MSR ranker (default sizes: 16-dim embeddings, [128, 64] MLP, 64-dim
knowledge; random weights, which do not change the cost) with knowledge in a private
redis-server on a free loopback port:

* in-process p50/p99 of a full request (id lookup + ONE Redis read + model): onnxruntime vs
  PyTorch eager (same assembly and read, the model call differs), interleaved per iteration;
* over HTTP (a real `llm4msr serve` process, uvicorn, keep-alive client) p50/p99 incl. the read;
* throughput (requests/s) from a bounded load generator (C client threads, at most N requests
  and T seconds), loopback only;
* size and in-process p99 of every exported variant (float32, float16, int8).

    python -m bench.serving                       # writes docs/benchmarks/serving.md
    python -m bench.serving --requests 100 --out /tmp/serving.md    # quick
    llm4msr bench serving --http [ARGS]           # concurrent HTTP vs in-process (bench/serving_http.py)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def _setup(work: Path, n_users: int, n_items: int, dim: int, seed: int) -> tuple[Path, Path]:
    """Synthetic dataset + random snapshot + random-init STAR/LLM4MSR export -> (model_dir, snapshot)."""
    import torch

    from feature_store.build import build_and_write
    from feature_store.dataset import load_dataset
    from feature_store.knowledge_snapshot import KnowledgeRows, knowledge_family, write_snapshot_files
    from feature_store.offline_store import OfflineStore
    from llm4msr.config import DataConfig, ExportConfig, TrainConfig
    from ranker import export as E
    from ranker.features import build_spec
    from ranker.model import build_model

    cfg = DataConfig.model_validate(
        {
            "seed": seed,
            "synthetic": {"n_users": n_users, "n_items": n_items, "n_interactions": max(20 * n_users, 1000)},
        }
    )
    ds = load_dataset(build_and_write(cfg, work / "data"))
    rng = np.random.default_rng(seed)
    users = ds.users["user_id"].to_list()
    scen = ds.scenarios["scenario_id"].to_list()
    n = len(users) + len(scen)
    rows = KnowledgeRows(
        kind=["scenario"] * len(scen) + ["user"] * len(users),
        entity_id=scen + users,
        vectors=rng.standard_normal((n, dim)).astype(np.float32),
        prompt_hash=[""] * n,
        model_id=["bench"] * n,
        template_version=["t"] * n,
        generated_at=[int(time.time())] * n,
        answer=[None] * n,
    )
    family = knowledge_family("bench", "MEAN", dim)
    store = OfflineStore(work / "knowledge")
    with store.new_version("bench1") as (sid, tmp):
        write_snapshot_files(
            tmp,
            rows,
            {"snapshot_id": sid, "model_id": "bench", "pooling": "MEAN", "knowledge_family": family},
            "float32",
        )
    store.set_current("bench1")
    spec = build_spec(ds, dim)
    torch.manual_seed(seed)
    model = build_model(spec, TrainConfig(backbone="star", use_llm=True)).eval()
    u, i = E.lookups_from_spec(spec, ds.users, ds.items)
    src = E.ExportSource(
        model=model,
        layout=E.layout_from_spec(spec),
        vocabs=spec.vocabs,
        users=u,
        items=i,
        knowledge_dim=dim,
        use_llm=True,
        knowledge={"family": family, "snapshot_id": "bench1"},
        scenarios=spec.scenario_ids(),
    )
    E.export_source(src, work / "model", ExportConfig(variants=["float16", "int8"]))
    torch.save(model.state_dict(), work / "eager.pt")
    spec.save(work / "feature_spec.json")
    return work / "model", store.path_of("bench1")


def _in_process(model_dir: Path, url: str, n_req: int, sizes: list[int], seed: int) -> dict:
    import torch

    from feature_store.online import open_store
    from llm4msr.config import ServeConfig, StoreConfig
    from ranker.serving.runtime import Ranker

    torch.set_num_threads(1)
    scfg = StoreConfig(value_dtype="float32")
    ranker = Ranker(model_dir, open_store(url, scfg), ServeConfig(version_check_seconds=5.0))
    art = ranker.artifact
    # The eager model: the same weights, rebuilt from the training-side classes.
    from llm4msr.config import TrainConfig
    from ranker.features import FeatureSpec
    from ranker.model import build_model

    spec = FeatureSpec.load(model_dir.parent / "feature_spec.json")
    eager = build_model(spec, TrainConfig(backbone="star", use_llm=True)).eval()
    eager.load_state_dict(torch.load(model_dir.parent / "eager.pt"))
    rng = np.random.default_rng(seed)
    users, items, scen = art.assembler.users.ids, art.assembler.items.ids, ranker.scenarios

    def eager_score(user: str, s: str, cands: list[str]) -> np.ndarray:
        sparse = art.assembler.build(user, s, cands)
        vec, has, _, _ = ranker.user_knowledge(user)
        n = len(cands)
        x = {
            "sparse_ids": torch.from_numpy(sparse),
            "user_knowledge": torch.from_numpy(np.ascontiguousarray(np.broadcast_to(vec, (n, len(vec))))),
            "user_has_knowledge": torch.full((n,), has),
            "scenario_knowledge": torch.from_numpy(
                np.ascontiguousarray(
                    np.broadcast_to(ranker.scenario_vectors[ranker.scenario_vocab[s]], (n, len(vec)))
                )
            ),
        }
        with torch.inference_mode():
            return eager(**x).numpy()

    out: dict = {}
    for size in sizes:
        t_onnx, t_eager, worst = [], [], 0.0
        for _ in range(n_req):
            user = users[int(rng.integers(len(users)))]
            s = scen[int(rng.integers(len(scen)))]
            cands = [items[int(k)] for k in rng.integers(0, len(items), size)]
            t0 = time.perf_counter()
            a = ranker.score(user, s, cands)
            t1 = time.perf_counter()
            b = eager_score(user, s, cands)
            t2 = time.perf_counter()
            t_onnx.append(t1 - t0)
            t_eager.append(t2 - t1)
            worst = max(worst, float(np.abs(a - b).max()))
        out[size] = {
            "onnx_p50": _pct(t_onnx, 50),
            "onnx_p99": _pct(t_onnx, 99),
            "eager_p50": _pct(t_eager, 50),
            "eager_p99": _pct(t_eager, 99),
            "max_abs_diff": worst,
        }
    variants = {}
    for variant in ("float32", "float16", "int8"):
        r = Ranker(model_dir, open_store(url, scfg), ServeConfig(variant=variant))
        lat = []
        for _ in range(n_req):
            cands = [items[int(k)] for k in rng.integers(0, len(items), 1000)]
            t0 = time.perf_counter()
            r.score(users[int(rng.integers(len(users)))], scen[0], cands)
            lat.append(time.perf_counter() - t0)
        variants[variant] = {
            "bytes": r.artifact.onnx_path.stat().st_size,
            "p50": _pct(lat, 50),
            "p99": _pct(lat, 99),
            "auc_delta": (art.manifest["variants"].get(variant) or {}).get("auc_delta"),
        }
    out["variants"] = variants
    return out


def _http(
    model_dir: Path,
    url: str,
    n_req: int,
    sizes: list[int],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    seed: int,
) -> dict:
    import httpx

    from bench.redis_server import free_port
    from ranker.serving.artifact import load_artifact

    art = load_artifact(model_dir)
    users, items, scen = art.assembler.users.ids, art.assembler.items.ids, art.scenarios

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LLM4MSR_SERVE_TOKEN"}
    cli = str(Path(sys.executable).parent / "llm4msr")
    proc = subprocess.Popen(
        [
            cli,
            "serve",
            "--model",
            str(model_dir),
            "--store",
            url,
            "--port",
            str(port),
            "--set",
            "store.value_dtype=float32",
            "--set",
            "serve.version_check_seconds=5",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        rng = np.random.default_rng(seed)
        out: dict = {}
        with httpx.Client(base_url=base, timeout=30) as client:
            for size in sizes:
                lat = []
                for _ in range(n_req):
                    body = {
                        "user_id": users[int(rng.integers(len(users)))],
                        "scenario_id": scen[0],
                        "item_ids": [items[int(k)] for k in rng.integers(0, len(items), size)],
                    }
                    t0 = time.perf_counter()
                    r = client.post("/score", json=body)
                    lat.append(time.perf_counter() - t0)
                    r.raise_for_status()
                out[size] = {"http_p50": _pct(lat, 50), "http_p99": _pct(lat, 99)}
        # Throughput: `concurrency` keep-alive clients, bounded by count and time.
        for size in sizes:
            done, lock = [0], threading.Lock()
            stop_at = time.monotonic() + max_seconds

            def worker(
                wid: int,
                size: int = size,
                stop_at: float = stop_at,
                lock: threading.Lock = lock,
                done: list[int] = done,
            ) -> None:
                wrng = np.random.default_rng(seed + wid)
                with httpx.Client(base_url=base, timeout=30) as c:
                    while time.monotonic() < stop_at:
                        with lock:
                            if done[0] >= max_requests:
                                return
                            done[0] += 1
                        body = {
                            "user_id": users[int(wrng.integers(len(users)))],
                            "scenario_id": scen[-1],
                            "item_ids": [items[int(k)] for k in wrng.integers(0, len(items), size)],
                        }
                        c.post("/score", json=body).raise_for_status()

            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[size]["rps"] = done[0] / (time.perf_counter() - t0)
            out[size]["load_requests"] = done[0]
        return out
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--http" in argv:  # the concurrency benchmark: docs/benchmarks/serving-http.md
        from bench import serving_http

        argv.remove("--http")
        return serving_http.main(argv)
    ap = argparse.ArgumentParser(
        prog="bench.serving",
        description=__doc__.split("\n\n")[0],
        epilog="--http: the concurrent HTTP benchmark instead (`llm4msr bench serving --http --help`).",
    )
    ap.add_argument("--requests", type=int, default=300, help="timed requests per setting (default 300)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64, help="knowledge dimension")
    ap.add_argument("--concurrency", type=int, default=4, help="load-generator client threads")
    ap.add_argument("--load-requests", type=int, default=2000, help="at most this many requests per load run")
    ap.add_argument("--load-seconds", type=float, default=15.0, help="at most this long per load run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="report (default docs/benchmarks/serving.md)")
    ap.add_argument("--quick", action="store_true", help="small run for `bench all`: serving-quick.md")
    args = ap.parse_args(argv)
    if args.quick:  # a quick run never replaces the recorded report
        args.requests, args.load_requests, args.load_seconds = 50, 200, 5.0
    args.out = args.out or str(REPO / "docs" / "benchmarks" / f"serving{'-quick' if args.quick else ''}.md")
    logging.basicConfig(level=logging.WARNING)
    from bench.redis_server import RedisServer
    from feature_store.materialize import materialize
    from llm4msr.config import StoreConfig

    sizes = [100, 1000]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        model_dir, snap = _setup(work, args.users, args.items, args.dim, args.seed)
        redis = RedisServer(work)
        redis.start()
        try:
            materialize(snap, redis.url, StoreConfig(value_dtype="float32"))
            inproc = _in_process(model_dir, redis.url, args.requests, sizes, args.seed)
            http = _http(
                model_dir,
                redis.url,
                args.requests,
                sizes,
                args.concurrency,
                args.load_requests,
                args.load_seconds,
                args.seed,
            )
        finally:
            redis.stop()
    load_after = os.getloadavg()[0]
    cmd = "python -m bench.serving " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores **shared with other jobs while measured** "
        "(numbers are noisy; compare the columns of one run, not runs; 1-minute load average "
        f"{load_before:.1f} at the start, {load_after:.1f} at the end). onnxruntime and PyTorch both use 1 "
        "intra-op thread. Model: STAR + LLM4MSR meta networks, 16-dim embeddings, MLP [128, 64], "
        f"{args.dim}-dim knowledge, {args.users} users, {args.items} items; knowledge in a local redis-server "
        "(float32 values, loopback). Every request = id lookup + ONE Redis read (user knowledge) + model.",
        "A request is one user in one scenario, so the model computes the generated meta-layer weights and "
        "STAR's per-scenario weights once (row 0) and applies them to every row "
        "(`ranker.layers.RowGroups`; rows that differ take the reference forward, same function).",
        "",
        "## Latency per request (ms)",
        "",
        "| candidates | in-process ONNX p50 | p99 | PyTorch eager p50 | p99 | eager/ONNX (p50) | max abs diff "
        "| HTTP p50 | HTTP p99 | throughput (req/s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in sizes:
        a, h = inproc[s], http[s]
        lines.append(
            f"| {s} | {a['onnx_p50']:.2f} | {a['onnx_p99']:.2f} | {a['eager_p50']:.2f} | {a['eager_p99']:.2f} | "
            f"{a['eager_p50'] / a['onnx_p50']:.1f}x | {a['max_abs_diff']:.1e} | {h['http_p50']:.2f} | "
            f"{h['http_p99']:.2f} | {h['rps']:.0f} ({h['load_requests']} requests, {args.concurrency} clients) |"
        )
    target = inproc[1000]["onnx_p99"]
    lines += [
        "",
        f"Target p99 <= 10 ms in-process for 1000 candidates incl. the knowledge read: "
        f"**{target:.2f} ms ({'met' if target <= 10 else 'NOT met'})**.",
        "",
        "## Exported variants (1000 candidates, in-process incl. the Redis read)",
        "",
        "| variant | file size (MB) | p50 (ms) | p99 (ms) | AUC change on validation |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, v in inproc["variants"].items():
        auc = "n/a (random weights)" if v["auc_delta"] is None else f"{v['auc_delta']:+.5f}"
        lines.append(
            f"| {name} | {v['bytes'] / 1e6:.3f} | {v['p50']:.2f} | {v['p99']:.2f} | "
            f"{'0 (reference)' if name == 'float32' else auc} |"
        )
    lines += [
        "",
        "Random weights: the AUC change of a variant is measured by `llm4msr export` on a trained run "
        "(manifest.json -> variants.*.auc_delta).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
