"""End-to-end scale run: data build -> knowledge -> train (1 epoch) -> export -> materialize into
Redis -> serve a few requests, with wall time, CPU time and peak memory per stage (issue 15 item 4).

Each stage is the real `llm4msr` command in a process of its own, so a stage's peak memory is its
own: `ru_maxrss` from `os.wait4` for the one-shot commands, `VmHWM` (peak resident set) read from
/proc for the long-lived processes (redis-server after materializing, `llm4msr serve` after the
requests). Given several sizes, the report adds each stage's growth from the smallest to the
largest size (time and memory ratios), so the stage that grows fastest, the next bottleneck, is
visible. Knowledge uses the cheapest real encoder: all-MiniLM-L6-v2 under vLLM on CPU, one shard.

    python -m bench.scale --interactions 100000                      # smoke run, minutes
    python -m bench.scale --interactions 1000000 10000000 --out docs/benchmarks/scale.md
    python -m bench.scale --interactions 100000 --set train.batch_size=4096   # --set: every stage
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "llm4msr")  # the installed console script
DEFAULT_OUT = REPO / "artifacts" / "bench" / "scale" / "report.md"
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # halves vLLM start-up on CPU
    "TOKENIZERS_PARALLELISM": "false",
}


class ScaleError(RuntimeError):
    """A stage failed; the message names it and ends with the tail of its log."""


@dataclass
class Stage:
    """One measured stage: seconds of wall and CPU time, peak resident memory, what it produced."""

    name: str
    seconds: float
    cpu_seconds: float | None
    peak_rss_mib: float
    command: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SizeRun:
    """All stages at one size (interactions, users, items)."""

    interactions: int
    users: int
    items: int
    workdir: str
    stages: list[Stage] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _vm_hwm_mib(pid: int) -> float:
    """Peak resident set of a running process (Linux /proc/<pid>/status VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ScaleError(f"no VmHWM for pid {pid} (is this Linux?)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLM4MSR_SERVE_TOKEN"}  # serve without a token
    return {**env, **CHILD_ENV}


def run_stage(name: str, args: list[str], log_dir: Path) -> tuple[Stage, str]:
    """Run `llm4msr <args>` to completion; its own peak memory comes from wait4. Returns the stage and stdout."""
    cmd = [CLI, *args]
    log = log_dir / f"{name}.log"
    out = log_dir / f"{name}.stdout"
    t0 = time.perf_counter()
    with open(log, "wb") as err, open(out, "wb") as std:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=std, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2500:]
        raise ScaleError(f"stage {name} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    stage = Stage(
        name=name,
        seconds=round(seconds, 2),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        command=shlex.join(cmd),
    )
    return stage, out.read_text()


def _requests(data_dir: Path, n: int, n_candidates: int) -> list[dict[str, Any]]:
    """`n` /score bodies: real test-split (user, scenario) pairs, candidates from the catalogue."""
    import polars as pl

    test = pl.scan_parquet(data_dir / "interactions.parquet").filter(pl.col("split") == "test")
    pairs = test.select("user_id", "scenario_id").unique(maintain_order=True).head(n).collect()
    items = pl.read_parquet(data_dir / "items.parquet", columns=["item_id"])["item_id"].head(n_candidates)
    return [{"user_id": u, "scenario_id": s, "item_ids": items.to_list()} for u, s in pairs.iter_rows()]


