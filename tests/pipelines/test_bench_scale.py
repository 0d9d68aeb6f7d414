"""bench.scale's report: per-size tables and the growth table (wall, CPU and memory ratios),
rendered from a run's JSON without running anything."""

from __future__ import annotations

import json
from pathlib import Path

from bench.scale import main


def _run(n: int, users: int, train_cpu: float) -> dict:
    stage = {"command": "llm4msr train", "details": {}}
    return {
        "interactions": n,
        "users": users,
        "items": 1000,
        "workdir": "/tmp/x",
        "stages": [
            {**stage, "name": "train", "seconds": 10.0, "cpu_seconds": train_cpu, "peak_rss_mib": 100.0},
            {**stage, "name": "serve", "seconds": 2.0, "cpu_seconds": None, "peak_rss_mib": 50.0},
        ],
    }


def test_render_growth_table_from_json(tmp_path: Path) -> None:
    saved = tmp_path / "scale.json"
    saved.write_text(
        json.dumps(
            {"argv": ["--interactions", "1", "10"], "runs": [_run(1000, 10, 4.0), _run(10000, 100, 36.0)]}
        )
    )
    out = tmp_path / "scale.md"
    assert main(["--render", str(saved), "--out", str(out)]) == 0
    md = out.read_text()
    assert "## 10,000 interactions (100 users, 1,000 items)" in md
    assert "(10x the data, 10x the users)" in md
    assert "| train | 1.0x | 9.0x | 1.0x |" in md  # wall, CPU, memory
    assert "| serve | 1.0x | - | 1.0x |" in md  # no CPU time measured for the server: no ratio
