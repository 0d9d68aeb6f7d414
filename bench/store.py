"""Online-store benchmark, both backends side by side in one run.

Measures: materialization rate (keys/s) of N users x D-dim float16 into Redis (a private
redis-server on a free loopback port) and into the local store; p50/p99 latency of batch reads of
1, 100 and 1000 users (backends interleaved per iteration, so both see the same machine load);
Redis memory per user (INFO used_memory before/after). Results -> docs/benchmarks/store.md.

    python -m bench.store --users 1000000          # the issue's setting
    python -m bench.store --users 20000 --out /tmp/store.md   # quick
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def _make_snapshot(root: Path, n_users: int, dim: int, seed: int, sid: str = "bench1") -> Path:
    from feature_store.knowledge_snapshot import KnowledgeRows, knowledge_family, write_snapshot_files
    from feature_store.offline_store import OfflineStore

    rng = np.random.default_rng(seed)
    n = n_users + 3
    vectors = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    rows = KnowledgeRows(
        kind=["scenario"] * 3 + ["user"] * n_users,
        entity_id=[f"s{i}" for i in range(3)] + [f"u{i:08d}" for i in range(n_users)],
        vectors=vectors,
        prompt_hash=[""] * n,
        model_id=["bench"] * n,
        template_version=["t"] * n,
        generated_at=[int(time.time())] * n,
        answer=[None] * n,
    )
    store = OfflineStore(root)
    with store.new_version(sid) as (sid, tmp):
        write_snapshot_files(
            tmp,
            rows,
            {
                "snapshot_id": sid,
                "model_id": "bench",
                "pooling": "MEAN",
                "knowledge_family": knowledge_family("bench", "MEAN", dim),
            },
            "float16",
        )
    store.set_current(sid)
    return store.path_of(sid)


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users", type=int, default=None, help="users to materialize (default 1e6; A/B mode 1e5)"
    )
    parser.add_argument("--dim", type=int, default=256, help="vector dimension (default 256)")
    parser.add_argument("--iters", type=int, default=300, help="timed reads per batch size and backend")
    parser.add_argument(
        "--write-chunk",
        type=int,
        default=None,
        help="entities per write transaction (default: store.write_chunk)",
    )
    parser.add_argument(
        "--bucket-fields",
        type=int,
        default=None,
        help="Redis entities per hash bucket (default: store.redis_bucket_fields)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting a private one "
        "(it must be empty or a throwaway: the bench writes under namespace llm4msr-bench)",
    )
    parser.add_argument("--out", default=None, help="report (default docs/benchmarks/store.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small run for `bench all`: store-quick.md")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="A/B mode: the same serving and batch workloads against the code in this folder and this "
        "tree, alternating (--users default 100000; --rounds; report --out, default "
        "docs/benchmarks/store-ab.md)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B mode: rounds (each side once per round)")
    parser.add_argument("--requests", type=int, default=1000, help="A/B mode: serving requests per round")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        import json

        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    out_given = args.out
    if args.quick:  # a quick run never replaces the recorded report
        args.users, args.iters = 20_000, 50
    elif args.users is None and args.before is None:
        args.users = 1_000_000
    args.out = args.out or str(REPO / "docs" / "benchmarks" / f"store{'-quick' if args.quick else ''}.md")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python -m bench.store " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.before is not None:
        out = Path(out_given or REPO / "docs" / "benchmarks" / "store-ab.md")
        return compare(args.before, args.users or 100_000, args.rounds, args.requests, out, command)

    import redis

    from bench.redis_server import RedisServer
    from feature_store.materialize import load_entities, materialize
    from feature_store.online import open_store
    from llm4msr.config import StoreConfig

    overrides = {"write_chunk": args.write_chunk, "redis_bucket_fields": args.bucket_fields}
    cfg = StoreConfig(
        namespace="llm4msr-bench", verify_sample=256, **{k: v for k, v in overrides.items() if v is not None}
    )
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="llm4msr-bench-store-") as tmpd:
        tmp = Path(tmpd)
        server = None
        url = args.redis_url
        if url is None:
            (tmp / "redis").mkdir()
            server = RedisServer(tmp / "redis")
            server.start()
            url = server.url
        try:
            t = time.perf_counter()
            snap = _make_snapshot(tmp / "offline", args.users, args.dim, args.seed)
            log.info(
                "snapshot of %d users x %d float16 written in %.1fs",
                args.users,
                args.dim,
                time.perf_counter() - t,
            )
            client = redis.Redis.from_url(url)
            mem0 = int(client.info("memory")["used_memory"])
            results = {}
            small = _make_snapshot(tmp / "offline", 1000, args.dim, args.seed + 1, sid="bench0")
            phases: dict[str, dict[str, float]] = {}
            for name, target in (("redis", url), ("local", str(tmp / "online"))):
                materialize(small, target, cfg)  # a previous version, so the switch retires something
                marks: list[tuple[float, float]] = []  # (client CPU s, server CPU s) at first/last user chunk

                def mark(kind: str, chunk: int, n_chunks: int, name: str = name, marks: list = marks) -> None:
                    if kind == "user" and chunk in (0, n_chunks - 1):
                        srv = client.info("cpu") if name == "redis" else {}
                        marks.append(
                            (
                                time.process_time(),
                                srv.get("used_cpu_user", 0.0) + srv.get("used_cpu_sys", 0.0),
                            )
                        )

                rep = materialize(snap, target, cfg, on_chunk=mark)
                results[name] = rep
                st = open_store(target, cfg)
                t = time.perf_counter()
                _, entities = load_entities(snap, cfg.value_dtype)
                ph = {"load": time.perf_counter() - t}
                t = time.perf_counter()
                st.verify_version(rep.version, entities, cfg.verify_sample, seed=args.seed)
                ph["verify"] = time.perf_counter() - t
                del entities
                t = time.perf_counter()
                st.rollback()  # back to bench0: the 1M version starts expiring
                ph["switch_away"] = time.perf_counter() - t
                t = time.perf_counter()
                st.set_current(rep.version)  # forward again: the 1M version is kept (persist)
                ph["switch_back"] = time.perf_counter() - t
                between = args.users - cfg.write_chunk  # users written between the two marks
                if len(marks) == 2 and between > 0:
                    ph["client_us_per_key"] = (marks[1][0] - marks[0][0]) / between * 1e6
                    ph["server_us_per_key"] = (marks[1][1] - marks[0][1]) / between * 1e6
                phases[name] = ph
                st.close()
                log.info(
                    "%s: %d keys in %.1fs write (%.0f keys/s), %.1fs total",
                    name,
                    rep.keys_written,
                    rep.write_seconds,
                    rep.keys_per_second,
                    rep.seconds,
                )
            mem1 = int(client.info("memory")["used_memory"])
            stores = {"redis": open_store(url, cfg), "local": open_store(str(tmp / "online"), cfg)}
            rng = np.random.default_rng(args.seed)
            lat: dict[tuple[str, int], list[float]] = {}
            cpu: dict[tuple[str, int], list[float]] = {}
            server_us: dict[int, float] = {}
            for batch in (1, 100, 1000):
                for name in stores:
                    lat[(name, batch)], cpu[(name, batch)] = [], []
                    stores[name].read("user", ["u00000000"])  # warm: pointer cache, connections, maps
                client.config_resetstat()
                for _ in range(args.iters):
                    ids = [f"u{i:08d}" for i in rng.integers(0, args.users, size=batch)]
                    for name, st in stores.items():
                        c0, t0 = time.process_time(), time.perf_counter()
                        r = st.read("user", ids)
                        lat[(name, batch)].append(time.perf_counter() - t0)
                        cpu[(name, batch)].append(time.process_time() - c0)
                        assert r.found.all(), (name, r.n_missing, r.n_errors)
                stats = client.info("commandstats")
                server_us[batch] = (
                    sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_hmget", "cmdstat_get"))
                    / args.iters
                )
            for st in stores.values():
                st.close()
        finally:
            if server is not None:
                server.stop()

    load1 = os.getloadavg()
    n_keys = args.users + 3 + 1000 + 3  # the 1M version + the small previous version
    per_user = (mem1 - mem0) / n_keys
    raw = args.dim * 2 + 24
    buckets = -(-(args.users) // cfg.redis_bucket_fields)
    lines = [
        "# Online store benchmark",
        "",
        f"Command: `{command}` (run from the repository root)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, redis-server on loopback, redis-py + hiredis. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load0)} at the start, {'/'.join(f'{x:.1f}' for x in load1)} at the end. "
        "**The CPUs were shared with other jobs during the run: numbers are noisy; compare the two "
        "columns, measured in the same run (reads interleaved per iteration).**",
        "",
        f"Data: {args.users:,} users (+3 scenarios) x {args.dim}-dim float16, value = 24-byte header + "
        f"{args.dim * 2} bytes; write chunk {cfg.write_chunk} entities; Redis: {buckets} hash bucket(s) "
        f"per kind (store.redis_bucket_fields = {cfg.redis_bucket_fields}).",
        "",
        "## Materialization",
        "",
        "`write` = writing all values (the materialization rate); `total` = one `materialize()` call "
        "(snapshot load + checksum check, write, verify, pointer switch). Then, separately: loading the "
        "snapshot again (`load`), `verify_version` (counts + 256 sampled checksums), switching away from "
        "the 1M version (it starts expiring) and back to it (it is kept again). `write CPU` = CPU time "
        "per key spent by the writing process and by redis-server while the user chunks were written "
        "(what the write costs, independent of how long it waited for a CPU).",
        "",
        "| backend | keys written | write s | keys/s (write) | write CPU us/key: client + server | total s "
        "| load s | verify s | switch away s | switch back s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rep in results.items():
        ph = phases[name]
        cpu_key = (
            f"{ph['client_us_per_key']:.2f} + {ph['server_us_per_key']:.2f}"
            if "client_us_per_key" in ph
            else "-"
        )
        lines.append(
            f"| {name} | {rep.keys_written:,} | {rep.write_seconds:.1f} | {rep.keys_per_second:,.0f} | {cpu_key} | "
            f"{rep.seconds:.1f} | {ph['load']:.1f} | {ph['verify']:.3f} | {ph['switch_away']:.3f} | "
            f"{ph['switch_back']:.3f} |"
        )
    lines += [
        "",
        "Target: >= 100,000 keys/s into Redis.",
        "",
        "## Batch read latency (ms, one `read()` call = HMGET(s) in one round trip / one memory-mapped gather)",
        "",
        "| batch | redis p50 | redis p99 | local p50 | local p99 | redis/local p50 | redis client CPU p50 "
        "| redis server time per read | local CPU p50 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch in (1, 100, 1000):
        r50, r99 = _pct(lat[("redis", batch)], 50), _pct(lat[("redis", batch)], 99)
        l50, l99 = _pct(lat[("local", batch)], 50), _pct(lat[("local", batch)], 99)
        rc, lc = _pct(cpu[("redis", batch)], 50), _pct(cpu[("local", batch)], 50)
        lines.append(
            f"| {batch} | {r50:.3f} | {r99:.3f} | {l50:.3f} | {l99:.3f} | {r50 / l50:.1f}x | {rc:.3f} | "
            f"{server_us[batch] / 1000:.3f} | {lc:.3f} |"
        )
    lines += [
        "",
        f"{args.iters} reads per cell, random user ids, decode + header checks + float16 -> float32 "
        'included. Target: p99 <= 5 ms for 1000 users from Redis. Latency is wall time; "client CPU" is '
        "the reading process' CPU time per read (time.process_time), \"server time\" is Redis' own "
        "time in the read commands per read (INFO commandstats, HMGET + pointer GET): on a machine "
        "whose CPUs are oversubscribed the wall time is mostly waiting for a CPU, and these two say "
        "what a read costs.",
        "",
        "## Redis memory",
        "",
        f"used_memory grew by {(mem1 - mem0) / 2**20:,.1f} MiB for {n_keys:,} values (the 1M version and "
        f"a 1,000-user previous version): **{per_user:,.0f} bytes per user** (value {raw} bytes; the rest "
        "is the hash field (entity id) and Redis' per-field overhead).",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- before/after (A/B)
# `--before DIR`: the same workloads against the code in DIR (e.g. `git archive <rev>` of an older
# commit) and against this tree, in worker processes alternating A, B, B, A, ... on one private
# redis-server, so both see the same machine. The worker uses only the public API (materialize,
# open_store, read), which both trees share.
AB_METRICS = [  # (key, label, unit)
    ("serving_redis_p50", "serving request: 1 user read (Redis) p50", "ms"),
    ("serving_redis_p99", "serving request: 1 user read (Redis) p99", "ms"),
    ("serving_redis_cpu", "serving request: 1 user read (Redis) client CPU p50", "ms"),
    ("serving_local_p50", "serving request: 1 user read (local) p50", "ms"),
    ("serving_local_p99", "serving request: 1 user read (local) p99", "ms"),
    ("read1k_redis_p50", "1,000-user read (Redis) p50", "ms"),
    ("read1k_redis_cpu", "1,000-user read (Redis) client CPU p50", "ms"),
    ("read1k_local_p50", "1,000-user read (local) p50", "ms"),
    ("read1k_local_cpu", "1,000-user read (local) CPU p50", "ms"),
    ("batch_redis_p50", "batch job: 10,000-user read (Redis) p50", "ms"),
    ("batch_redis_cpu", "batch job: 10,000-user read (Redis) client CPU p50", "ms"),
    ("batch_local_p50", "batch job: 10,000-user read (local) p50", "ms"),
    ("batch_local_cpu", "batch job: 10,000-user read (local) CPU p50", "ms"),
    ("write_redis", "materialize write (Redis)", "keys/s"),
    ("write_local", "materialize write (local)", "keys/s"),
]


def _worker(spec: dict) -> dict[str, float]:
    """One side of the A/B run: materialize into Redis and a local store, then time the reads."""
    from feature_store.materialize import materialize
    from feature_store.online import open_store
    from llm4msr.config import StoreConfig

    cfg = StoreConfig(namespace=spec["namespace"], verify_sample=256)
    out: dict[str, float] = {}
    targets = {"redis": spec["redis_url"], "local": spec["local_dir"]}
    for name, target in targets.items():
        out[f"write_{name}"] = materialize(spec["snapshot"], target, cfg).keys_per_second
    stores = {name: open_store(target, cfg) for name, target in targets.items()}
    pinned = {name: st.current() for name, st in stores.items()}
    rng = np.random.default_rng(spec["seed"])
    n = spec["users"]
    for name, st in stores.items():  # what a serving runtime does once per version
        assert st.read("scenario", ["s0", "s1", "s2"], version=pinned[name]).found.all()
    lat: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for tag, batch, reps in (("serving", 1, spec["requests"]), ("read1k", 1000, 30), ("batch", 10_000, 10)):
        for _ in range(reps):
            ids = [f"u{i:08d}" for i in rng.integers(0, n, size=batch)]
            for name, st in stores.items():
                c0, t0 = time.process_time(), time.perf_counter()
                r = st.read("user", ids, version=pinned[name])
                lat.setdefault(f"{tag}_{name}", []).append(time.perf_counter() - t0)
                cpu.setdefault(f"{tag}_{name}", []).append(time.process_time() - c0)
                assert r.found.all(), (name, r.n_missing, r.n_errors)
    for key, xs in lat.items():
        out[f"{key}_p50"], out[f"{key}_p99"] = _pct(xs, 50), _pct(xs, 99)
        out[f"{key}_cpu"] = _pct(cpu[key], 50)
    for st in stores.values():
        st.close()
    return out


def compare(before: Path, users: int, rounds: int, requests: int, out: Path, command: str) -> int:
    """Run the workloads against `before` and this tree, alternating, and write the table."""
    import json
    import subprocess

    from bench.redis_server import RedisServer

    load0 = os.getloadavg()
    sides = {"before": before.resolve(), "after": REPO}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="llm4msr-bench-store-ab-") as tmpd:
        tmp = Path(tmpd)
        (tmp / "redis").mkdir()
        server = RedisServer(tmp / "redis")
        server.start()
        try:
            snap = _make_snapshot(tmp / "offline", users, 256, 0)
            client = server.client()
            for r in range(rounds):
                for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    client.flushdb()
                    spec = {
                        "redis_url": server.url,
                        "snapshot": str(snap),
                        "namespace": f"ab-{side}",
                        "local_dir": str(tmp / f"local-{side}-{r}"),
                        "users": users,
                        "requests": requests,
                        "seed": r,
                    }
                    env = {**os.environ, "PYTHONPATH": str(sides[side])}
                    proc = subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                        cwd=sides[side],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    if proc.returncode != 0:
                        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-3000:]}")
                    runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    log.info("round %d %s: %s", r, side, runs[side][-1])
        finally:
            server.stop()
    load1 = os.getloadavg()
    lines = [
        "## Simplification: before/after (issue 14 item 3)",
        "",
        f"Command: `{command}` (run from the repository root; `before` = `git archive` of the commit "
        "before the simplification, unpacked into that folder)",
        "",
        f"{users:,} users x 256-dim float16 (1 Redis hash bucket per kind below 65,536 users, "
        f"{-(-users // 65536)} here), one private redis-server on loopback; {rounds} rounds, each a "
        "fresh worker process per side, alternating which side runs first; every cell is the median "
        f"over the rounds of that round's p50/p99 ({requests} serving requests, 30 reads of 1,000 users, "
        "10 reads of 10,000 users per round, Redis and local interleaved per read). A serving request "
        "reads one user by explicit version (`ranker/serving/runtime.py`; the scenario vectors are read "
        "once per version). Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in load0)} at the start, {'/'.join(f'{x:.1f}' for x in load1)} at "
        "the end: **the 2 CPUs were shared with other jobs; compare the columns, not the absolute values.**",
        "",
        "| workload | unit | before | after | after/before |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, label, unit in AB_METRICS:
        b = float(np.median([x[key] for x in runs["before"]]))
        a = float(np.median([x[key] for x in runs["after"]]))
        fmt = "{:,.0f}" if unit == "keys/s" else "{:.3f}"
        lines.append(f"| {label} | {unit} | {fmt.format(b)} | {fmt.format(a)} | {a / b:.2f}x |")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
