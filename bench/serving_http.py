"""Concurrent HTTP serving benchmark: the real `llm4msr serve` process vs the runtime in-process.

Why: a sequential client hides what serialises requests (the GIL, a lock, one thread doing
everything); p99 under concurrency shows it. Every cell sends the SAME pre-generated requests
(same model, same store) at concurrency C, bounded by a request count and a time cap, loopback
only, and checks every answer: status 200 and scores equal to the in-process scores of the same
request. The in-process figures call `Ranker.score_detailed` directly from C threads (C=1: the
plain cost of a request without HTTP).

    llm4msr bench serving --http                        # writes docs/benchmarks/serving-http.md
    python -m bench.serving_http --requests 50 --out /tmp/http.md      # quick

The harness (`score_calls`, `run_in_process`, `ServerProcess`, `run_http`) is reused by
tests/serving/test_http_concurrency.py at tiny size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "llm4msr")  # the installed console script


@dataclass(frozen=True)
class ScoreCall:
    """One /score request; the same list is sent in-process and over HTTP."""

    user_id: str
    scenario_id: str
    item_ids: list[str]

    def body(self) -> bytes:
        return json.dumps(
            {"user_id": self.user_id, "scenario_id": self.scenario_id, "item_ids": self.item_ids}
        ).encode()


@dataclass
class Cell:
    """One (mode, candidates, concurrency) measurement. Latencies are per request, client side."""

    mode: str  # "in-process" or "http" (+ a label of the server configuration)
    candidates: int
    concurrency: int
    planned: int  # requests it was allowed to send
    sent: int  # requests answered before the count or the time cap ran out
    ok: int  # answered 200 with scores equal (max_abs_diff <= tolerance) to the in-process ones
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    rps: float
    wall_s: float
    capped: bool  # the time cap ended the cell before `planned` requests
    max_abs_diff: float  # largest |HTTP score - in-process score| (0.0 for in-process)
    server_cpu_ms_per_req: float | None = None  # user+system CPU of the server process per request
    client_cpu_ms_per_req: float | None = None  # CPU of this (client) process per request

    @property
    def all_ok(self) -> bool:
        return self.sent > 0 and self.ok == self.sent


def score_calls(ranker: Any, n: int, candidates: int, seed: int) -> list[ScoreCall]:
    """n requests of `candidates` random known items, random known users and scenarios."""
    art = ranker.artifact
    users, items, scen = art.assembler.users.ids, art.assembler.items.ids, ranker.scenarios
    rng = np.random.default_rng(seed)
    return [
        ScoreCall(
            users[int(rng.integers(len(users)))],
            scen[int(rng.integers(len(scen)))],
            [items[int(k)] for k in rng.integers(0, len(items), candidates)],
        )
        for _ in range(n)
    ]


def _ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds another process has used, for CPU per request. Reads the process's CPU-time
    clock (clock_getcpuclockid: nanoseconds, all threads, dead ones included); /proc's utime +
    stime is the fallback, but it counts in 10 ms ticks, so a short cell can read as 0."""
    try:
        return time.clock_gettime((~pid << 3) | 2)  # Linux's CPUCLOCK_SCHED process clock id
    except (OSError, OverflowError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_in_process(
    ranker: Any, calls: list[ScoreCall], concurrency: int, max_seconds: float
) -> tuple[Cell, list[np.ndarray | None]]:
    """The runtime called directly from `concurrency` threads (closed loop: each thread sends its
    next request when the previous one is answered). Returns the cell and the scores per call."""
    scores: list[np.ndarray | None] = [None] * len(calls)
    lat: list[float] = []
    nxt, lock = [0], threading.Lock()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        while True:
            with lock:
                i = nxt[0]
                if i >= len(calls) or time.monotonic() > deadline:
                    return
                nxt[0] += 1
            c = calls[i]
            t0 = time.perf_counter()
            res = ranker.score_detailed(c.user_id, c.scenario_id, c.item_ids)
            dt = time.perf_counter() - t0
            scores[i] = res.scores
            with lock:
                lat.append(dt)

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    sent = len(lat)
    cell = Cell(
        mode="in-process",
        candidates=len(calls[0].item_ids),
        concurrency=concurrency,
        planned=len(calls),
        sent=sent,
        ok=sent,
        statuses={200: sent},
        p50_ms=_ms(lat, 50),
        p99_ms=_ms(lat, 99),
        max_ms=_ms(lat, 100),
        rps=sent / wall,
        wall_s=wall,
        capped=sent < len(calls),
        max_abs_diff=0.0,
        server_cpu_ms_per_req=1000.0 * cpu / max(sent, 1),
    )
    return cell, scores


class ServerProcess:
    """A real `llm4msr serve` on 127.0.0.1 and a free port, ready (/readyz 200) on enter, SIGTERM
    by its pid on exit. `overrides`: extra `--set section.key=value` for this server."""

    def __init__(
        self,
        model_dir: Path,
        store_url: str,
        overrides: list[str] | None = None,
        token: str | None = None,
        start_timeout: float = 120.0,
        source: Path | None = None,
    ):
        from bench.redis_server import free_port

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.token = token
        # `source`: a checkout of another commit (same virtualenv) whose server is run instead.
        self.source = source
        head = [sys.executable, "-m", "pipelines.cli"] if source is not None else [CLI]
        cmd = [*head, "serve", "--model", str(model_dir), "--store", store_url, "--port", str(self.port)]
        for o in overrides or []:
            cmd += ["--set", o]
        self.cmd = cmd
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server stderr, closed in __exit__

    def __enter__(self) -> ServerProcess:
        import httpx

        env = {k: v for k, v in os.environ.items() if k != "LLM4MSR_SERVE_TOKEN"}
        if self.token:
            env["LLM4MSR_SERVE_TOKEN"] = self.token
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)  # before the editable install of this checkout
        self.proc = subprocess.Popen(
            self.cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=self.source,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                self._log.seek(0)
                raise RuntimeError(f"server did not start: {self._log.read().decode()[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


async def _http_cell(
    base_url: str,
    bodies: list[bytes],
    concurrency: int,
    max_seconds: float,
    headers: dict[str, str],
) -> tuple[list[float], list[tuple[int, bytes] | None], float]:
    """`concurrency` asyncio workers on keep-alive connections of one httpx.AsyncClient, closed loop.
    Answers are kept raw and parsed after the clock stops (the client shares the machine)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    answers: list[tuple[int, bytes] | None] = [None] * len(bodies)
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0, headers=headers) as client:
        # Open the connections before the clock starts (a cell measures requests, not handshakes).
        await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency)))
        nxt = 0
        deadline = time.monotonic() + max_seconds

        async def worker() -> None:
            nonlocal nxt
            while nxt < len(bodies) and time.monotonic() <= deadline:
                i, nxt = nxt, nxt + 1
                t0 = time.perf_counter()
                r = await client.post("/score", content=bodies[i])
                lat.append(time.perf_counter() - t0)
                answers[i] = (r.status_code, r.content)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, answers, wall


async def _raw_cell(
    port: int,
    bodies: list[bytes],
    concurrency: int,
    max_seconds: float,
    headers: dict[str, str],
) -> tuple[list[float], list[tuple[int, bytes] | None], float]:
    """The same closed loop on `concurrency` plain asyncio keep-alive connections speaking minimal
    HTTP/1.1 (pre-built request bytes, Content-Length framing). Why: httpx costs 1.5-4 ms of CPU per
    request, as much as the server, on the same 2 cores; this client costs ~0.1 ms."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reqs = [
        f"POST /score HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{head}content-length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    ]
    answers: list[tuple[int, bytes] | None] = [None] * len(bodies)
    lat: list[float] = []
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    nxt = 0
    deadline = time.monotonic() + max_seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal nxt
        while nxt < len(reqs) and time.monotonic() <= deadline:
            i, nxt = nxt, nxt + 1
            t0 = time.perf_counter()
            writer.write(reqs[i])
            raw_head = await reader.readuntil(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            answers[i] = (int(lines[0].split()[1]), body)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(r, w) for r, w in conns))
    finally:
        wall = time.perf_counter() - t0
        for _, w in conns:
            w.close()
    return lat, answers, wall


def run_http(
    server: ServerProcess,
    calls: list[ScoreCall],
    expected: list[np.ndarray | None],
    concurrency: int,
    max_seconds: float,
    label: str = "http",
    atol: float = 1e-6,
    client: str = "raw",
) -> Cell:
    """Send `calls` to the server at `concurrency`; every answer must be 200 with scores within
    `atol` of `expected` (the in-process scores of the same call) to count as ok. `client`: "raw"
    (plain asyncio connections, light) or "httpx" (httpx.AsyncClient)."""
    headers = {"content-type": "application/json"}
    if server.token:
        headers["authorization"] = f"Bearer {server.token}"
    bodies = [c.body() for c in calls]
    cpu_srv0, cpu_cli0 = _proc_cpu_s(server.pid), time.process_time()
    if client == "httpx":
        cell = _http_cell(server.base_url, bodies, concurrency, max_seconds, headers)
    else:
        cell = _raw_cell(server.port, bodies, concurrency, max_seconds, headers)
    lat, answers, wall = asyncio.run(cell)
    cpu_srv1, cpu_cli1 = _proc_cpu_s(server.pid), time.process_time()
    statuses: Counter[int] = Counter()
    ok, worst = 0, 0.0
    for ans, exp in zip(answers, expected, strict=True):
        if ans is None:
            continue
        status, raw = ans
        statuses[status] += 1
        if status != 200 or exp is None:
            continue
        got = np.asarray(json.loads(raw)["scores"], dtype=np.float64)
        if got.shape != exp.shape:
            worst = float("inf")
            continue
        diff = float(np.abs(got - exp.astype(np.float64)).max())
        worst = max(worst, diff)
        ok += diff <= atol
    sent = len(lat)
    # The healthz warm-up requests are a negligible share of the server's CPU.
    srv = None if cpu_srv0 is None or cpu_srv1 is None else 1000.0 * (cpu_srv1 - cpu_srv0) / max(sent, 1)
    return Cell(
        mode=label,
        candidates=len(calls[0].item_ids),
        concurrency=concurrency,
        planned=len(calls),
        sent=sent,
        ok=ok,
        statuses=dict(statuses),
        p50_ms=_ms(lat, 50),
        p99_ms=_ms(lat, 99),
        max_ms=_ms(lat, 100),
        rps=sent / wall if wall > 0 else 0.0,
        wall_s=wall,
        capped=sent < len(calls),
        max_abs_diff=worst,
        server_cpu_ms_per_req=srv,
        client_cpu_ms_per_req=1000.0 * (cpu_cli1 - cpu_cli0) / max(sent, 1),
    )


@dataclass
class ServerVariant:
    """A server configuration to measure (`--set` overrides), e.g. before/after a change."""

    label: str
    overrides: list[str] = field(default_factory=list)
    source: Path | None = None  # run the server of this checkout (another commit), not this one's
    ref: str | None = None  # the git ref `source` was exported from


@dataclass
class Matrix:
    """Every cell of one run, with the machine's load around it."""

    cells: list[Cell]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds: float


def run_matrix(
    model_dir: Path,
    store_url: str,
    store_overrides: list[str],
    sizes: list[int],
    concurrencies: list[int],
    n_requests: int,
    max_seconds: float,
    variants: list[ServerVariant],
    seed: int = 0,
    rounds: int = 1,
    clients: tuple[str, ...] = ("raw",),
) -> Matrix:
    """In-process and every server variant on the same calls, cell by cell. With rounds > 1 the
    variants are measured in turn `rounds` times (ABAB...), so a change in the machine's load hits
    them alike; each round is its own cell (the report takes medians). Several `clients`: every
    variant with each load generator, labelled "VARIANT (CLIENT)"."""
    from feature_store.online import open_store
    from llm4msr.config import load_config
    from ranker.serving.runtime import Ranker

    t_start, load_before = time.perf_counter(), os.getloadavg()
    cfg = load_config(None, [*store_overrides, "serve.version_check_seconds=5"])
    ranker = Ranker(model_dir, open_store(store_url, cfg.store), cfg.serve)
    cells: list[Cell] = []
    try:
        calls = {s: score_calls(ranker, n_requests, s, seed + s) for s in sizes}
        # Reference scores (untimed, also the warm-up): what every HTTP answer must equal.
        expected = {s: [ranker.score(c.user_id, c.scenario_id, c.item_ids) for c in calls[s]] for s in sizes}
        servers = [
            ServerProcess(
                model_dir,
                store_url,
                [*store_overrides, "serve.version_check_seconds=5", *v.overrides],
                source=v.source,
            )
            for v in variants
        ]
        for srv in servers:
            srv.__enter__()
        try:
            for _ in range(rounds):
                for s in sizes:
                    for c in concurrencies:
                        cell, _ = run_in_process(ranker, calls[s], c, max_seconds)
                        cells.append(cell)
                        for cl in clients:
                            for v, srv in zip(variants, servers, strict=True):
                                label = mode_label(v, cl, clients)
                                cells.append(
                                    run_http(
                                        srv, calls[s], expected[s], c, max_seconds, label=label, client=cl
                                    )
                                )
                        log.info("cell %d candidates, concurrency %d done", s, c)
        finally:
            for srv in servers:
                srv.__exit__(None, None, None)
    finally:
        ranker.close()
    return Matrix(cells, load_before, os.getloadavg(), time.perf_counter() - t_start)


def mode_label(v: ServerVariant, client: str, clients: tuple[str, ...]) -> str:
    return v.label if len(clients) == 1 else f"{v.label} ({client})"


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def summarize(cells: list[Cell]) -> dict[tuple[str, int, int], dict[str, float]]:
    """Median over rounds of p50/p99/rps per (mode, candidates, concurrency)."""
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.mode, c.candidates, c.concurrency), []).append(c)
    out = {}
    for key, cs in groups.items():
        out[key] = {
            "p50": _median([c.p50_ms for c in cs]),
            "p99": _median([c.p99_ms for c in cs]),
            "rps": _median([c.rps for c in cs]),
            "sent": sum(c.sent for c in cs),
            "ok": sum(c.ok for c in cs),
            "capped": sum(c.capped for c in cs),
            "srv_cpu": _median([c.server_cpu_ms_per_req or float("nan") for c in cs]),
            "cli_cpu": _median([c.client_cpu_ms_per_req or float("nan") for c in cs]),
            "diff": max(c.max_abs_diff for c in cs),
            "rounds": len(cs),
        }
    return out


