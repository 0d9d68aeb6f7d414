"""LLM backends behind one interface, loaded once per process (vLLM start-up is the slow part)."""

from __future__ import annotations

import atexit
import logging
import threading

from knowledge_service.backends.base import Backend
from knowledge_service.models import ModelInfo

log = logging.getLogger(__name__)

BACKENDS = ("vllm", "transformers")
_CACHE: dict[tuple, Backend] = {}
_LOCK = threading.Lock()


def get_backend(
    name: str,
    info: ModelInfo,
    pooling: str,
    *,
    dtype: str = "float32",
    seed: int = 0,
    max_model_len: int = 512,
    kv_cache_gib: float | None = 1.0,
) -> Backend:
    """A cached backend for (name, model, pooling, dtype, seed, max_model_len); created on first use."""
    if name not in BACKENDS:
        raise ValueError(f"knowledge backend {name!r}: expected one of {BACKENDS}")
    key = (
        name,
        info.model_id,
        str(info.path),
        pooling,
        dtype,
        seed,
        max_model_len,
        kv_cache_gib if name == "vllm" else None,
    )
    with _LOCK:
        backend = _CACHE.get(key)
        if backend is None:
            if name == "vllm":
                from knowledge_service.backends.vllm_backend import VllmBackend

                backend = VllmBackend(info, pooling, dtype, seed, max_model_len, kv_cache_gib)
            else:
                from knowledge_service.backends.transformers_backend import TransformersBackend

                backend = TransformersBackend(info, pooling, dtype, seed, max_model_len)
            _CACHE[key] = backend
        return backend


def release_backends() -> None:
    """Free every cached model (vLLM aborts at interpreter exit if its LLM is still alive)."""
    with _LOCK:
        for backend in _CACHE.values():
            backend.close()
        _CACHE.clear()


atexit.register(release_backends)

__all__ = ["BACKENDS", "Backend", "get_backend", "release_backends"]
