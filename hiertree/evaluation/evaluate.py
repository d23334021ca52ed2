"""Per-level evaluation of a model over a whole split (one confusion matrix per level)."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

import torch

from hiertree.device import autocast_for
from hiertree.evaluation.backoff import CurveAccumulator
from hiertree.inference.decoding import backoff_chain, decode
from hiertree.inference.predictor import Views, log_probs
from hiertree.inference.runners import TorchRunner
from hiertree.metrics import HierarchicalMetrics
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["evaluate"]

def _unpadded(batch: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """The batch as one piece when no sample was padded, else one piece per distinct sample size, unpadded, with
    the ids of its images.

    Padding is not neutral: the border pixels and the image-pool branch would see it, so a score would
    depend on the batch size and on which images share a batch. Samples of equal size still run together.
    """
    images, masks, sizes = batch["image"], batch["mask"], batch.get("size")
    ids = [str(i) for i in batch.get("id", range(images.shape[0]))]
    full = tuple(images.shape[-2:])
    if sizes is None or all(tuple(hw) == full for hw in sizes):
        yield images, masks, ids
        return
    groups: dict[tuple[int, int], list[int]] = {}
    for k, hw in enumerate(sizes):
        groups.setdefault(tuple(hw), []).append(k)
    for (h, w), members in groups.items():
        idx = torch.tensor(members)
        yield images[idx, :, :h, :w], masks[idx, :h, :w], [ids[k] for k in members]


@torch.no_grad()
def _accumulate(runner: TorchRunner, loader: Iterable[dict], taxonomy: Taxonomy, device: torch.device, amp: str,
                views: Views, max_batches: int | None, flat: bool, labelled: Sequence[int] | None = None,
                curve: dict[float, HierarchicalMetrics] | None = None,
                images: CurveAccumulator | None = None) -> tuple[HierarchicalMetrics, HierarchicalMetrics]:
    """The tree-decoded and raw per-head metrics of one loader (``labelled``: the node ids its labels use);
    ``curve`` (threshold -> metrics) also scores the back-off predictions of every threshold over the pixels,
    ``images`` image by image (:class:`~hiertree.evaluation.backoff.ImageCurves`, what calibration reads)."""
    tree = HierarchicalMetrics(taxonomy, labelled=labelled)
    raw = HierarchicalMetrics(taxonomy, labelled=labelled)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        for images_, target, ids in _unpadded(batch):
            target = target.to(device, non_blocking=True)
            with autocast_for(device, amp):
                logp = log_probs(runner, images_, views)
            out = decode(logp, taxonomy, flat=flat)
            tree.update(out["leaf"], target)
            raw.update(out["raw"], target)
            if curve or images is not None:
                chain, probs = backoff_chain(logp, taxonomy, flat)
                if curve:
                    HierarchicalMetrics.update_backoff_curve(list(curve.values()), list(curve), chain, probs, target)
                if images is not None:
                    images.update(chain, probs, target, ids)
    return tree, raw


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict] | Mapping[str, Iterable[dict]],
    taxonomy: Taxonomy,
    device: torch.device,
    *,
    views: Views = Views(),
    amp: str = "none",
    max_batches: int | None = None,
    flat: bool = False,
    channels_last: bool = False,
    labelled: Mapping[str, Sequence[int]] | None = None,
    backoff: Sequence[float] = (),
    sharded: bool = False,
    image_curves: CurveAccumulator | None = None,
) -> dict:
    """Scores of tree-consistent predictions and of each head's raw argmax, per level.

    ``views``: flips, scales and the tiles of images above ``max_side`` (``Views.from_options(cfg["eval"])`` is what
    a config asks for). Returns ``{"tree": metrics, "raw": metrics}`` where each is :meth:`HierarchicalMetrics.compute`'s
    result; ``raw`` carries the share of pixels whose raw per-head labels agree with the tree.
    ``loader`` may be a mapping of source name to loader (``data.sources``): each source is scored on its
    own, at the levels its labels reach, under ``"sources"``, and ``tree``/``raw`` are the combined table
    (every pixel of every source; ``max_batches`` applies per source). ``labelled`` maps a source to the
    node ids its label map yields, so its table leaves out the classes it never labels. ``backoff`` thresholds
    add ``"backoff": [{"threshold", "accuracy", "specificity", "leaf_coverage", ...}]`` (over every source's
    pixels), the accuracy-specificity curve that :func:`calibrate_backoff` reads.
    """
    # the predictor's runner: on a CPU a folded channels_last copy (the model itself is untouched)
    runner = TorchRunner(model, device, channels_last=channels_last or None)
    args = (taxonomy, device, amp, views, max_batches, flat)
    parts = loader if isinstance(loader, Mapping) else {None: loader}
    curve = {float(t): HierarchicalMetrics(taxonomy) for t in backoff}  # over every source's pixels
    tree, raw = HierarchicalMetrics(taxonomy), HierarchicalMetrics(taxonomy)
    sources = {}
    for name, part in parts.items():
        t, r = _accumulate(runner, part, *args, labelled=(labelled or {}).get(name), curve=curve, images=image_curves)
        if sharded:
            t.all_reduce(device)
            r.all_reduce(device)
        if name is not None:
            sources[name] = {"tree": t.compute(), "raw": r.compute()}
        tree.merge(t)
        raw.merge(r)
    result = {"tree": tree.compute(), "raw": raw.compute()}
    if sources:
        result["sources"] = sources
    if curve and sharded:
        for m in curve.values():
            m.all_reduce(device)
    if curve:
        result["backoff"] = [{"threshold": t, **m.compute()["hierarchy"]["backoff"]} for t, m in curve.items()]
    return result
