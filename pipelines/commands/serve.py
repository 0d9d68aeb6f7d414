"""`llm4msr serve`: the ONNX ranker behind HTTP, with knowledge read from the online store."""

from __future__ import annotations

import argparse
import logging
import sys

from pipelines.commands.common import choices, config_parent, store_parent

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        parents=[config_parent(), store_parent()],
        help="serve an exported model over HTTP (POST /score, /healthz, /readyz, /metrics)",
        description=(
            "Load an exported model directory (`llm4msr export`), connect to the online store and serve "
            "POST /score {user_id, scenario_id, item_ids, [features]} -> {scores}. Each request does one "
            "batched store read for the user's knowledge; scenario knowledge is held in memory and reloaded "
            "when the store's current version changes; users without (fresh) knowledge get the model's "
            "fallback. A store whose knowledge family or dimension differs from the model's is refused "
            "(serve.on_knowledge_mismatch=fallback serves it with fallback knowledge only). GET /healthz "
            "(process up), /readyz (model loaded, store reachable, versions agree), /metrics (Prometheus). "
            "If the environment variable named by serve.token_env (LLM4MSR_SERVE_TOKEN) is set, /score "
            "requires `Authorization: Bearer <token>`. Binds to 127.0.0.1 unless --host is given. The "
            "LLM never runs here: this command imports neither vLLM nor transformers."
        ),
    )
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="exported model directory")
    p.add_argument("--port", type=int, help="TCP port (default: serve.port, 8080)")
    p.add_argument("--host", help="bind address (default: serve.host, 127.0.0.1)")
    p.add_argument("--variant", choices=choices("serve", "variant"), help="which exported file to serve")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config

    overrides = list(args.overrides)
    for key, value in (("port", args.port), ("host", args.host), ("variant", args.variant)):
        if value is not None:
            overrides.append(f"serve.{key}={value}")
    cfg = load_config(args.config, overrides)

    import uvicorn

    from feature_store.online import StoreError, open_store
    from ranker.serving.http import body_limit, create_app, token_from_env
    from ranker.serving.runtime import Ranker

    # Everything that can fail is loaded before the socket is bound: no half-started server.
    # A bad model or a store of other knowledge raises a UserError (ModelLoadError, KnowledgeMismatchError);
    # a store that cannot be reached is one line and exit 1, as in `llm4msr store`.
    try:
        store = open_store(args.store or cfg.store.url, cfg.store)
        try:
            ranker = Ranker(args.model, store, cfg.serve)
        except BaseException:
            store.close()
            raise
    except StoreError as exc:
        print(f"llm4msr serve: error: {exc}", file=sys.stderr)
        return 1
    token = token_from_env(cfg.serve.token_env)
    app = create_app(ranker, token=token)
    log.info(
        "serving %s on http://%s:%d (store %s, knowledge %s, auth %s, bodies up to %d bytes)",
        args.model,
        cfg.serve.host,
        cfg.serve.port,
        store.redacted_url,
        ranker.readiness()[1].get("knowledge_version"),
        "bearer token" if token else "off",
        body_limit(cfg.serve),
    )
    try:
        uvicorn.run(
            app,
            host=cfg.serve.host,
            port=cfg.serve.port,
            log_level=cfg.serve.log_level,
            access_log=False,
            workers=1,
        )
    finally:
        ranker.close()
    return 0