def serve_stage(model_dir: Path, store_url: str, data_dir: Path, n_requests: int, sets: list[str]) -> Stage:
    """Start `llm4msr serve`, send `n_requests` /score requests, read its peak memory, stop it."""
    import httpx

    from bench.serving_http import ServerProcess, _proc_cpu_s

    bodies = _requests(data_dir, n_requests, 100)
    if not bodies:
        raise ScaleError(f"no test-split rows in {data_dir} to build requests from")
    t0 = time.perf_counter()
    with ServerProcess(model_dir, store_url, overrides=sets) as server:
        ready = time.perf_counter() - t0
        latencies, codes = [], []
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            for body in bodies:
                t1 = time.perf_counter()
                codes.append(client.post("/score", json=body).status_code)
                latencies.append((time.perf_counter() - t1) * 1000)
        peak = _vm_hwm_mib(server.pid)
        cpu = _proc_cpu_s(server.pid)
        command = shlex.join(server.cmd)
    if any(c != 200 for c in codes):
        raise ScaleError(f"stage serve: /score answered {sorted(set(codes))} (want 200 only)")
    latencies.sort()
    return Stage(
        name="serve",
        seconds=round(time.perf_counter() - t0, 2),
        cpu_seconds=None if cpu is None else round(cpu, 2),
        peak_rss_mib=round(peak, 1),
        command=command,
        details={
            "startup_seconds": round(ready, 2),
            "requests": len(bodies),
            "candidates": len(bodies[0]["item_ids"]),
            "p50_ms": round(latencies[len(latencies) // 2], 2),
            "max_ms": round(latencies[-1], 2),
        },
    )


def _knowledge_counts(root: Path) -> dict[str, Any]:
    from feature_store.knowledge_snapshot import read_manifest
    from feature_store.offline_store import OfflineStore

    path = OfflineStore(root).current_path()
    manifest = read_manifest(path) if path else {}
    return {"counts": manifest.get("counts"), "dimension": manifest.get("dimension")}


def run_size(interactions: int, users: int, items: int, work: Path, args: argparse.Namespace) -> SizeRun:
    """Every stage at one size, in `work` (emptied first)."""
    from bench.redis_server import RedisServer

    if work.exists():
        shutil.rmtree(work)
    logs = work / "logs"
    logs.mkdir(parents=True)
    data, know, run, model = work / "data", work / "knowledge", work / "run", work / "model"
    sets = [f"data.synthetic.{k}={v}" for k, v in (("n_interactions", interactions), ("n_users", users))]
    sets += [f"data.synthetic.n_items={items}", f"knowledge.max_history_per_scenario={args.history}"]
    sets += ["knowledge.num_shards=1", "train.epochs=1", *args.set]
    common = [a for s in sets for a in ("--set", s)]
    result = SizeRun(interactions=interactions, users=users, items=items, workdir=str(work))

    def stage(name: str, cli_args: list[str]) -> str:
        st, out = run_stage(name, cli_args + common + ["-q"], logs)
        result.stages.append(st)
        print(f"  {interactions:>10,} {name:<12} {st.seconds:8.1f}s  {st.peak_rss_mib:8.0f} MiB", flush=True)
        return out

    stage("data", ["data", "build", "--dataset", "synthetic", "--out", str(data)])
    stage(
        "knowledge",
        ["knowledge", "build", "--data", str(data), "--knowledge", str(know), "--backend", args.backend]
        + ["--llm", args.llm, "--full"],
    )
    result.stages[-1].details = _knowledge_counts(know)
    stage("train", ["train", "--data", str(data), "--knowledge", str(know), "--out", str(run)])
    stage("export", ["export", "--run", str(run), "--out", str(model), "--data", str(data)])
    redis = RedisServer(work / "redis")
    (work / "redis").mkdir()
    redis.start()
    try:
        out = stage(
            "materialize", ["store", "materialize", "--knowledge", str(know), "--store", redis.url, "--json"]
        )
        mat = json.loads(out[out.index("{") :]) if "{" in out else {}
        result.stages[-1].details = {
            k: mat[k] for k in ("keys_written", "keys_skipped", "backend") if k in mat
        }
        result.stages[-1].details["redis_peak_rss_mib"] = round(_vm_hwm_mib(redis.pid), 1)
        result.stages.append(serve_stage(model, redis.url, data, args.requests, sets))
        s = result.stages[-1]
        print(f"  {interactions:>10,} {'serve':<12} {s.seconds:8.1f}s  {s.peak_rss_mib:8.0f} MiB", flush=True)
    finally:
        redis.stop()
    return result


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.1f}x" if a and b is not None else "-"


def markdown(runs: list[SizeRun], argv: list[str]) -> str:
    """The report: one table per size, then growth smallest -> largest per stage."""
    lines = [
        "# End-to-end scale run",
        "",
        f"Command: `python -m bench.scale {shlex.join(argv)}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}; "
        f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Each stage is one `llm4msr` command in its own process; peak RSS is that process's own "
        "(wait4 ru_maxrss; VmHWM for the server). `materialize` also gives redis-server's peak RSS.",
    ]
    for r in runs:
        lines += [
            "",
            f"## {r.interactions:,} interactions ({r.users:,} users, {r.items:,} items)",
            "",
            "| stage | seconds | CPU seconds | peak RSS (MiB) | details |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for s in r.stages:
            cpu = "-" if s.cpu_seconds is None else f"{s.cpu_seconds:.1f}"
            det = ", ".join(f"{k} {v}" for k, v in s.details.items())
            lines.append(f"| {s.name} | {s.seconds:.1f} | {cpu} | {s.peak_rss_mib:.0f} | {det} |")
        lines.append(f"| **total** | {sum(s.seconds for s in r.stages):.1f} | | | |")
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        lines += [
            "",
            f"## Growth from {a.interactions:,} to {b.interactions:,} interactions "
            f"({b.interactions / a.interactions:.0f}x the data, {b.users / a.users:.0f}x the users)",
            "",
            "CPU time is the steadier measure on a shared machine: wall time includes waiting for a core.",
            "",
            "| stage | time ratio | CPU time ratio | peak RSS ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        for s in a.stages:
            t = b.stage(s.name)
            lines.append(
                f"| {s.name} | {_ratio(s.seconds, t.seconds)} | {_ratio(s.cpu_seconds, t.cpu_seconds)} | "
                f"{_ratio(s.peak_rss_mib, t.peak_rss_mib)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--interactions", type=int, nargs="+", default=[100_000], help="one or more sizes")
    p.add_argument("--interactions-per-user", type=int, default=25, help="users = interactions / this")
    p.add_argument(
        "--items", type=int, default=None, help="catalogue size (default: interactions / 100, >= 1000)"
    )
    p.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    p.add_argument("--llm", default="minilm", help="knowledge model (default: MiniLM, the cheapest real one)")
    p.add_argument("--history", type=int, default=5, help="knowledge.max_history_per_scenario")
    p.add_argument("--requests", type=int, default=20, help="/score requests sent to the server")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every stage")
    p.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "bench" / "scale" / "work")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report; JSON next to it")
    p.add_argument("--keep", action="store_true", help="keep each size's work folder (default: delete it)")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="rewrite --out from a run's JSON (runs nothing)",
    )
    args = p.parse_args(argv)
    if args.render is not None:
        from llm4msr.atomic import write_text_atomic

        saved = json.loads(args.render.read_text())
        runs = [SizeRun(**{**r, "stages": [Stage(**st) for st in r["stages"]]}) for r in saved["runs"]]
        write_text_atomic(args.out, markdown(runs, saved["argv"]))
        print(f"report: {args.out} (rendered from {args.render})")
        return 0
    if not Path(CLI).is_file():
        p.error(f"{CLI} not found: run from the project's virtualenv (make setup)")
    runs = []
    for n in sorted(args.interactions):
        users = max(10, n // args.interactions_per_user)
        items = args.items or max(1000, n // 100)
        work = args.workdir / f"n{n}"
        runs.append(run_size(n, users, items, work, args))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    from llm4msr.atomic import write_json_atomic, write_text_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, markdown(runs, argv))
    write_json_atomic(args.out.with_suffix(".json"), {"argv": argv, "runs": [asdict(r) for r in runs]})
    print(f"report: {args.out} (+ {args.out.with_suffix('.json').name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
