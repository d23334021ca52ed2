"""Per-level evaluation of a model over a whole split (one confusion matrix per level)."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from hiertree.metrics import HierarchicalMetrics
from hiertree.inference import backoff_chain, decode
from hiertree.sliding import logits_any_size
from hiertree.taxonomy import Taxonomy

__all__ = ["evaluate", "tta_log_probs", "autocast_for", "calibrate_backoff", "BACKOFF_GRID"]

#: Thresholds scanned by ``eval.py --calibrate-backoff``: 0, 0.01, ..., 1.
BACKOFF_GRID: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))


def calibrate_backoff(curve: Sequence[dict], target: float) -> dict:
    """The smallest threshold of ``curve`` (from ``evaluate(..., backoff=...)``) whose back-off predictions are
    right on at least a share ``target`` of the scored pixels; raises ValueError when none reaches it."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < float(target) <= 1.0:
        raise ValueError(f"the calibration target must be a share of pixels in (0, 1], got {target!r} (e.g. 0.95)")
    for point in sorted(curve, key=lambda p: p["threshold"]):
        if point["accuracy"] >= target:
            return point
    best = max(curve, key=lambda p: p["accuracy"])
    raise ValueError(f"no threshold reaches accuracy {target}: the highest is {best['accuracy']:.4f} at threshold "
                     f"{best['threshold']} (at threshold 1 every pixel stops at its depth-1 node); ask for a lower target")


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA when asked; a no-op elsewhere (CPU trains in fp32)."""
    if device.type != "cuda" or amp in ("none", "fp32", None):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def tta_log_probs(
    model: torch.nn.Module,
    images: torch.Tensor,
    hflip: bool = False,
    scales: Sequence[float] = (1.0,),
    max_side: int | None = None,
    window: int = 512,
    overlap: float = 0.25,
) -> list[torch.Tensor]:
    """Per-level log of the probabilities averaged over flips and scales (the identity when no TTA).

    Views with a side above ``max_side`` are predicted tile by tile (``window``, ``overlap``).
    """
    h, w = images.shape[-2:]
    views = [(s, f) for s in scales for f in ((False, True) if hflip else (False,))]
    total: list[torch.Tensor] | None = None
    for scale, flip in views:
        x = images.float()
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        if flip:
            x = x.flip(-1)
        logits = logits_any_size(model, x, max_side, window, overlap) if max_side else model(x)
        probs = []
        for z in logits:
            z = z.float()
            if flip:
                z = z.flip(-1)
            if scale != 1.0:
                z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
            probs.append(z.softmax(1))
        total = probs if total is None else [a + b for a, b in zip(total, probs)]
    return [(p / len(views)).clamp_min(1e-12).log() for p in total]


def _unpadded(batch: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batch as one piece when no sample was padded, else one piece per distinct sample size, unpadded.

    Padding is not neutral: the border pixels and the image-pool branch would see it, so a score would
    depend on the batch size and on which images share a batch. Samples of equal size still run together.
    """
    images, masks, sizes = batch["image"], batch["mask"], batch.get("size")
    full = tuple(images.shape[-2:])
    if sizes is None or all(tuple(hw) == full for hw in sizes):
        yield images, masks
        return
    groups: dict[tuple[int, int], list[int]] = {}
    for k, hw in enumerate(sizes):
        groups.setdefault(tuple(hw), []).append(k)
    for (h, w), members in groups.items():
        idx = torch.tensor(members)
        yield images[idx, :, :h, :w], masks[idx, :h, :w]


@torch.no_grad()
def _accumulate(model: torch.nn.Module, loader: Iterable[dict], taxonomy: Taxonomy, device: torch.device, amp: str,
                hflip: bool, scales: Sequence[float], max_batches: int | None, flat: bool, channels_last: bool,
                max_side: int | None, window: int, overlap: float,
                labelled: Sequence[int] | None = None,
                curve: dict[float, HierarchicalMetrics] | None = None) -> tuple[HierarchicalMetrics, HierarchicalMetrics]:
    """The tree-decoded and raw per-head metrics of one loader (``labelled``: the node ids its labels use);
    ``curve`` (threshold -> metrics) also scores the back-off predictions of every threshold."""
    tree = HierarchicalMetrics(taxonomy, labelled=labelled)
    raw = HierarchicalMetrics(taxonomy, labelled=labelled)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        for images, target in _unpadded(batch):
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, amp):
                logp = tta_log_probs(model, images, hflip, scales, max_side, window, overlap)
            out = decode(logp, taxonomy, flat=flat)
            tree.update(out["leaf"], target)
            raw.update(out["raw"], target)
            if curve:
                chain, probs = backoff_chain(logp, taxonomy, flat)
                HierarchicalMetrics.update_backoff_curve(list(curve.values()), list(curve), chain, probs, target)
    return tree, raw


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict] | Mapping[str, Iterable[dict]],
    taxonomy: Taxonomy,
    device: torch.device,
    amp: str = "none",
    hflip: bool = False,
    scales: Sequence[float] = (1.0,),
    max_batches: int | None = None,
    flat: bool = False,
    channels_last: bool = False,
    max_side: int | None = None,
    window: int = 512,
    overlap: float = 0.25,
    labelled: Mapping[str, Sequence[int]] | None = None,
    backoff: Sequence[float] = (),
) -> dict:
    """Scores of tree-consistent predictions and of each head's raw argmax, per level.

    Returns ``{"tree": metrics, "raw": metrics}`` where each is :meth:`HierarchicalMetrics.compute`'s
    result; ``raw`` carries the share of pixels whose raw per-head labels agree with the tree.
    ``loader`` may be a mapping of source name to loader (``data.sources``): each source is scored on its
    own, at the levels its labels reach, under ``"sources"``, and ``tree``/``raw`` are the combined table
    (every pixel of every source; ``max_batches`` applies per source). ``labelled`` maps a source to the
    node ids its label map yields, so its table leaves out the classes it never labels. ``backoff`` thresholds
    add ``"backoff": [{"threshold", "accuracy", "specificity", "leaf_coverage", ...}]`` (over every source's
    pixels), the accuracy-specificity curve that :func:`calibrate_backoff` reads.
    """
    was_training = model.training
    model.eval()
    args = (taxonomy, device, amp, hflip, scales, max_batches, flat, channels_last, max_side, window, overlap)
    parts = loader if isinstance(loader, Mapping) else {None: loader}
    curve = {float(t): HierarchicalMetrics(taxonomy) for t in backoff}  # over every source's pixels
    try:
        tree, raw = HierarchicalMetrics(taxonomy), HierarchicalMetrics(taxonomy)
        sources = {}
        for name, part in parts.items():
            t, r = _accumulate(model, part, *args, labelled=(labelled or {}).get(name), curve=curve)
            if name is not None:
                sources[name] = {"tree": t.compute(), "raw": r.compute()}
            tree.merge(t)
            raw.merge(r)
    finally:
        model.train(was_training)
    result = {"tree": tree.compute(), "raw": raw.compute()}
    if sources:
        result["sources"] = sources
    if curve:
        result["backoff"] = [{"threshold": t, **m.compute()["hierarchy"]["backoff"]} for t, m in curve.items()]
    return result
