"""PLE (Tang et al., RecSys 2020), one CGC extraction layer with scenarios as tasks: shared
experts plus scenario-specific experts; each scenario's gate mixes its own experts with the
shared ones. All scenarios' specific experts are computed and the row's one gathered."""

from __future__ import annotations

import torch

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP, ScenarioLinear, gather_scenario

N_SHARED = 2
N_SPECIFIC = 1


class PLE(Backbone):
    def __init__(self, ctx: BackboneContext, n_shared: int = N_SHARED, n_specific: int = N_SPECIFIC):
        super().__init__(ctx)
        s = ctx.n_scenarios
        self.n_shared, self.n_specific = n_shared, n_specific
        self.shared = torch.nn.ModuleList(
            MLP(ctx.in_dim, ctx.hidden_dims, ctx.dropout) for _ in range(n_shared)
        )
        self.specific = torch.nn.ModuleList(
            MLP(ctx.in_dim, ctx.hidden_dims, ctx.dropout) for _ in range(s * n_specific)
        )
        self.gate = torch.nn.Linear(ctx.in_dim, s * (n_shared + n_specific))
        self.tower = ScenarioLinear(s, self.shared[0].out_dim, 1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        x = emb.flatten(1)
        b, s = x.shape[0], self.ctx.n_scenarios
        spec = torch.stack([e(x) for e in self.specific], dim=1)  # [B, S*n_spec, H]
        spec = gather_scenario(spec.view(b, s, self.n_specific, -1), scenario)  # [B, n_spec, H]
        shared = torch.stack([e(x) for e in self.shared], dim=1)  # [B, n_shared, H]
        experts = torch.cat([spec, shared], dim=1)
        gates = self.gate(x).view(b, s, self.n_shared + self.n_specific)
        weights = torch.softmax(gather_scenario(gates, scenario), dim=-1)
        mixed = (weights.unsqueeze(-1) * experts).sum(1)
        return self.tower(mixed, scenario).squeeze(-1)
