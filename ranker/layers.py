"""Reusable blocks every backbone and meta network is built from.

Export rules (ONNX, serving parity): per-scenario parameters are gathered by scenario index
(`gather_scenario`), never selected with boolean masks; no Python branching on data; at
inference nothing depends on batch statistics, so a row's score never depends on its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def uniform_or_per_row(
    module: nn.Module,
    key: torch.Tensor,
    uniform: Callable[..., torch.Tensor],
    per_row: Callable[..., torch.Tensor],
    operands: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """Row 0's shared computation for every row whose `key` equals row 0's; `per_row` for the others.

    A serving request is one user in one scenario, so its rows share their knowledge and scenario:
    `uniform(*operands)` computes row 0's generated / per-scenario weights once and applies them to
    all rows (same function as `per_row`, 1/B or 1/S of the work); rows that differ from row 0
    (mixed training/evaluation batches) are recomputed with `per_row` on just those rows and written
    back by index (ONNX NonZero/Gather/ScatterND: no boolean-mask indexing, no If subgraphs, which the
    float16 converter cannot handle). Training, and the legacy TorchScript exporter, take `per_row`.
    """
    if module.training or torch.jit.is_tracing() or torch.jit.is_scripting():
        return per_row(*operands)
    if not torch.compiler.is_exporting() and key.shape[0] == 0:  # eager empty batch: no row 0
        return per_row(*operands)
    out = uniform(*operands)
    differs = (key != key[:1]).reshape(key.shape[0], -1).any(-1)
    idx = differs.nonzero().squeeze(-1)
    rows = per_row(*(t.index_select(0, idx) for t in operands))
    return out.index_copy(0, idx, rows)


@dataclass
class RowGroups:
    """Rows of a batch grouped by their context, laid out for batched matmuls per group.

    `rep[g]` is a row of group g, `inverse[i]` the group of row i, and `slot[i]` where row i goes in
    a zero-padded [n_groups, max_rows, ·] layout (rows of one group side by side), so a weight
    generated once per group applies to its rows as one bmm, with no per-row weight copies.
    """

    rep: torch.Tensor
    inverse: torch.Tensor
    slot: torch.Tensor
    n: int
    m: int

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        """Per-group rows [n, ...] -> per-row [b, ...]."""
        return t.index_select(0, self.inverse)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[b, d] -> [n, m, d] (padding rows are zero)."""
        out = x.new_zeros(self.n * self.m, x.shape[1])
        return out.index_copy(0, self.slot, x).view(self.n, self.m, x.shape[1])

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """[n, m, d] -> [b, d] in the original row order."""
        return y.reshape(self.n * self.m, y.shape[-1]).index_select(0, self.slot)


