"""From a model and a photo to what the page shows: overlays and label maps per level, the back-off node map, the
pixels said as a parent, legends from the Taxonomy, the calibrated ladder of promises, and timings.

The prediction is ``model.predict(photo, backoff=threshold)``, the predictor ``hiertree-predict`` runs; this module
only draws it. Images travel as data URLs: overlays as JPEG (to look at), label maps as lossless PNG (to use: class
indices per level, node ids for the node map, as ``hiertree-predict`` writes them).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiertree.app.upload import Photo
from hiertree.tree.colors import colorize, overlay

__all__ = ["Demo", "load_demo", "promises", "parse_threshold", "render", "taxonomy_legend", "DEFAULT_THRESHOLD"]

log = logging.getLogger(__name__)

#: The back-off threshold of a model without a calibration (a threshold, no promise).
DEFAULT_THRESHOLD = 0.5


@dataclass
class Demo:
    """What the page serves: the model (a :class:`~hiertree.models.HierSegModel`), its name, the longest side a
    photo keeps (larger ones are shrunk), and its back-off promises (:func:`promises`). Predictions take turns."""

    model: Any
    name: str
    max_side: int = 1024
    backoff: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def taxonomy(self) -> Any:
        return self.model.taxonomy


def load_demo(checkpoint: str | Path, device: str = "cpu", max_side: int = 1024) -> Demo:
    """The page's model: a shipped model's name, a checkpoint, run or saved folder, or a Hub id, loaded with
    ``HierSegModel.from_pretrained`` (a CheckpointError names what is wrong with it)."""
    from hiertree.models import HierSegModel

    model = HierSegModel.from_pretrained(checkpoint, map_location=device)
    return Demo(model, Path(str(checkpoint)).name or str(checkpoint), max_side, promises(model))


def promises(model: Any) -> dict[str, Any]:
    """The back-off control's choices: the ladder of promises ``eval.py --calibrate-backoff`` stored with the
    checkpoint (each a promise P, its threshold and its held-out scores), the calibrated threshold as the default;
    without a usable calibration, a threshold alone and why."""
    from hiertree.checkpoint import CheckpointError, calibrated_threshold, load_backoff

    ck = getattr(model, "checkpoint_dir", None)
    calibration = load_backoff(ck) if ck is not None else None
    if calibration is None:
        return {"calibrated": False, "threshold": DEFAULT_THRESHOLD, "ladder": [],
                "why": "this checkpoint has no calibrated back-off (backoff.json): the control is a plain threshold, "
                       "no promise; eval.py --calibrate-backoff 0.9 makes one"}
    try:
        calibrated_threshold(ck, required=True)  # the weights and test-time augmentation it was calibrated for
    except CheckpointError as err:
        return {"calibrated": False, "threshold": DEFAULT_THRESHOLD, "ladder": [], "why": str(err)}
    held = calibration.get("held_out", {})
    ladder = [{"target": r["target"], "threshold": r.get("threshold"),
               "accuracy": r.get("held_out_mean_image_accuracy"), "leaf_share": r.get("held_out_leaf_share")}
              for r in calibration.get("ladder", [])]
    if not any(r["target"] == calibration["target"] for r in ladder):
        ladder.append({"target": calibration["target"], "threshold": calibration["threshold"],
                       "accuracy": held.get("mean_image_accuracy"), "leaf_share": held.get("leaf_share")})
        ladder.sort(key=lambda r: r["target"])
    return {"calibrated": True, "threshold": calibration["threshold"], "target": calibration["target"],
            "delta": calibration.get("delta"), "scope": calibration.get("scope"),
            "promise": calibration.get("promise", ""), "largest_target": calibration.get("largest_target"),
            "ladder": ladder}


def parse_threshold(text: str | None, demo: Demo) -> float:
    """The back-off threshold a request asks for: a number in [0, 1], or ``auto``/nothing for the default (the
    calibrated one where there is one). A ValueError says what to send instead."""
    if text is None or text.strip() in ("", "auto"):
        return float(demo.backoff.get("threshold", DEFAULT_THRESHOLD))
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"threshold {text!r} is not a number in [0, 1]; send one (0: every pixel at its leaf, 1: "
                         "every pixel at its depth-1 node) or 'auto' for the calibrated one")
    return value


def _hex(color: Any) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in color))


def taxonomy_legend(taxonomy: Any) -> dict[str, Any]:
    """Names and colours per level and per node (inner nodes too: where back-off stops), as the Taxonomy has them."""
    levels = [{"level": l, "classes": [{"id": i, "name": n, "color": _hex(c)}
                                       for i, (n, c) in enumerate(zip(taxonomy.classes(l), taxonomy.colors(l)))]}
              for l in range(taxonomy.num_levels)]
    colors = taxonomy.node_colors()
    nodes = [{"id": i, "name": n, "color": _hex(colors[i]), "depth": taxonomy.node_depth(n),
              "leaf": i < taxonomy.num_leaves, "level": taxonomy.node_level(n)} for i, n in _tree_order(taxonomy)]
    return {"name": taxonomy.name, "levels": levels, "nodes": nodes}


def _tree_order(taxonomy: Any) -> list[tuple[int, str]]:
    """(node id, name) depth first, each node's children by id: a legend that reads as the tree."""
    children: dict[str | None, list[tuple[int, str]]] = {}
    for i, name in enumerate(taxonomy.node_names):
        parents = taxonomy.ancestors(name)
        children.setdefault(parents[0] if parents else None, []).append((i, name))
    order: list[tuple[int, str]] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        i, name = stack.pop()
        order.append((i, name))
        stack += reversed(children.get(name, []))
    return order


