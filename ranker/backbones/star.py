"""STAR (Sheng et al., CIKM 2021): partitioned normalisation of the input, star-topology FC
layers (weights = shared ⊙ per-scenario, bias = shared + per-scenario, per-scenario factors
gathered by scenario index) and an auxiliary network on the scenario embedding whose logit is
added to the main one."""

from __future__ import annotations

import torch
from torch import nn

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP, PartitionedNorm, gather_scenario, uniform_or_per_row


class StarLinear(nn.Module):
    def __init__(self, n_scenarios: int, in_dim: int, out_dim: int):
        super().__init__()
        self.shared_w = nn.Parameter(torch.empty(in_dim, out_dim))
        self.shared_b = nn.Parameter(torch.zeros(out_dim))
        self.scen_w = nn.Parameter(torch.ones(n_scenarios, in_dim, out_dim))
        self.scen_b = nn.Parameter(torch.zeros(n_scenarios, out_dim))
        nn.init.xavier_uniform_(self.shared_w)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        return uniform_or_per_row(self, scenario, self._one_scenario, self._per_row, (x, scenario))

    def _per_row(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        # Every scenario's combined weights in ONE matmul [B, in] @ [in, S*out], then gather the row's.
        s, i, o = self.scen_w.shape
        w = (self.shared_w.unsqueeze(0) * self.scen_w).permute(1, 0, 2).reshape(i, s * o)
        out = (x @ w).view(-1, s, o) + (self.shared_b + self.scen_b).unsqueeze(0)
        return gather_scenario(out, scenario)

    def _one_scenario(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        # All rows in one scenario (a serving request): that scenario's weights only, 1/S of the work.
        s0 = scenario[:1].clamp(0, self.scen_w.shape[0] - 1)
        w = self.shared_w * self.scen_w.index_select(0, s0).squeeze(0)
        return x @ w + (self.shared_b + self.scen_b.index_select(0, s0))


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
