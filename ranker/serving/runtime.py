"""The online ranker: an exported ONNX model + knowledge looked up in the online store.

Per request: ids -> feature indices with the exported lookup tables (unknown -> 0), ONE batched
online-store read for the user's knowledge vector, scenario knowledge from memory, one
onnxruntime run.

One version per request: a request pins the current `KnowledgeState` (a store version, its
metadata and its scenario vectors) and reads the user's vector *of that version*, so user and
scenario knowledge never come from two versions. A switch is noticed through the store's
pointer cache (no extra round trip); the new version's state is built completely (scenario
vectors read by explicit version) and published with one reference swap. A version whose
scenario vectors cannot all be read is not adopted: the previous state keeps serving, a warning
is logged and `llm4msr_knowledge_versions_rejected_total` counts it; it is retried on the
periodic check (`serve.version_check_seconds`).

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
from llm4msr.errors import UserError
from llm4msr.ids import describe_bad_text_id, first_bad_text_id, text_id_problem
from ranker.serving import artifact as A
from ranker.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


class ScoringRequestError(ValueError):
    """The request itself is wrong (ids that are not text, unknown scenario, no candidates, too
    many). HTTP 4xx."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class KnowledgeMismatchError(UserError, ValueError):
    """The online store holds knowledge of another family/dimension than the model was trained on."""


