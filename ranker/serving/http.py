"""HTTP front of the Ranker (FastAPI): POST /score, GET /healthz, /readyz, /metrics.

Bad input is always a 4xx with a message that names the field and what was expected: malformed
JSON -> 400, wrong fields/types -> 422, unknown scenario or empty candidate list -> 422, too many
candidates -> 413, missing/wrong bearer token -> 401, knowledge mismatch (refuse policy) -> 503.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from ranker.serving.runtime import KnowledgeMismatchError, Ranker, ScoringRequestError

log = logging.getLogger(__name__)

Id = StrictStr | StrictInt


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    scenario_id: Id
    item_ids: list[Id] = Field(description="candidate item ids, scored in this order")
    features: dict[str, StrictStr | StrictInt | StrictFloat | None] | None = Field(
        None,
        description="optional context features by name (values are looked up in the model's vocabularies)",
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


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


def create_app(ranker: Ranker, token: str | None = None) -> FastAPI:
    """The app around one Ranker. `token`: if set, /score requires `Authorization: Bearer <token>`."""
    app = FastAPI(title="llm4msr ranker", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ranker.metrics
    expected = f"Bearer {token}".encode() if token else None

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, msg = _describe(list(exc.errors()))
        metrics.requests.labels(endpoint=request.url.path, code=str(status)).inc()
        return _error(status, msg)

    def authorize(request: Request) -> None:
        """Runs before the body is validated, so an unauthenticated caller learns nothing else."""
        if expected is not None and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), expected
        ):
            metrics.requests.labels(endpoint="/score", code="401").inc()
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": exc.detail}, headers=exc.headers)

    @app.post("/score", dependencies=[Depends(authorize)])
    def score(body: ScoreRequest) -> Any:
        t0 = time.perf_counter()
        try:
            res = ranker.score_detailed(
                str(body.user_id), str(body.scenario_id), [str(i) for i in body.item_ids], body.features
            )
        except ScoringRequestError as exc:
            metrics.requests.labels(endpoint="/score", code=str(exc.status)).inc()
            return _error(exc.status, str(exc))
        except KnowledgeMismatchError as exc:
            metrics.requests.labels(endpoint="/score", code="503").inc()
            return _error(503, f"refusing to score: {exc}")
        metrics.requests.labels(endpoint="/score", code="200").inc()
        metrics.request_latency.observe(time.perf_counter() - t0)
        return {
            "scores": res.scores.tolist(),
            "knowledge_version": res.knowledge_version,
            "fallback": res.fallback,
        }

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
