"""Suite-wide test settings. Shared fixtures live in tests/fixtures/ and are listed here."""

import os
import tempfile

# Everything offline and quiet; set before any test module imports vLLM, transformers or Prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="llm4msr-prefect-"))

pytest_plugins: list[str] = ["tests.fixtures.data", "tests.fixtures.redis_server", "tests.fixtures.llm"]
