"""M2M (Zhang et al., WSDM 2022), simplified: shared MLP experts; a meta attention module (the
scenario embedding attends over the expert outputs); a meta tower whose layer weights are
generated from the scenario embedding (the "meta unit"), with residual connections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP, ContextLayer, RowGroups

N_EXPERTS = 4
N_META_TOWER_LAYERS = 2


class M2M(Backbone):
    def __init__(self, ctx: BackboneContext, n_experts: int = N_EXPERTS):
        super().__init__(ctx)
        self.experts = nn.ModuleList(MLP(ctx.in_dim, ctx.hidden_dims, ctx.dropout) for _ in range(n_experts))
        h = self.experts[0].out_dim
        e = ctx.emb_dim
        self.att_expert = nn.Linear(h, h)
        self.att_scen = nn.Linear(e, h)
        self.att_v = nn.Linear(h, 1, bias=False)
        # Meta unit: scenario embedding -> weights + bias of each tower layer.
        self.meta_w = nn.ModuleList(nn.Linear(e, h * h) for _ in range(N_META_TOWER_LAYERS))
        self.meta_b = nn.ModuleList(nn.Linear(e, h) for _ in range(N_META_TOWER_LAYERS))
        for lin in self.meta_w:
            nn.init.normal_(lin.weight, std=0.01)
            nn.init.zeros_(lin.bias)
        self.out = nn.Linear(h, 1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        x = emb.flatten(1)
        scen = emb[:, self.ctx.scenario_field]
        experts = torch.stack([ex(x) for ex in self.experts], dim=1)  # [B, E, H]
        scores = self.att_v(torch.tanh(self.att_expert(experts) + self.att_scen(scen).unsqueeze(1)))
        h = (torch.softmax(scores, dim=1) * experts).sum(1)  # [B, H]
        # The scenario embedding is the context: a few weight sets per batch, in training too
        # (unless user-level meta layers made it differ per row; then the check falls back).
        groups = RowGroups.build(self, (scen,), scenario, in_training=True)
        ctx = groups.gather(scen)
        for gen_w, gen_b in zip(self.meta_w, self.meta_b, strict=True):
            h = groups.run(MetaUnit(gen_w, gen_b), h, ctx)
        return self.out(h).squeeze(-1)


@dataclass(eq=False)
class MetaUnit(ContextLayer):
    """One residual meta-tower layer, h + ReLU(h W(e) + b(e)), its weights generated from the
    scenario embedding e (a view over M2M's `meta_w` / `meta_b` parameters)."""

    gen_w: nn.Linear
    gen_b: nn.Linear

    def weights(self, scen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.gen_b.out_features
        return self.gen_w(scen).view(-1, h, h), self.gen_b(scen)

    def reference(self, x: torch.Tensor, scen: torch.Tensor) -> torch.Tensor:
        """x [B, H], scen [B, E] -> [B, H] without per-row [H, H] weights: x W(e) is bilinear in
        (x, [e, 1]), so it is one GEMM of their outer product [B, H·(E+1)] with the generator's
        weight and bias (the same function; used when user-level meta layers make e differ per row)."""
        n, h, k = x.shape[0], self.gen_b.out_features, scen.shape[1] + 1
        e1 = torch.cat([scen, scen.new_ones(n, 1)], 1)  # [B, E+1]
        w = torch.cat(
            [self.gen_w.weight.view(h, h, k - 1), self.gen_w.bias.view(h, h, 1)], 2
        )  # [in, out, E+1]
        xw = (x.unsqueeze(-1) * e1.unsqueeze(1)).reshape(n, h * k) @ w.transpose(1, 2).reshape(h * k, h)
        return x + torch.relu(xw + self.gen_b(scen))

    def apply_weights(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        w, b = weights
        return x + torch.relu(torch.bmm(x, w) + b.unsqueeze(1))
