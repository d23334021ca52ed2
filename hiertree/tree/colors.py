"""Colour masks and overlays of class-index maps (palettes come from the Taxonomy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hiertree.images import to_rgb

__all__ = ["IGNORE_COLOR", "colorize", "overlay"]

IGNORE_COLOR = (128, 128, 128)


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
    """HxWx3 uint8 colour image of a class-index map; values outside the palette (ignore) get ``ignore_color``."""
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"colorize: palette must be [C, 3] uint8, got shape {palette.shape}")
    table = np.concatenate([palette, np.asarray(ignore_color, np.uint8).reshape(1, 3)])
    # np.take along rows, not table[labels]: the same pixels, 4x faster (0.5 vs 2 ms for 500 x 375)
    if labels.dtype == np.uint8:  # one look-up in a 256-row table: no range test, no int64 copy
        full = np.repeat(table[-1:], 256, axis=0)
        full[: min(len(palette), 256)] = palette[:256]
        return np.take(full, labels, axis=0)
    safe = np.where((labels >= 0) & (labels < len(palette)), labels, len(palette)).astype(np.int64)
    return np.take(table, safe, axis=0)


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an image: ``(1 - alpha) * image + alpha * color`` as uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    image = to_rgb(image, "overlay image")
    color = np.asarray(color)
    if color.shape != image.shape:
        raise ValueError(f"overlay: colour mask has shape {color.shape} but the image has {image.shape}; they must match")
    if color.dtype == np.uint8:
        import cv2  # the same blend rounded to nearest, in one SIMD pass

        return cv2.addWeighted(image, 1.0 - alpha, np.ascontiguousarray(color), alpha, 0.0)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

