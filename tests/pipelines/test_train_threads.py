"""train.threads after vLLM loaded in the same process: vLLM's CPU worker replaces
torch.set_num_threads with a warning stub; the backend restores it, so training gets its threads."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from knowledge_service.backends.vllm_backend import VllmBackend


class _StubbingLLM:
    """Stands for vllm.LLM on CPU: loading replaces torch.set_num_threads like vLLM's cpu_worker."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        torch.set_num_threads = lambda n: None


def test_vllm_load_leaves_torch_set_num_threads_working(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("vllm")
    fake.LLM = _StubbingLLM
    config = types.ModuleType("vllm.config")
    config.PoolerConfig = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.config", config)
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", real)  # undone after the test whatever happens
    backend = VllmBackend.__new__(VllmBackend)
    backend.info = types.SimpleNamespace(model_id="m", path="/m")
    backend.dtype, backend.seed, backend.max_model_len, backend.pooling = "float32", 0, 64, "mean"
    backend.kv_cache_gib = None
    before = torch.get_num_threads()
    backend._load("pooling")
    assert torch.set_num_threads is real
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)
