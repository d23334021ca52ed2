"""Sliding-window inference for images too large to segment in one pass.

The image is covered by ``window`` x ``window`` tiles that overlap by ``overlap`` of their side (the
last tile of a row or column is shifted back to end at the border, so tiles never pad). Each pixel's
logits are the plain mean over the tiles covering it: a uniform weight keeps one window covering the
whole image bit-identical to whole-image inference, and for a model whose output at a pixel depends
only on that pixel the result equals whole-image inference up to float rounding of the mean. CNNs
with global pooling (the DeepLab image-pool branch) see less context per tile, so results are close,
not equal.

Memory: the per-level logit sums live at full resolution (``sum(level sizes) x H x W`` float32 per
image, e.g. 0.6 GB for 12 classes on 4000x3000), the model only ever sees one tile. The predictor
(:mod:`hiertree.inference.predictor`, ``Views(large="tile")``) decides when an image is tiled.
"""

from __future__ import annotations

import torch

from hiertree.config.options import EvalOptions, check_args

__all__ = ["window_starts", "sliding_window_logits"]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of the tiles along one side: every ``stride`` pixels, the last one flush with the border."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


def _check(window: int, overlap: float) -> int:
    """The tile stride; ``window`` and ``overlap`` checked against their ``eval.*`` declarations (direct callers)."""
    overlap = check_args(EvalOptions, "sliding window", window=window, overlap=overlap)["overlap"]
    return max(1, int(round(window * (1.0 - overlap))))


@torch.no_grad()
def sliding_window_logits(model: torch.nn.Module, images: torch.Tensor, window: int, overlap: float = 0.25) -> list[torch.Tensor]:
    """Per-level logits ``[B, C_level, H, W]`` (float32) of ``images`` ``[B, 3, H, W]``, tile by tile.

    ``model(tile)`` must return one logit map per level at the tile's size (as
    :class:`~hiertree.models.HierSegModel` does); put the model in eval mode first.
    """
    stride = _check(window, overlap)
    if images.ndim != 4:
        raise ValueError(f"sliding window: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    sums: list[torch.Tensor] | None = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for y in window_starts(height, window, stride):
        for x in window_starts(width, window, stride):
            tile = images[..., y : y + window, x : x + window]
            h, w = tile.shape[-2:]
            logits = model(tile)
            if sums is None:
                sums = [z.new_zeros((z.shape[0], z.shape[1], height, width), dtype=torch.float32) for z in logits]
            for total, z in zip(sums, logits):
                if tuple(z.shape[-2:]) != (h, w):
                    raise ValueError(
                        f"sliding window: the model returned logits of size {tuple(z.shape[-2:])} for a {h}x{w} tile; "
                        "it must return them at the input size (HierSegModel: upsample=True)"
                    )
                total[..., y : y + h, x : x + w] += z.float()
            count[..., y : y + h, x : x + w] += 1
    assert sums is not None
    return [total / count for total in sums]
