"""One Python entry point for notebooks: `llm4msr.Pipeline(config)`.

The CLI stages without the CLI: one object holds the settings and what the last step produced,
each step returns a typed result and prints one line, so a notebook needs one import:

    pipe = llm4msr.Pipeline(overrides=["train.epochs=1"], workdir="nb")
    pipe.build_data()         # DatasetRef: the canonical dataset folder
    pipe.build_knowledge()    # KnowledgeBuild: snapshot published offline (+ online store)
    pipe.train()              # ranker.train.RunResult
    pipe.export()             # ranker.export.ExportReport (parity gated)
    ranker = pipe.ranker()    # ranker.serving.runtime.Ranker: ranker.score(user, scenario, items)

Steps run in-process and directly (no Prefect: the flows add scheduling, retries and caching a
notebook does not need). Heavy modules (torch, vLLM) are imported by the step that needs them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm4msr.config import Settings, load_config
from llm4msr.errors import UserError
from pipelines.flows.results import DatasetRef


def workdir_overrides(workdir: str | Path) -> list[str]:
    """Overrides that put every artifact path of the config under `workdir` (demo, notebooks)."""
    w = Path(workdir).resolve()
    return [
        f"data.out={w / 'data'}",
        f"knowledge.snapshot_root={w / 'knowledge'}",
        f"store.url={w / 'online_store'}",
        f"train.runs_dir={w / 'runs'}",
        f"pipelines.work_dir={w / 'pipelines'}",
        f"pipelines.results_dir={w / 'pipelines' / 'prefect-results'}",
        f"pipelines.registry_dir={w / 'models' / 'registry'}",
    ]


@dataclass
class KnowledgeBuild:
    """`build_knowledge`'s result: the published snapshot and, if written, the online version."""

    snapshot: Any  # knowledge_service.runner.BuildReport
    online: Any | None  # feature_store.materialize.MaterializeReport


class Pipeline:
    """The pipeline's stages for interactive use; each step prints one line and returns a typed result.

    Args:
        config: a Settings object, a YAML path, a (partial) nested dict of settings, or None
            (the defaults).
        overrides: KEY=VALUE overrides applied on top, as with `--set`.
        workdir: if given, every artifact path goes under this folder (`workdir_overrides`).
        verbose: print one line per step (False: silent).
    """

    def __init__(
        self,
        config: Settings | str | Path | dict[str, Any] | None = None,
        overrides: Sequence[str] = (),
        *,
        workdir: str | Path | None = None,
        verbose: bool = True,
    ) -> None:
        extra = (workdir_overrides(workdir) if workdir is not None else []) + list(overrides)
        if isinstance(config, Settings):
            self.settings = load_config(None, extra, base=config.model_dump(mode="json"))
        elif isinstance(config, dict):
            self.settings = load_config(None, extra, base=config)
        else:
            self.settings = load_config(config, extra)
        self.verbose = verbose
        self.data: DatasetRef | None = None
        self.knowledge: KnowledgeBuild | None = None
        self.run: Any | None = None  # ranker.train.RunResult
        self.exported: Any | None = None  # ranker.export.ExportReport

    def _say(self, step: str, t0: float, text: str) -> None:
        if self.verbose:
            print(f"{step:<10} {time.perf_counter() - t0:6.1f}s  {text}")

    def build_data(self) -> DatasetRef:
        """Build the canonical dataset (data.*) into data.out."""
        from feature_store.build import build_and_write
        from pipelines.flows.common import folder_digest

        t0 = time.perf_counter()
        cfg = self.settings.data
        path = Path(build_and_write(cfg, cfg.out)).resolve()
        self.data = DatasetRef(path=str(path), digest=folder_digest(path))
        self._say("data", t0, f"{cfg.dataset} -> {path} (content id {self.data.digest})")
        return self.data

    def _data_dir(self) -> Path:
        if self.data is not None:
            return Path(self.data.path)
        out = Path(self.settings.data.out)
        if not (out / "manifest.json").is_file():
            raise UserError(f"no canonical dataset at {out}: call build_data() first")
        return out

    def build_knowledge(self, full: bool = False, materialize: bool = True) -> KnowledgeBuild:
        """Encode prompts with the LLM into a snapshot (incremental unless `full`), publish it as the
        offline store's current version and, if `materialize`, write it to the online store."""
        from knowledge_service.runner import build_knowledge

        t0 = time.perf_counter()
        k = self.settings.knowledge
        snap = build_knowledge(self._data_dir(), k.snapshot_root, k, full=full)
        online = None
        if materialize:
            from feature_store.materialize import materialize as write_online

            online = write_online(snap.path, self.settings.store.url, self.settings.store)
        self.knowledge = KnowledgeBuild(snap, online)
        where = f", online version {online.version}" if online else ""
        self._say(
            "knowledge",
            t0,
            f"snapshot {snap.snapshot_id}: {snap.n_encoded} encoded, {snap.n_carried} carried{where}",
        )
        return self.knowledge

    def train(self, out: str | Path | None = None) -> Any:
        """Train the ranker (train.*) on the dataset and, with train.use_llm, the current snapshot;
        returns ranker.train.RunResult (run folder, best epoch, validation AUC, test metrics)."""
        from ranker.train import train

        t0 = time.perf_counter()
        s = self.settings
        knowledge = None
        if s.train.use_llm:
            knowledge = self.knowledge.snapshot.path if self.knowledge else s.knowledge.snapshot_root
        run_dir = Path(out) if out else Path(s.train.runs_dir) / time.strftime("run-%Y%m%dT%H%M%S")
        self.run = train(s, self._data_dir(), knowledge, run_dir)
        variant = s.train.backbone + (" + LLM4MSR" if s.train.use_llm else "")
        self._say(
            "train", t0, f"{variant}: validation AUC {self.run.best_valid_auc:.4f} -> {self.run.run_dir}"
        )
        return self.run

    def export(self, out: str | Path | None = None) -> Any:
        """Export the last trained run to ONNX with the parity gate; returns ranker.export.ExportReport."""
        from ranker.export import export_run

        if self.run is None:
            raise UserError("nothing to export: call train() first")
        t0 = time.perf_counter()
        run_dir = Path(self.run.run_dir)
        out = Path(out) if out else Path(self.settings.pipelines.work_dir) / "exports" / run_dir.name
        self.exported = export_run(run_dir, out, self.settings.export, dataset_dir=self._data_dir())
        ok = "passed" if self.exported.parity.get("passed") else "FAILED"
        self._say("export", t0, f"{self.exported.model_dir} ({self.exported.exporter}, parity {ok})")
        return self.exported

    def ranker(self, model_dir: str | Path | None = None) -> Any:
        """The serving runtime on the exported model and the online store (close() it when done):
        `ranker.score(user_id, scenario_id, item_ids)` -> click probabilities."""
        from feature_store.online import open_store
        from ranker.serving.runtime import Ranker

        if model_dir is None:
            if self.exported is None:
                raise UserError("no exported model: call export() first, or pass model_dir")
            model_dir = self.exported.model_dir
        t0 = time.perf_counter()
        store = open_store(self.settings.store.url, self.settings.store)
        try:
            ranker = Ranker(model_dir, store, self.settings.serve)
        except BaseException:
            store.close()
            raise
        self._say("ranker", t0, f"serving {model_dir} with the online store {self.settings.store.url}")
        return ranker
