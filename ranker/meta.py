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

from ranker.layers import ContextLayer, KnowledgeNorm, KnowledgeProjector, RowGroups


class UserFallback(nn.Module):
    """h_u if the user has knowledge, else a learned vector (selected with torch.where, export-safe)."""

    def __init__(self, k: int):
        super().__init__()
        self.fallback = nn.Parameter(torch.zeros(k))

    def forward(self, user_knowledge: torch.Tensor, has_knowledge: torch.Tensor) -> torch.Tensor:
        has = has_knowledge.unsqueeze(-1) > 0.5
        return torch.where(has, user_knowledge, self.fallback.unsqueeze(0).expand_as(user_knowledge))


class GeneratedLinear(ContextLayer, nn.Module):
    """A d_in -> d_out linear map whose weights are generated from a context vector p (per row in
    the reference, per group of rows sharing p at inference: `ranker.layers.RowGroups`).

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

    def forward(self, x: torch.Tensor, p: torch.Tensor, groups: RowGroups) -> torch.Tensor:
        """x [B, d_in], p [n, P] one context per group of `groups` -> [B, d_out]."""
        return groups.run(self, x, p)

    def reference(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """x [B, d_in], p [B, P] (one context per row) -> [B, d_out].

        Low rank without per-row weights: U(p) (V(p)ᵀ x) is bilinear in p, so with p̃ = [p, 1] and
        the generators' weights and biases as tensors W_v [d_in, r, P+1], W_u [d_out, r, P+1]:
        t = Σ_j (x W_v)[:, :, j] p̃_j  (= V(p)ᵀ x, [B, r]), then U(p) t = (t ⊗ p̃) W_uᵀ. Two GEMMs with
        small outputs instead of generating [B, d, r] tensors and a per-row bmm: the same function,
        about 1.6x faster in training (docs/benchmarks/ranker-findings.md, "Meta-network cost")."""
        if self.mode != "lowrank":
            return super().reference(x, p)
        n, r, k = x.shape[0], self.rank, p.shape[1] + 1
        p1 = torch.cat([p, p.new_ones(n, 1)], 1)  # [B, P+1]
        w_v = torch.cat(
            [self.gen_v.weight.view(self.d_in, r, k - 1), self.gen_v.bias.view(self.d_in, r, 1)], 2
        )
        t = ((x @ w_v.reshape(self.d_in, r * k)).view(n, r, k) * p1.unsqueeze(1)).sum(-1)
        w_u = torch.cat(
            [self.gen_u.weight.view(self.d_out, r, k - 1), self.gen_u.bias.view(self.d_out, r, 1)], 2
        )
        tp = (t.unsqueeze(-1) * p1.unsqueeze(1)).reshape(n, r * k)
        return tp @ w_u.reshape(self.d_out, r * k).t() + self.gen_b(p)

    def weights(self, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = p.shape[0]
        if self.mode == "lowrank":
            u = self.gen_u(p).view(n, self.d_out, self.rank)
            v = self.gen_v(p).view(n, self.d_in, self.rank)
            return u, v, self.gen_b(p)
        return self.gen_w(p).view(n, self.d_out, self.d_in), self.gen_b(p)

    def apply_weights(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        xt = x.transpose(1, 2)  # [n, d_in, m]
        if self.mode == "lowrank":
            u, v, b = weights
            delta = torch.bmm(u, torch.bmm(v.transpose(1, 2), xt))
        else:
            g, b = weights
            # standard strides: bmm picks its kernel by stride, and this keeps the reference (m = 1)
            # bit-identical to the per-row G x the models were trained with
            delta = torch.bmm(g, xt.clone(memory_format=torch.contiguous_format))
        return delta.transpose(1, 2) + b.unsqueeze(1)


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
        groups = RowGroups.build(self, (user_knowledge, has_knowledge), user_ids)
        p = self.project(self.fallback(groups.gather(user_knowledge), groups.gather(has_knowledge)))
        x = emb.flatten(1)
        for layer in self.layers:
            x = x + layer(x, p, groups)
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
        groups = RowGroups.build(self, (scenario_knowledge,), scenario, in_training=True)
        p = self.project(groups.gather(scenario_knowledge))
        z = emb.flatten(1)
        for base, gen in zip(self.base, self.generated, strict=True):
            z = torch.relu(base(z) + gen(z, p, groups))
        logit = (z * groups.expand(self.out_w(p))).sum(-1) + groups.expand(self.out_b(p)).squeeze(-1)
        if self.gate is None:
            return backbone_logit + logit
        g = groups.expand(torch.sigmoid(self.gate(p))).squeeze(-1)
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