def _data_url(rgb_or_labels: np.ndarray, kind: str) -> str:
    """``data:image/...;base64,...`` of an RGB image (``jpeg``) or a label map (``png``, lossless, 8 or 16 bits)."""
    import cv2

    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb_or_labels[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 88])
    else:
        labels = rgb_or_labels if rgb_or_labels.dtype in (np.uint8, np.uint16) else rgb_or_labels.astype(np.uint16)
        ok, buf = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb_or_labels.shape} {kind} image")
    return f"data:image/{kind};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _shares(labels: np.ndarray, count: int) -> dict[str, float]:
    """Share of the pixels per class id present (ids as strings, JSON's keys)."""
    hist = np.bincount(labels.ravel(), minlength=count)[:count] / max(labels.size, 1)
    return {str(i): round(float(s), 5) for i, s in enumerate(hist) if s > 0}


def _map_view(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> dict[str, Any]:
    return {"overlay": _data_url(overlay(rgb, colorize(labels, palette)), "jpeg"), "labels": _data_url(labels, "png"),
            "shares": _shares(labels, len(palette))}


def _parents_view(rgb: np.ndarray, nodes: np.ndarray, taxonomy: Any) -> tuple[str, dict[str, Any]]:
    """The pixels said as a parent in their node's colour over a faded photo, and where the foreground stopped:
    its pixel count, the share still at a leaf, and the share per level of the node it stopped at."""
    inner = nodes >= taxonomy.num_leaves  # leaves have the ids below num_leaves
    faded = (rgb.astype(np.float32) * 0.35 + 255 * 0.65).astype(np.uint8)
    picture = np.where(inner[..., None], colorize(nodes, taxonomy.node_colors()), faded)
    foreground = np.isin(nodes, taxonomy.foreground_nodes())
    counts = np.bincount(nodes[foreground].ravel(), minlength=taxonomy.num_nodes)
    total = int(counts.sum())
    by_level: dict[str, float] = {}
    for node, n in enumerate(counts):
        if n:
            key = f"L{taxonomy.node_level(taxonomy.node_name(node))}"
            by_level[key] = by_level.get(key, 0.0) + float(n) / total
    stats = {"pixels": total, "leaf_share": float(counts[:taxonomy.num_leaves].sum()) / total if total else None,
             "level_shares": {k: round(v, 5) for k, v in sorted(by_level.items())},
             "parent_pixels": int(inner.sum())}
    return _data_url(picture, "jpeg"), stats


def render(demo: Demo, photo: Photo, threshold: float, name: str = "upload") -> dict[str, Any]:
    """One prediction as the page draws it (JSON-ready): per level an overlay, a label map and the share per class;
    the back-off node map at ``threshold`` and the pixels said as a parent; notes and timings in milliseconds."""
    start = time.perf_counter()
    with demo.lock:
        pred = demo.model.predict(photo.rgb, backoff=threshold)
    predicted = time.perf_counter()
    tax, rgb = demo.taxonomy, photo.rgb
    levels = [{"level": l, **_map_view(rgb, lab, tax.colors(l))} for l, lab in enumerate(pred["levels"])]
    nodes = _map_view(rgb, pred["nodes"], tax.node_colors())
    nodes["parents"], nodes["foreground"] = _parents_view(rgb, pred["nodes"], tax)
    done = time.perf_counter()
    h, w = rgb.shape[:2]
    log.info("%s: %dx%d, threshold %.2f: predicted in %.0f ms, drawn in %.0f ms", name, w, h, threshold,
             1000 * (predicted - start), 1000 * (done - predicted))
    return {"image": {"name": name, "width": w, "height": h, "original_width": photo.original_size[0],
                      "original_height": photo.original_size[1]},
            "notes": list(photo.notes), "threshold": threshold, "levels": levels, "nodes": nodes,
            "timings_ms": {"predict": round(1000 * (predicted - start), 1), "draw": round(1000 * (done - predicted), 1)}}
