"""Training cost of the meta networks: seconds per training epoch, plain vs +LLM4MSR, per backbone.

Issue 11 asks for the speed cost of the meta networks per epoch beside the quality numbers, and
that it not grow. The ranker benchmark's cost table times runs trained hours apart (whatever else
the machine was doing then), so this one measures side by side: for each backbone, plain and
+LLM4MSR train `--epochs` epochs with the default training settings, alternating which goes first
over `--repeats` repetitions so that machine load hits both alike. Reported: medians of the
epochs' training seconds (run.json `timings.epoch_seconds`; evaluation excluded) and their ratio.

    python -m bench.train                           # ML-100K data + MiniLM snapshot of `bench ranker`
    python -m bench.train --data DIR --knowledge STORE --backbones shared_bottom,star --repeats 3
    llm4msr bench train --quick                     # shared_bottom and star, 1 epoch, 1 repeat

The runs are written to a temporary folder under --work and deleted: only their timings matter.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ranker import ALL_BACKBONES, PROTOCOLS, dataset_root, knowledge_root

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "artifacts" / "bench" / "ranker"
DEFAULT_DATA = dataset_root("ml-100k", WORK, [], PROTOCOLS["temporal"])


@dataclass
class Cell:
    """One backbone: every measured epoch's training seconds per variant."""

    backbone: str
    plain: list[float] = field(default_factory=list)
    llm: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.llm) / statistics.median(self.plain)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llm4msr bench train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="shared_bottom and star, 1 epoch, 1 repeat")
    p.add_argument("--data", default=str(DEFAULT_DATA / "data"), help="canonical dataset folder")
    p.add_argument(
        "--knowledge",
        default=None,
        help="knowledge snapshot or offline-store root (default: the knowledge folder beside --data)",
    )
    p.add_argument("--backbones", default=None, help="comma-separated (default: all six)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant and backbone (default 2)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="training setting"
    )
    p.add_argument("--work", default=str(WORK), help="where the temporary runs go")
    p.add_argument("--out", default=None, help="report path (default docs/benchmarks/train[-quick].md)")
    return p.parse_args(argv)


def measure(args: argparse.Namespace, backbones: list[str], epochs: int, repeats: int) -> list[Cell]:
    """Train every (backbone, variant, repeat), alternating the variant order; keep the timings."""
    import json

    from llm4msr.config import load_config
    from llm4msr.progress import progress
    from ranker.train import train

    knowledge = args.knowledge or str(knowledge_root(Path(args.data).parent, []))
    cells = [Cell(b) for b in backbones]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    bar = progress(len(cells) * repeats * 2, "bench train", "run")
    with tempfile.TemporaryDirectory(dir=args.work, prefix="bench-train-") as tmp:
        for cell in cells:
            for rep in range(repeats):
                order = [False, True] if rep % 2 == 0 else [True, False]
                for use_llm in order:
                    settings = load_config(
                        overrides=[
                            f"train.backbone={cell.backbone}",
                            f"train.use_llm={str(use_llm).lower()}",
                            f"train.epochs={epochs}",
                            "train.threads=1",
                            *args.overrides,
                        ]
                    )
                    out = Path(tmp) / f"{cell.backbone}-{int(use_llm)}-{rep}"
                    result = train(settings, args.data, knowledge if use_llm else None, out)
                    seconds = json.loads((result.run_dir / "run.json").read_text())["timings"][
                        "epoch_seconds"
                    ]
                    (cell.llm if use_llm else cell.plain).extend(seconds)
                    bar.update(1)
    bar.close()
    return cells


