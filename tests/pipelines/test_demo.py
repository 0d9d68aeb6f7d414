"""`llm4msr demo` end to end on tiny data: it prints its summary, and the whole output fits on two
screens (before: ~330 lines, mostly third-party noise and each event logged two or three times)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.pipelines.conftest import TINY_DATA

SCREEN_LINES = 50  # a terminal of 50 rows: "two screens" is 100 lines at most

pytestmark = pytest.mark.usefixtures("prefect_api")


def _tiny_overrides() -> list[str]:
    syn = TINY_DATA["synthetic"]
    return [
        *(f"data.synthetic.{k}={v}" for k, v in syn.items()),
        "knowledge.backend=transformers",  # the real MiniLM, without vLLM's start-up (tested elsewhere)
        "knowledge.num_shards=2",
        "knowledge.max_prompt_tokens=160",
        "train.epochs=2",
        "train.batch_size=256",
        "train.hidden_dims=[32]",
        "export.parity_batch_sizes=[1,7]",
        "export.variant_eval_rows=200",
    ]


def test_demo_prints_its_summary_within_two_screens(tmp_path: Path, capsys) -> None:
    args = ["demo", "--out", str(tmp_path / "demo")]
    for override in _tiny_overrides():
        args += ["--set", override]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = (captured.err + captured.out).splitlines()
    text = "\n".join(lines)
    assert len(lines) <= 2 * SCREEN_LINES, f"{len(lines)} lines:\n{text}"
    assert "Traceback" not in text and "httpx" not in text and "Finished in state" not in text, text
    # each event once: no stage-time lines, no second copy of a library's line from the flow task
    assert " took " not in text and text.count("exported ") == 1, text
    out = captured.out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("== LLM4MSR demo finished in "))
    assert out[start + 1].startswith("  knowledge flow  seconds ")
    header = next(line for line in out if line.startswith("test metrics per scenario (star; "))
    table = out[out.index(header) + 1 :]
    assert table[0].split()[:2] == ["scenario", "AUC"]
    assert any(line.split()[0] == "overall" for line in table[1:6])
    assert "written:" in out and "serve it:" in out
    report = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert report["model_dir"] and len(report["requests"]) == 3