def report(matrix: Matrix, args: argparse.Namespace, cmd: str, variants: list[ServerVariant]) -> str:
    """The Markdown report: a table per candidate count, the targets, the raw cells."""
    summ = summarize(matrix.cells)
    clients = tuple(args.client.split(","))
    modes = ["in-process"] + [mode_label(v, cl, clients) for cl in clients for v in variants]
    lb, la = matrix.load_before, matrix.load_after
    lines = [
        "# Serving over HTTP under concurrency",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, **busy: shared with other jobs while "
        f"measured** (load average {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} at the start, "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} at the end, from `os.getloadavg()` = `uptime`); the "
        f"client runs on the same machine. Whole run: {matrix.seconds:.0f} s.",
        "",
        "Per cell: the same pre-generated requests (random known users, scenarios and items; seed "
        f"{args.seed}), at most {args.requests} requests and {args.cell_seconds:.0f} s, closed loop (each "
        "client sends its next request when its previous one is answered). `in-process`: "
        "`Ranker.score_detailed` called directly from C threads of this process (same model, same "
        "store). HTTP: a real `llm4msr serve` process on 127.0.0.1 (uvicorn); the client: "
        + (
            "one `httpx.AsyncClient` with C keep-alive connections (asyncio). "
            if clients == ("httpx",)
            else "`raw`: C keep-alive asyncio connections speaking minimal HTTP/1.1 (~0.1-0.3 ms of client "
            "CPU per request); `httpx`: one `httpx.AsyncClient` with C keep-alive connections (1.5-4 ms of "
            "client CPU per request, on the same cores as the server). "
            if len(clients) > 1
            else "C keep-alive asyncio connections speaking minimal HTTP/1.1 (`--client raw`; httpx "
            "itself costs as much CPU per request as the server). "
        )
        + "Every HTTP answer is checked: 200 "
        "and scores within 1e-6 of the in-process scores of the same request. "
        + (
            f"Model: `{args.model}`, store `{args.store_url}`. "
            if args.model
            else "Model: STAR + LLM4MSR meta networks (random weights), "
            f"{args.dim}-dim knowledge, {args.users} users, {args.items} items; knowledge in "
            + ("a private redis-server (loopback)" if args.store == "redis" else "the embedded local store")
            + ", float32 values. "
        )
        + "Latencies in ms, client side; "
        f"{'medians over ' + str(args.rounds) + ' interleaved rounds' if args.rounds > 1 else 'one round'}.",
        "",
        "Server variants: "
        + "; ".join(
            f"`{v.label}`: "
            + (f"the server code of commit {v.ref}, " if v.ref else "this commit, ")
            + (" ".join("--set " + o for o in v.overrides) or "defaults")
            for v in variants
        ),
        "",
    ]
    for s in sorted({c.candidates for c in matrix.cells}):
        lines += [
            f"## {s} candidates",
            "",
            "| mode | C | p50 | p99 | req/s | answered ok | server CPU ms/req | client CPU ms/req |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for conc in sorted({c.concurrency for c in matrix.cells}):
            for m in modes:
                r = summ.get((m, s, conc))
                if r is None:
                    continue
                cli = "" if m == "in-process" else f"{r['cli_cpu']:.2f}"
                cap = f" ({int(r['capped'])} capped)" if r["capped"] else ""
                lines.append(
                    f"| {m} | {conc} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
                    f"{int(r['ok'])}/{int(r['sent'])}{cap} | {r['srv_cpu']:.2f} | {cli} |"
                )
        lines.append("")
    lines += ["## Targets (stated for an idle 2-core machine; measured here under load)", ""]
    for m in modes[1:]:
        for s in sorted({c.candidates for c in matrix.cells}):
            h4, i4, i1 = summ.get((m, s, 4)), summ.get(("in-process", s, 4)), summ.get(("in-process", s, 1))
            h16 = summ.get((m, s, 16))
            if not (h4 and i4 and i1 and h16):
                continue
            r4, r1 = h4["p99"] / i4["p99"], h4["p99"] / i1["p99"]
            tput = h16["rps"] / h4["rps"]
            lines.append(
                f"* `{m}`, {s} candidates: HTTP p99 at C=4 / in-process p99 at C=4 = **{r4:.2f}x** "
                f"({'met' if r4 <= 3 else 'NOT met'}, target <= 3x; vs in-process C=1: {r1:.2f}x); "
                f"throughput C=16 / C=4 = **{100 * tput:.0f} %** ({'met' if tput >= 0.8 else 'NOT met'}, "
                "target >= 80 %)."
            )
    if len(variants) > 1:
        lines += ["", "## Ratios between server variants (same cells, same run, medians)", ""]
        lines += [
            "| client | candidates | C | variant / " + variants[0].label + " | p50 | p99 | req/s |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for cl in clients:
            a = mode_label(variants[0], cl, clients)
            for s in sorted({c.candidates for c in matrix.cells}):
                for conc in sorted({c.concurrency for c in matrix.cells}):
                    for v in variants[1:]:
                        ra, rb = summ.get((a, s, conc)), summ.get((mode_label(v, cl, clients), s, conc))
                        if ra and rb:
                            lines.append(
                                f"| {cl} | {s} | {conc} | {v.label} | {rb['p50'] / ra['p50']:.2f} | "
                                f"{rb['p99'] / ra['p99']:.2f} | {rb['rps'] / ra['rps']:.2f} |"
                            )
    lines += [
        "",
        "<details><summary>Every cell</summary>",
        "",
        "| mode | candidates | C | sent/planned | ok | statuses | p50 | p99 | max | req/s | wall s | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in matrix.cells:
        lines.append(
            f"| {c.mode} | {c.candidates} | {c.concurrency} | {c.sent}/{c.planned} | {c.ok} | "
            f"{dict(sorted(c.statuses.items()))} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.max_ms:.2f} | "
            f"{c.rps:.0f} | {c.wall_s:.1f} | {c.max_abs_diff:.1e} |"
        )
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def export_commit(ref: str, dest: Path) -> ServerVariant:
    """The tree of commit `ref` (git archive, the repository is not changed) as a `before` variant."""
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", rev], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {rev} failed")
    return ServerVariant("before", source=dest, ref=rev)


def parse_variant(text: str) -> ServerVariant:
    """`LABEL` or `LABEL:key=value,key=value` (serve./store. keys as for --set)."""
    label, _, rest = text.partition(":")
    return ServerVariant(label, [o for o in rest.split(",") if o])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.serving_http", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per cell (default 300)")
    ap.add_argument("--cell-seconds", type=float, default=20.0, help="time cap per cell (default 20 s)")
    ap.add_argument("--sizes", default="100,1000", help="candidates per request (default 100,1000)")
    ap.add_argument("--concurrency", default="1,4,16", help="client concurrencies (default 1,4,16)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds per cell (medians reported)")
    ap.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="server configuration LABEL[:serve.k=v,...] (repeatable; default one server with the defaults)",
    )
    ap.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also measure the server of this commit (git archive into a temp folder), labelled before",
    )
    ap.add_argument("--store", choices=["redis", "local"], default="redis")
    ap.add_argument(
        "--client",
        default="raw",
        help="load generator(s), comma-separated: raw = plain asyncio keep-alive connections (default, "
        "~0.1 ms CPU per request), httpx = httpx.AsyncClient (1.5-4 ms per request on this machine, on the "
        "same cores as the server)",
    )
    ap.add_argument(
        "--model",
        metavar="MODEL_DIR",
        help="benchmark this exported model against --store-url (already materialized) instead of a "
        "random-weight STAR export built for the run",
    )
    ap.add_argument("--store-url", help="with --model: its online store (a local path or redis://...)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64, help="knowledge dimension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "serving-http.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from bench.redis_server import RedisServer
    from bench.serving import _setup
    from feature_store.materialize import materialize
    from llm4msr.config import StoreConfig

    variants = args.variant or [ServerVariant("http")]
    clients = tuple(args.client.split(","))
    if not set(clients) <= {"raw", "httpx"}:
        ap.error(f"--client {args.client!r}: expected raw, httpx or both (raw,httpx)")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request from the client
    sizes = [int(x) for x in args.sizes.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    store_overrides = ["store.value_dtype=float32"]
    with tempfile.TemporaryDirectory(prefix="bench-serving-http-") as tmp:
        work = Path(tmp)
        if args.baseline:
            variants = [export_commit(args.baseline, work / "baseline"), *variants]
        redis = None
        if args.model:
            if not args.store_url:
                ap.error("--model needs --store-url")
            model_dir, url, snap = Path(args.model), args.store_url, None
        else:
            model_dir, snap = _setup(work, args.users, args.items, args.dim, args.seed)
            if args.store == "redis":
                redis = RedisServer(work)
                redis.start()
                url = redis.url
            else:
                url = str(work / "online")
        try:
            if snap is not None:
                materialize(snap, url, StoreConfig(value_dtype="float32"))
            matrix = run_matrix(
                model_dir,
                url,
                store_overrides,
                sizes,
                concs,
                args.requests,
                args.cell_seconds,
                variants,
                args.seed,
                args.rounds,
                clients,
            )
        finally:
            if redis is not None:
                redis.stop()
    cmd = "llm4msr bench serving --http " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = report(matrix, args, cmd.strip(), variants)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    bad = [c for c in matrix.cells if not c.all_ok]
    if bad:
        log.error("%d cells had answers that were not 200 with the in-process scores", len(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
