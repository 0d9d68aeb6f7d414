"""One interface for every LLM backend: token ids in, raw float32 pooled hidden states out.

Both backends receive token ids produced by `knowledge_service.models.load_tokenizer`, so they
see identical inputs whatever tokenizer class their own loaders would pick.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from knowledge_service.models import ModelInfo


class Backend(abc.ABC):
    """A loaded model. `embed` pools the last layer (LAST token or MEAN over the mask), not normalised."""

    name: str = "base"

    def __init__(self, info: ModelInfo, pooling: str, dtype: str, seed: int, max_model_len: int):
        if pooling not in ("LAST", "MEAN"):
            raise ValueError(f"pooling {pooling!r}: expected LAST or MEAN")
        self.info = info
        self.pooling = pooling
        self.dtype = dtype
        self.seed = seed
        self.max_model_len = max_model_len

    @property
    def dimension(self) -> int:
        return self.info.hidden_size

    @abc.abstractmethod
    def embed(self, token_ids: Sequence[list[int]]) -> np.ndarray:
        """(n, hidden) float32 pooled last-layer hidden states, in input order."""

    @abc.abstractmethod
    def generate(self, token_ids: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy, seeded continuation token ids (without the prompt), in input order."""

    def warm(self, runner: str) -> None:
        """Load the engine for "pooling" or "generate" now, so timings exclude start-up."""
        return None

    def close(self) -> None:
        """Free the model (vLLM needs an explicit release before interpreter exit)."""
        return None
