"""Shared-bottom DNN: one MLP over all fields (the scenario embedding is one of them) and a small
per-scenario output tower gathered by scenario index. The baseline every MSR paper needs."""

from __future__ import annotations

import torch

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP, ScenarioLinear


class SharedBottom(Backbone):
    def __init__(self, ctx: BackboneContext):
        super().__init__(ctx)
        self.bottom = MLP(ctx.in_dim, ctx.hidden_dims, ctx.dropout)
        self.tower = ScenarioLinear(ctx.n_scenarios, self.bottom.out_dim, 1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        return self.tower(self.bottom(emb.flatten(1)), scenario).squeeze(-1)
