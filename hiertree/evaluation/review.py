"""Bad-sample review: rank a split's images by how much a trained model disagrees with their labels and with itself.

Three scores per image, each "higher is more suspect": ``loss`` (the training loss's cross-entropy at the deepest
level, mean over labelled pixels, a label at an inner node counting as its summed probability as in training),
``heads`` (the share of pixels whose per-level raw argmaxes are not tree-consistent: a finer head's class mapped up
is not the coarser head's) and ``flip`` (the share of pixels whose deepest-level label changes when the image is
mirrored; the tree has no left/right classes, so nothing is swapped). Each score gives a rank (1 = worst); the
combined rank orders the images by the mean of the three. :func:`write_review` writes ``review.csv``,
``exclude.txt`` (the worst ``top`` ids, for the user to edit and feed back as ``data.exclude``) and a contact sheet.
"""

from __future__ import annotations

import csv
import html
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from hiertree.data.errors import DataError
from hiertree.data.sources import Mixture
from hiertree.inference.decoding import decode
from hiertree.inference.predictor import log_probs
from hiertree.inference.writers import imwrite
from hiertree.losses import HierarchicalLoss
from hiertree.tree.colors import colorize
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["SCORES", "deepest_loss", "head_disagreement", "image_scores", "predict_levels", "rank", "review",
           "write_review"]

log = logging.getLogger(__name__)

#: the scores of one image, in the order of review.csv's columns
SCORES = ("loss", "heads", "flip")
_THUMB = 160  # the longer side of a contact-sheet thumbnail, pixels


def deepest_loss(taxonomy: Taxonomy) -> HierarchicalLoss:
    """The training loss reduced to the deepest level's cross-entropy (no consistency, no other level)."""
    weights = [0.0] * (taxonomy.num_levels - 1) + [1.0]
    return HierarchicalLoss(taxonomy, level_weights=weights, consistency_weight=0.0)


def head_disagreement(raw: Sequence[torch.Tensor], taxonomy: Taxonomy) -> float:
    """Share of pixels where some head's raw argmax, mapped to the coarser level, is not that level's raw argmax."""
    bad = torch.zeros_like(raw[0], dtype=torch.bool)
    for level in range(taxonomy.num_levels - 1):
        up = taxonomy.parent_index(level).to(raw[level + 1].device)[raw[level + 1].long()]
        bad |= up != raw[level].long()
    return float(bad.float().mean())


@torch.no_grad()
def image_scores(runner: Any, image: torch.Tensor, mask: torch.Tensor, loss_fn: HierarchicalLoss,
                 taxonomy: Taxonomy) -> dict[str, float]:
    """``{"loss", "heads", "flip"}`` of one image (``image`` [1, 3, H, W] 0..255, ``mask`` [1, H, W] node ids)."""
    flat = bool(getattr(runner, "flat", False))
    deepest = taxonomy.num_levels - 1
    logits = log_probs(runner, image.float())
    _, parts = loss_fn(logits, mask.long(), partial=None)
    out = decode(logits, taxonomy, flat=flat)
    mirrored = [z.flip(-1) for z in log_probs(runner, image.float().flip(-1))]
    flip_leaf = decode(mirrored, taxonomy, flat=flat, raw=False)["levels"][deepest]
    return {"loss": float(parts[f"ce/L{deepest}"]), "heads": head_disagreement(out["raw"], taxonomy),
            "flip": float((flip_leaf != out["levels"][deepest]).float().mean())}


def _source_of(dataset: Any, sid: str, default: str) -> str:
    """The source a sample came from: the ``<source>/`` prefix of a :class:`Mixture`'s ids, else ``default``."""
    return sid.split("/", 1)[0] if isinstance(dataset.source, Mixture) else default