def report(cells: list[Cell], args: argparse.Namespace, argv: list[str], meta: dict[str, str]) -> str:
    rows = [
        f"| {c.backbone} | {statistics.median(c.plain):.3g} | {statistics.median(c.llm):.3g} | "
        f"{c.ratio:.2f}× | {len(c.plain)} / {len(c.llm)} |"
        for c in cells
    ]
    command = "llm4msr bench train " + " ".join(shlex.quote(a) for a in argv)
    return "\n".join(
        [
            "# Training cost per epoch: plain vs +LLM4MSR",
            "",
            "Seconds of one training epoch (forward, backward and optimiser steps over every training "
            "row; evaluation excluded), median over the measured epochs; plain and +LLM4MSR trained "
            "alternately in one process, so the ratio compares like with like. Written by "
            "`bench/train.py`.",
            "",
            f"- Command: `{command}`",
            f"- Code: {meta['code']}; date {meta['date']} (UTC); wall time {meta['wall']}",
            f"- Machine: {meta['cpu']}, {os.cpu_count()} CPU cores, 1 training thread, Python "
            f"{platform.python_version()}; load average {meta['load']}",
            f"- Data: `{args.data}` ({meta['rows']} training rows); knowledge: `{meta['knowledge']}`",
            f"- Settings: the defaults of llm4msr/config.py (batch {meta['batch']}, embedding "
            f"{meta['embedding']}, knowledge projection {meta['proj']}, rank {meta['rank']})"
            + (f" with {' '.join(args.overrides)}" if args.overrides else ""),
            "",
            "| backbone | plain s / epoch | +LLM4MSR s / epoch | ratio | epochs measured (plain / +LLM4MSR) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Interpretation and the before/after of code changes: "
            '[ranker-findings.md](ranker-findings.md), "Meta-network cost".',
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    from feature_store.dataset import load_dataset
    from feature_store.offline_store import OfflineStore
    from llm4msr.atomic import write_text_atomic
    from llm4msr.config import load_config
    from llm4msr.provenance import git_revision

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    backbones = (args.backbones or ("shared_bottom,star" if args.quick else ",".join(ALL_BACKBONES))).split(
        ","
    )
    unknown = sorted(set(backbones) - set(ALL_BACKBONES))
    if unknown:
        print(
            f"llm4msr bench train: error: unknown backbone(s) {unknown}; expected {ALL_BACKBONES}",
            file=sys.stderr,
        )
        return 2
    if not (Path(args.data) / "manifest.json").is_file():
        print(
            f"llm4msr bench train: error: {args.data} is not a canonical dataset (no manifest.json); "
            "build it with `llm4msr bench ranker --quick` or pass --data and --knowledge",
            file=sys.stderr,
        )
        return 2
    epochs = args.epochs or (1 if args.quick else 2)
    repeats = args.repeats or (1 if args.quick else 2)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    load0, t0 = os.getloadavg(), time.perf_counter()
    cells = measure(args, backbones, epochs, repeats)
    load1 = os.getloadavg()
    settings = load_config(overrides=args.overrides)
    knowledge = args.knowledge or str(knowledge_root(Path(args.data).parent, []))
    current = OfflineStore(knowledge).current_path() if (Path(knowledge) / "CURRENT").is_file() else None
    meta = {
        "code": git_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "wall": f"{(time.perf_counter() - t0) / 60:.1f} min",
        "cpu": cpu,
        "load": f"{' / '.join(f'{x:.1f}' for x in load0)} at the start, {' / '.join(f'{x:.1f}' for x in load1)} at the end",
        "rows": f"{load_dataset(args.data).interactions.filter(split='train').height:,}",
        "knowledge": str(current or knowledge),
        "batch": str(settings.train.batch_size),
        "embedding": str(settings.train.embedding_dim),
        "proj": str(settings.train.meta.knowledge_proj_dim),
        "rank": str(settings.train.meta.rank),
    }
    out = (
        Path(args.out)
        if args.out
        else REPO / "docs" / "benchmarks" / f"train{'-quick' if args.quick else ''}.md"
    )
    write_text_atomic(out, report(cells, args, argv, meta))
    for c in cells:
        print(
            f"{c.backbone}: plain {statistics.median(c.plain):.3g} s/epoch, +LLM4MSR "
            f"{statistics.median(c.llm):.3g} s/epoch ({c.ratio:.2f}x)"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
