"""The ranker: field embeddings -> [user-level meta layers] -> backbone (+ scenario-level meta
network in parallel) -> click probability. One class for every backbone and every LLM4MSR
variant, with the forward signature of contract 4 (docs/architecture.md)."""

from __future__ import annotations

import torch
from torch import nn

from llm4msr.config import TrainConfig
from ranker.backbones import BackboneContext, build_backbone
from ranker.features import FeatureSpec
from ranker.layers import FeatureEmbedding
from ranker.meta import KnowledgeConcat, ScenarioMetaNetwork, UserMetaNetwork

INPUT_NAMES = ("sparse_ids", "user_knowledge", "user_has_knowledge", "scenario_knowledge")
OUTPUT_NAME = "score"


class RankerModel(nn.Module):
    """forward(sparse_ids [B,F] int64, user_knowledge [B,K], user_has_knowledge [B], scenario_knowledge [B,K])
    -> score [B] (probability). With use_llm=False the knowledge inputs are accepted and ignored."""

    def __init__(self, spec: FeatureSpec, cfg: TrainConfig):
        super().__init__()
        self.spec_scenario_index = spec.scenario_index
        self.user_index = spec.index_of("user_id")
        self.n_scenarios = spec.n_scenarios
        self.use_llm = cfg.use_llm
        meta = cfg.meta
        self.knowledge_dropout = meta.knowledge_dropout
        k = spec.knowledge_dim
        if cfg.use_llm and k < 1:
            raise ValueError(
                "use_llm=True needs knowledge vectors (knowledge dimension is 0); pass a snapshot or --no-llm"
            )
        d_emb = cfg.embedding_dim
        # Embedding and backbone are built first, from the same seed as the plain model, and every meta
        # branch starts as the identity (zero-initialised generators and scenario output): an untrained
        # +LLM4MSR model computes exactly its plain backbone, so knowledge can only add what it learns.
        self.embedding = FeatureEmbedding([f.vocab_size for f in spec.features], d_emb)
        n_fields = spec.n_features
        concat = cfg.use_llm and meta.mode == "concat" and (meta.user_level or meta.scenario_level)
        ctx = BackboneContext(
            n_fields=n_fields + (int(meta.user_level) + int(meta.scenario_level) if concat else 0),
            emb_dim=d_emb,
            n_scenarios=spec.n_scenarios,
            hidden_dims=list(cfg.hidden_dims),
            dropout=cfg.dropout,
            scenario_field=spec.scenario_index,
            scenario_knowledge_fields=[n_fields + int(meta.user_level)]
            if concat and meta.scenario_level
            else [],
            user_fields=[spec.index_of("user_id")],
            item_fields=[spec.index_of("item_id")],
            data_constant_fields=[spec.index_of(n) for n in spec.scenario_constant],
        )
        self.backbone = build_backbone(cfg.backbone, ctx)
        self.user_meta: UserMetaNetwork | None = None
        self.scenario_meta: ScenarioMetaNetwork | None = None
        self.concat: KnowledgeConcat | None = None
        d = n_fields * d_emb
        if cfg.use_llm and meta.mode == "meta":
            if meta.user_level:
                self.user_meta = UserMetaNetwork(
                    k, d, meta.knowledge_proj_dim, meta.n_meta_layers, meta.generated_weights, meta.rank
                )
            if meta.scenario_level:
                self.scenario_meta = ScenarioMetaNetwork(
                    k,
                    d,
                    cfg.hidden_dims[-1] if cfg.hidden_dims else 32,
                    meta.knowledge_proj_dim,
                    meta.n_meta_layers,
                    meta.generated_weights,
                    meta.rank,
                    meta.merge,
                )
        elif concat:
            self.concat = KnowledgeConcat(k, d_emb, meta.user_level, meta.scenario_level)

    @torch.no_grad()
    def set_knowledge_stats(self, user_vectors: torch.Tensor, scenario_vectors: torch.Tensor) -> None:
        """Fix the knowledge standardisation from the training snapshot (call once, before training).

        Also starts the learned user fallback at the mean user vector.
        """
        from ranker.layers import KnowledgeNorm
        from ranker.meta import UserFallback

        for module in self.modules():
            if isinstance(module, KnowledgeNorm):
                module.set_stats(user_vectors if module.kind == "user" else scenario_vectors)
            elif isinstance(module, UserFallback) and user_vectors.shape[0]:
                module.fallback.copy_(user_vectors.to(torch.float32).mean(0))

    def logit(
        self,
        sparse_ids: torch.Tensor,
        user_knowledge: torch.Tensor,
        user_has_knowledge: torch.Tensor,
        scenario_knowledge: torch.Tensor,
    ) -> torch.Tensor:
        scenario = sparse_ids[:, self.spec_scenario_index].clamp(0, self.n_scenarios - 1)
        emb = self.embedding(sparse_ids)
        if self.training and self.knowledge_dropout > 0:
            keep = torch.rand(user_has_knowledge.shape, device=user_has_knowledge.device)
            user_has_knowledge = user_has_knowledge * (keep >= self.knowledge_dropout).to(user_has_knowledge)
        if self.user_meta is not None:
            emb = self.user_meta(emb, user_knowledge, user_has_knowledge, sparse_ids[:, self.user_index])
        if self.concat is not None:
            emb = self.concat(emb, user_knowledge, user_has_knowledge, scenario_knowledge)
        out = self.backbone(emb, scenario)
        if self.scenario_meta is not None:
            out = self.scenario_meta(out, emb, scenario_knowledge, scenario)
        return out

    def forward(
        self,
        sparse_ids: torch.Tensor,
        user_knowledge: torch.Tensor,
        user_has_knowledge: torch.Tensor,
        scenario_knowledge: torch.Tensor,
    ) -> torch.Tensor:
        return torch.sigmoid(self.logit(sparse_ids, user_knowledge, user_has_knowledge, scenario_knowledge))


def build_model(spec: FeatureSpec, cfg: TrainConfig) -> RankerModel:
    """The ranker for a feature spec and training settings (the one constructor train/export use).

    Args:
        spec: sparse features, scenario column and knowledge dimension (`ranker.features.build_spec`).
        cfg: the `train` settings: backbone, use_llm, meta networks, embedding and hidden sizes.

    Returns:
        RankerModel in training mode; an untrained +LLM4MSR model scores exactly like its plain
        backbone built from the same seed.

    Raises:
        ValueError: an unknown backbone, or use_llm with a knowledge dimension of 0.
    """
    return RankerModel(spec, cfg)


def meta_parameters(model: RankerModel) -> list[nn.Parameter]:
    """Parameters of the knowledge branches (meta networks or concat), which get `meta.weight_decay`."""
    return [
        p
        for m in (model.user_meta, model.scenario_meta, model.concat)
        if m is not None
        for p in m.parameters()
    ]


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
