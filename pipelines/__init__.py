"""Orchestration: the `llm4msr` CLI and the Prefect flows that run the pipeline on a schedule."""
