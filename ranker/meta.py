"""LLM4MSR multi-level knowledge fusion: hierarchical meta networks, pluggable on every backbone.

Notation: x ∈ R^d is the flattened field embedding of a row (d = F·D), h_u, h_s ∈ R^K the user
and scenario knowledge vectors, p = ReLU(W_p z(h) + b_p) ∈ R^P their projections
(`knowledge_proj_dim`). Equations (the paper's exact ones are not public; see docs/ranker.md):

* User level (bottom, personalised transform of the input embeddings), l = 1..L:
      lowrank:  x ← x + U_l(p_u) (V_l(p_u)ᵀ x) + c_l(p_u)      (W = I + U Vᵀ, U, V ∈ R^{d×r})
      full:     x ← x + G_l(p_u) x + c_l(p_u)                  (W = I + G, G ∈ R^{d×d})
  U, G and c are linear maps of p_u; V (resp. G) is zero-initialised, so W starts as I.
  Users without knowledge use a learned fallback vector instead of h_u (torch.where on the flag).
* Scenario level (parallel to the backbone), l = 1..L, z_0 = x:
      z_l = ReLU(A_l z_{l-1} + U_l(p_s) V_l(p_s)ᵀ z_{l-1} + a_l + c_l(p_s))
      logit_s = ⟨w(p_s), z_L⟩ + β(p_s)
  merged with the backbone logit: sum → logit_b + logit_s; gate → logit_b + g·logit_s,
  g = σ(⟨γ, p_s⟩ + γ_0). w and β are zero-initialised, so logit_s starts at 0.
* Start as the backbone: with both levels zero-initialised (V or G, c, w, β), an untrained model
  computes exactly its plain backbone (built first from the same seed, see ranker/model.py);
  training moves away from it only as far as knowledge lowers the loss.
* concat mode (ablation): D-dim projections of h_u / h_s appended as two extra embedded fields.
"""

from __future__ import annotations

import torch
from torch import nn

from ranker.layers import KnowledgeNorm, KnowledgeProjector, RowGroups, row_groups, uniform_or_per_row


class UserFallback(nn.Module):
    """h_u if the user has knowledge, else a learned vector (selected with torch.where, export-safe)."""

    def __init__(self, k: int):
        super().__init__()
        self.fallback = nn.Parameter(torch.zeros(k))

    def forward(self, user_knowledge: torch.Tensor, has_knowledge: torch.Tensor) -> torch.Tensor:
        has = has_knowledge.unsqueeze(-1) > 0.5
        return torch.where(has, user_knowledge, self.fallback.unsqueeze(0).expand_as(user_knowledge))


