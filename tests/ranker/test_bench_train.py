"""bench.train: seconds per training epoch, plain vs +LLM4MSR side by side (issue 11's speed cost)."""

import re

from bench.train import main as bench_train


def test_bench_train_reports_both_variants_and_their_ratio_and_deletes_its_runs(
    tmp_path, tiny_data, tiny_knowledge, capsys
):
    out = tmp_path / "train.md"
    work = tmp_path / "work"
    argv = [
        *("--data", str(tiny_data), "--knowledge", str(tiny_knowledge)),
        *("--backbones", "shared_bottom", "--epochs", "2", "--repeats", "2"),
        *("--work", str(work), "--out", str(out), "--set", "train.hidden_dims=[16]"),
    ]
    assert bench_train(argv) == 0
    text = out.read_text()
    row = re.search(r"\| shared_bottom \| ([\d.e-]+) \| ([\d.e-]+) \| ([\d.]+)× \| 4 / 4 \|", text)
    assert row, text  # 2 epochs x 2 repeats measured for each variant
    plain, llm, ratio = (float(g) for g in row.groups())
    assert plain > 0 and llm > 0 and abs(ratio - llm / plain) < 0.01 + 0.02 * ratio  # 3 significant digits
    assert "llm4msr bench train" in text and "knowledge projection 64" in text
    assert "train.hidden_dims=[16]" in text  # the overrides are part of the record
    assert list(work.iterdir()) == []  # runs are temporary: only the timings are kept
    assert "shared_bottom: plain" in capsys.readouterr().out


def test_bench_train_refuses_an_unknown_backbone_and_a_folder_without_a_dataset(tmp_path, tiny_data, capsys):
    assert bench_train(["--data", str(tiny_data), "--backbones", "dcn", "--out", str(tmp_path / "x.md")]) == 2
    assert "unknown backbone(s) ['dcn']" in capsys.readouterr().err
    assert bench_train(["--data", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    assert "is not a canonical dataset" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
