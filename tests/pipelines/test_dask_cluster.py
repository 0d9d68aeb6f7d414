"""The nightly knowledge flow on a real Dask cluster: a `dask scheduler` and two `dask worker`
processes on loopback (random ports), reached through `pipelines.dask_address` exactly as a
multi-machine deployment would be (no LocalCluster in the flow's process).

Checked: the snapshot built on the cluster equals the single-process (thread runner) one, and a
worker process SIGKILLed while it is inside a shard is survived (Dask reschedules the lost shard
on a live worker; the shard write is atomic and idempotent) with the same snapshot. Encoder: the
tiny random Qwen2 decoder with the transformers backend (the cheapest real model the suite has).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.pipelines.conftest import snapshot_vectors, write_flow_config
from tests.pipelines.dask_shard_probe import PROBE_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("dask_shard_probe.py")
NUM_SHARDS = 12  # ~4 prompts each: many short shards, so a kill lands while others still run
START_TIMEOUT_S = 120.0  # scheduler + two workers up (imports on a busy 2-core machine)
PROC_LIFETIME = "15m"  # workers exit by themselves even if a finalizer never ran


def _dask_cli() -> list[str]:
    """`dask` from this interpreter's environment (the workers must run the project's venv)."""
    exe = Path(sys.executable).parent / "dask"
    if not exe.is_file():
        pytest.fail(f"{exe} not found: install requirements/base.txt (distributed) into this venv")
    return [str(exe)]


@dataclass
class DaskCluster:
    address: str
    probe_dir: Path
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def logs(self) -> str:
        """The tail of every process's log, for assertion messages."""
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted(self.log_dir.glob("*.log"))
        )