class GeneratedLinear(nn.Module):
    """A d_in -> d_out linear map whose weights are generated per row from a context vector p.

    Returns the *delta* (U Vᵀ x or G x) plus the generated bias; callers add identity or a static
    base. Low rank keeps the generator at P·r·(d_in + d_out) parameters.
    """

    def __init__(self, p: int, d_in: int, d_out: int, mode: str, rank: int):
        super().__init__()
        self.d_in, self.d_out, self.mode, self.rank = d_in, d_out, mode, rank
        if mode == "lowrank":
            self.gen_u = nn.Linear(p, d_out * rank)
            self.gen_v = nn.Linear(p, d_in * rank)
            nn.init.zeros_(self.gen_v.weight)
            nn.init.zeros_(self.gen_v.bias)
            nn.init.normal_(self.gen_u.weight, std=p**-0.5)
        elif mode == "full":
            self.gen_w = nn.Linear(p, d_out * d_in)
            nn.init.zeros_(self.gen_w.weight)
            nn.init.zeros_(self.gen_w.bias)
        else:
            raise ValueError(f"generated_weights {mode!r}: expected 'full' or 'lowrank'")
        self.gen_b = nn.Linear(p, d_out)
        nn.init.zeros_(self.gen_b.weight)
        nn.init.zeros_(self.gen_b.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return uniform_or_per_row(self, ctx, self._shared_ctx, self._per_row, (x, ctx))

    def _shared_ctx(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        # Every row has the same context (one user / one scenario per request): generate its weights
        # once from row 0 and apply them to all rows as plain matmuls. Same math as _per_row.
        c = ctx[:1]
        if self.mode == "lowrank":
            u = self.gen_u(c).view(self.d_out, self.rank)
            v = self.gen_v(c).view(self.d_in, self.rank)
            delta = (x @ v) @ u.t()
        else:
            delta = x @ self.gen_w(c).view(self.d_out, self.d_in).t()
        return delta + self.gen_b(c)

    def _per_row(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "lowrank":
            u = self.gen_u(ctx).view(b, self.d_out, self.rank)
            v = self.gen_v(ctx).view(b, self.d_in, self.rank)
            delta = torch.bmm(u, torch.bmm(v.transpose(1, 2), x.unsqueeze(-1))).squeeze(-1)
        else:
            w = self.gen_w(ctx).view(b, self.d_out, self.d_in)
            delta = torch.bmm(w, x.unsqueeze(-1)).squeeze(-1)
        return delta + self.gen_b(ctx)

    def grouped(self, x: torch.Tensor, ctx: torch.Tensor, groups: RowGroups) -> torch.Tensor:
        """Same function as `_per_row`, with weights generated once per group: `ctx` holds one row
        per group (see `row_groups`); each group's rows go through them as one batched matmul."""
        n = ctx.shape[0]
        xp = groups.pad(x)  # [n, m, d_in]
        if self.mode == "lowrank":
            u = self.gen_u(ctx).view(n, self.d_out, self.rank)
            v = self.gen_v(ctx).view(n, self.d_in, self.rank)
            y = torch.bmm(torch.bmm(xp, v), u.transpose(1, 2))
        else:
            y = torch.bmm(xp, self.gen_w(ctx).view(n, self.d_out, self.d_in).transpose(1, 2))
        return groups.unpad(y) + groups.expand(self.gen_b(ctx))


class UserMetaNetwork(nn.Module):
    """User-level meta network: h_u -> meta layers applied to the input embeddings (bottom)."""

    def __init__(self, k: int, d: int, proj_dim: int, n_layers: int, mode: str, rank: int):
        super().__init__()
        self.fallback = UserFallback(k)
        self.project = KnowledgeProjector(k, proj_dim, "user")
        self.layers = nn.ModuleList(GeneratedLinear(proj_dim, d, d, mode, rank) for _ in range(n_layers))

    def forward(
        self,
        emb: torch.Tensor,
        user_knowledge: torch.Tensor,
        has_knowledge: torch.Tensor,
        user_ids: torch.Tensor,
    ) -> torch.Tensor:
        x = emb.flatten(1)
        # eager batches of few users (ranked candidates): weights generated once per user
        groups = None if self.training else row_groups((user_knowledge, has_knowledge), user_ids)
        if groups is not None:
            rep = groups.rep
            p = self.project(
                self.fallback(user_knowledge.index_select(0, rep), has_knowledge.index_select(0, rep))
            )
            for layer in self.layers:
                x = x + layer.grouped(x, p, groups)
            return x.view_as(emb)
        p = self.project(self.fallback(user_knowledge, has_knowledge))
        for layer in self.layers:
            x = x + layer(x, p)
        return x.view_as(emb)


class ScenarioMetaNetwork(nn.Module):
    """Scenario-level meta network: h_s -> meta layers run beside the backbone -> a logit to merge."""

    def __init__(
        self, k: int, d: int, hidden: int, proj_dim: int, n_layers: int, mode: str, rank: int, merge: str
    ):
        super().__init__()
        self.project = KnowledgeProjector(k, proj_dim, "scenario")
        dims = [d] + [hidden] * n_layers
        self.base = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.generated = nn.ModuleList(
            GeneratedLinear(proj_dim, a, b, mode, rank) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.out_w = nn.Linear(proj_dim, hidden)
        self.out_b = nn.Linear(proj_dim, 1)
        for lin in (self.out_w, self.out_b):  # logit_s = 0 at init: the model starts as its backbone
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        if merge not in ("sum", "gate"):
            raise ValueError(f"meta.merge {merge!r}: expected 'sum' or 'gate'")
        self.merge = merge
        self.gate = nn.Linear(proj_dim, 1) if merge == "gate" else None

    def forward(
        self,
        backbone_logit: torch.Tensor,
        emb: torch.Tensor,
        scenario_knowledge: torch.Tensor,
        scenario: torch.Tensor,
    ) -> torch.Tensor:
        # evaluation only: training keeps the per-row path (same function, but other float rounding
        # changes training trajectories; the synthetic headline margin proved sensitive to that)
        groups = None if self.training else row_groups((scenario_knowledge,), scenario)
        if groups is not None:
            p = self.project(scenario_knowledge.index_select(0, groups.rep))
        else:
            p = self.project(scenario_knowledge)

        def per_row(t: torch.Tensor) -> torch.Tensor:
            return t if groups is None else groups.expand(t)

        z = emb.flatten(1)
        for base, gen in zip(self.base, self.generated, strict=True):
            z = torch.relu(base(z) + (gen(z, p) if groups is None else gen.grouped(z, p, groups)))
        logit = (z * per_row(self.out_w(p))).sum(-1) + per_row(self.out_b(p)).squeeze(-1)
        if self.gate is None:
            return backbone_logit + logit
        g = per_row(torch.sigmoid(self.gate(p))).squeeze(-1)
        return backbone_logit + g * logit


class KnowledgeConcat(nn.Module):
    """Ablation: knowledge as plain features (projected to D and appended as extra fields)."""

    def __init__(self, k: int, emb_dim: int, user_level: bool, scenario_level: bool):
        super().__init__()
        self.user = nn.Sequential(KnowledgeNorm(k, "user"), nn.Linear(k, emb_dim)) if user_level else None
        self.fallback = UserFallback(k) if user_level else None
        self.scenario = (
            nn.Sequential(KnowledgeNorm(k, "scenario"), nn.Linear(k, emb_dim)) if scenario_level else None
        )
        self.n_fields = int(user_level) + int(scenario_level)

    def forward(
        self,
        emb: torch.Tensor,
        user_knowledge: torch.Tensor,
        has_knowledge: torch.Tensor,
        scenario_knowledge: torch.Tensor,
    ) -> torch.Tensor:
        extra = []
        if self.user is not None and self.fallback is not None:
            extra.append(self.user(self.fallback(user_knowledge, has_knowledge)))
        if self.scenario is not None:
            extra.append(self.scenario(scenario_knowledge))
        return torch.cat([emb, torch.stack(extra, dim=1)], dim=1)
