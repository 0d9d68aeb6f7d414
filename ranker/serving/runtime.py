"""The online ranker: an exported ONNX model + knowledge looked up in the online store.

Per request: ids -> feature indices with the exported lookup tables (unknown -> 0), ONE batched
online-store read for the user's knowledge vector, scenario knowledge from memory, one
onnxruntime run. Scenario vectors are reloaded when the store's current version changes (seen
on the version stamped on every read, so detecting a change costs no extra round trip).

Knowledge that is missing, stale, malformed or unreadable (store down) -> `user_has_knowledge = 0`
(the model's learned fallback), counted by reason. A store whose knowledge family or dimension
differs from what the model was trained on, or whose knowledge comes from another dataset source
(dataset, path, split), is refused (KnowledgeMismatchError) or, with
`serve.on_knowledge_mismatch = "fallback"`, served with fallback knowledge only; never mixed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm4msr.config import ServeConfig
from ranker.serving import artifact as A
from ranker.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


class ScoringRequestError(ValueError):
    """The request itself is wrong (unknown scenario, no candidates, too many). HTTP 4xx."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class KnowledgeMismatchError(ValueError):
    """The online store holds knowledge of another family/dimension than the model was trained on."""


@dataclass
class KnowledgeState:
    version: str | None = None  # store version the scenario vectors came from
    agrees: bool = False  # family + dimension match the model
    reason: str = "no version"  # why knowledge is not usable (when agrees is False)
    family: str | None = None
    dimension: int | None = None


@dataclass
class ScoreResult:
    scores: np.ndarray
    knowledge_version: str | None
    fallback: str | None  # None when the user's own knowledge was used, else the reason


