"""Predict label maps for plain images of any size, and the ``hiertree-predict`` command.

:func:`predict_images` takes RGB (or grayscale / RGBA) uint8 arrays of any size, batches them by
padding, and returns tree-consistent per-level label maps at each image's original size. Images
whose longest side exceeds ``max_side`` are shrunk for the network only; their logits are upsampled
back to the original size (bilinear, a strip of rows at a time so a 4000×3000 photo does not need
gigabytes) before decoding, so labels always match the input pixel grid.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["predict_images", "to_rgb", "colorize", "overlay", "read_image", "find_images", "IGNORE_COLOR", "main"]

IGNORE_COLOR = (128, 128, 128)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_STRIP_PIXELS = 1 << 20  # decode about this many output pixels at a time


def to_rgb(image: np.ndarray, where: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB from HxW / HxWx1 grayscale, HxWx3 RGB or HxWx4 RGBA (alpha dropped).

    uint16 images are scaled to 8 bits; other dtypes are refused (convert to uint8 first).
    """
    a = np.asarray(image)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype != np.uint8:
        raise TypeError(f"{where}: expected a uint8 image (values 0..255), got dtype {a.dtype}; convert it with .astype(np.uint8)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{where}: expected HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}; images are channels-last")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{where}: empty image of shape {a.shape}")
    return np.ascontiguousarray(a)


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


def _decode_image(logits: list[torch.Tensor], size: tuple[int, int], taxonomy: Any, flat: bool, probabilities: bool) -> dict[str, Any]:
    """Per-level labels (and probabilities) of one image's logits [C_l, h, w], at ``size``, strip by strip."""
    from hiertree.models.hierseg import decode

    H, W = size
    levels = [np.empty((H, W), _label_dtype(z.shape[0])) for z in logits]
    leaf = np.empty((H, W), _label_dtype(taxonomy.num_leaves))
    probs = [np.empty((z.shape[0], H, W), np.float16) for z in logits] if probabilities else None
    step = max(1, _STRIP_PIXELS // max(W, 1))
    for y0 in range(0, H, step):
        y1 = min(H, y0 + step)
        strip = [_rows_upsampled(z.float(), H, W, y0, y1)[None] for z in logits]
        out = decode(strip, taxonomy, flat=flat, probabilities=probabilities)
        for l, lab in enumerate(out["levels"]):
            levels[l][y0:y1] = lab[0].cpu().numpy()
        leaf[y0:y1] = out["leaf"][0].cpu().numpy()
        if probs is not None:
            for l, p in enumerate(out["probs"]):
                probs[l][:, y0:y1] = p[0].cpu().numpy().astype(np.float16)
    result: dict[str, Any] = {"levels": levels, "leaf": leaf, "size": (H, W)}
    if probs is not None:
        result["probs"] = probs
    return result


@torch.no_grad()
def predict_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    probabilities: bool = False,
    max_side: int | None = None,
) -> list[dict[str, Any]]:
    """Tree-consistent label maps for each image, at its original size.

    Returns one dict per image, in input order: ``"levels"`` (per-level class-index maps, numpy HxW,
    uint8 up to 256 classes), ``"leaf"`` (leaf-id map), ``"size"`` ``(H, W)`` and, with
    ``probabilities=True``, ``"probs"`` (per-level float16 ``[C_l, H, W]``). Images are sorted by
    size and padded with the encoder's mean colour (what the model's own padding amounts to), so a
    batch mate changes results only within the receptive field of the padded border. ``max_side``
    shrinks larger images for the network (see the module docstring).
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
            bh = max(net_sizes[i][0] for i in idx)
            bw = max(net_sizes[i][1] for i in idx)
            bh, bw = -(-bh // multiple) * multiple, -(-bw // multiple) * multiple
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
                results[i] = _decode_image(per_image, rgb[i].shape[:2], taxonomy, flat, probabilities)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
    """HxWx3 uint8 colour image of a class-index map; values outside the palette (ignore) get ``ignore_color``."""
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"colorize: palette must be [C, 3] uint8, got shape {palette.shape}")
    table = np.concatenate([palette, np.asarray(ignore_color, np.uint8).reshape(1, 3)])
    safe = np.where((labels >= 0) & (labels < len(palette)), labels, len(palette)).astype(np.int64)
    return table[safe]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an image: ``(1 - alpha) * image + alpha * color`` as uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    image = to_rgb(image, "overlay image")
    color = np.asarray(color)
    if color.shape != image.shape:
        raise ValueError(f"overlay: colour mask has shape {color.shape} but the image has {image.shape}; they must match")
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- files and the command
class PredictError(RuntimeError):
    """Input paths or images cannot be used; the message names the path and the fix."""


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file (EXIF orientation applied; grayscale and alpha handled)."""
    import cv2

    path = Path(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if bgr is None:
        raise PredictError(f"cannot read image {str(path)!r}: missing, empty or not an image format OpenCV decodes")
    return np.ascontiguousarray(bgr[..., ::-1])


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in the given folders."""
    import cv2

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            if not cv2.haveImageReader(str(p)):
                raise PredictError(f"cannot read image {str(p)!r}: not an image format OpenCV decodes")
            found.append(p)
        else:
            raise PredictError(f"input {str(p)!r} does not exist; give image files or folders of images")
    if not found:
        raise PredictError(f"no images found in {[str(i) for i in inputs]} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def _resolve_device(spec: str) -> torch.device:
    from hiertree.engine import TrainingError, resolve_device

    try:
        return resolve_device(spec, flag="--device")
    except TrainingError as err:
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
    if "probs" in pred:
        arrays = {f"L{l}": p for l, p in enumerate(pred["probs"])}
        arrays.update({f"classes_L{l}": np.array(taxonomy.classes(l)) for l in range(len(pred["probs"]))})
        np.savez_compressed(out_dir / f"{stem}_probs.npz", **arrays)
        written.append(out_dir / f"{stem}_probs.npz")
    return written


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
    args = parser.parse_args(argv)
    from hiertree.checkpoint import CheckpointError, load_model

    try:
        if args.batch_size < 1:
            raise PredictError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.max_side < 0 or 0 < args.max_side < 8:
            raise PredictError(f"--max-side must be 0 (never shrink) or at least 8, got {args.max_side}")
        paths = find_images(args.inputs)
        device = _resolve_device(args.device)
        model, ck = load_model(args.checkpoint, map_location=device, channels_last=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
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
            preds = predict_images(model, images, device, args.batch_size, args.probabilities, args.max_side or None)
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
