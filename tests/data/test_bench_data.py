"""The data benchmark script runs end to end at a tiny size and writes its report."""

from __future__ import annotations

from bench.data import main


def test_bench_data_tiny(tmp_path):
    out = tmp_path / "data.md"
    assert main(["--sizes", "5000,10000", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 5,000 |" in text and "| 10,000 |" in text
    assert "Command: `python -m bench.data --sizes 5000,10000" in text
    assert "meets the target" in text
