"""The main job end to end on the embedded defaults; each stage logs what it did and how long it took."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from llm4msr.config import Settings

log = logging.getLogger(__name__)


def run_demo(settings: Settings, workdir: str | Path) -> int:
    from feature_store.build import build_and_write
    from feature_store.dataset import format_summary, load_dataset

    workdir = Path(workdir)
    t0 = time.perf_counter()
    data_dir = build_and_write(settings.data, workdir / "data")
    ds = load_dataset(data_dir)
    from feature_store.dataset import summarize

    print(f"== dataset ({settings.data.dataset}) written to {data_dir} in {time.perf_counter() - t0:.1f}s")
    print(format_summary(summarize(ds)))
    return 0
