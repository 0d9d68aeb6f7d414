"""Parity of the one inference fast path (`RowGroups`) against each context layer's reference.

Tolerance: atol = rtol = 1e-5 on outputs; on gradients rtol = 1e-4 and atol = 1e-6 of the largest
gradient (sums of B products, up to ~400 here, so an element near 0 carries the rounding of the
large ones: every path, the reference included, is ~7e-5 off a float64 run). The grouped paths
compute the same function as the reference with other matmul shapes ([groups, rows, d] blocks
instead of one row at a time), so float32 sums are added in another order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import ranker.backbones  # noqa: F401 - registers every backbone's context layers
import ranker.meta
from ranker.backbones.m2m import MetaUnit
from ranker.backbones.star import StarLinear
from ranker.layers import ContextLayer, RowGroups, grouping
from ranker.meta import GeneratedLinear

B, D_IN, D_OUT, P, S = 48, 10, 6, 5, 4
ATOL = RTOL = 1e-5
GRAD_RTOL = 1e-4


def _generated(mode: str) -> Callable[[], tuple[ContextLayer, torch.Tensor, torch.Tensor]]:
    def make() -> tuple[ContextLayer, torch.Tensor, torch.Tensor]:
        layer = GeneratedLinear(P, D_IN, D_OUT, mode, rank=3)
        for prm in layer.parameters():  # leave the zero init, or the delta is trivially 0
            nn.init.normal_(prm, std=0.3)
        table = torch.randn(S, P)
        hint = torch.randint(0, S, (B,), generator=torch.Generator().manual_seed(1))
        return layer, table[hint], hint

    return make


def _star() -> tuple[ContextLayer, torch.Tensor, torch.Tensor]:
    layer = StarLinear(S, D_IN, D_OUT)
    nn.init.normal_(layer.scen_w, mean=1.0, std=0.3)
    nn.init.normal_(layer.scen_b, std=0.3)
    hint = torch.randint(0, S, (B,), generator=torch.Generator().manual_seed(2))
    return layer, hint, hint


def _meta_unit() -> tuple[ContextLayer, torch.Tensor, torch.Tensor]:
    e = 7
    layer = MetaUnit(nn.Linear(e, D_IN * D_IN), nn.Linear(e, D_IN))
    table = torch.randn(S, e)
    hint = torch.randint(0, S, (B,), generator=torch.Generator().manual_seed(3))
    return layer, table[hint], hint


LAYERS = {
    "generated-lowrank": (GeneratedLinear, _generated("lowrank")),
    "generated-full": (GeneratedLinear, _generated("full")),
    "star": (StarLinear, _star),
    "m2m-meta-unit": (MetaUnit, _meta_unit),
}


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_subclasses(sub)}
    return out


def test_every_context_layer_has_a_parity_case():
    """A new context layer must be added to LAYERS; a backbone without one needs nothing."""
    product = {c for c in _all_subclasses(ContextLayer) if c.__module__.startswith("ranker.")}
    assert product == {cls for cls, _ in LAYERS.values()}
    assert ranker.meta  # imported for the subclass registry


class _Eval(nn.Module):
    """RowGroups.build reads `training` from the module it groups for."""


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("mode", ["auto", "first_row"])
def test_grouped_layer_equals_its_reference(name, mode):
    torch.manual_seed(0)
    layer, ctx, hint = LAYERS[name][1]()
    if mode == "first_row":  # most rows share row 0's context (a request), the others do not
        ctx, hint = ctx.clone(), hint.clone()
        ctx[: B - 10], hint[: B - 10] = ctx[0], hint[0]
    x = torch.randn(B, D_IN, requires_grad=True)
    with grouping(mode):
        groups = RowGroups.build(_Eval().eval(), (ctx,), hint)
    assert not groups.is_reference
    fast = groups.run(layer, x, groups.gather(ctx))
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    ref = layer.reference(x, ctx)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-6 * float(g_ref.abs().max()), rtol=GRAD_RTOL)


@pytest.mark.parametrize("name", ["generated-lowrank", "m2m-meta-unit"])
def test_fused_reference_is_the_per_row_weights_definition(name):
    """Layers whose reference skips per-row weights (bilinear in x and the context) compute exactly
    what `weights` + `apply_weights` define, one row at a time: compared in float64, so only the
    math is tested, not the rounding."""
    torch.manual_seed(0)
    layer, ctx, _ = LAYERS[name][1]()
    modules = [layer] if isinstance(layer, nn.Module) else [layer.gen_w, layer.gen_b]
    for m in modules:
        m.double()
    x, ctx = torch.randn(B, D_IN, dtype=torch.float64), ctx.double()
    assert type(layer).reference is not ContextLayer.reference
    torch.testing.assert_close(
        layer.reference(x, ctx), ContextLayer.reference(layer, x, ctx), atol=1e-12, rtol=1e-12
    )


def test_training_and_small_or_ungroupable_batches_take_the_reference():
    hint = torch.tensor([2, 0, 2, 2, 0, 5, 2, 0] * 2)
    key = torch.randn(6, 3)[hint]
    assert RowGroups.build(_Eval().train(), (key,), hint).is_reference
    assert RowGroups.build(_Eval().eval(), (key[:4],), hint[:4]).is_reference  # < 8 rows
    assert RowGroups.build(_Eval().eval(), (torch.randn(16, 3),), torch.arange(16)).is_reference
    bad = key.clone()
    bad[5] += 1.0  # row 5 shares its hint with others but not its vector
    assert RowGroups.build(_Eval().eval(), (bad,), hint).is_reference
    with grouping("reference"):
        assert RowGroups.build(_Eval().eval(), (key,), hint).is_reference


def test_exact_groups_lay_rows_out_per_group():
    hint = torch.tensor([2, 0, 2, 2, 0, 5, 2, 0] * 2)
    key = torch.randn(6, 3)[hint]
    groups = RowGroups.build(_Eval().eval(), (key,), hint)
    assert groups.reps is not None and groups.slot is not None
    assert (groups.reps.shape[0], groups.m) == (3, 8)
    torch.testing.assert_close(groups.expand(groups.gather(key)), key)
    padded = torch.zeros(3 * 8, 4).index_copy(0, groups.slot, torch.randn(16, 4)).view(3, 8, 4)
    assert int((padded.abs().sum(-1) > 0).sum()) == 16  # every row once, padding zero


def test_first_row_groups_of_a_uniform_batch_have_no_rest():
    key = torch.randn(1, 3).expand(9, 3)
    with grouping("first_row"):
        groups = RowGroups.build(_Eval().eval(), (key,), torch.zeros(9, dtype=torch.long))
    assert groups.rest is not None and groups.rest.numel() == 0
    assert groups.inverse is not None and int(groups.inverse.max()) == 0
