"""STAR (Sheng et al., CIKM 2021): partitioned normalisation of the input, star-topology FC
layers (weights = shared ⊙ per-scenario, bias = shared + per-scenario, per-scenario factors
gathered by scenario index) and an auxiliary network on the scenario embedding whose logit is
added to the main one."""

from __future__ import annotations

import torch
from torch import nn

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import EMBEDDING_INIT_STD, MLP, ContextLayer, PartitionedNorm, RowGroups, gather_scenario


class StarLinear(ContextLayer, nn.Module):
    """y = x (W_shared ⊙ W_s) + (b_shared + b_s); the context is the scenario index."""

    def __init__(self, n_scenarios: int, in_dim: int, out_dim: int):
        super().__init__()
        self.shared_w = nn.Parameter(torch.empty(in_dim, out_dim))
        self.shared_b = nn.Parameter(torch.zeros(out_dim))
        self.scen_w = nn.Parameter(torch.ones(n_scenarios, in_dim, out_dim))
        self.scen_b = nn.Parameter(torch.zeros(n_scenarios, out_dim))
        nn.init.xavier_uniform_(self.shared_w)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor, groups: RowGroups) -> torch.Tensor:
        """x [B, in], scenario [n] one index per group of `groups` -> [B, out]."""
        return groups.run(self, x, scenario)

    def weights(self, scenario: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = scenario.clamp(0, self.scen_w.shape[0] - 1)
        return self.shared_w * self.scen_w.index_select(0, s), self.shared_b + self.scen_b.index_select(0, s)

    def apply_weights(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        w, b = weights
        return torch.bmm(x, w) + b.unsqueeze(1)

    def reference(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        # Per-row weights would be [B, in, out]: instead x W + b for every scenario's weights side by
        # side ([in, S*out], one matmul for all rows), then each row's scenario gathered.
        w, b = self.weights(torch.arange(self.scen_w.shape[0], device=x.device))
        s, i, o = w.shape
        out = (x @ w.permute(1, 0, 2).reshape(i, s * o)).view(-1, s, o) + b.unsqueeze(0)
        return gather_scenario(out, scenario)


class Star(Backbone):
    def __init__(self, ctx: BackboneContext):
        super().__init__(ctx)
        s = ctx.n_scenarios
        # The tower sees the fields that vary within a scenario. A scenario-constant field is exactly
        # its scenario's mean, so partitioned normalisation leaves rounding noise in training and
        # (x - lagging running mean) / sqrt(eps) at inference; its gradient is noise that Adam turns
        # into full-size steps. The scenario reaches the tower through the per-scenario weights and
        # the logit through the auxiliary network.
        constant = set(ctx.scenario_constant_fields)
        tower = [f for f in range(ctx.n_fields) if f not in constant]
        self.register_buffer("tower_fields", torch.tensor(tower, dtype=torch.long), persistent=False)
        in_dim = len(tower) * ctx.emb_dim
        # Normalised inputs start at the embeddings' own scale (see PartitionedNorm, init_scale).
        self.norm = PartitionedNorm(s, in_dim, init_scale=EMBEDDING_INIT_STD)
        dims = [in_dim, *ctx.hidden_dims]
        self.layers = nn.ModuleList(StarLinear(s, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = nn.Dropout(ctx.dropout)
        self.out = StarLinear(s, dims[-1], 1)
        self.aux = MLP(ctx.emb_dim, [max(8, ctx.emb_dim)], out_dim=1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        groups = RowGroups.build(self, (scenario,), scenario)
        ctx = groups.gather(scenario)
        h = self.norm(emb.index_select(1, self.tower_fields).flatten(1), scenario)
        for layer in self.layers:
            h = self.dropout(torch.relu(layer(h, ctx, groups)))
        main = self.out(h, ctx, groups).squeeze(-1)
        aux = self.aux(emb[:, self.ctx.scenario_field]).squeeze(-1)
        return main + aux