class Ranker:
    """Load a model directory and score candidates against the online store (thread-safe)."""

    def __init__(
        self,
        model_dir: str | Path,
        store: Any,
        cfg: ServeConfig | None = None,
        metrics: ServingMetrics | None = None,
    ):
        self.cfg = cfg or ServeConfig()
        self.artifact = A.load_artifact(model_dir, self.cfg.variant)
        self.session = A.open_session(
            self.artifact.onnx_path,
            self.cfg.intra_op_threads,
            self.cfg.inter_op_threads,
            self.cfg.graph_optimization,
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        know = self.artifact.knowledge
        self.dimension = max(int(know.get("dimension") or 0), 1)
        self.family: str | None = know.get("family")
        # Source id of the dataset the model's knowledge came from (None: exported before it was recorded).
        self.dataset_source: str | None = know.get("dataset_source")
        self.needs_knowledge = bool(know.get("use_llm", True)) and any(
            n in A.KNOWLEDGE_INPUTS for n in self.input_names
        )
        self.store = store
        self.metrics = metrics or ServingMetrics()
        self.assembler = self.artifact.assembler
        self.scenario_vocab = self.assembler.scenario_vocab
        n_scen = max(self.scenario_vocab.values(), default=0) + 1
        self._scenario_vectors = np.zeros((n_scen, self.dimension), dtype=np.float32)
        self._state = KnowledgeState()
        self._lock = threading.Lock()
        self._last_check = -1e18
        if self.needs_knowledge:
            self._sync(startup=True)
        else:
            self._state = KnowledgeState(agrees=True, reason="model uses no knowledge")
        self.metrics.knowledge_ok.set(1 if self._state.agrees else 0)
        self._warmup()

    # ------------------------------------------------------------------ knowledge
    def _check(self, info: Any) -> KnowledgeState:
        if info is None:
            return KnowledgeState(reason="the online store has no current version")
        st = KnowledgeState(version=info.version, family=info.knowledge_family, dimension=int(info.dimension))
        problems = []
        if int(info.dimension) != self.dimension:
            problems.append(f"dimension {info.dimension} != {self.dimension}")
        if self.family and info.knowledge_family != self.family:
            problems.append(f"knowledge family {info.knowledge_family!r} != {self.family!r}")
        # Same source and split, newer rows (a refresh) is the normal case; another dataset is not.
        if self.dataset_source and info.dataset_source != self.dataset_source:
            problems.append(
                f"knowledge built from dataset source {info.dataset_source!r} != "
                f"{self.dataset_source!r} (another dataset or split; None: the store version does not "
                "record one, re-materialize a snapshot built by this version)"
            )
        if problems:
            st.reason = (
                f"online store version {info.version} does not match model {self.artifact.path} "
                f"(trained on family {self.family!r}, dimension {self.dimension}): " + "; ".join(problems)
            )
        else:
            st.agrees, st.reason = True, ""
        return st

    def _sync(self, startup: bool = False) -> None:
        """Re-read the store's current version; on change check it and reload scenario vectors."""
        try:
            info = self.store.current()
        except Exception as exc:  # noqa: BLE001 - an unreachable store means fallback, not a crash
            self.metrics.store_errors.inc()
            if startup:
                log.warning(
                    "online store unreachable at start (%s); serving fallback knowledge until it is back", exc
                )
                self._state = KnowledgeState(reason=f"online store unreachable: {exc}")
            return
        st = self._check(info)
        if not st.agrees and info is not None:
            if self.cfg.on_knowledge_mismatch == "refuse":
                if startup:
                    raise KnowledgeMismatchError(
                        st.reason + " (refusing to serve; set "
                        "serve.on_knowledge_mismatch=fallback to serve without knowledge)"
                    )
                log.error("%s; refusing scoring requests", st.reason)
            else:
                log.warning("%s; serving fallback knowledge only", st.reason)
        if st.agrees and st.version != self._state.version:
            ids = list(self.scenario_vocab)
            res = self.store.read("scenario", ids)
            if res.n_errors:
                self.metrics.store_errors.inc()
                return  # keep the previous vectors; try again on the next change check
            vecs = np.zeros_like(self._scenario_vectors)
            for i, sid in enumerate(ids):
                if res.found[i]:
                    vecs[self.scenario_vocab[sid]] = res.vectors[i]
            missing = [s for i, s in enumerate(ids) if not res.found[i]]
            if missing:
                log.warning(
                    "online store version %s has no knowledge for scenario(s) %s (zeros used)",
                    st.version,
                    missing,
                )
            self._scenario_vectors = vecs
            if self._state.version is not None:
                self.metrics.version_changes.inc()
            log.info("knowledge version %s loaded (%d scenarios)", st.version, len(ids) - len(missing))
        self._state = st
        self.metrics.knowledge_ok.set(1 if st.agrees else 0)

    def _maybe_sync(self, seen_version: str | None) -> None:
        now = time.monotonic()
        changed = seen_version is not None and seen_version != self._state.version
        if not changed and now - self._last_check < self.cfg.version_check_seconds:
            return
        with self._lock:
            if changed or now - self._last_check >= self.cfg.version_check_seconds:
                self._last_check = now
                self._sync()

    def user_knowledge(self, user_id: str) -> tuple[np.ndarray, float, str | None, str | None]:
        """(vector [K], has_knowledge, fallback reason or None, store version) with one store read."""
        res = self.store.read("user", [user_id])
        if res.n_errors:
            self.metrics.store_errors.inc()
        self._maybe_sync(res.version)
        st = self._state
        if not st.agrees:
            if st.version is not None and self.cfg.on_knowledge_mismatch == "refuse":
                raise KnowledgeMismatchError(st.reason)
            reason = (
                "mismatch" if st.version is not None else ("store_error" if res.n_errors else "no_version")
            )
        elif res.n_errors:
            reason = "store_error"
        elif res.version != st.version or res.vectors.shape[1] != self.dimension:
            reason = "version_changing"
        elif bool(res.found[0]):
            return res.vectors[0].astype(np.float32, copy=False), 1.0, None, st.version
        elif res.n_stale:
            reason = "stale"
        elif res.n_malformed:
            reason = "malformed"
        else:
            reason = "missing"
        return np.zeros(self.dimension, np.float32), 0.0, reason, st.version

    # ------------------------------------------------------------------ scoring
    @property
    def scenarios(self) -> list[str]:
        return list(self.scenario_vocab)

    def validate(self, scenario_id: str, item_ids: list[str]) -> None:
        if scenario_id not in self.scenario_vocab:
            raise ScoringRequestError(
                f"unknown scenario_id {scenario_id!r}; expected one of {self.scenarios}"
            )
        if len(item_ids) == 0:
            raise ScoringRequestError("item_ids is empty; send at least one candidate item id")
        if len(item_ids) > self.cfg.max_candidates:
            raise ScoringRequestError(
                f"item_ids has {len(item_ids)} candidates, more than serve.max_candidates="
                f"{self.cfg.max_candidates}",
                status=413,
            )

    def score_detailed(
        self, user_id: str, scenario_id: str, item_ids: list[str], features: dict[str, Any] | None = None
    ) -> ScoreResult:
        t0 = time.perf_counter()
        user_id, scenario_id = str(user_id), str(scenario_id)
        item_ids = [str(i) for i in item_ids]
        self.validate(scenario_id, item_ids)
        n = len(item_ids)
        feeds: dict[str, np.ndarray] = {
            "sparse_ids": self.assembler.build(user_id, scenario_id, item_ids, features)
        }
        fallback, version = None, None
        if self.needs_knowledge:
            vec, has, fallback, version = self.user_knowledge(user_id)
            if fallback:
                self.metrics.fallbacks.labels(reason=fallback).inc()
            extra = {
                "user_knowledge": np.broadcast_to(vec, (n, self.dimension)),
                "user_has_knowledge": np.full(n, has, dtype=np.float32),
                "scenario_knowledge": np.broadcast_to(
                    self._scenario_vectors[self.scenario_vocab[scenario_id]], (n, self.dimension)
                ),
            }
        else:
            zeros = np.zeros((n, self.dimension), np.float32)
            extra = {
                "user_knowledge": zeros,
                "user_has_knowledge": np.zeros(n, np.float32),
                "scenario_knowledge": zeros,
            }
        for name in self.input_names:
            if name != "sparse_ids":
                feeds[name] = np.ascontiguousarray(extra[name], dtype=np.float32)
        scores = self.session.run([self.output_name], feeds)[0].reshape(-1)
        dt = time.perf_counter() - t0
        self.metrics.score_latency.observe(dt)
        self.metrics.candidates.observe(n)
        return ScoreResult(scores=scores, knowledge_version=version, fallback=fallback)

    def score(
        self, user_id: str, scenario_id: str, item_ids: list[str], features: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Click probabilities float32 [len(item_ids)], in the order of item_ids."""
        return self.score_detailed(user_id, scenario_id, item_ids, features).scores

    def _warmup(self) -> None:
        if not self.scenarios or not self.cfg.warmup_requests:
            return
        items = self.artifact.assembler.items.ids[:8] or ["__warmup__"]
        feeds = {"sparse_ids": self.assembler.build("__warmup__", self.scenarios[0], items)}
        for name in self.input_names:
            if name == "user_has_knowledge":
                feeds[name] = np.zeros(len(items), np.float32)
            elif name != "sparse_ids":
                feeds[name] = np.zeros((len(items), self.dimension), np.float32)
        for _ in range(self.cfg.warmup_requests):
            self.session.run([self.output_name], feeds)

    # ------------------------------------------------------------------ health
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Model loaded + store reachable + versions agree (live check of the store pointer)."""
        details: dict[str, Any] = {
            "model": str(self.artifact.path),
            "variant": self.artifact.variant,
            "uses_knowledge": self.needs_knowledge,
        }
        if not self.needs_knowledge:
            return True, details | {"knowledge": "not used by this model"}
        try:
            info = self.store.current()
        except Exception as exc:  # noqa: BLE001
            return False, details | {"store": f"unreachable: {exc}"}
        with self._lock:
            self._last_check = time.monotonic()
            self._sync()
        st = self._state
        details |= {
            "store": "reachable",
            "store_version": info.version if info else None,
            "knowledge_version": st.version,
            "knowledge_agrees": st.agrees,
        }
        if not st.agrees:
            details["problem"] = st.reason
            if info is not None and self.cfg.on_knowledge_mismatch == "fallback":
                details["knowledge"] = "fallback only (configured)"
                return True, details
            return False, details
        return True, details

    def close(self) -> None:
        self.store.close()
