"""Prefect flows that run the pipeline: nightly knowledge, training, feature refresh.

Import the flow objects from here; `FLOWS` maps the CLI/deployment names to them.
"""

from __future__ import annotations

import os

# The temporary local Prefect API can take longer than Prefect's 20 s default to start on a busy
# 2-core machine; set before any module of this package imports Prefect.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


from typing import Any


def flows() -> dict[str, Any]:
    """name -> Prefect flow (imported lazily: Prefect is heavy to import)."""
    from pipelines.flows.knowledge import feature_refresh, nightly_knowledge
    from pipelines.flows.train import train_flow

    return {"nightly-knowledge": nightly_knowledge, "train": train_flow, "feature-refresh": feature_refresh}


FLOW_NAMES = ("nightly-knowledge", "train", "feature-refresh")
