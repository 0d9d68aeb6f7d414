"""Progress reporting without a terminal: periodic log lines with count, rate and ETA."""

import logging

from llm4msr.progress import LogProgress, Throttle, progress


def test_without_a_terminal_progress_is_logged(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    log = logging.getLogger("test.progress")
    bar = progress(10, "shard 0", "prompt", logger=log, log_every=0.0)
    assert isinstance(bar, LogProgress)
    with caplog.at_level(logging.INFO, logger="test.progress"), bar:
        for _ in range(4):
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("shard 0: 1/10 prompt (10%)") and "ETA" in lines[0]
    assert lines[-1].startswith("shard 0: 4/10 prompt (40%)")


def test_short_loops_stay_quiet(caplog):
    bar = LogProgress(5, "x", "it", logging.getLogger("test.progress"), log_every=60.0)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        bar.update(5)
        bar.close()
    assert caplog.records == []


def test_the_end_is_left_to_the_callers_completion_line(caplog):
    bar = LogProgress(5, "x", "it", logging.getLogger("test.progress"), log_every=0.0)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        bar.update(2)
        bar.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["x: 2/5 it (40%)"]


def test_throttle_reports_slow_steps_and_folds_fast_ones():
    slow, fast = Throttle(every=0.0), Throttle(every=3600.0)
    assert [slow.level() for _ in range(3)] == [logging.INFO] * 3
    assert [fast.level() for _ in range(3)] == [logging.DEBUG] * 3
