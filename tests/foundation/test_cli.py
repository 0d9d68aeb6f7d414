"""The console command: every subcommand has --help, errors exit non-zero with one clear line."""

import subprocess
import sys

import pytest

from pipelines.cli import COMMAND_MODULES, build_parser, main


def _registered() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_top_level_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in _registered():
        assert name in out.stdout


@pytest.mark.parametrize("name", [m for m in COMMAND_MODULES])
def test_each_subcommand_has_help(name: str, capsys):
    if name not in _registered():
        pytest.fail(f"pipelines/commands/{name}.py is listed in COMMAND_MODULES but not registered")
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: llm4msr " + name in capsys.readouterr().out


def test_bad_config_exits_2_with_message(capsys):
    code = main(["demo", "--set", "train.backbone=nope", "--workdir", "/nonexistent/x"])
    assert code == 2
    assert "train.backbone" in capsys.readouterr().err
