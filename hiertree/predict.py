"""The ``hiertree-predict`` command: per-level colour masks, overlays and label PNGs for image files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from hiertree.device import DeviceError, resolve_device  # noqa: E402
from hiertree.colors import IGNORE_COLOR, colorize, overlay  # noqa: E402
from hiertree.image_predict import predict_images  # noqa: E402
from hiertree.images import IMAGE_SUFFIXES, ImageError, find_images, read_image, to_rgb  # noqa: E402

__all__ = ["predict_images", "to_rgb", "colorize", "overlay", "read_image", "find_images", "IGNORE_COLOR",
           "IMAGE_SUFFIXES", "PredictError", "main"]

PredictError = ImageError  # the name this command's errors had before images.py owned them


def _resolve_device(spec: str) -> torch.device:
    try:
        return resolve_device(spec, flag="--device")
    except DeviceError as err:
        raise PredictError(str(err)) from None


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return stems


def _imwrite(path: Path, data: np.ndarray) -> Path:
    """``cv2.imwrite`` that raises instead of returning False (unwritable folder, full disk, ...)."""
    import cv2

    if not cv2.imwrite(str(path), data):
        raise PredictError(f"cannot write {str(path)!r}: check that the --out folder is writable and the disk is not full")
    return path


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Any) -> list[Path]:
    """Write one image's colour masks, overlays, raw index PNGs (and probabilities); returns the paths."""
    written = []
    for l, lab in enumerate(pred["levels"]):
        color = colorize(lab, taxonomy.colors(l))
        for name, data in ((f"{stem}_L{l}.png", color), (f"{stem}_L{l}_overlay.jpg", overlay(image, color))):
            written.append(_imwrite(out_dir / name, np.ascontiguousarray(data[..., ::-1])))
        raw = lab.astype(np.uint8 if lab.dtype == np.uint8 else np.uint16)
        written.append(_imwrite(out_dir / f"{stem}_labels_L{l}.png", raw))
    if "nodes" in pred:
        color = colorize(pred["nodes"], taxonomy.node_colors())
        for name, data in ((f"{stem}_nodes.png", color), (f"{stem}_nodes_overlay.jpg", overlay(image, color))):
            written.append(_imwrite(out_dir / name, np.ascontiguousarray(data[..., ::-1])))
        written.append(_imwrite(out_dir / f"{stem}_labels_nodes.png", pred["nodes"].astype(np.uint8 if
                                                                                                   taxonomy.num_nodes <= 256 else np.uint16)))
    if "probs" in pred:
        arrays = {f"L{l}": p for l, p in enumerate(pred["probs"])}
        arrays.update({f"classes_L{l}": np.array(taxonomy.classes(l)) for l in range(len(pred["probs"]))})
        np.savez_compressed(out_dir / f"{stem}_probs.npz", **arrays)
        written.append(out_dir / f"{stem}_probs.npz")
    return written


def write_node_legend(out_dir: Path, taxonomy: Any) -> Path:
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
    return _imwrite(out_dir / "legend_nodes.png", np.ascontiguousarray(canvas[..., ::-1]))


def _backoff_arg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--backoff takes 'auto' or a threshold in [0, 1], got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Predict per-level label maps for images or folders of images with a trained checkpoint.

    An image that cannot be decoded is named in a warning and skipped; the others are written, and the
    command then exits with code 2 and the number of skipped files.
    """
    parser = argparse.ArgumentParser(prog="hiertree-predict", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (uses its best)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS", help="image files and/or folders (not recursive)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-side", type=int, default=2048,
                        help="shrink larger images for the network to this longest side, at least 8 (outputs keep the original size); 0 = never")
    parser.add_argument("--probabilities", action="store_true", help="also write <stem>_probs.npz (per-level float16 [C,H,W])")
    parser.add_argument("--backoff", type=_backoff_arg, metavar="auto|THETA",
                        help="also write node maps (<stem>_nodes.png, legend_nodes.png): each pixel's leaf, or its first "
                             "ancestor at least THETA sure; auto: the threshold eval.py --calibrate-backoff stored")
    args = parser.parse_args(argv)
    from hiertree.checkpoint import CheckpointError
    from hiertree.models import load_model

    try:
        if args.batch_size < 1:
            raise PredictError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.max_side < 0 or 0 < args.max_side < 8:
            raise PredictError(f"--max-side must be 0 (never shrink) or at least 8, got {args.max_side}")
        paths = find_images(args.inputs)
        device = _resolve_device(args.device)
        model, ck = load_model(args.checkpoint, map_location=device, channels_last=True)
        try:
            threshold = model.resolve_backoff(args.backoff)
        except ValueError as err:
            raise PredictError(str(err).replace("`eval.py --checkpoint CKPT", f"`eval.py --checkpoint {args.checkpoint}"))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if threshold is not None:
            write_node_legend(out, ck["taxonomy"])
        stems = _unique_stems(paths)
        skipped = 0
        for start in range(0, len(paths), args.batch_size):
            chunk, images = [], []
            for i in range(start, min(start + args.batch_size, len(paths))):
                try:
                    images.append(read_image(paths[i]))
                    chunk.append(i)
                except PredictError as err:
                    print(f"hiertree-predict: warning: {err}; skipped", file=sys.stderr)
                    skipped += 1
            if not images:
                continue
            preds = predict_images(model, images, device, args.batch_size, args.probabilities, args.max_side or None,
                                   backoff=threshold)
            for i, image, pred in zip(chunk, images, preds):
                write_outputs(out, stems[i], image, pred, ck["taxonomy"])
        if skipped:
            raise PredictError(f"{skipped} of {len(paths)} image(s) could not be read and were skipped (named above); "
                               f"the other {len(paths) - skipped} were written to {out}")
    except (PredictError, CheckpointError, OSError) as err:
        print(f"hiertree-predict: error: {err}", file=sys.stderr)
        return 2
    levels = ck["taxonomy"].num_levels
    print(f"hiertree-predict: {len(paths)} image(s), {levels} level(s) each -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
