"""Shared foundation for the LLM4MSR pipeline: typed config, atomic I/O, provenance, logging.

Leaf package: it imports none of pipelines/, knowledge_service/, ranker/ or feature_store/.
"""

__version__ = "0.1.0"
