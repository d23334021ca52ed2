"""``model.decoder: fpn``: a feature pyramid network decoder (Kirillov et al., "Panoptic Feature Pyramid Networks",
2019; the FPN of segmentation_models_pytorch): every encoder map from stride 4 down, merged top-down, then each
level upsampled to stride 4 and summed.

Sizes: the pyramid is ``model.decoder_channels`` wide, the segmentation branches half that; ``model.separable``
makes the 3x3 convolutions depthwise-separable (cheaper on a CPU), ``model.dropout`` acts on the merged map. Group
norm, as in smp, so batch size 1 trains. ``aspp_rates``, ``skip``, ``skip_channels`` and ``fuse_convs`` are
DeepLab's and are not read here.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hiertree.config.options import ModelOptions
from hiertree.models.decoders.registry import DECODERS

__all__ = ["FPNDecoder", "build"]


def _conv_gn_relu(cin: int, cout: int, separable: bool) -> nn.Sequential:
    convs = ([nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False)]
             if separable else [nn.Conv2d(cin, cout, 3, padding=1, bias=False)])
    groups = math.gcd(32, cout)
    return nn.Sequential(*convs, nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class _Branch(nn.Module):
    """One pyramid level to stride 4: a 3x3 conv-GN-ReLU per factor 2 of upsampling (at least one)."""

    def __init__(self, cin: int, cout: int, upsamplings: int, separable: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_conv_gn_relu(cin if i == 0 else cout, cout, separable)
                                    for i in range(max(1, upsamplings)))
        self.upsamplings = upsamplings

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < self.upsamplings:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FPNDecoder(nn.Module):
    """Lateral 1x1 projections, a top-down pathway (upsample and add), then one branch per level to the finest map.

    ``channels`` and ``reductions`` describe the maps it reads: the encoder's from index ``first`` on."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], first: int, pyramid: int, segmentation: int,
                 separable: bool, dropout: float) -> None:
        super().__init__()
        self.first = first
        self.laterals = nn.ModuleList(nn.Conv2d(c, pyramid, 1) for c in channels)
        finest = reductions[0]
        self.branches = nn.ModuleList(_Branch(pyramid, segmentation, round(math.log2(r / finest)), separable)
                                      for r in reductions)
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels, self.output_reduction = segmentation, finest

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features``: every encoder map, shallow to deep (those before ``first`` are not read)."""
        features = features[self.first:]
        p = self.laterals[-1](features[-1])
        pyramid = [p]
        for lateral, x in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            p = lateral(x) + F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.insert(0, p)
        size = tuple(pyramid[0].shape[-2:])
        return self.dropout(sum(branch(q, size) for branch, q in zip(self.branches, pyramid)))


@DECODERS.register("fpn")
def build(channels: Sequence[int], reductions: Sequence[int], options: ModelOptions) -> nn.Module:
    """An FPN over every encoder map from stride 4 (or the finest, if none is that fine) to the deepest: the
    stride-2 stem map is too shallow to help and the costliest to process."""
    first = max((i for i, r in enumerate(reductions) if r <= 4), default=0)
    width = options.decoder_channels
    return FPNDecoder(channels[first:], reductions[first:], first, width, max(1, width // 2), options.separable,
                      options.dropout)
