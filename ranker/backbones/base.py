"""The one interface every multi-scenario backbone implements.

A backbone maps the (possibly meta-transformed) field embeddings [B, F, D] and the scenario
index [B] to one logit per row [B]. Backbones know nothing about LLM knowledge: the meta
networks (ranker.meta) wrap around them, so every backbone gets LLM4MSR for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BackboneContext:
    n_fields: int  # number of embedded fields F (sparse features + knowledge fields in concat mode)
    emb_dim: int  # D
    n_scenarios: int  # scenario vocabulary size (index 0 = unknown)
    hidden_dims: list[int]
    dropout: float = 0.0
    scenario_field: int = 2  # which field holds the scenario embedding
    scenario_knowledge_fields: list[int] = field(default_factory=list)  # concat mode: appended fields
    user_fields: list[int] = field(default_factory=lambda: [0])
    item_fields: list[int] = field(default_factory=lambda: [1])
    data_constant_fields: list[int] = field(default_factory=list)  # FeatureSpec.scenario_constant

    @property
    def in_dim(self) -> int:
        return self.n_fields * self.emb_dim

    @property
    def scenario_constant_fields(self) -> list[int]:
        """Fields equal for every row of a scenario (by construction, or found in the training
        rows): per-scenario normalisation turns them into rounding noise (STAR keeps them out of
        its tower)."""
        fields = [self.scenario_field, *self.scenario_knowledge_fields, *self.data_constant_fields]
        return sorted(set(fields))


class Backbone(nn.Module):
    """Subclasses implement forward(emb [B, F, D], scenario [B] int64) -> logit [B]."""

    def __init__(self, ctx: BackboneContext):
        super().__init__()
        self.ctx = ctx

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
