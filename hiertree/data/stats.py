"""What a dataset holds, per node and per level: the numbers ``hiertree-stats`` prints and ``loss.class_weights: auto`` uses.

Counts come from the masks alone (after the label map, before augmentation): images and pixels per
node, per level the pixels and images of each class, how deep the labels reach (the share of pixels
whose label names a class down to each level), the ignored share and the image sizes. Median-frequency
class weights (Eigen & Fergus, 2015) follow per level: ``freq_c = pixels of c / pixels of the images
holding c`` and ``weight_c = median(freq) / freq_c``; a class absent from the data weighs 1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hiertree.data.dataset import SegDataset
from hiertree.data.sources import Mixture, load_mask
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["dataset_stats", "median_frequency_weights", "format_stats", "plot_stats", "write_json"]

log = logging.getLogger(__name__)


def _counts(source: Sequence, taxonomy: Taxonomy, max_images: int | None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Per image, pixel counts per node id (the last column: ignore and anything else); and the mask sizes."""
    n = len(source) if max_images is None else min(len(source), max_images)
    k = taxonomy.num_nodes
    counts = np.zeros((n, k + 1), dtype=np.int64)
    sizes = []
    for i in range(n):
        mask = np.asarray(load_mask(source, i))
        sizes.append((int(mask.shape[0]), int(mask.shape[1])))
        values = np.bincount(mask.ravel().astype(np.int64), minlength=k + 1)
        counts[i, :k] = values[:k]
        counts[i, k] = values[k:].sum()
    return counts, sizes


def _summary(counts: np.ndarray, sizes: list[tuple[int, int]], taxonomy: Taxonomy) -> dict[str, Any]:
    k = taxonomy.num_nodes
    node_px = counts[:, :k]
    total = int(counts.sum())
    labelled = int(node_px.sum())
    depth_px = {f"L{l}": 0 for l in range(taxonomy.num_levels)}
    for i, name in enumerate(taxonomy.node_names):
        depth_px[f"L{taxonomy.node_level(name)}"] += int(node_px[:, i].sum())
    levels = []
    for l in range(taxonomy.num_levels):
        lut = taxonomy.node_lut(l)[:k].numpy()
        per_class = np.zeros((counts.shape[0], taxonomy.num_classes(l)), dtype=np.int64)
        for i in range(k):
            if lut[i] != taxonomy.ignore_index:
                per_class[:, lut[i]] += node_px[:, i]
        scored = int(per_class.sum())
        levels.append({
            "level": l,
            "classes": {name: {"pixels": int(per_class[:, c].sum()), "images": int((per_class[:, c] > 0).sum()),
                               "image_pixels": int(counts[per_class[:, c] > 0].sum())}
                        for c, name in enumerate(taxonomy.classes(l))},
            "pixels_scored": scored,
            "pixels_partial": labelled - scored,
        })
    hs, ws = (np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])) if sizes else (np.zeros(1), np.zeros(1))
    return {
        "images": len(sizes),
        "pixels": total,
        "ignored_share": (total - labelled) / total if total else 0.0,
        "labelled_to_level_share": {key: (v / labelled if labelled else 0.0) for key, v in depth_px.items()},
        "nodes": {name: {"pixels": int(node_px[:, i].sum()), "images": int((node_px[:, i] > 0).sum())}
                  for i, name in enumerate(taxonomy.node_names)},
        "levels": levels,
        "image_size": {"height": [int(hs.min()), float(np.median(hs)), int(hs.max())],
                       "width": [int(ws.min()), float(np.median(ws)), int(ws.max())]},
    }


