"""The /score body against a real `llm4msr serve` process: the token is checked before a byte of the
body is read, and bodies are limited while they stream (raw sockets and httpx, no test client)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from feature_store.materialize import materialize
from llm4msr.config import ServeConfig
from ranker.serving.http import body_limit
from tests.fixtures.redis_server import free_port
from tests.serving.conftest import env_without_token, store_cfg
from tests.serving.test_http import LLM4MSR, _wait_http

LIMIT = 65536
HUGE = 200 * 1024 * 1024  # what the caller claims (or tries) to send


class Server:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port
        self.base = f"http://127.0.0.1:{port}"

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: ANN001
    url = str(tmp_path_factory.mktemp("limits") / "online")
    materialize(trained.snapshot_dir, url, store_cfg())
    port = free_port()
    cmd = [LLM4MSR, "serve", "--model", str(trained.model_dir), "--store", url, "--port", str(port)]
    cmd += ["--set", "store.value_dtype=float32", "--set", f"serve.max_body_bytes={LIMIT}"]
    env = env_without_token() | {"LLM4MSR_SERVE_TOKEN": "tok"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield Server(proc, port)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _stream_until_answer(
    port: int, headers: list[str], chunk: bytes, total: int, timeout: float = 10.0
) -> tuple[bytes, int, float]:
    """Send headers, then keep sending `chunk` (up to `total` bytes) until the server answers or
    closes. Returns (what came back, body bytes sent, seconds)."""
    head = ["POST /score HTTP/1.1", "Host: test", "Content-Type: application/json", *headers, "", ""]
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    sent, got = 0, b""
    try:
        s.sendall("\r\n".join(head).encode())
        s.setblocking(False)
        while time.monotonic() - t0 < timeout:
            readable, writable, _ = select.select([s], [s] if sent < total else [], [], 0.5)
            if readable:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                got += data
                if b"\r\n\r\n" in got:  # the headers are enough: the bodies here are small
                    time.sleep(0.05)
                    with contextlib.suppress(BlockingIOError, ConnectionResetError):
                        got += s.recv(65536)
                    break
            elif writable:
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        s.close()
    return got, sent, time.monotonic() - t0


def test_unauthenticated_huge_body_is_refused_unread(server: Server) -> None:
    """Before: the body was read (and parsed) before the token was checked: 200 MB took ~12 s and
    grew the server by ~500 MB. Now: 401 from the headers, the connection closed, the body unread."""
    peak0 = server.peak_rss_kb()
    got, sent, seconds = _stream_until_answer(
        server.port, [f"Content-Length: {HUGE}"], b"{" + b" " * 65535, HUGE
    )
    assert got.startswith(b"HTTP/1.1 401"), got[:200]
    assert b'{"error":"missing or wrong bearer token"}' in got and b"connection: close" in got.lower()
    assert seconds < 3 and sent < HUGE // 8, (seconds, sent)

    # httpx streaming a body of unknown length (chunked), no token: refused as fast.
    streamed = [0]

    def body() -> Iterator[bytes]:
        for _ in range(HUGE // 65536):
            streamed[0] += 65536
            yield b" " * 65536

    t0 = time.monotonic()
    r = httpx.post(server.base + "/score", content=body(), timeout=10)
    assert r.status_code == 401 and r.json() == {"error": "missing or wrong bearer token"}
    assert time.monotonic() - t0 < 3 and streamed[0] < HUGE // 8

    # Malformed JSON without a token is 401 too (before: 400 with the parser's complaint).
    r = httpx.post(server.base + "/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.json() == {"error": "missing or wrong bearer token"}
    assert server.peak_rss_kb() - peak0 < 50_000  # KiB: nothing like the 200 MB offered


def test_body_limit_declared_and_streamed(server: Server) -> None:
    auth = "Authorization: Bearer tok"
    got, sent, seconds = _stream_until_answer(
        server.port, [auth, f"Content-Length: {HUGE}"], b" " * 65536, HUGE
    )
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert f"larger than serve.max_body_bytes={LIMIT}".encode() in got
    assert seconds < 3 and sent < HUGE // 8

    frame = b"10000\r\n" + b" " * 65536 + b"\r\n"  # chunked: no length announced
    got, sent, seconds = _stream_until_answer(server.port, [auth, "Transfer-Encoding: chunked"], frame, HUGE)
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert b"(stopped reading)" in got and seconds < 3 and sent < HUGE // 8

    # Up to the limit is fine (whitespace pads a valid body), one byte more is not.
    payload = b'{"user_id": "u10", "scenario_id": "s0", "item_ids": ["i1", "i2"]}'
    headers = {"Authorization": "Bearer tok", "content-type": "application/json"}
    ok = payload + b" " * (LIMIT - len(payload))
    r = httpx.post(server.base + "/score", content=ok, headers=headers)
    assert r.status_code == 200 and len(r.json()["scores"]) == 2
    r = httpx.post(server.base + "/score", content=ok + b" ", headers=headers)
    assert r.status_code == 413 and r.json()["error"] == (
        f"body of {LIMIT + 1} bytes is larger than serve.max_body_bytes={LIMIT}"
    )
    metrics = httpx.get(server.base + "/metrics").text
    assert 'llm4msr_requests_total{code="413",endpoint="/score"}' in metrics
    assert 'llm4msr_requests_total{code="401",endpoint="/score"}' in metrics


def test_default_limit_follows_max_candidates() -> None:
    assert body_limit(ServeConfig()) == 64 * 1024 + 512 * 2000
    assert body_limit(ServeConfig(max_candidates=100)) == 64 * 1024 + 512 * 100
    assert body_limit(ServeConfig(max_body_bytes=4096)) == 4096