def _spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    """One process in its own session, so teardown can kill it with every child (nanny + worker)."""
    with open(log_dir / f"{name}.log", "wb") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s; never leaves a dask process behind."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # children of an already exited leader
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> DaskCluster:
    """`dask scheduler` + workers w0 (with the shard probe) and w1 on 127.0.0.1, one thread each."""
    from distributed import Client

    base = tmp_path_factory.mktemp("dask-cluster")
    log_dir, probe_dir = base / "logs", base / "probe"
    log_dir.mkdir()
    probe_dir.mkdir()
    sched_file = base / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = _dask_cli()
    cluster = DaskCluster(address="", probe_dir=probe_dir, log_dir=log_dir)

    def teardown() -> None:
        for proc in reversed(list(cluster.procs.values())):
            _stop(proc)

    request.addfinalizer(teardown)
    cluster.procs["scheduler"] = _spawn(
        "scheduler",
        cli
        + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        + ["--scheduler-file", str(sched_file), "--idle-timeout", "900"],
        log_dir,
        env,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not sched_file.is_file():
        if cluster.procs["scheduler"].poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dask scheduler did not start:\n{cluster.logs()}")
        time.sleep(0.2)
    for name, extra in (("w0", {PROBE_ENV: str(probe_dir)}), ("w1", {})):
        cluster.procs[name] = _spawn(
            name,
            cli
            + ["worker", "--scheduler-file", str(sched_file), "--name", name, "--host", "127.0.0.1"]
            + ["--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
            + ["--local-directory", str(base / name), "--death-timeout", "60", "--lifetime", PROC_LIFETIME]
            + ["--preload", str(PROBE)],
            log_dir,
            {**env, **extra},
        )
    cluster.address = json.loads(sched_file.read_text())["address"]
    with Client(cluster.address, timeout="30s") as client:
        try:
            client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            pytest.fail(f"two dask workers did not join {cluster.address}:\n{cluster.logs()}")
    return cluster


def _as_dict(report: object) -> dict:
    """The flow's report as the JSON data of its report file (a typed result or a plain dict)."""
    return report if isinstance(report, dict) else report.to_dict()


def _knowledge_section(decoder: Path) -> dict:
    return {"model": str(decoder), "num_shards": NUM_SHARDS, "max_prompt_tokens": 480}  # BPE of 1k tokens


@pytest.fixture(scope="module")
def thread_run(prefect_api: object, tiny_data_dir: Path, tiny_decoder_dir: Path, tmp_path_factory) -> dict:
    """The single-process reference: the same flow and config with the default thread runner."""
    from pipelines.flows.knowledge import nightly_knowledge

    cfg = write_flow_config(
        tmp_path_factory.mktemp("dask-ref"), tiny_data_dir, knowledge=_knowledge_section(tiny_decoder_dir)
    )
    return _as_dict(nightly_knowledge(config=str(cfg), materialize=False))


def _cluster_config(root: Path, data_dir: Path, decoder: Path, address: str, retries: int = 0) -> Path:
    return write_flow_config(
        root,
        data_dir,
        knowledge=_knowledge_section(decoder),
        pipelines={"task_runner": "dask", "dask_address": address, "task_retries": retries},
    )


def _assert_same_snapshot(report: dict, reference: dict) -> None:
    a = snapshot_vectors(report["snapshot"]["path"])
    b = snapshot_vectors(reference["snapshot"]["path"])
    assert a.keys() == b.keys() and len(a) > 40
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= 1e-5, f"cluster and single-process vectors differ by up to {worst}"


def test_cluster_snapshot_equals_single_process(
    dask_cluster: DaskCluster, thread_run: dict, tiny_data_dir: Path, tiny_decoder_dir: Path, tmp_path: Path
) -> None:
    from distributed import Client

    from pipelines.flows.knowledge import nightly_knowledge

    cfg = _cluster_config(tmp_path, tiny_data_dir, tiny_decoder_dir, dask_cluster.address)
    report = _as_dict(nightly_knowledge(config=str(cfg), materialize=False))
    assert report["status"] == "published", dask_cluster.logs()
    assert len(report["shards"]) == NUM_SHARDS
    _assert_same_snapshot(report, thread_run)
    with Client(dask_cluster.address, timeout="30s") as client:  # both workers still up
        assert len(client.run(os.getpid)) == 2


def _kill_first_started_shard(probe_dir: Path, deadline: float, out: dict) -> None:
    """SIGKILL the worker process as soon as it reports a shard started (it then holds the shard)."""
    while time.monotonic() < deadline:
        markers = sorted(probe_dir.glob("started-*.json"))
        if markers:
            info = json.loads(markers[0].read_text())
            os.kill(info["pid"], signal.SIGKILL)
            info["committed_at_kill"] = Path(info["shard_path"]).exists()
            (probe_dir / "hold").unlink(missing_ok=True)  # the restarted worker runs at full speed
            out.update(info)
            return
        time.sleep(0.05)


def test_worker_killed_mid_shard_is_retried(
    dask_cluster: DaskCluster, thread_run: dict, tiny_data_dir: Path, tiny_decoder_dir: Path, tmp_path: Path
) -> None:
    from pipelines.flows.knowledge import nightly_knowledge

    cfg = _cluster_config(tmp_path, tiny_data_dir, tiny_decoder_dir, dask_cluster.address, retries=1)
    hold = dask_cluster.probe_dir / "hold"
    hold.write_text("5")
    killed: dict = {}
    killer = threading.Thread(
        target=_kill_first_started_shard,
        args=(dask_cluster.probe_dir, time.monotonic() + 120.0, killed),
        daemon=True,
    )
    killer.start()
    try:
        report = _as_dict(nightly_knowledge(config=str(cfg), materialize=False))
    finally:
        hold.unlink(missing_ok=True)
        killer.join(timeout=5)
    assert killed, f"no shard started on w0 while the flow ran:\n{dask_cluster.logs()}"
    assert not killed["committed_at_kill"], "the kill must land before the shard's file is committed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    assert report["status"] == "published", dask_cluster.logs()
    done = {s["shard"]: s for s in report["shards"]}
    assert sorted(done) == list(range(NUM_SHARDS))
    assert Path(done[killed["shard"]]["path"]) == Path(killed["shard_path"])
    _assert_same_snapshot(report, thread_run)
