"""Dask worker preload for tests/pipelines/test_dask_cluster.py: marks when a shard starts here.

Loaded with `dask worker --preload <this file>` into one worker process only (the one the test
kills). While `<probe dir>/hold` exists, each shard this worker starts first writes
`<probe dir>/started-<pid>-<shard>.json` (pid, shard index, the shard's file) and then waits the
seconds written in `hold` before the real encoding runs. The wait stands in for a long LLM shard:
it gives the test a window in which the worker is provably inside a shard whose file is not yet
committed. Without the environment variable it only imports the encoder's libraries at worker
start (torch, transformers), so that cost overlaps the test's reference run instead of the first
shard.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PROBE_ENV = "LLM4MSR_TEST_DASK_PROBE"


def dask_setup(worker: Any) -> None:
    """Wrap knowledge_service.runner.encode_shard in this worker process (the flow task calls it)."""
    from transformers import AutoModelForCausalLM  # noqa: F401 - warm import (torch + transformers)

    probe = os.environ.get(PROBE_ENV)
    if not probe:
        return
    from knowledge_service import runner

    real = runner.encode_shard
    probe_dir = Path(probe)

    def held_encode_shard(kp: Any, shard_index: int, backend: Any = None) -> Path:
        hold = probe_dir / "hold"
        if hold.is_file():
            seconds = float(hold.read_text() or 0)
            marker = probe_dir / f"started-{os.getpid()}-{shard_index}.json"
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "worker": worker.name,
                        "shard": shard_index,
                        "shard_path": str(kp.shard_path(shard_index)),
                    }
                )
            )
            tmp.replace(marker)  # the test reads whole markers only
            time.sleep(seconds)
        return real(kp, shard_index, backend)

    runner.encode_shard = held_encode_shard
