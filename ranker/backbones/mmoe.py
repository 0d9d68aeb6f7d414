"""MMoE (Ma et al., KDD 2018) with one gate and one tower per scenario: experts are shared MLPs,
each scenario mixes them with its own softmax gate (gathered by scenario index)."""

from __future__ import annotations

import torch

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP, ScenarioLinear, gather_scenario

N_EXPERTS = 4


class MMoE(Backbone):
    def __init__(self, ctx: BackboneContext, n_experts: int = N_EXPERTS):
        super().__init__(ctx)
        self.n_experts = n_experts
        self.experts = torch.nn.ModuleList(
            MLP(ctx.in_dim, ctx.hidden_dims, ctx.dropout) for _ in range(n_experts)
        )
        self.gate = torch.nn.Linear(ctx.in_dim, ctx.n_scenarios * n_experts)
        self.tower = ScenarioLinear(ctx.n_scenarios, self.experts[0].out_dim, 1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        x = emb.flatten(1)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, H]
        gates = self.gate(x).view(x.shape[0], self.ctx.n_scenarios, self.n_experts)
        weights = torch.softmax(gather_scenario(gates, scenario), dim=-1)  # [B, E]
        mixed = (weights.unsqueeze(-1) * experts).sum(1)
        return self.tower(mixed, scenario).squeeze(-1)
