"""Human-readable evaluation reports: a markdown table, per-class IoU bars, confusion matrices, and
the worst/best images of a split.

matplotlib is an optional extra (``pip install hiertree[report]``); it is imported only when a
figure is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hiertree.tree.colors import colorize
from hiertree.inference.predictor import predict_images
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["write_report", "collect_samples", "image_score", "TILE", "PAD", "LABEL_W", "HEADER_H", "grid_size"]

# worst_best.png layout, in pixels: a label column, a header row, square tiles separated by PAD
TILE, PAD, LABEL_W, HEADER_H, DPI = 128, 4, 132, 24, 100


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "hiertree.evaluation.report draws figures with matplotlib, which is not installed; "
            "install it with `pip install hiertree[report]` (or `pip install matplotlib`)"
        ) from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4f}"


def _split(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if "tree" in result:
        return result["tree"], result.get("raw")
    if "levels" in result:
        return result, None
    raise ValueError("write_report: result must be evaluate()'s {'tree': ..., 'raw': ...} or one metrics dict with 'levels'")


def _check_levels(metrics: dict[str, Any], taxonomy: Taxonomy) -> None:
    got = [lv["classes"] for lv in metrics["levels"]]
    want = [taxonomy.classes(l) for l in range(taxonomy.num_levels)]
    if got != want:
        raise ValueError(
            f"write_report: the result's classes {[len(c) for c in got]} per level do not match taxonomy "
            f"{taxonomy.name!r} ({[len(c) for c in want]}); pass the taxonomy the model was evaluated with"
        )


def _miou_note(excluded: Sequence[str]) -> str:
    """What the headline mIoU leaves out: the taxonomy's ``exclude_from_miou`` classes."""
    if not excluded:
        return "mIoU averages every class (the taxonomy excludes none), as does mIoU with bg. "
    return f"mIoU leaves out {', '.join(f'`{n}`' for n in excluded)}, mIoU with bg keeps every class. "


