"""Shared foundation for the LLM4MSR pipeline: typed config, atomic I/O, provenance, logging.

Leaf package: it imports none of pipelines/, knowledge_service/, ranker/ or feature_store/.
The one exception is lazy: `llm4msr.Pipeline` (the notebook API, pipelines/api.py) is imported
on first use, so `import llm4msr` stays light (no torch, vLLM or Prefect).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from pipelines.api import Pipeline

        return Pipeline
    raise AttributeError(f"module 'llm4msr' has no attribute {name!r}")
