"""Multi-scenario backbones behind one interface (`ranker.backbones.base.Backbone`)."""

from __future__ import annotations

from ranker.backbones.base import Backbone, BackboneContext
from ranker.backbones.m2m import M2M
from ranker.backbones.mmoe import MMoE
from ranker.backbones.pepnet import PEPNet
from ranker.backbones.ple import PLE
from ranker.backbones.shared_bottom import SharedBottom
from ranker.backbones.star import Star

BACKBONES: dict[str, type[Backbone]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
    "star": Star,
    "pepnet": PEPNet,
    "m2m": M2M,
}


def build_backbone(name: str, ctx: BackboneContext) -> Backbone:
    """Instantiate a backbone by name; unknown names are a clear error listing the choices."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name](ctx)


__all__ = ["BACKBONES", "Backbone", "BackboneContext", "build_backbone"]
