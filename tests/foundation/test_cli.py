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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console command in a subprocess (its own logging setup, exit code, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--set", "train.hidden_dims=[64"], "train.hidden_dims"),
        (["--set", "nosuch.key=1"], "'nosuch'"),
        (["--set", "train.epochz=3"], "'train.epochz'"),
        (["--set", "train.epochs=abc"], "train.epochs"),
        (["--set", "train.epochs"], "KEY=VALUE"),
        (["--log-level", "verbose"], "--log-level"),
        (["--quiet", "--verbose"], "--verbose"),
        (["--config", "/no/such.yaml"], "/no/such.yaml"),
    ],
)
def test_option_and_override_errors_are_one_line(args: list[str], names: str) -> None:
    out = _cli("config", "show", *args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "error:" in lines[0] and names in lines[0]
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback_of_a_user_error() -> None:
    from llm4msr.config import ConfigError

    with pytest.raises(ConfigError, match="nosuch"):
        main(["config", "show", "--set", "nosuch.key=1", "--debug"])


def test_a_bug_is_not_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError from inside a command (numpy, torch, our own code) is a bug: it propagates
    with its traceback instead of being printed as a one-line user error."""
    import llm4msr.config

    def broken(_settings: object) -> str:
        raise ValueError("internal shape mismatch")

    monkeypatch.setattr(llm4msr.config, "dump_config", broken)
    with pytest.raises(ValueError, match="internal shape mismatch"):
        main(["config", "show"])


def test_user_errors_share_one_root() -> None:
    from feature_store.dataset import DataError
    from feature_store.knowledge_snapshot import SnapshotError
    from llm4msr.config import ConfigError
    from llm4msr.errors import MissingInputError, OutputExistsError, UserError

    for cls in (ConfigError, DataError, SnapshotError, MissingInputError, OutputExistsError):
        assert issubclass(cls, UserError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(ConfigError, ValueError)


def test_global_flags_work_after_the_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "-q"]) == 0
    assert main(["-v", "config", "show"]) == 0
    assert "train:" in capsys.readouterr().out


def test_one_flag_per_noun_with_old_spellings_as_hidden_aliases(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    args = parser.parse_args(["store", "snapshots", "--root", "K"])
    assert args.knowledge == "K"
    assert "--root is deprecated; use --knowledge" in capsys.readouterr().err
    assert parser.parse_args(["store", "materialize", "--knowledge", "K"]).knowledge == "K"
    assert parser.parse_args(["knowledge", "show", "--knowledge", "K", "--user", "u"]).knowledge == "K"
    assert parser.parse_args(["export", "--run", "R", "--out", "M", "--data", "D"]).data == "D"
    assert parser.parse_args(["knowledge", "build", "--data", "D", "--llm", "minilm"]).llm == "minilm"
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "--root" not in sub.choices["store"].format_help()


def test_choices_come_from_the_registries() -> None:
    from feature_store.adapters import ADAPTERS
    from knowledge_service.backends import BACKENDS
    from pipelines.commands.common import choices
    from ranker.backbones import BACKBONES

    assert set(choices("train", "backbone")) == set(BACKBONES)
    assert set(choices("data", "dataset")) == set(ADAPTERS)
    assert set(choices("knowledge", "backend")) == set(BACKENDS)


def test_config_help_names_what_is_read(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "merged over the built-in defaults" in text


LOG_PROBE = """
import logging, warnings
from llm4msr.logs import setup_logging
setup_logging()
setup_logging()  # twice: still one handler, each line once
logging.getLogger("feature_store.build").info("project info")
logging.getLogger("feature_store.build").debug("project debug")
logging.getLogger("httpx").info("HTTP Request: GET")
logging.getLogger("httpx").warning("httpx warning")
logging.getLogger("vllm.worker").warning("tcmalloc not found")
logging.getLogger("prefect.task_runs").info("Finished in state Completed()")
logging.getLogger("prefect.task_runs").info("shard 0 encoded")
logging.getLogger("prefect.task_runs").setLevel(logging.DEBUG)  # as Prefect resets it on import
logging.getLogger("prefect").info("Starting temporary server")
"""


def test_logging_project_info_third_party_warnings_each_once() -> None:
    out = subprocess.run([sys.executable, "-c", LOG_PROBE], capture_output=True, text=True, timeout=60)
    lines = out.stderr.strip().splitlines()
    shown = [ln.split(": ", 1)[1] for ln in lines]
    assert shown == ["project info", "httpx warning", "shard 0 encoded"], out.stderr


def test_logging_follows_stderr_swapped_and_closed_after_setup(monkeypatch, capsys) -> None:
    """A command run under a swapped stderr (pytest's capture, a notebook) must not leave the
    handler on that stream: once it is closed, later log calls anywhere would fail."""
    import io
    import logging

    from llm4msr.logs import setup_logging

    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    setup_logging("INFO")
    logging.getLogger("ranker.probe").info("during")
    assert "ranker.probe: during" in swapped.getvalue()
    monkeypatch.undo()
    swapped.close()
    logging.getLogger("ranker.probe").info("after")
    assert "ranker.probe: after" in capsys.readouterr().err