def review(runner: Any, dataset: Any, taxonomy: Taxonomy, indices: Sequence[int] | None = None, source: str = "data",
           progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One row per reviewed sample of ``dataset`` (a :class:`~hiertree.data.SegDataset` with the eval transform):
    ``{"index", "id", "source", "loss", "heads", "flip"}``; a sample that cannot be read is logged and left out.
    ``indices``: which samples (default all); ``progress(done, total)`` is called after each."""
    loss_fn = deepest_loss(taxonomy)
    chosen = list(range(len(dataset))) if indices is None else list(indices)
    rows = []
    for k, i in enumerate(chosen):
        try:
            sample = dataset[i]
        except DataError as err:
            log.warning("review: sample %d left out: %s", i, err)
            continue
        scores = image_scores(runner, sample["image"][None], sample["mask"][None], loss_fn, taxonomy)
        rows.append({"index": i, "id": sample["id"], "source": _source_of(dataset, sample["id"], source), **scores})
        if progress is not None:
            progress(k + 1, len(chosen))
    return rows


def rank(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``rank_<score>`` (1 = the highest score; ties by id) and ``rank`` (by the mean of those ranks,
    then the loss rank), sorted by ``rank``."""
    out = [dict(r) for r in rows]
    for name in SCORES:
        for pos, r in enumerate(sorted(out, key=lambda r: (-r[name], r["id"])), 1):
            r[f"rank_{name}"] = pos
    for r in out:
        r["mean_rank"] = sum(r[f"rank_{n}"] for n in SCORES) / len(SCORES)
    out.sort(key=lambda r: (r["mean_rank"], r["rank_loss"], r["id"]))
    for pos, r in enumerate(out, 1):
        r["rank"] = pos
    return out


@torch.no_grad()
def predict_levels(runner: Any, image: torch.Tensor, taxonomy: Taxonomy) -> list[np.ndarray]:
    """The tree-consistent per-level label maps of one image [1, 3, H, W], as numpy arrays."""
    out = decode(log_probs(runner, image.float()), taxonomy, flat=bool(getattr(runner, "flat", False)), raw=False)
    return [lv[0].cpu().numpy() for lv in out["levels"]]


def _thumb(rgb: np.ndarray, nearest: bool) -> np.ndarray:
    """``rgb`` shrunk so its longer side is at most :data:`_THUMB` (labels by nearest neighbour, never blended)."""
    h, w = rgb.shape[:2]
    s = min(1.0, _THUMB / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _tiles(runner: Any, sample: dict[str, Any], taxonomy: Taxonomy) -> list[tuple[str, np.ndarray]]:
    """``(caption, RGB thumbnail)``: the image, the truth at the deepest level, the prediction per level."""
    image = sample["image"].permute(1, 2, 0).numpy()
    deepest = taxonomy.num_levels - 1
    truth = taxonomy.to_levels(sample["mask"], check=False)[deepest].numpy()
    tiles = [("image", _thumb(image, False)),
             (f"truth L{deepest}", _thumb(colorize(truth, taxonomy.colors(deepest)), True))]
    for level, labels in enumerate(predict_levels(runner, sample["image"][None], taxonomy)):
        tiles.append((f"pred L{level}", _thumb(colorize(labels, taxonomy.colors(level)), True)))
    return tiles


def _write_csv(ranked: Sequence[dict[str, Any]], path: Path) -> None:
    columns = ["rank", "id", "source", *SCORES, *(f"rank_{n}" for n in SCORES), "mean_rank"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in ranked:
            writer.writerow({**r, **{n: f"{r[n]:.6f}" for n in SCORES}, "mean_rank": f"{r['mean_rank']:.2f}"})


def _legend(taxonomy: Taxonomy) -> str:
    """The colours of every level's classes, as HTML."""
    parts = []
    for level in range(taxonomy.num_levels):
        swatches = " ".join(
            f'<span style="background:rgb{tuple(int(v) for v in c)};padding:0 .6em">&nbsp;</span> {html.escape(n)}'
            for n, c in zip(taxonomy.classes(level), taxonomy.colors(level)))
        parts.append(f"<p>L{level}: {swatches}</p>")
    return "\n".join(parts)


def _sheet_row(r: dict[str, Any], tiles: list[tuple[str, str]]) -> str:
    cells = "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}'
                    "</figcaption></figure>" for cap, src in tiles)
    scores = ", ".join(f"{n} {r[n]:.3f} (#{r[f'rank_{n}']})" for n in SCORES)
    return (f'<section><h2>#{r["rank"]} {html.escape(str(r["id"]))} <small>{html.escape(str(r["source"]))}: '
            f"{scores}</small></h2>{cells}</section>")


def write_review(runner: Any, dataset: Any, taxonomy: Taxonomy, ranked: Sequence[dict[str, Any]], out_dir: str | Path,
                 top: int = 50) -> dict[str, Path]:
    """Write ``review.csv`` (every ranked row), ``exclude.txt`` (the ``top`` worst ids, one per line) and
    ``contact_sheet.html`` with PNG thumbnails under ``thumbs/`` of those ``top``; returns the paths by name."""
    out = Path(out_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    worst = list(ranked[:top])
    paths = {"csv": out / "review.csv", "exclude": out / "exclude.txt", "sheet": out / "contact_sheet.html"}
    _write_csv(ranked, paths["csv"])
    paths["exclude"].write_text("".join(f"{r['id']}\n" for r in worst), encoding="utf-8")
    sections = []
    for r in worst:
        stem = f"{r['rank']:04d}"
        tiles = []
        for k, (caption, rgb) in enumerate(_tiles(runner, dataset[r["index"]], taxonomy)):
            name = f"thumbs/{stem}_{k}.png"
            imwrite(out / name, np.ascontiguousarray(rgb[..., ::-1]))
            tiles.append((caption, name))
        sections.append(_sheet_row(r, tiles))
    style = ("body{font-family:sans-serif}figure{display:inline-block;margin:2px}figcaption{font-size:small}"
             "h2{font-size:medium;margin:.8em 0 .2em}")
    paths["sheet"].write_text(
        f"<!doctype html><meta charset='utf-8'><title>hiertree-review</title><style>{style}</style>"
        f"<h1>The {len(worst)} most suspect of {len(ranked)} samples</h1>{_legend(taxonomy)}"
        + "\n".join(sections), encoding="utf-8")
    return paths
