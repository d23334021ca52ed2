"""Joint image + leaf-mask augmentation, and image normalisation.

This is the only module that imports albumentations; the rest of hiertree sees a
:class:`PairTransform`, a callable ``(image, mask) -> (image, mask)``, so the backend can be swapped.
Masks always use nearest-neighbour interpolation and pad with ``ignore_index``, so every mask pixel
keeps a label that was drawn at that very image pixel. The nearest variant is OpenCV's
``INTER_NEAREST_EXACT``, which samples pixel centres like ``INTER_LINEAR`` does for the image; plain
``INTER_NEAREST`` floors coordinates and shifts the mask up to half a source pixel against the image.
"""

from __future__ import annotations

import os
import random
from typing import Any, Sequence

# albumentations asks PyPI for a newer version at import; this is the one module that imports it, so the one place
# that says "don't" (a closed network would wait for the timeout)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hiertree.config.options import DataOptions, check_args, defaults
from hiertree.data.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PairTransform",
    "train_transform",
    "eval_transform",
    "normalize_to_tensor",
]

_DATA = defaults(DataOptions)  # the declared data.* defaults: one value for the config and direct callers

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# x / 255 - mean) / std as one multiply-add; numpy, because torch's intra-op threads cost more than
# they save on a single small image inside a data-loader worker
_SCALE = (1.0 / (255.0 * np.array(IMAGENET_STD))).astype(np.float32)
_OFFSET = (np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32)


class PairTransform:
    """A backend-neutral joint transform: ``(image uint8 HxWx3, mask uint8 HxW) -> (image, mask)``."""

    def __init__(self, ops: Sequence[Any], seed: int | None = None) -> None:
        self._compose = A.Compose(list(ops)) if ops else None
        self.seed = seed
        if seed is not None:
            self.reseed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._compose is None:
            return image, mask
        out = self._compose(image=image, mask=mask)
        return out["image"], out["mask"]

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (data-loader workers call this with their own seed).

        ``self.seed`` keeps the seed given at construction (None: not fixed by the caller).
        """
        if self._compose is not None:
            # one generator pair shared by every op: albumentations' set_random_seed gives each op its own
            # generator with the same seed, so scale, crop offset, flip and jitter would all be one draw
            s = int(seed) % 2**32
            self._compose.set_random_state(np.random.default_rng(s), random.Random(s))

    @property
    def is_identity(self) -> bool:
        return self._compose is None

    def __repr__(self) -> str:
        names = [type(t).__name__ for t in self._compose.transforms] if self._compose is not None else []
        return f"PairTransform([{', '.join(names)}], seed={self.seed})"




def _resize_longest(longest: int) -> A.LongestMaxSize:
    return A.LongestMaxSize(
        max_size=longest, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0
    )


def train_transform(
    crop: int,
    scale: Sequence[float] = tuple(_DATA["scale"]),
    longest: int | None = _DATA["longest"],
    hflip: bool = _DATA["hflip"],
    color_jitter: float = _DATA["color_jitter"],
    ignore_index: int = 255,
    seed: int | None = None,
) -> PairTransform:
    """Resize longest side to ``longest`` -> random scale -> pad to ``crop`` -> random ``crop`` square -> flip -> jitter.

    Padding fills the image with 0 and the mask with ``ignore_index``. Horizontal flips assume the
    taxonomy has no left/right classes; pass ``hflip=False`` if it does.
    """
    checked = check_args(DataOptions, "train_transform", error=DataError, crop=crop, scale=scale, longest=longest,
                         color_jitter=color_jitter)  # the data.* declarations, for direct callers
    scale, color_jitter = checked["scale"], checked["color_jitter"]
    if not 0 <= int(ignore_index) <= 255:
        raise DataError(f"train_transform: 'ignore_index' {ignore_index} does not fit a uint8 mask (0..255)")
    ops: list[Any] = [_resize_longest(longest)] if longest is not None else []
    lo, hi = scale
    if (lo, hi) != (1.0, 1.0):
        ops.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0))
    ops += [
        A.PadIfNeeded(min_height=crop, min_width=crop, border_mode=cv2.BORDER_CONSTANT, fill=0,
                      fill_mask=int(ignore_index), p=1.0),
        A.RandomCrop(height=crop, width=crop, p=1.0),
    ]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        cj = color_jitter
        ops.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=min(0.5, cj / 4), p=0.8))
    return PairTransform(ops, seed=seed)


def eval_transform(longest: int | None = _DATA["longest"]) -> PairTransform:
    """Resize the longest side to ``longest`` (masks nearest); ``None`` keeps the native resolution."""
    check_args(DataOptions, "eval_transform", error=DataError, longest=longest)
    return PairTransform([_resize_longest(longest)] if longest is not None else [])


def normalize_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB HxWx3 -> float32 3xHxW tensor, scaled to [0, 1] then ImageNet mean/std normalised."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"normalize_to_tensor: expected a uint8 HxWx3 RGB array, got {got}")
    x = image.astype(np.float32) * _SCALE - _OFFSET
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