@dataclass
class KnowledgeState:
    """What requests score with, all of ONE store version. Built completely, then published by
    replacing `Ranker._state` (one reference) and never modified afterwards, so a request holding
    it reads user vectors of `info` and scenario vectors of the same version."""

    version: str | None = None  # store version the scenario vectors came from
    agrees: bool = False  # family + dimension match the model
    reason: str = "no version"  # why knowledge is not usable (when agrees is False)
    family: str | None = None
    dimension: int | None = None
    info: Any = None  # the StoreVersion requests read user vectors of (None: nothing adopted)
    scenario_vectors: np.ndarray | None = None  # [n_scenarios, K], read-only; None when not usable
    fallback: str | None = "no_version"  # per-request fallback reason while not usable


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
        self._no_scenarios = np.zeros((n_scen, self.dimension), dtype=np.float32)  # unusable states
        self._no_scenarios.flags.writeable = False
        self._state = KnowledgeState()  # replaced as a whole, never modified (see KnowledgeState)
        self._rejected: tuple[str, str] | None = None  # (version, why) not adopted; periodic retry only
        self._lock = threading.Lock()  # one reload at a time
        self._last_check = -1e18
        if self.needs_knowledge:
            self._sync(startup=True)
        else:
            self._state = KnowledgeState(agrees=True, reason="model uses no knowledge", fallback=None)
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

    def _sync(self, startup: bool = False) -> tuple[Any, str | None]:
        """Re-read the pointer (uncached); when it names another version, build that version's
        whole state, then publish it with one swap. Returns (the store's current version, the
        error text when the store was unreachable)."""
        try:
            info = self.store.current()
        except Exception as exc:  # noqa: BLE001 - an unreachable store means fallback, not a crash
            self.metrics.store_errors.inc()
            if startup:
                log.warning(
                    "online store unreachable at start (%s); serving fallback knowledge until it is back", exc
                )
                self._state = KnowledgeState(reason=f"unreachable: {exc}", fallback="store_error")
            return None, str(exc)
        cur = self._state
        if info is not None and cur.info is not None and info.version == cur.info.version:
            self._rejected = None  # e.g. rolled back from a rejected version to the one served
            return info, None  # the version being served (ids name immutable snapshots)
        new = self._check(info)
        if info is not None and not new.agrees:
            new.info, new.fallback = info, "mismatch"
            if self.cfg.on_knowledge_mismatch == "refuse":
                if startup:
                    raise KnowledgeMismatchError(
                        new.reason + " (refusing to serve; set "
                        "serve.on_knowledge_mismatch=fallback to serve without knowledge)"
                    )
                log.error("%s; refusing scoring requests", new.reason)
            else:
                log.warning("%s; serving fallback knowledge only", new.reason)
        elif info is not None and (problem := self._load(new, info)) is not None:
            self._reject(info, problem)
            return info, None
        if new.agrees and cur.version is not None and new.version != cur.version:
            self.metrics.version_changes.inc()
        self._state, self._rejected = new, None  # the one publication
        self.metrics.knowledge_ok.set(1 if new.agrees else 0)
        if new.agrees:
            log.info("knowledge version %s loaded (%d scenarios)", new.version, len(self.scenario_vocab))
        return info, None

    def _load(self, st: KnowledgeState, info: Any) -> str | None:
        """Read every scenario vector of version `info` into `st` (by explicit version, not through
        the pointer cache, which may still name the previous version); the problem if it cannot."""
        ids = list(self.scenario_vocab)
        res = self.store.read("scenario", ids, version=info)
        if res.n_errors:
            self.metrics.store_errors.inc()
            return "the store failed while its scenario vectors were read"
        bad = [s for s, ok in zip(ids, res.found.tolist(), strict=True) if not ok]
        if bad:
            return (
                f"no readable vector for scenario(s) {bad} (missing {res.n_missing}, stale {res.n_stale}, "
                f"malformed {res.n_malformed}; expected dimension {self.dimension})"
            )
        vecs = self._no_scenarios.copy()
        vecs[[self.scenario_vocab[s] for s in ids]] = res.vectors
        vecs.flags.writeable = False
        st.info, st.scenario_vectors, st.fallback = info, vecs, None
        return None

    def _reject(self, info: Any, problem: str) -> None:
        """Keep serving the current state instead of a version that cannot be read completely."""
        self.metrics.versions_rejected.inc()
        self._rejected = (info.version, problem)
        cur = self._state
        log.warning(
            "online store version %s not adopted: %s; %s (retried every %.1fs)",
            info.version,
            problem,
            f"still serving version {cur.version}" if cur.info is not None else "serving fallback knowledge",
            self.cfg.version_check_seconds,
        )
        if cur.info is None:  # nothing adopted yet: readiness says why
            self._state = KnowledgeState(reason=f"online store version {info.version} not adopted: {problem}")

    def _pin(self) -> tuple[KnowledgeState, bool]:
        """(the state this request scores with, whether the store's pointer could not be read).
        Notices a switch through the pointer cache; reloads when it names another version than the
        one served (unless that one was just rejected) or when the periodic check is due."""
        try:
            seen = self.store.current_cached()
            seen_v, pointer_error = (seen.version if seen is not None else None), False
        except Exception:  # noqa: BLE001 - the request falls back, counted
            self.metrics.store_errors.inc()
            seen_v, pointer_error = self._state.version, True
        if self._due(seen_v):
            with self._lock:
                if self._due(seen_v):  # another request may have reloaded meanwhile
                    self._last_check = time.monotonic()
                    self._sync()
        return self._state, pointer_error

    def _due(self, seen_v: str | None) -> bool:
        rejected = self._rejected[0] if self._rejected else None
        if seen_v not in (self._state.version, rejected):
            return True
        return time.monotonic() - self._last_check >= self.cfg.version_check_seconds

    def user_knowledge(self, user_id: str) -> tuple[np.ndarray, float, str | None, str | None]:
        """(vector [K], has_knowledge, fallback reason or None, store version) with one store read."""
        st, pointer_error = self._pin()
        return self._user_knowledge(user_id, st, pointer_error)

    def _user_knowledge(
        self, user_id: str, st: KnowledgeState, pointer_error: bool
    ) -> tuple[np.ndarray, float, str | None, str | None]:
        """The user's vector of the pinned version `st` (read by explicit version)."""
        if not st.agrees:
            if st.fallback == "mismatch" and self.cfg.on_knowledge_mismatch == "refuse":
                raise KnowledgeMismatchError(st.reason)
            reason = "store_error" if pointer_error else st.fallback
        elif pointer_error:
            reason = "store_error"  # the store is down: do not wait for a second timeout
        else:
            res = self.store.read("user", [user_id], version=st.info)
            if res.n_errors:
                self.metrics.store_errors.inc()
                reason = "store_error"
            elif bool(res.found[0]):
                return res.vectors[0].astype(np.float32, copy=False), 1.0, None, st.version
            elif res.n_stale:
                reason = "stale"
            elif res.n_malformed:
                reason = "malformed"
            else:
                reason = "missing"
        return np.zeros(self.dimension, np.float32), 0.0, reason, st.version

    @property
    def scenario_vectors(self) -> np.ndarray:
        """[n_scenarios, K] scenario vectors of the version being served (zeros when none is)."""
        sv = self._state.scenario_vectors
        return self._no_scenarios if sv is None else sv

    # ------------------------------------------------------------------ scoring
    @property
    def scenarios(self) -> list[str]:
        return list(self.scenario_vocab)

    def validate(self, scenario_id: str, item_ids: list[str], user_id: str | None = None) -> None:
        """Refuse a request the model cannot score as asked (ScoringRequestError, HTTP 4xx): ids
        that are not text (400, the same on every store: see llm4msr.ids.text_id_problem), an
        unknown scenario or no candidates (422), more than serve.max_candidates (413)."""
        for field, value in (("user_id", user_id), ("scenario_id", scenario_id)):
            if value is not None and (problem := text_id_problem(value)) is not None:
                raise ScoringRequestError(describe_bad_text_id(field, value, problem), status=400)
        if (bad := first_bad_text_id(item_ids)) is not None:
            i, problem = bad
            raise ScoringRequestError(
                describe_bad_text_id(f"item_ids[{i}]", item_ids[i], problem), status=400
            )
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
        self.validate(scenario_id, item_ids, user_id)
        n = len(item_ids)
        feeds: dict[str, np.ndarray] = {
            "sparse_ids": self.assembler.build(user_id, scenario_id, item_ids, features)
        }
        fallback, version = None, None
        if self.needs_knowledge:
            st, pointer_error = self._pin()  # ONE version for the user and the scenario vectors
            vec, has, fallback, version = self._user_knowledge(user_id, st, pointer_error)
            if fallback:
                self.metrics.fallbacks.labels(reason=fallback).inc()
            scen = self._no_scenarios if st.scenario_vectors is None else st.scenario_vectors
            extra = {
                "user_knowledge": np.broadcast_to(vec, (n, self.dimension)),
                "user_has_knowledge": np.full(n, has, dtype=np.float32),
                "scenario_knowledge": np.broadcast_to(
                    scen[self.scenario_vocab[scenario_id]], (n, self.dimension)
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
        with self._lock:
            self._last_check = time.monotonic()
            info, error = self._sync()
        if error is not None:
            return False, details | {"store": f"unreachable: {error}"}
        st, rejected = self._state, self._rejected
        details |= {
            "store": "reachable",
            "store_version": info.version if info else None,
            "knowledge_version": st.version,
            "knowledge_agrees": st.agrees,
        }
        if rejected is not None and st.agrees:  # still serving the last good version: ready
            details["problem"] = f"store version {rejected[0]} not adopted: {rejected[1]}"
        if not st.agrees:
            details["problem"] = st.reason
            if info is not None and self.cfg.on_knowledge_mismatch == "fallback":
                details["knowledge"] = "fallback only (configured)"
                return True, details
            return False, details
        return True, details

    def close(self) -> None:
        self.store.close()
