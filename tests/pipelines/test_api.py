"""The notebook API: the example in docs/pipelines.md ("Python API") runs as written, and
`import llm4msr` stays light (Pipeline is imported on first use)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipelines.md"


def doc_example() -> str:
    section = DOC.read_text().split("## Python API (notebooks)", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_import_llm4msr_stays_light() -> None:
    code = (
        "import sys, llm4msr; heavy = {'torch', 'vllm', 'prefect', 'pipelines'} & set(sys.modules); "
        "assert not heavy, heavy; llm4msr.Pipeline; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(doc_example(), str(DOC), "exec"), scope)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["data", "knowledge", "train", "export", "ranker"]
    assert scope["exported"].parity["passed"] is True
    assert scope["know"].online is not None and scope["know"].snapshot.n_encoded > 0
    assert scope["scores"].shape == (5,) and ((scope["scores"] > 0) & (scope["scores"] < 1)).all()
    assert Path(scope["run"].run_dir).is_relative_to(tmp_path / "notebook-run")


def test_steps_out_of_order_are_one_line_errors(tmp_path: Path) -> None:
    import llm4msr
    from llm4msr.errors import UserError

    pipe = llm4msr.Pipeline(workdir=tmp_path, verbose=False)
    with pytest.raises(UserError, match="call train\\(\\) first"):
        pipe.export()
    with pytest.raises(UserError, match="call build_data\\(\\) first"):
        pipe.train()
