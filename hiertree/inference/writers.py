"""Prediction writers: the files ``hiertree-predict --outputs`` and :meth:`Predictor.predict_files` write per image,
one registered writer per kind (:data:`WRITERS`), so a new output format is one function here::

    @WRITERS.register("mykind")
    def _mine(out_dir, stem, image, pred, taxonomy) -> list[Path]: ...
    _mine.files = "<stem>_mine.ext, what it holds"     # shown in hiertree-predict --help

Each writer gets the photo (HxWx3 uint8 RGB), the prediction dict of :func:`~hiertree.inference.predictor.predict_images`
(``levels``, and ``nodes`` / ``probs`` when asked for) and the taxonomy, and returns the paths it wrote. A kind not
asked for does no work (no colouring for labels alone).
"""

from __future__ import annotations

import argparse
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hiertree.registry import Registry
from hiertree.tree.colors import colorize, overlay
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["WRITERS", "DEFAULT_OUTPUTS", "describe_outputs", "parse_outputs", "write_outputs", "write_node_legend", "imwrite",
           "BackgroundWriter",
           "unique_stems"]

#: kind -> ``write(out_dir, stem, image, pred, taxonomy) -> list[Path]`` (its ``files`` attribute says what it writes)
WRITERS: Registry[Callable[..., list[Path]]] = Registry("output kind", "--outputs")
#: What most users want from a folder of photos: labels to use and overlays to look at; colour masks repeat the
#: overlays and probabilities are large, so both are asked for by name.
DEFAULT_OUTPUTS = ("labels", "overlay")


def imwrite(path: Path, data: np.ndarray) -> Path:
    """``cv2.imwrite`` that raises instead of returning False (unwritable folder, full disk, ...)."""
    import cv2

    if not cv2.imwrite(str(path), data):
        raise OSError(f"cannot write {str(path)!r}: check that the --out folder is writable and the disk is not full")
    return path


def _maps(stem: str, pred: dict[str, Any], taxonomy: Taxonomy) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name part, label map, palette)`` of each level, then of the back-off node map if there is one."""
    for level, labels in enumerate(pred["levels"]):
        yield f"L{level}", labels, taxonomy.colors(level)
    if "nodes" in pred:
        yield "nodes", pred["nodes"], taxonomy.node_colors()


def _write_labels(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Taxonomy) -> list[Path]:
    written = []
    for part, labels, _ in _maps(stem, pred, taxonomy):
        raw = labels if labels.dtype in (np.uint8, np.uint16) else labels.astype(np.uint16)
        written.append(imwrite(out_dir / f"{stem}_labels_{part}.png", raw))
    return written


def _bgr(rgb: np.ndarray) -> np.ndarray:
    """What OpenCV's encoders take (one SIMD pass; a reversed numpy view copied is 3x slower)."""
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _write_color(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Taxonomy) -> list[Path]:
    return [imwrite(out_dir / f"{stem}_{part}.png", _bgr(colorize(labels, palette)))
            for part, labels, palette in _maps(stem, pred, taxonomy)]


def _write_overlay(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Taxonomy) -> list[Path]:
    return [imwrite(out_dir / f"{stem}_{part}_overlay.jpg", _bgr(overlay(image, colorize(labels, palette))))
            for part, labels, palette in _maps(stem, pred, taxonomy)]


def _write_probs(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Taxonomy) -> list[Path]:
    if "probs" not in pred:
        return []
    arrays = {f"L{level}": p for level, p in enumerate(pred["probs"])}
    arrays.update({f"classes_L{level}": np.array(taxonomy.classes(level)) for level in range(len(pred["probs"]))})
    np.savez_compressed(out_dir / f"{stem}_probs.npz", **arrays)
    return [out_dir / f"{stem}_probs.npz"]


for _kind, _write, _files in (
        ("labels", _write_labels, "<stem>_labels_L{l}.png, class indices (uint8) to use"),
        ("color", _write_color, "<stem>_L{l}.png, the classes' colours"),
        ("overlay", _write_overlay, "<stem>_L{l}_overlay.jpg, the colours over the photo to look at"),
        ("probs", _write_probs, "<stem>_probs.npz, per-level float16 probabilities [C, H, W]")):
    _write.files = _files  # type: ignore[attr-defined]
    WRITERS.register(_kind)(_write)


def describe_outputs() -> dict[str, str]:
    """kind -> what it writes, for ``--help``."""
    return {kind: getattr(WRITERS.get(kind), "files", "") for kind in WRITERS.names()}


def parse_outputs(text: str) -> tuple[str, ...]:
    """``labels,overlay`` -> ("labels", "overlay"); an unknown item names the valid ones (an argparse type)."""
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in items if t not in WRITERS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"--outputs: unknown item(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                                         f"choose from {', '.join(WRITERS.names())} (comma-separated)")
    return items


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Taxonomy,
                  outputs: Sequence[str] = DEFAULT_OUTPUTS) -> list[Path]:
    """Write one image's files of the kinds in ``outputs`` (names in :data:`WRITERS`); returns the paths."""
    written: list[Path] = []
    for kind in outputs:
        written += WRITERS.get(kind)(Path(out_dir), stem, image, pred, taxonomy)
    return written


def write_node_legend(out_dir: Path, taxonomy: Taxonomy) -> Path:
    """``legend_nodes.png``: each node's colour and name (inner nodes: where the model backed off to them)."""
    import cv2

    colors, names = taxonomy.node_colors(), taxonomy.node_names
    row = 22
    canvas = np.full((row * len(names) + 8, 220, 3), 255, np.uint8)
    for i, (name, c) in enumerate(zip(names, colors)):
        y = 4 + i * row
        canvas[y + 3 : y + row - 3, 6:36] = c
        depth = "  " * (taxonomy.node_depth(name) - 1)
        cv2.putText(canvas, f"{i} {depth}{name}", (44, y + row - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return imwrite(Path(out_dir) / "legend_nodes.png", np.ascontiguousarray(canvas[..., ::-1]))


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems made unique by a ``-2``, ``-3`` ... suffix (two folders may both hold ``img.jpg``)."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return stems


class BackgroundWriter:
    """Writes each image's files in a thread beside compute (OpenCV's encoders release the GIL). One writer keeps
    up (about 20 ms of files per photo against 70-90 ms of network) and a second only contends for the cores (7.3
    vs 6.5 s for 40 photos on 2 cores); at most ``2 * workers`` images wait, so memory stays flat; the first
    failure is raised by :meth:`wait`."""

    def __init__(self, workers: int = 1) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hiertree-write")
        self.pending: list[Future] = []
        self.limit = 2 * workers

    def submit(self, *args: Any) -> None:
        """:func:`write_outputs` with these arguments, in the background."""
        self.pending.append(self.pool.submit(write_outputs, *args))
        while len(self.pending) > self.limit:
            self.pending.pop(0).result()

    def wait(self) -> None:
        """Wait for every pending write; raises the first failure."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)
