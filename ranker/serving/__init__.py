"""Online serving: the exported ONNX ranker + online-store knowledge lookups, no LLM on the request path.

Modules: `artifact` (model directory layout and loader), `runtime` (the `Ranker`), `metrics`
(Prometheus), `http` (FastAPI app). Nothing here imports torch, vLLM, transformers or
knowledge_service (tests/serving/test_imports.py checks it in a fresh interpreter).
"""
