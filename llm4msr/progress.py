"""Progress of long loops: a tqdm bar on a terminal, periodic log lines everywhere else.

Nightly flows, CI and `nohup` runs have no terminal, and a disabled bar leaves a 40-minute
knowledge build silent; there the same calls log "desc: done/total (pct), rate, ETA" at most
every `log_every` seconds. The end is not logged: every caller logs one completion line of its own
(an epoch's metrics, a shard's throughput, a store write), and a "100%" line before it says nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm


class LogProgress:
    """The subset of tqdm's interface the project uses (update, close, context manager)."""

    def __init__(self, total: int | None, desc: str, unit: str, logger: logging.Logger, log_every: float):
        self.total, self.desc, self.unit, self.log, self.every = total, desc, unit, logger, log_every
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        rate = self.n / max(now - self.t0, 1e-9)
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %.0f s",
                self.desc, self.n, self.total, self.unit, 100.0 * self.n / self.total, rate, self.unit, eta,
            )  # fmt: skip
        else:
            self.log.info("%s: %d %s, %.1f %s/s", self.desc, self.n, self.unit, rate, self.unit)

    def close(self) -> None:
        self.closed = True  # the caller logs the completion (see the module docstring)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class Throttle:
    """Level for a stream of per-step summary lines (one per epoch): INFO at most every `every`
    seconds, so slow loops report each step and fast ones stay on one line per loop; the rest at
    DEBUG (`--verbose` shows them all). The first step is INFO only when it was itself slow."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.last = time.monotonic()

    def level(self) -> int:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            return logging.INFO
        return logging.DEBUG


def progress(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    logger: logging.Logger | None = None,
    log_every: float = 30.0,
    leave: bool = True,
) -> Any:
    """A tqdm bar when stderr is a terminal, else a LogProgress that logs through `logger`."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return LogProgress(total, desc, unit, logger or logging.getLogger("llm4msr.progress"), log_every)
