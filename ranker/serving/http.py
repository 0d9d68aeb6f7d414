"""HTTP front of the Ranker (FastAPI): POST /score, GET /healthz, /readyz, /metrics.

/score checks, in this order and before doing any work the caller could not: the bearer token
(401, from the headers alone: the body is never read for an unauthenticated caller), the body size
(413: a declared Content-Length above the limit is refused unread, a streamed body is cut off at
the limit), then parses (malformed JSON 400) and validates (wrong fields/types 422; ids that are
not printable text 400; unknown scenario or empty candidate list 422; too many candidates 413).
A refusal before the body was read closes the connection, so the server reads no more of it.
Knowledge mismatch (refuse policy) is 503. Every error, 404/405/500 included, is
`{"error": "..."}` and is counted in `llm4msr_requests_total{endpoint,code}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

import anyio.to_thread
import numpy as np
import orjson
from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from llm4msr.config import ServeConfig
from ranker.serving.runtime import KnowledgeMismatchError, Ranker, ScoringRequestError

log = logging.getLogger(__name__)

Id = StrictStr | StrictInt
ENDPOINTS = ("/score", "/healthz", "/readyz", "/metrics")
# Default body limit: room for the envelope and context features, plus per allowed candidate an
# id of a few hundred characters. Far below what would let a caller make the server buffer 100s of MB.
BODY_BASE_BYTES = 64 * 1024
BODY_BYTES_PER_CANDIDATE = 512


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    scenario_id: Id
    item_ids: list[Id] = Field(description="candidate item ids, scored in this order")
    features: dict[str, StrictStr | StrictInt | StrictFloat | None] | None = Field(
        None,
        description="optional context features by name (values are looked up in the model's vocabularies)",
    )


# A refusal of an unread body closes the connection this long after the answer was sent: closing
# a socket with unread input makes the kernel reset the connection, which throws away whatever of
# the answer it has not transmitted yet, so the caller would see a reset instead of 401/413.
LINGER_SECONDS = 0.2


class ClosingJSONResponse(JSONResponse):
    """`{"error": ...}` answer that ends the connection (`Connection: close`): sent at once, the
    response completes LINGER_SECONDS later, then the server closes without reading more."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.headers["connection"] = "close"
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        await asyncio.sleep(LINGER_SECONDS)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class BodyRefused(Exception):
    """The request body is refused before it is (completely) read: too large or unreadable."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def body_limit(cfg: ServeConfig) -> int:
    """serve.max_body_bytes, or when unset 64 KiB + 512 bytes per allowed candidate."""
    if cfg.max_body_bytes is not None:
        return cfg.max_body_bytes
    return BODY_BASE_BYTES + BODY_BYTES_PER_CANDIDATE * cfg.max_candidates


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read while counting: a declared length above `limit` is refused without reading
    a byte, a streamed (chunked) body as soon as it passes `limit`; memory stays below limit + one
    network chunk whatever the caller sends."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BodyRefused(400, f"Content-Length {declared[:40]!r} is not a number of bytes")
        if int(declared) > limit:
            raise BodyRefused(
                413, f"body of {int(declared)} bytes is larger than serve.max_body_bytes={limit}"
            )
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise BodyRefused(413, f"body is larger than serve.max_body_bytes={limit} (stopped reading)")
    except ClientDisconnect as exc:  # nobody to answer; counted, not logged as a server error
        raise BodyRefused(400, "the client disconnected before the body was complete") from exc
    return bytes(buf)


def _describe(errors: list[dict[str, Any]]) -> tuple[int, str]:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            return 400, f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}"
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        got = e.get("input")
        got_s = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        parts.append(f"{loc}: {e.get('msg')} (got {got_s[:80]})")
    return 422, "invalid request: " + "; ".join(parts)


def create_app(ranker: Ranker, token: str | None = None, max_body_bytes: int | None = None) -> FastAPI:
    """The app around one Ranker. `token`: if set, /score requires `Authorization: Bearer <token>`.
    `max_body_bytes`: the /score body limit (default: `body_limit(ranker.cfg)`)."""
    app = FastAPI(title="llm4msr ranker", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ranker.metrics
    expected = f"Bearer {token}".encode() if token else None
    limit = max_body_bytes if max_body_bytes is not None else body_limit(ranker.cfg)
    # serve.score_threads > 0: at most that many requests run the model at once, the others wait in
    # arrival order on the event loop (bounds threads and memory). 0 (default): Starlette's shared
    # pool of 40 threads, which measured as fast (docs/serving.md, "Concurrency").
    limiters: list[CapacityLimiter] = []

    async def in_thread(fn: Any, *args: Any) -> Any:
        if ranker.cfg.score_threads == 0:
            return await anyio.to_thread.run_sync(fn, *args)
        if not limiters:  # created inside the running loop (one loop per server)
            limiters.append(CapacityLimiter(ranker.cfg.score_threads))
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiters[0])

    def error(
        status: int,
        message: str,
        endpoint: str = "/score",
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> JSONResponse:
        """The one error shape, counted. `close`: the body was not (completely) read, end the
        connection after the answer (ClosingJSONResponse)."""
        metrics.requests.labels(endpoint=endpoint, code=str(status)).inc()
        cls = ClosingJSONResponse if close else JSONResponse
        return cls(status_code=status, content={"error": message}, headers=headers)

    def endpoint_of(request: Request) -> str:
        """The metric label: a known endpoint, or "other" (unknown paths must not add labels)."""
        path = request.url.path
        return path if path in ENDPOINTS else "other"

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path[:100]!r}; expected POST /score, GET /healthz, /readyz, /metrics"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = (
                f"method {request.method} is not allowed on {request.url.path}; use {allowed or 'another'}"
            )
        return error(exc.status_code, message, endpoint_of(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, msg = _describe(list(exc.errors()))
        return error(status, msg, endpoint_of(request))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback (it re-raises to the server after this response is sent).
        return error(500, f"internal error ({type(exc).__name__}); see the server log", endpoint_of(request))

    @app.post("/score")
    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        # Headers only: an unauthenticated caller learns nothing else and sends nothing we read.
        if expected is not None and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), expected
        ):
            return error(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}, close=True
            )
        try:
            raw = await read_body(request, limit)
        except BodyRefused as exc:
            return error(exc.status, str(exc), close=True)
        try:
            payload = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            return error(400, f"malformed JSON body: {exc}")
        try:
            body = ScoreRequest.model_validate(payload)
        except ValidationError as exc:
            return error(*_describe(list(exc.errors())))
        try:
            res = await in_thread(
                ranker.score_detailed,
                str(body.user_id),
                str(body.scenario_id),
                [str(i) for i in body.item_ids],
                body.features,
            )
        except ScoringRequestError as exc:
            return error(exc.status, str(exc))
        except KnowledgeMismatchError as exc:
            return error(503, f"refusing to score: {exc}")
        metrics.requests.labels(endpoint="/score", code="200").inc()
        metrics.request_latency.observe(time.perf_counter() - t0)
        # orjson: the same shortest round-trip text per float as json.dumps, much faster on the event
        # loop's GIL time (measurements: docs/serving.md, "Concurrency"). orjson writes NaN
        # as null; a non-finite score stays a 500, as with json.dumps(allow_nan=False) before.
        if not np.isfinite(res.scores).all():
            raise ValueError("the model produced a non-finite score")
        return Response(
            orjson.dumps(
                {
                    "scores": res.scores.tolist(),
                    "knowledge_version": res.knowledge_version,
                    "fallback": res.fallback,
                }
            ),
            media_type="application/json",
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok, details = ranker.readiness()
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, **details})

    @app.get("/metrics")
    def prometheus() -> Response:
        body, ctype = metrics.render()
        return Response(content=body, media_type=ctype)

    return app


def token_from_env(var: str) -> str | None:
    value = os.environ.get(var, "").strip()
    return value or None
