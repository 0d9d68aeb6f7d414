"""PEPNet (Chang et al., KDD 2023), single task: EPNet scales the field embeddings with a gate
computed from the scenario embedding and the (gradient-stopped) embeddings; PPNet scales every
DNN hidden layer with a gate computed from the user/item id embeddings and the layer's
(gradient-stopped) input. Gates are 2·sigmoid(·), so 1 is neutral."""

from __future__ import annotations

import torch
from torch import nn

from ranker.backbones.base import Backbone, BackboneContext
from ranker.layers import MLP

GATE_HIDDEN = 64


class GateNU(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = GATE_HIDDEN):
        super().__init__()
        self.net = MLP(in_dim, [hidden], out_dim=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(self.net(x))


class PEPNet(Backbone):
    def __init__(self, ctx: BackboneContext):
        super().__init__(ctx)
        d = ctx.in_dim
        self.personal_fields = [*ctx.user_fields, *ctx.item_fields, ctx.scenario_field]
        p = len(self.personal_fields) * ctx.emb_dim
        self.ep_gate = GateNU(ctx.emb_dim + d, d)
        dims = [d, *ctx.hidden_dims]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.pp_gates = nn.ModuleList(GateNU(p + a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = nn.Dropout(ctx.dropout)
        self.out = nn.Linear(dims[-1], 1)

    def forward(self, emb: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        x = emb.flatten(1)
        scen = emb[:, self.ctx.scenario_field]
        x = x * self.ep_gate(torch.cat([scen, x.detach()], dim=1))
        personal = emb[:, self.personal_fields].flatten(1)
        h = x
        for layer, gate in zip(self.layers, self.pp_gates, strict=True):
            g = gate(torch.cat([personal, h.detach()], dim=1))
            h = self.dropout(torch.relu(layer(h)) * g)
        return self.out(h).squeeze(-1)
