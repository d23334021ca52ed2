"""``model.decoder: deeplabv3plus``: DeepLabV3 ASPP on the deepest map with an optional low-level skip (DeepLabV3+)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hiertree.config.options import ModelOptions
from hiertree.models.decoders.registry import DECODERS

__all__ = ["ASPP", "DeepLabDecoder", "build"]


def conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """k×k conv (depthwise-separable when asked) + BN + ReLU, padding keeps the size."""
    pad = dilation * (k // 2)
    if separable and k > 1:
        convs = [nn.Conv2d(cin, cin, k, padding=pad, dilation=dilation, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False)]
    else:
        convs = [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False)]
    return nn.Sequential(*convs, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ImagePool(nn.Module):
    """Global context branch; no BatchNorm so batch size 1 trains."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x.mean((2, 3), keepdim=True)))
        return y.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, one 3×3 branch per rate, image pooling, then a 1×1 projection."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], separable: bool, dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r, separable) for r in rates] + [_ImagePool(cin, cout)]
        )
        self.project = nn.Sequential(conv_bn_relu(cout * len(self.branches), cout, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], 1))


class DeepLabDecoder(nn.Module):
    """ASPP on the deepest map; with ``skip`` the result is upsampled and fused with a low-level map.

    Every setting comes from :class:`~hiertree.models.HierSegModel`, already checked against
    :class:`~hiertree.config.options.ModelOptions` (defaults and ranges are declared there, not here).
    """

    def __init__(
        self,
        in_channels: tuple[int, int],
        channels: int,
        rates: Sequence[int],
        skip: bool,
        skip_channels: int,
        separable: bool,
        dropout: float,
        fuse_convs: int,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels[1], channels, rates, separable, dropout)
        self.skip = skip
        cin = channels
        if skip:
            self.low_proj = conv_bn_relu(in_channels[0], skip_channels, 1)
            cin = channels + skip_channels
        # 3×3 convs after fusion: at stride 4 they dominate the decoder's cost (1 as in smp, 2 as in the paper)
        self.fuse = nn.Sequential(*[conv_bn_relu(cin if i == 0 else channels, channels, 3, separable=separable) for i in range(fuse_convs)])
        self.out_channels = channels
        self.indices = (0, 1)  # which encoder maps are low and high: set by build()
        self.output_reduction = 1

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        low, high = features[self.indices[0]], features[self.indices[1]]
        x = self.aspp(high)
        if self.skip:
            x = F.interpolate(x, size=low.shape[2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, self.low_proj(low)], 1)
        return self.fuse(x)


@DECODERS.register("deeplabv3plus")
def build(channels: Sequence[int], reductions: Sequence[int], options: ModelOptions) -> DeepLabDecoder:
    """ASPP on the deepest map; the skip reads the deepest map at stride 4 or less (stride 4 on timm's encoders)."""
    low = max((i for i, r in enumerate(reductions) if r <= 4), default=0)
    high = len(reductions) - 1
    os_ = reductions[high]
    rates = tuple(options.aspp_rates) if options.aspp_rates else tuple(r * 16 // os_ for r in (6, 12, 18))
    decoder = DeepLabDecoder((channels[low], channels[high]), options.decoder_channels, rates, options.skip,
                             options.skip_channels, options.separable, options.dropout, options.fuse_convs)
    decoder.indices = (low, high)
    decoder.output_reduction = reductions[low] if options.skip else reductions[high]
    return decoder
