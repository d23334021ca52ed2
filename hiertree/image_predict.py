"""Tree-consistent label maps for plain images (numpy arrays) of any size, at each image's own size.

:func:`predict_images` takes RGB (or grayscale / RGBA) uint8 arrays of any size, batches images of one
size together (never padding one to another's size), and returns tree-consistent per-level label maps
at each image's original size. Images whose longest side exceeds ``max_side`` are shrunk for the network only; their logits are upsampled
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
from hiertree.runners import TorchRunner

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
        out = decode(strip, taxonomy, flat=flat, probabilities=probabilities, backoff=backoff, raw=False)
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


def _from_leaf(leaf: torch.Tensor, taxonomy: Any) -> dict[str, Any]:
    """The result of one image from its tree-consistent leaf map: every level through the taxonomy's LUTs."""
    levels = [lab.numpy().astype(_label_dtype(taxonomy.num_classes(l)))
              for l, lab in enumerate(taxonomy.levels_from_leaves(leaf.long()))]
    return {"levels": levels, "leaf": leaf.numpy().astype(_label_dtype(taxonomy.num_leaves)), "size": tuple(leaf.shape)}


def _groups(net_sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of images with one network size, at most ``batch_size`` at a time: nothing is ever padded."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(net_sizes):
        by_size.setdefault(size, []).append(i)
    return [idx[k : k + batch_size] for idx in by_size.values() for k in range(0, len(idx), batch_size)]


def _as_runner(model: Any, device: torch.device) -> Any:
    """A runner as it is, a model wrapped as a :class:`~hiertree.runners.TorchRunner`."""
    if isinstance(model, torch.nn.Module):
        return TorchRunner(model, device)
    if not (callable(model) and hasattr(model, "taxonomy")):
        raise TypeError(f"predict_images: expected a HierSegModel or a runner, got {type(model).__name__}")
    return model


@torch.no_grad()
def predict_images(
    model: Any,
    images: Sequence[np.ndarray],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    probabilities: bool = False,
    max_side: int | None = None,
    backoff: float | None = None,
) -> list[dict[str, Any]]:
    """Tree-consistent label maps for each image, at its original size.

    ``model``: a :class:`~hiertree.models.HierSegModel` or a runner of :mod:`hiertree.runners` (ONNX Runtime).
    Returns one dict per image, in input order: ``"levels"`` (per-level class-index maps, numpy HxW,
    uint8 up to 256 classes), ``"leaf"`` (leaf-id map), ``"size"`` ``(H, W)`` and, with
    ``probabilities=True``, ``"probs"`` (per-level float16 ``[C_l, H, W]``). Only images of one size share a
    forward pass, so no image is padded to another's size and a batch mate never changes a result. ``max_side``
    shrinks larger images for the network (see the module docstring). ``backoff`` (a threshold in [0, 1]) adds
    ``"nodes"``: the node-id map of :func:`hiertree.inference.backoff_nodes`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict_images: batch_size must be a positive integer, got {batch_size!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8):
        raise ValueError(f"predict_images: max_side must be None or an integer >= 8, got {max_side!r}")
    device = torch.device(device)
    rgb = [to_rgb(im, where=f"images[{i}]") for i, im in enumerate(images)]
    runner = _as_runner(model, device)
    taxonomy, flat = runner.taxonomy, bool(runner.flat)
    net_sizes = [_net_size(a.shape[0], a.shape[1], max_side) for a in rgb]
    results: list[dict[str, Any] | None] = [None] * len(rgb)
    for idx in _groups(net_sizes, batch_size):
        h, w = net_sizes[idx[0]]
        arrays = [rgb[i] if rgb[i].shape[:2] == (h, w) else _shrunk(rgb[i], h, w) for i in idx]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
        if getattr(runner, "has_leaf", False) and not probabilities and backoff is None and \
                all(rgb[i].shape[:2] == (h, w) for i in idx):  # labels only, at the network's size: decoded in the graph
            for k, leaf in zip(idx, runner.leaf(batch)):
                results[k] = _from_leaf(leaf, taxonomy)
            continue
        logits = runner(batch)
        for k, i in enumerate(idx):
            per_image = [z[k] for z in logits]
            results[i] = _decode_image(per_image, rgb[i].shape[:2], taxonomy, flat, probabilities, backoff)
    return results  # type: ignore[return-value]


def _shrunk(a: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