def dataset_stats(dataset: SegDataset | Sequence, taxonomy: Taxonomy, max_images: int | None = None) -> dict[str, Any]:
    """Statistics of a split (a :class:`SegDataset` or any source of ``(image, mask[, id])``).

    Returns the summary of all its samples, with ``"sources"`` holding one summary per source of a
    :class:`Mixture`. ``max_images`` (per source) caps the masks read, for a quick look.
    """
    source = dataset.source if isinstance(dataset, SegDataset) else dataset
    parts = list(zip(source.names, source.parts)) if isinstance(source, Mixture) else [("data", source)]
    per_source, all_counts, all_sizes = {}, [], []
    for name, part in parts:
        counts, sizes = _counts(part, taxonomy, max_images)
        per_source[name] = _summary(counts, sizes, taxonomy)
        all_counts.append(counts)
        all_sizes += sizes
    out = _summary(np.concatenate(all_counts), all_sizes, taxonomy)
    if isinstance(source, Mixture):
        out["sources"] = per_source
    return out


def median_frequency_weights(stats: dict[str, Any]) -> list[list[float]]:
    """Per level, per class: ``median(freq) / freq_c`` over the classes present (absent classes weigh 1)."""
    weights = []
    for lv in stats["levels"]:
        freq = {n: c["pixels"] / c["image_pixels"] for n, c in lv["classes"].items() if c["pixels"] > 0}
        median = float(np.median(list(freq.values()))) if freq else 1.0
        weights.append([round(median / freq[n], 6) if n in freq else 1.0 for n in lv["classes"]])
    return weights


def _pct(x: float) -> str:
    return f"{100 * x:5.1f} %"


def format_stats(stats: dict[str, Any], title: str = "") -> str:
    """A plain-text report of :func:`dataset_stats` (all sources, then each source)."""
    lines = [title] if title else []
    size = stats["image_size"]
    lines.append(f"{stats['images']} images, {stats['pixels']} pixels, ignored {_pct(stats['ignored_share'])}; "
                 f"height min/median/max {size['height'][0]}/{size['height'][1]:.0f}/{size['height'][2]}, "
                 f"width {size['width'][0]}/{size['width'][1]:.0f}/{size['width'][2]}")
    lines.append("labelled down to: " + ", ".join(f"{k} {_pct(v)}" for k, v in stats["labelled_to_level_share"].items()))
    weights = median_frequency_weights(stats)
    for lv, row in zip(stats["levels"], weights):
        lines.append(f"L{lv['level']}: {lv['pixels_scored']} pixels scored, {lv['pixels_partial']} labelled only above")
        width = max(len(n) for n in lv["classes"])
        scored = max(lv["pixels_scored"], 1)
        for (name, c), w in zip(lv["classes"].items(), row):
            lines.append(f"  {name:<{width}} {c['pixels']:>12} px {_pct(c['pixels'] / scored)} {c['images']:>7} images  "
                         f"weight {w:.3f}")
    for name, sub in stats.get("sources", {}).items():
        lines += ["", format_stats(sub, f"source {name}:")]
    return "\n".join(lines)


def write_json(splits: dict[str, dict[str, Any]], path: Path) -> None:
    """The statistics and class weights of each counted split as JSON: one split's at the top level; several
    under ``"splits"``, each with its own weights, and at the top the train split's (what training would use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weighted = {name: {**stats, "class_weights": median_frequency_weights(stats)} for name, stats in splits.items()}
    if len(weighted) == 1:
        payload = next(iter(weighted.values()))
    else:
        payload = {"splits": weighted, "class_weights": weighted.get("train", next(iter(weighted.values())))["class_weights"]}
    path.write_text(json.dumps(payload, indent=2))


def plot_stats(stats: dict[str, Any], path: Path) -> bool:
    """A bar chart PNG of each level's pixels per class; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no matplotlib: %s not drawn (pip install matplotlib)", path)
        return False
    levels = stats["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.2), squeeze=False)
    for ax, lv in zip(axes[0], levels):
        names = list(lv["classes"])
        ax.bar(names, [lv["classes"][n]["pixels"] for n in names], color="#4c72b0")
        ax.set_title(f"L{lv['level']}: pixels per class")
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
