"""Padding a size up to a multiple: the one place this arithmetic lives.

The model pads its input to the encoder's multiple, the ONNX wrapper pads inside the traced graph,
image prediction and ``pad_collate`` pad whole batches; all of them round sizes up with these helpers,
so their padded sizes agree by construction. Bottom layer: imports only torch (for the traced form).
"""

from __future__ import annotations

from typing import TypeVar

import torch

__all__ = ["pad_amount", "padded_size"]

Size = TypeVar("Size", int, torch.Tensor)


def pad_amount(size: Size, multiple: int) -> Size:
    """How much to add to ``size`` to reach the next multiple of ``multiple`` (0 when it is one already).

    Works on Python ints and, unchanged, on the 0-d tensors a shape yields while tracing for ONNX, so
    an exported graph computes its pads from the input's dynamic height and width.
    """
    return (multiple - size % multiple) % multiple


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """``(height, width)`` each rounded up to a multiple of ``multiple``."""
    return height + pad_amount(height, multiple), width + pad_amount(width, multiple)