def row_groups(
    keys: Sequence[torch.Tensor], hint: torch.Tensor, max_fraction: float = 0.25
) -> RowGroups | None:
    """Eager only: the batch's rows grouped by `hint` when every tensor in `keys` (the inputs the
    weights are generated from) is the same on all rows of a group and groups are few; else None.

    A training batch holds a handful of scenarios, and an evaluation batch of ranked candidates a
    handful of users, yet the meta networks would generate weights once per row. Grouping by an id
    column (cheap to sort) and generating once per group is the same function at a fraction of the
    cost. The grouping is checked against the keys themselves, so a hint that does not determine
    them only costs the check. Export and tracing take the per-row graph (no data-dependent shapes).
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting():
        return None
    b = hint.shape[0]
    if b < 8:
        return None
    _, inverse, counts = torch.unique(hint, return_inverse=True, return_counts=True)
    n = counts.shape[0]
    if n > max_fraction * b:
        return None
    rows = torch.arange(b, device=hint.device)
    rep = torch.full((n,), b, dtype=torch.long, device=hint.device).scatter_reduce(0, inverse, rows, "amin")
    for key in keys:
        if not torch.equal(key.index_select(0, rep).index_select(0, inverse), key):
            return None
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    m = int(counts.max())
    slot = torch.empty_like(inverse)
    sorted_groups = inverse.index_select(0, order)
    slot[order] = sorted_groups * m + (rows - starts.index_select(0, sorted_groups))
    return RowGroups(rep, inverse, slot, n, m)


def gather_scenario(per_scenario: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
    """Pick row `scenario[b]` of `per_scenario` [B, S, ...] for every b -> [B, ...] (an ONNX Gather)."""
    b, s = per_scenario.shape[0], per_scenario.shape[1]
    idx = scenario.clamp(0, s - 1).reshape(b, 1, *([1] * (per_scenario.dim() - 2)))
    idx = idx.expand(b, 1, *per_scenario.shape[2:])
    return torch.gather(per_scenario, 1, idx).squeeze(1)


class FeatureEmbedding(nn.Module):
    """One table for all sparse features (offset per feature): ids [B, F] -> embeddings [B, F, D]."""

    def __init__(self, vocab_sizes: list[int], dim: int):
        super().__init__()
        offsets = torch.tensor([0, *torch.tensor(vocab_sizes).cumsum(0).tolist()[:-1]], dtype=torch.int64)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("sizes", torch.tensor(vocab_sizes, dtype=torch.int64), persistent=False)
        self.table = nn.Embedding(int(sum(vocab_sizes)), dim)
        nn.init.normal_(self.table.weight, std=0.05)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Out-of-range ids (a serving bug) become "unknown" instead of reading another feature's row.
        ids = torch.where((ids >= 0) & (ids < self.sizes), ids, torch.zeros_like(ids))
        return self.table(ids + self.offsets)


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout stack; `out_dim` adds a final linear layer without activation."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0, out_dim: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ScenarioLinear(nn.Module):
    """A linear layer with separate weights per scenario: y = x W[s] + b[s]."""

    def __init__(self, n_scenarios: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_scenarios, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n_scenarios, out_dim))
        nn.init.normal_(self.weight, std=in_dim**-0.5)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        # All scenarios at once, then gather: cheap for few scenarios and export-friendly.
        out = torch.einsum("bi,sio->bso", x, self.weight) + self.bias.unsqueeze(0)
        return gather_scenario(out, scenario)


class PartitionedNorm(nn.Module):
    """Normalisation with statistics kept per scenario (STAR's partitioned normalisation).

    Training: each row is normalised with the batch statistics of its own scenario (computed
    with a one-hot matrix, no masks) and per-scenario running statistics are updated.
    Inference: running statistics only, so a row's output never depends on its batch.
    Scale/shift = shared ⊙/+ per-scenario parameters.
    """

    def __init__(self, n_scenarios: int, dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.n_scenarios, self.momentum, self.eps = n_scenarios, momentum, eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.gamma_s = nn.Parameter(torch.ones(n_scenarios, dim))
        self.beta_s = nn.Parameter(torch.zeros(n_scenarios, dim))
        self.register_buffer("running_mean", torch.zeros(n_scenarios, dim))
        self.register_buffer("running_var", torch.ones(n_scenarios, dim))

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        if self.training:
            onehot = F.one_hot(scenario, self.n_scenarios).to(x.dtype)  # [B, S]
            count = onehot.sum(0)  # [S]
            denom = count.clamp(min=1.0).unsqueeze(1)
            mean_s = onehot.t() @ x / denom
            centred = x - mean_s.index_select(0, scenario)
            var_s = onehot.t() @ centred.pow(2) / denom
            with torch.no_grad():
                seen = (count > 0).unsqueeze(1)
                m = self.momentum
                self.running_mean.copy_(
                    torch.where(seen, (1 - m) * self.running_mean + m * mean_s, self.running_mean)
                )
                self.running_var.copy_(
                    torch.where(seen, (1 - m) * self.running_var + m * var_s, self.running_var)
                )
            var = var_s.index_select(0, scenario)
        else:
            centred = x - self.running_mean.index_select(0, scenario)
            var = self.running_var.index_select(0, scenario)
        normed = centred / torch.sqrt(var + self.eps)
        gamma = self.gamma * self.gamma_s.index_select(0, scenario)
        beta = self.beta + self.beta_s.index_select(0, scenario)
        return normed * gamma + beta


class KnowledgeNorm(nn.Module):
    """Standardise knowledge vectors with fixed statistics of the training snapshot: (h - center) / scale.

    LLM hidden states share a large common component (the prompt template) and carry the
    user-specific signal in low-variance directions; per-dimension standardisation with the
    snapshot's statistics exposes it (LayerNorm does not). The statistics are buffers set once
    before training (`set_stats`) and saved with the weights, so inference is per row.
    `kind` says which statistics apply ("user" or "scenario").
    """

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.kind = kind
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def set_stats(self, vectors: torch.Tensor) -> None:
        """Per-dimension mean / std of `vectors` [N, K] (one global std when N is small, e.g. scenarios)."""
        vectors = vectors.to(torch.float32)
        if vectors.shape[0] == 0:
            return
        self.center.copy_(vectors.mean(0))
        centred = vectors - self.center
        if vectors.shape[0] >= 32:
            std = centred.std(0)
            std = std.clamp(min=float(std.mean()) * 1e-2 + 1e-8)
        else:  # too few vectors for per-dimension statistics
            std = torch.full_like(self.scale, float(centred.pow(2).mean().sqrt()) + 1e-8)
        self.scale.copy_(std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.center) / self.scale


class KnowledgeProjector(nn.Module):
    """LLM knowledge vector [B, K] -> compact representation [B, P]: ReLU(W · standardise(h) + b)."""

    def __init__(self, in_dim: int, out_dim: int, kind: str):
        super().__init__()
        self.norm = KnowledgeNorm(in_dim, kind)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(self.norm(h)))
