"""Tree-consistent label maps for plain images (numpy arrays) of any size, at each image's own size.

:func:`predict_images` takes RGB (or grayscale / RGBA) uint8 arrays of any size, batches them by
padding, and returns tree-consistent per-level label maps at each image's original size. Images
whose longest side exceeds ``max_side`` are shrunk for the network only; their logits are upsampled
back to the original size (bilinear, a strip of rows at a time so a 4000×3000 photo does not need
gigabytes) before decoding, so labels always match the input pixel grid.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hiertree.images import to_rgb
from hiertree.inference import decode
from hiertree.padding import padded_size

__all__ = ["predict_images"]

_STRIP_PIXELS = 1 << 20  # decode about this many output pixels at a time


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int32


def _net_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """The size the network sees: the original one, or shrunk so the longest side is ``max_side``."""
    if max_side is None or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _rows_upsampled(z: torch.Tensor, out_h: int, out_w: int, y0: int, y1: int) -> torch.Tensor:
    """Rows ``y0:y1`` of ``F.interpolate(z, (out_h, out_w), mode="bilinear", align_corners=False)``.

    Interpolates rows by hand (same source coordinates as PyTorch) and columns with 1-D linear
    interpolation, so only the strip is ever materialised.
    """
    c, h, w = z.shape
    if h == out_h:
        rows = z[:, y0:y1]
    else:
        y = (torch.arange(y0, y1, dtype=torch.float64, device=z.device) + 0.5) * (h / out_h) - 0.5
        y = y.clamp_min(0)
        lo = y.floor().long().clamp_max(h - 1)
        hi = (lo + 1).clamp_max(h - 1)
        t = (y - lo).to(z.dtype).view(1, -1, 1)
        rows = z[:, lo] * (1 - t) + z[:, hi] * t
    if w != out_w:
        n = rows.shape[1]
        rows = F.interpolate(rows.reshape(c * n, 1, w), size=out_w, mode="linear", align_corners=False).reshape(c, n, out_w)
    return rows


def _decode_image(logits: list[torch.Tensor], size: tuple[int, int], taxonomy: Any, flat: bool, probabilities: bool,
                  backoff: float | None = None) -> dict[str, Any]:
    """Per-level labels (probabilities, back-off nodes) of one image's logits [C_l, h, w], at ``size``, strip by strip."""
    H, W = size
    levels = [np.empty((H, W), _label_dtype(z.shape[0])) for z in logits]
    leaf = np.empty((H, W), _label_dtype(taxonomy.num_leaves))
    nodes = np.empty((H, W), _label_dtype(taxonomy.num_nodes)) if backoff is not None else None
    probs = [np.empty((z.shape[0], H, W), np.float16) for z in logits] if probabilities else None
    step = max(1, _STRIP_PIXELS // max(W, 1))
    for y0 in range(0, H, step):
        y1 = min(H, y0 + step)
        strip = [_rows_upsampled(z.float(), H, W, y0, y1)[None] for z in logits]
        out = decode(strip, taxonomy, flat=flat, probabilities=probabilities, backoff=backoff)
        for l, lab in enumerate(out["levels"]):
            levels[l][y0:y1] = lab[0].cpu().numpy()
        leaf[y0:y1] = out["leaf"][0].cpu().numpy()
        if nodes is not None:
            nodes[y0:y1] = out["nodes"][0].cpu().numpy()
        if probs is not None:
            for l, p in enumerate(out["probs"]):
                probs[l][:, y0:y1] = p[0].cpu().numpy().astype(np.float16)
    result: dict[str, Any] = {"levels": levels, "leaf": leaf, "size": (H, W)}
    if probs is not None:
        result["probs"] = probs
    if nodes is not None:
        result["nodes"] = nodes
    return result


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    probabilities: bool = False,
    max_side: int | None = None,
    backoff: float | None = None,
) -> list[dict[str, Any]]:
    """Tree-consistent label maps for each image, at its original size.

    Returns one dict per image, in input order: ``"levels"`` (per-level class-index maps, numpy HxW,
    uint8 up to 256 classes), ``"leaf"`` (leaf-id map), ``"size"`` ``(H, W)`` and, with
    ``probabilities=True``, ``"probs"`` (per-level float16 ``[C_l, H, W]``). Images are sorted by
    size and padded with the encoder's mean colour (what the model's own padding amounts to), so a
    batch mate changes results only within the receptive field of the padded border. ``max_side``
    shrinks larger images for the network (see the module docstring). ``backoff`` (a threshold in [0, 1]) adds
    ``"nodes"``: the node-id map of :func:`hiertree.inference.backoff_nodes`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict_images: batch_size must be a positive integer, got {batch_size!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8):
        raise ValueError(f"predict_images: max_side must be None or an integer >= 8, got {max_side!r}")
    device = torch.device(device)
    rgb = [to_rgb(im, where=f"images[{i}]") for i, im in enumerate(images)]
    taxonomy, flat = model.taxonomy, bool(getattr(model, "flat", False))
    encoder = getattr(model, "encoder", None)
    multiple = int(getattr(encoder, "input_multiple", 32))
    mean = encoder.mean.detach().float().view(3).cpu() if encoder is not None else torch.zeros(3)
    was_training = model.training
    model.eval()
    net_sizes = [_net_size(a.shape[0], a.shape[1], max_side) for a in rgb]
    order = sorted(range(len(rgb)), key=lambda i: (net_sizes[i][0] * net_sizes[i][1], net_sizes[i]))
    results: list[dict[str, Any] | None] = [None] * len(rgb)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            bh, bw = padded_size(max(net_sizes[i][0] for i in idx), max(net_sizes[i][1] for i in idx), multiple)
            batch = mean.view(1, 3, 1, 1).repeat(len(idx), 1, bh, bw)
            for k, i in enumerate(idx):
                a, (h, w) = rgb[i], net_sizes[i]
                if (h, w) != a.shape[:2]:
                    import cv2

                    a = cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
                batch[k, :, :h, :w] = torch.from_numpy(a).permute(2, 0, 1).float()
            logits = model(batch.to(device))
            for k, i in enumerate(idx):
                h, w = net_sizes[i]
                per_image = [z[k, :, :h, :w] for z in logits]
                results[i] = _decode_image(per_image, rgb[i].shape[:2], taxonomy, flat, probabilities, backoff)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]

