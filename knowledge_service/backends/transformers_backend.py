"""Reference backend on plain PyTorch + transformers: for parity checks and machines without vLLM."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence

import numpy as np

from knowledge_service.backends.base import Backend
from knowledge_service.models import KnowledgeError, ModelInfo

log = logging.getLogger(__name__)


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self, info: ModelInfo, pooling: str, dtype: str, seed: int, max_model_len: int, batch_size: int = 32
    ):
        super().__init__(info, pooling, dtype, seed, max_model_len)
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        self._torch = torch
        self.batch_size = batch_size
        torch.manual_seed(seed)
        cls = AutoModel if info.is_encoder else AutoModelForCausalLM
        try:
            self.model = cls.from_pretrained(str(info.path), dtype=getattr(torch, dtype)).eval()
        except Exception as exc:  # noqa: BLE001 - one clear message naming the model
            raise KnowledgeError(
                f"model {info.path}: transformers cannot load it: {type(exc).__name__}: {exc}"
            ) from exc
        self.base = self.model if info.is_encoder else self.model.base_model

    def _pad(self, batch: Sequence[list[int]]):
        torch = self._torch
        width = max(len(x) for x in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):  # right padding: causal models never attend to the pads
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        return ids, mask

    def embed(self, token_ids: Sequence[list[int]]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(token_ids), self.dimension), dtype=np.float32)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                ids, mask = self._pad([token_ids[i] for i in idx])
                hidden = self.base(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                if self.pooling == "MEAN":
                    m = mask.unsqueeze(-1).float()
                    pooled = (hidden * m).sum(1) / m.sum(1)
                else:
                    last = mask.sum(1) - 1
                    pooled = hidden[torch.arange(len(idx)), last]
                out[idx] = pooled.numpy()
        return out

    def generate(self, token_ids: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        if self.info.is_encoder:
            raise KnowledgeError(
                f"model {self.info.model_id} is an encoder; two-pass generation needs a decoder LLM"
            )
        torch = self._torch
        eos = self.model.generation_config.eos_token_id
        results = []
        with torch.inference_mode():
            for x in token_ids:  # one at a time: no padding side effects in greedy decoding
                ids = torch.tensor([x], dtype=torch.long)
                gen = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=eos if isinstance(eos, int) else None,
                )
                results.append(gen[0, len(x) :].tolist())
        return results

    def close(self) -> None:
        del self.model, self.base
        gc.collect()
