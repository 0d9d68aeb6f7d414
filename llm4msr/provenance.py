"""Who made an artifact: code version, package versions, time. Stamped into every manifest."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess

from llm4msr import __version__
from llm4msr.config import REPO_ROOT


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def provenance(*packages: str) -> dict[str, object]:
    """A small dict for manifests: code revision, python, and the named packages' versions."""
    return {
        "llm4msr_version": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "created_at": utc_now_iso(),
        "packages": {p: package_version(p) for p in packages},
    }
