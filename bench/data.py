"""Canonical-data benchmark: build + write the synthetic dataset at several sizes, side by side.

Each build runs in a fresh subprocess, so its peak memory (ru_maxrss) is its own; sizes are
interleaved per repeat so all see the same machine load. Reports per phase (generate, split +
cutoffs + vocabularies, validate + write Parquet) the median wall time, peak RSS, rows/s, and the
ratio of each size to the smallest. Results -> docs/benchmarks/data.md.

    python -m bench.data                                  # 1M and 10M interactions, 3 repeats
    python -m bench.data --sizes 200000 --repeats 1 --out /tmp/data.md   # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 60.0
TARGET_GIB = 4.0


def _worker(n: int, out: str, seed: int) -> dict:
    """One build in this process: phase timings and peak RSS (bytes)."""
    import resource
    import time

    from feature_store.adapters import get_adapter
    from feature_store.build import build_from_raw
    from feature_store.dataset import write_dataset
    from llm4msr.config import DataConfig

    cfg = DataConfig.model_validate(
        {
            "seed": seed,
            "synthetic": {"n_interactions": n, "n_users": max(10, n // 50), "n_items": max(30, n // 200)},
        }
    )
    t0 = time.perf_counter()
    raw = get_adapter("synthetic").load(cfg)
    t1 = time.perf_counter()
    # The same steps as build_and_write, with the adapter timed separately.
    ds = build_from_raw(cfg, raw, check=False)
    t2 = time.perf_counter()
    write_dataset(ds, out, source=ds.manifest["source"])
    t3 = time.perf_counter()
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    return {
        "n": n,
        "generate_s": t1 - t0,
        "split_vocab_s": t2 - t1,
        "write_s": t3 - t2,
        "total_s": t3 - t0,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "bytes": size,
    }


def _run_one(n: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="llm4msr-bench-data-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "bench.data",
            "--worker",
            str(n),
            "--seed",
            str(seed),
            "--out",
            f"{tmp}/ds",
        ]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark worker for n={n} failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm4msr bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated interaction counts")
    parser.add_argument("--repeats", type=int, default=3, help="builds per size (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=str(REPO / "docs" / "benchmarks" / "data.md"), help="markdown report"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.out, args.seed)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(args.repeats):
        for n in sizes:
            res = _run_one(n, args.seed)
            runs[n].append(res)
            print(
                f"repeat {r + 1}/{args.repeats} n={n:,}: {res['total_s']:.1f}s, "
                f"peak {res['peak_rss'] / 2**30:.2f} GiB",
                file=sys.stderr,
            )

    def med(n: int, key: str) -> float:
        return statistics.median(x[key] for x in runs[n])

    base = sizes[0]
    lines = [
        "# Canonical data benchmark: synthetic build + Parquet write",
        "",
        f"Command: `{' '.join(['python -m bench.data', *map(shlex.quote, argv if argv is not None else sys.argv[1:])])}`",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {_cpus()} CPUs. "
        "The CPU was shared with other jobs while this ran, so timings are noisy; each build runs in a "
        "fresh subprocess (peak RSS = that process's ru_maxrss), sizes interleaved per repeat.",
        f"Users = n/50, items = n/200, 3 scenarios, 12 categories, seed {args.seed}. "
        f"Median of {args.repeats} run(s). Target (issue 2): 10M interactions in < {TARGET_SECONDS:.0f} s and "
        f"< {TARGET_GIB:.0f} GiB.",
        "",
        "| interactions | generate s | split+cutoffs+vocabs s | validate+write s | total s | rows/s | peak RSS GiB "
        "| Parquet MiB | total vs smallest | per-row time vs smallest |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        total = med(n, "total_s")
        ratio = total / med(base, "total_s")
        lines.append(
            f"| {n:,} | {med(n, 'generate_s'):.1f} | {med(n, 'split_vocab_s'):.1f} | {med(n, 'write_s'):.1f} | "
            f"{total:.1f} | {n / total:,.0f} | {med(n, 'peak_rss') / 2**30:.2f} | {med(n, 'bytes') / 2**20:.0f} | "
            f"{ratio:.2f}x | {ratio * base / n:.2f}x |"
        )
    lines += ["", "All runs, total seconds (outliers are other jobs on the shared CPU):"]
    lines += [f"- {n:,}: " + ", ".join(f"{x['total_s']:.1f}" for x in runs[n]) for n in sizes]
    biggest = max(sizes)
    ok = med(biggest, "total_s") < TARGET_SECONDS and med(biggest, "peak_rss") < TARGET_GIB * 2**30
    lines += ["", f"Largest size ({biggest:,}): {'meets' if ok else 'MISSES'} the target.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
