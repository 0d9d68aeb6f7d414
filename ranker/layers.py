"""Reusable blocks every backbone and meta network is built from.

Export rules (ONNX, serving parity): per-scenario parameters are gathered by scenario index
(`gather_scenario`), never selected with boolean masks; no Python branching on data; at
inference nothing depends on batch statistics, so a row's score never depends on its batch.

Layers whose weights depend on a row's context (weights generated from knowledge, STAR's
per-scenario weights, M2M's meta tower) implement `ContextLayer`: `weights(ctx)` and `apply_weights(x, *w)`.
Their one reference forward (what every faster path is tested against, and the training path of
per-user contexts) is `ContextLayer.reference`. The one faster path is `RowGroups`: rows that share
a context get its weights computed once, at inference and, for contexts that are a function of the
scenario, in training too. A backbone without such layers needs nothing of this.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class ContextLayer:
    """A layer whose weights are a function of a per-row context (a mixin for `nn.Module`s, or a
    plain object over another module's parameters).

    Subclasses write the math once, in a layout that serves every path:
    `weights(ctx [n, ...]) -> tuple of [n, ...]` (one set of weights per context row) and
    `apply_weights(x [n, m, d_in], *weights) -> [n, m, d_out]` (group g's weights on its m rows).
    `reference` (rows are their own groups) is the definition; override it only where per-row
    weights would be wasteful (STAR: a few scenarios' weights for all rows, then a gather).
    """

    def weights(self, ctx: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        raise NotImplementedError

    def apply_weights(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def reference(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x [B, d_in], ctx [B, ...] (one context per row) -> [B, d_out]."""
        return self.apply_weights(x.unsqueeze(1), *self.weights(ctx)).squeeze(1)


GroupingMode = Literal["auto", "reference", "first_row"]
_MODE: list[GroupingMode] = ["auto"]


@contextmanager
def grouping(mode: GroupingMode) -> Iterator[None]:
    """Force how `RowGroups.build` groups rows (tests, debugging): "reference" (every row its own
    group, the training path), "first_row" (the graph-export grouping, in eager) or "auto"."""
    _MODE.append(mode)
    try:
        yield
    finally:
        _MODE.pop()


@dataclass
class RowGroups:
    """Which rows of a batch share the context their weights come from; the one inference fast path.

    Training (unless `build(in_training=True)`: scenario contexts), tracing and batches that do not
    group take the reference (`reps is None`: every row its own group). Otherwise `reps[g]` is a row of group g and `inverse[i]` the group of row i, and
    `run` computes each group's weights once:

    * eager evaluation (`slot`): exact groups of an id column (`hint`), laid out in a zero-padded
      [groups, rows, d] block so `apply_weights` is one batched matmul (a batch of ranked candidates holds a
      few users, any batch a few scenarios);
    * graph export (`rest`): group 0 = the rows whose context equals row 0's (a serving request is one
      user in one scenario), the other rows take the reference. No data-dependent shapes besides
      NonZero, no If subgraphs (which the float16 converter cannot handle).

    Every path computes the same function with other float rounding (parity tests per layer,
    tests/ranker/test_context_layers.py).
    """

    reps: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    slot: torch.Tensor | None = None  # eager: row i's place in the padded [n, m] layout
    m: int = 0
    rest: torch.Tensor | None = None  # export: rows whose context differs from row 0's

    @classmethod
    def build(
        cls,
        module: nn.Module,
        keys: Sequence[torch.Tensor],
        hint: torch.Tensor,
        max_fraction: float = 0.25,
        *,
        in_training: bool = False,
    ) -> RowGroups:
        """Group rows by `keys` (the inputs the weights are computed from) for `module`'s forward.

        `hint` is an id column that should determine the keys (user id, scenario index): eager
        grouping sorts it, then checks the keys against it, so a hint that does not determine them
        only costs the check (and the reference runs).

        `in_training=True` groups in training too. For contexts that are a function of the scenario
        (a batch holds a few scenarios by construction) it computes a few weight sets per step instead
        of one per row; gradients flow through the gather/scatter (parity-tested like the forward).
        """
        mode = _MODE[-1]
        if (
            mode == "reference"
            or (module.training and not in_training)
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
        ):
            return cls()
        if mode == "first_row" or torch.compiler.is_exporting():
            return cls.first_row(keys)
        return cls.exact(keys, hint, max_fraction)

    @classmethod
    def first_row(cls, keys: Sequence[torch.Tensor]) -> RowGroups:
        """Group 0 = rows whose keys equal row 0's; every other row is its own group (reference)."""
        b = keys[0].shape[0]
        if not torch.compiler.is_exporting() and b == 0:  # eager empty batch: no row 0
            return cls()
        differs = (keys[0] != keys[0][:1]).reshape(b, -1).any(-1)
        for key in keys[1:]:
            differs = differs | (key != key[:1]).reshape(b, -1).any(-1)
        rest = differs.nonzero().squeeze(-1)
        inverse = differs.long().cumsum(0) * differs.long()  # rest rows: 1..k in row order; others 0
        reps = torch.cat([rest.new_zeros(1), rest])
        return cls(reps=reps, inverse=inverse, rest=rest)

    @classmethod
    def exact(cls, keys: Sequence[torch.Tensor], hint: torch.Tensor, max_fraction: float = 0.25) -> RowGroups:
        """Eager: groups of equal `hint` if the keys are equal within each group and groups are few."""
        b = hint.shape[0]
        if b < 8:
            return cls()
        _, inverse, counts = torch.unique(hint, return_inverse=True, return_counts=True)
        n = counts.shape[0]
        if n > max_fraction * b:
            return cls()
        rows = torch.arange(b, device=hint.device)
        rep = torch.full((n,), b, dtype=torch.long, device=hint.device).scatter_reduce(
            0, inverse, rows, "amin"
        )
        for key in keys:
            if not torch.equal(key.index_select(0, rep).index_select(0, inverse), key):
                return cls()
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        m = int(counts.max())
        slot = torch.empty_like(inverse)
        sorted_groups = inverse.index_select(0, order)
        slot[order] = sorted_groups * m + (rows - starts.index_select(0, sorted_groups))
        return cls(reps=rep, inverse=inverse, slot=slot, m=m)

    @property
    def is_reference(self) -> bool:
        return self.reps is None

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Per-row [B, ...] -> one value per group [n, ...] (the contexts weights are computed from)."""
        return t if self.reps is None else t.index_select(0, self.reps)

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        """Per-group [n, ...] -> per-row [B, ...]."""
        return t if self.inverse is None else t.index_select(0, self.inverse)

    def run(self, layer: ContextLayer, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """`layer` on rows x [B, d_in] with one context per group, ctx = `gather(...)` -> [B, d_out]."""
        if self.reps is None:
            return layer.reference(x, ctx)
        if self.slot is not None:
            n, d = ctx.shape[0], x.shape[1]
            padded = x.new_zeros(n * self.m, d).index_copy(0, self.slot, x).view(n, self.m, d)
            y = layer.apply_weights(padded, *layer.weights(ctx))
            return y.reshape(n * self.m, y.shape[-1]).index_select(0, self.slot)
        assert self.rest is not None
        out = layer.apply_weights(x.unsqueeze(0), *layer.weights(ctx[:1])).squeeze(0)
        return out.index_copy(0, self.rest, layer.reference(x.index_select(0, self.rest), ctx[1:]))


def gather_scenario(per_scenario: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
    """Pick row `scenario[b]` of `per_scenario` [B, S, ...] for every b -> [B, ...] (an ONNX Gather)."""
    b, s = per_scenario.shape[0], per_scenario.shape[1]
    idx = scenario.clamp(0, s - 1).reshape(b, 1, *([1] * (per_scenario.dim() - 2)))
    idx = idx.expand(b, 1, *per_scenario.shape[2:])
    return torch.gather(per_scenario, 1, idx).squeeze(1)


# Initial std of every embedding row. STAR's partitioned normalisation starts its scale at this
# value (PartitionedNorm init_scale) so its tower sees inputs of the size the other backbones see.
EMBEDDING_INIT_STD = 0.05


class FeatureEmbedding(nn.Module):
    """One table for all sparse features (offset per feature): ids [B, F] -> embeddings [B, F, D]."""

    def __init__(self, vocab_sizes: list[int], dim: int):
        super().__init__()
        offsets = torch.tensor([0, *torch.tensor(vocab_sizes).cumsum(0).tolist()[:-1]], dtype=torch.int64)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("sizes", torch.tensor(vocab_sizes, dtype=torch.int64), persistent=False)
        self.table = nn.Embedding(int(sum(vocab_sizes)), dim)
        nn.init.normal_(self.table.weight, std=EMBEDDING_INIT_STD)

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
    Scale/shift = shared ⊙/+ per-scenario parameters. `init_scale` is the shared scale's start:
    normalising inputs of std σ multiplies their gradient by scale/σ, so a scale of 1 on embeddings
    of std 0.05 made every embedding step 20x larger than in an unnormalised tower (plain STAR on
    Amazon overfitted by epoch 1 and fell below the trivial baseline: docs/benchmarks/ranker-findings.md).
    """

    def __init__(
        self, n_scenarios: int, dim: int, momentum: float = 0.1, eps: float = 1e-5, init_scale: float = 1.0
    ):
        super().__init__()
        self.n_scenarios, self.momentum, self.eps = n_scenarios, momentum, eps
        self.gamma = nn.Parameter(torch.full((dim,), float(init_scale)))
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
