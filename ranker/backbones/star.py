"""STAR (Sheng et al., CIKM 2021): partitioned normalisation of the input, star-topology FC
layers (weights = shared ⊙ per-scenario, bias = shared + per-scenario, per-scenario factors
gathered by scenario index) and an auxiliary network on the scenario embedding whose logit is
added to the main one."""

from __future__ import annotations

import torch
from torch import nn

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP, PartitionedNorm, gather_scenario


class StarLinear(nn.Module):
    def __init__(self, n_scenarios: int, in_dim: int, out_dim: int):
        super().__init__()
        self.shared_w = nn.Parameter(torch.empty(in_dim, out_dim))
        self.shared_b = nn.Parameter(torch.zeros(out_dim))
        self.scen_w = nn.Parameter(torch.ones(n_scenarios, in_dim, out_dim))
        self.scen_b = nn.Parameter(torch.zeros(n_scenarios, out_dim))
        nn.init.xavier_uniform_(self.shared_w)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        w = self.shared_w.unsqueeze(0) * self.scen_w  # [S, in, out]
        out = torch.einsum("bi,sio->bso", x, w) + (self.shared_b + self.scen_b).unsqueeze(0)
        return gather_scenario(out, scenario)


class Star(Backbone):
    def __init__(self, ctx: BackboneContext):
        super().__init__(ctx)
        s = ctx.n_scenarios
        self.norm = PartitionedNorm(s, ctx.in_dim)
        dims = [ctx.in_dim, *ctx.hidden_dims]
        self.layers = nn.ModuleList(StarLinear(s, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = nn.Dropout(ctx.dropout)
        self.out = StarLinear(s, dims[-1], 1)
        self.aux = MLP(ctx.emb_dim, [max(8, ctx.emb_dim)], out_dim=1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        h = self.norm(emb.flatten(1), scenario)
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h, scenario)))
        main = self.out(h, scenario).squeeze(-1)
        aux = self.aux(emb[:, self.ctx.scenario_field]).squeeze(-1)
        return main + aux