def _markdown(
    result: dict[str, Any], tree: dict[str, Any], raw: dict[str, Any] | None, figures: list[str], excluded: Sequence[str]
) -> str:
    lines = ["# Evaluation report", ""]
    for key, label in (("checkpoint", "checkpoint"), ("split", "split"), ("images", "images"), ("device", "device")):
        if key in result:
            lines.append(f"- {label}: `{result[key]}`")
    if result.get("hflip") or list(result.get("scales", [1.0])) != [1.0]:
        lines.append(f"- test-time augmentation: hflip={result.get('hflip')}, scales={result.get('scales')}")
    lines.append(f"- pixels scored: {tree['pixels']}")
    if raw is not None:
        lines.append(f"- raw per-head argmax agrees with the tree on {_fmt(raw['consistency'])} of the pixels")
    lines += [
        "",
        "## Per-level scores",
        "",
        "Tree-consistent predictions; " + _miou_note(excluded) + "Raw mIoU scores each head's own argmax.",
        "",
        "| level | classes | mIoU | mIoU with bg | pixel acc | raw mIoU |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for l, lv in enumerate(tree["levels"]):
        raw_miou = _fmt(raw["levels"][l]["mIoU"]) if raw is not None else "n/a"
        lines.append(
            f"| L{lv['level']} | {len(lv['classes'])} | {_fmt(lv['mIoU'])} | {_fmt(lv['mIoU_with_background'])} "
            f"| {_fmt(lv['pixel_accuracy'])} | {raw_miou} |"
        )
    lines += _hierarchy_lines(tree.get("hierarchy"), result.get("backoff"))
    lines += ["", "## Per-class IoU", "", "`n/a`: the class is in neither the truth nor the prediction.", ""]
    for lv in tree["levels"]:
        lines += [f"### L{lv['level']}", "", "| class | IoU |", "| --- | --- |"]
        lines += [f"| {name} | {_fmt(lv['iou'][name])} |" for name in lv["classes"]]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
        lines.append("")
    return "\n".join(lines)


def _hierarchy_lines(hier: dict[str, Any] | None, curve: list[dict[str, Any]] | None) -> list[str]:
    """How bad the mistakes are (mistake severity, hierarchical P/R/F1) and, when scored, the back-off curve."""
    if not hier:
        return []
    hist = ", ".join(f"{k} level(s): {v}" for k, v in hier.get("severity_histogram", {}).items())
    lines = ["", "## How bad the mistakes are", "",
             f"- mistake severity: {hier['mistake_severity']:.3f} levels wrong per wrong leaf ({hist})",
             f"- hierarchical precision / recall / F1 over ancestor sets: {_fmt(hier['hP'])} / {_fmt(hier['hR'])} / "
             f"{_fmt(hier['hF1'])}"]
    if curve:
        lines += ["", "Back-off predictions (climb to the first ancestor at least *threshold* sure): see "
                  "`backoff_curve.png`.", "", "| threshold | accuracy | specificity | still at a leaf |",
                  "| --- | --- | --- | --- |"]
        shown = curve if len(curve) <= 11 else curve[::10]
        lines += [f"| {p['threshold']:.2f} | {_fmt(p['accuracy'])} | {_fmt(p['specificity'])} | {_fmt(p['leaf_coverage'])} |"
                  for p in shown]
    return lines


def _backoff_curve(curve: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot([p["specificity"] for p in curve], [p["accuracy"] for p in curve], marker=".", color="#4c72b0")
    ax.set_xlabel("specificity (information gain of right nodes, Deng et al.)")
    ax.set_ylabel("accuracy (truth or an ancestor)")
    ax.set_title("back-off: accuracy vs specificity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def backoff_ladder_figure(rows: list[dict[str, Any]], path: Path, scope: str = "foreground") -> None:
    """The promises a user picks from: per promised accuracy P, the held-out accuracy and the share of the scope's
    pixels still at a leaf (the detail the promise costs)."""
    plt = _pyplot()
    made = [r for r in rows if r.get("threshold") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    targets = [r["target"] for r in made]
    ax.plot(targets, [r["held_out_leaf_share"] for r in made], marker="o", color="#4c72b0", label="still at a leaf")
    ax.plot(targets, [r["held_out_mean_image_accuracy"] for r in made], marker="s", color="#dd8452",
            label="node accuracy (held out)")
    ax.plot(targets, targets, ls=":", color="grey", label="the promise")
    for r in made:
        ax.annotate(f"θ {r['threshold']:.2f}", (r["target"], r["held_out_leaf_share"]), fontsize=7,
                    textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xlabel("promised mean image node accuracy P")
    ax.set_ylabel(f"share of {scope} pixels")
    ax.set_title("back-off: the promise against the detail kept")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _iou_bars(tree: dict[str, Any], taxonomy: Taxonomy, path: Path) -> None:
    plt = _pyplot()
    sizes = [len(lv["classes"]) for lv in tree["levels"]]
    width = min(max(6.0, 0.5 * sum(sizes) + 1.2 * len(sizes)), 30.0)
    fig, axes = plt.subplots(1, len(sizes), figsize=(width, 3.6), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [s + 1 for s in sizes]})
    for ax, lv in zip(axes[0], tree["levels"]):
        l = lv["level"]
        values = [lv["iou"][c] for c in lv["classes"]]
        heights = [0.0 if v is None else v for v in values]
        colors = taxonomy.colors(l) / 255.0
        bars = ax.bar(range(len(values)), heights, color=colors, edgecolor="black", linewidth=0.6)
        for bar, v in zip(bars, values):
            text = "n/a" if v is None else f"{v:.2f}"
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, text, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(values)), lv["classes"], rotation=40, ha="right", fontsize=8)
        ax.set_title(f"L{l}  (mIoU {_fmt(lv['mIoU'])})", fontsize=9)
        ax.set_ylim(0, 1.1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("IoU")
    fig.suptitle("Per-class IoU by level (tree-consistent predictions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _confusion(lv: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    conf = np.asarray(lv["confusion"], dtype=np.float64)
    rows = conf.sum(1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    names = lv["classes"]
    c = len(names)
    side = min(max(3.5, 0.55 * c + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if rows[i, 0] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.6 else "black")
    ax.set_title(f"L{lv['level']} confusion (rows sum to 1)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def grid_size(rows: int, levels: int) -> tuple[int, int]:
    """(width, height) in pixels of ``worst_best.png``: columns are image, then truth and prediction per level."""
    cols = 1 + 2 * levels
    return LABEL_W + cols * (TILE + PAD) + PAD, HEADER_H + rows * (TILE + PAD) + PAD


def _fit(tile: np.ndarray) -> np.ndarray:
    """Letterbox an HxWx3 image into TILE x TILE (nearest, white borders) so label colours stay exact."""
    import cv2

    h, w = tile.shape[:2]
    s = TILE / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(tile, (nw, nh), interpolation=cv2.INTER_NEAREST)
    out = np.full((TILE, TILE, 3), 255, np.uint8)
    y, x = (TILE - nh) // 2, (TILE - nw) // 2
    out[y : y + nh, x : x + nw] = small
    return out


def _order(samples: Sequence[dict[str, Any]], k: int) -> list[tuple[str, dict[str, Any]]]:
    ordered = sorted(samples, key=lambda s: float(s["score"]))
    n_worst = min(k, math.ceil(len(ordered) / 2))
    worst = [("worst", s) for s in ordered[:n_worst]]
    best = [("best", s) for s in ordered[n_worst:][::-1][:k]]
    return worst + best


def _worst_best(samples: Sequence[dict[str, Any]], taxonomy: Taxonomy, path: Path, k: int) -> None:
    plt = _pyplot()
    rows = _order(samples, k)
    L = taxonomy.num_levels
    width, height = grid_size(len(rows), L)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    headers = ["image"] + [f"{kind} L{l}" for l in range(L) for kind in ("truth", "pred")]

    def box(px: int, py: int, pw: int, ph: int):
        return [px / width, 1 - (py + ph) / height, pw / width, ph / height]

    for c, name in enumerate(headers):
        fig.text((LABEL_W + c * (TILE + PAD) + PAD + TILE / 2) / width, 1 - (HEADER_H / 2) / height, name,
                 ha="center", va="center", fontsize=9, weight="bold")
    for r, (kind, s) in enumerate(rows):
        y = HEADER_H + r * (TILE + PAD) + PAD
        fig.text(6 / width, 1 - (y + TILE / 2) / height, f"{kind}\nid {str(s['id'])[:14]}\nscore {float(s['score']):.3f}",
                 ha="left", va="center", fontsize=8)
        image = np.asarray(s["image"])
        target = torch.as_tensor(np.asarray(s["target"]).astype(np.int64))
        truths = [t.numpy() for t in taxonomy.to_levels(target)]
        tiles = [image]
        for l in range(L):
            pal = taxonomy.colors(l)
            tiles += [colorize(truths[l], pal), colorize(np.asarray(s["levels"][l]), pal)]
        for c, tile in enumerate(tiles):
            ax = fig.add_axes(box(LABEL_W + c * (TILE + PAD) + PAD, y, TILE, TILE))
            ax.imshow(_fit(tile), interpolation="nearest")
            ax.set_axis_off()
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)


def write_report(
    result: dict[str, Any],
    taxonomy: Taxonomy,
    out_dir: str | Path,
    samples: Sequence[dict[str, Any]] | None = None,
    k: int = 4,
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; returns the markdown's path.

    ``result`` is :func:`hiertree.evaluation.evaluate.evaluate`'s output (or the JSON ``hiertree-eval`` writes).
    Figures: ``iou_by_level.png``, ``confusion_L{l}.png`` and, with ``samples`` (see
    :func:`collect_samples`), ``worst_best.png``: up to ``k`` lowest-score rows, then up to ``k``
    highest; columns image | truth L0 | pred L0 | truth L1 | ... (ignore pixels grey).
    """
    tree, raw = _split(result)
    _check_levels(tree, taxonomy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = ["iou_by_level.png"]
    _iou_bars(tree, taxonomy, out / "iou_by_level.png")
    for lv in tree["levels"]:
        name = f"confusion_L{lv['level']}.png"
        _confusion(lv, out / name)
        figures.append(name)
    if samples:
        _worst_best(samples, taxonomy, out / "worst_best.png", k)
        figures.append("worst_best.png")
    if result.get("backoff") and len(result["backoff"]) > 1:
        _backoff_curve(result["backoff"], out / "backoff_curve.png")
        figures.append("backoff_curve.png")
    promise = result.get("backoff_promise") or {}
    if any(r.get("threshold") is not None for r in promise.get("ladder", [])):
        backoff_ladder_figure(promise["ladder"], out / "backoff_ladder.png", promise.get("scope", "all"))
        figures.append("backoff_ladder.png")
    path = out / "report.md"
    path.write_text(_markdown(result, tree, raw, figures, taxonomy.exclude_from_miou))
    return path


def image_score(target: np.ndarray, leaf_pred: np.ndarray, taxonomy: Taxonomy) -> float:
    """Per-image leaf-level mIoU: mean IoU over the leaves present in the truth or the prediction
    (background included), ignore pixels left out; ``nan`` when the image has no labelled pixel."""
    target = np.asarray(target).astype(np.int64)
    pred = np.asarray(leaf_pred).astype(np.int64)
    valid = target != taxonomy.ignore_index
    if not valid.any():
        return math.nan
    n = taxonomy.num_leaves
    conf = np.bincount(target[valid] * n + pred[valid], minlength=n * n).reshape(n, n)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


@torch.no_grad()
def collect_samples(
    model: torch.nn.Module,
    dataset: Any,
    taxonomy: Taxonomy,
    device: str | torch.device = "cpu",
    k: int = 4,
    batch_size: int = 8,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Score every image of ``dataset`` with :func:`image_score` and return the ``k`` worst and ``k`` best.

    ``dataset`` yields ``{"image": uint8 3xHxW, "mask": leaf ids HxW, "id"}`` (a :class:`SegDataset`).
    Each returned dict holds ``id``, ``image`` (HxWx3 uint8), ``target``, ``levels`` (per-level
    predictions) and ``score``; worst first, then best (highest first), no image twice.
    Only the current candidates are kept in memory, so large splits are fine.
    """
    if k < 1:
        raise ValueError(f"collect_samples: k must be at least 1, got {k}")
    worst: list[tuple[float, int, dict]] = []  # max-heap via negated score
    best: list[tuple[float, int, dict]] = []  # min-heap
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        images = [np.asarray(it["image"]).transpose(1, 2, 0) for it in items]
        preds = predict_images(model, images, device, batch_size=batch_size)
        for j, (it, image, pred) in enumerate(zip(items, images, preds)):
            target = np.asarray(it["mask"])
            score = image_score(target, pred["leaf"], taxonomy)
            if math.isnan(score):
                continue
            sample = {"id": str(it.get("id", start + j)), "image": np.ascontiguousarray(image), "target": target,
                      "levels": pred["levels"], "score": score}
            order = start + j
            heapq.heappush(worst, (-score, -order, sample))
            if len(worst) > k:
                heapq.heappop(worst)
            heapq.heappush(best, (score, order, sample))
            if len(best) > k:
                heapq.heappop(best)
    worst_list = [s for _, _, s in sorted(worst, key=lambda t: (-t[0], -t[1]))]
    taken = {id(s) for s in worst_list}
    best_list = [s for _, _, s in sorted(best, key=lambda t: (-t[0], t[1])) if id(s) not in taken]
    return worst_list + best_list
