"""The ``hiertree-predict`` command: per-level colour masks, overlays and label PNGs for image files."""

from __future__ import annotations

import argparse
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hiertree.cli.common import fail, warn
from hiertree.device import DeviceError, resolve_device
from hiertree.images import ImageError, find_images, read_image
from hiertree.inference.backends import BACKENDS, BackendError, backend_choice, make_runner
from hiertree.inference.decoding import parse_backoff, resolve_backoff
from hiertree.inference.predictor import LARGE, Views, predict_images
from hiertree.logs import add_verbosity, logging_from_args
from hiertree.tree.colors import colorize, overlay

__all__ = ["main", "write_outputs", "write_node_legend", "OUTPUT_KINDS"]

PROG = "hiertree-predict"


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
        raise OSError(f"cannot write {str(path)!r}: check that the --out folder is writable and the disk is not full")
    return path


#: What ``--outputs`` can write per image: one file per level (and per back-off node map) of each kind but probs.
OUTPUT_KINDS = {
    "labels": "<stem>_labels_L{l}.png, class indices (uint8) to use",
    "color": "<stem>_L{l}.png, the classes' colours",
    "overlay": "<stem>_L{l}_overlay.jpg, the colours over the photo to look at",
    "probs": "<stem>_probs.npz, per-level float16 probabilities [C, H, W]",
}
#: What most users want from a folder of photos: labels to use and overlays to look at; colour masks repeat the
#: overlays and probabilities are large, so both are asked for by name.
DEFAULT_OUTPUTS = ("labels", "overlay")


def parse_outputs(text: str) -> tuple[str, ...]:
    """``labels,overlay`` -> ("labels", "overlay"); an unknown item names the valid ones."""
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in items if t not in OUTPUT_KINDS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"--outputs: unknown item(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                                         f"choose from {', '.join(OUTPUT_KINDS)} (comma-separated)")
    return items


def _write_map(out_dir: Path, names: tuple[str, str, str], image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
               outputs: Sequence[str]) -> list[Path]:
    """One label map as its label PNG, colour PNG and overlay JPEG, as far as ``outputs`` asks."""
    written = []
    if "labels" in outputs:
        raw = labels if labels.dtype in (np.uint8, np.uint16) else labels.astype(np.uint16)
        written.append(_imwrite(out_dir / names[0], raw))
    if "color" in outputs or "overlay" in outputs:
        color = colorize(labels, palette)
        if "color" in outputs:
            written.append(_imwrite(out_dir / names[1], np.ascontiguousarray(color[..., ::-1])))
        if "overlay" in outputs:
            written.append(_imwrite(out_dir / names[2], np.ascontiguousarray(overlay(image, color)[..., ::-1])))
    return written


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, pred: dict[str, Any], taxonomy: Any,
                  outputs: Sequence[str] = tuple(OUTPUT_KINDS)) -> list[Path]:
    """Write one image's files of the kinds in ``outputs`` (see :data:`OUTPUT_KINDS`); returns the paths."""
    written = []
    for l, lab in enumerate(pred["levels"]):
        names = (f"{stem}_labels_L{l}.png", f"{stem}_L{l}.png", f"{stem}_L{l}_overlay.jpg")
        written += _write_map(out_dir, names, image, lab, taxonomy.colors(l), outputs)
    if "nodes" in pred:
        names = (f"{stem}_labels_nodes.png", f"{stem}_nodes.png", f"{stem}_nodes_overlay.jpg")
        written += _write_map(out_dir, names, image, pred["nodes"], taxonomy.node_colors(), outputs)
    if "probs" in pred and "probs" in outputs:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, a run folder (uses its best) or a "
                        "shipped model's name")
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS", help="image files and/or folders (not recursive)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="what runs the network: auto = ONNX Runtime on a CPU when installed (faster; the graph is "
                             "exported once and cached beside the checkpoint), else PyTorch")
    parser.add_argument("--outputs", type=parse_outputs, default=DEFAULT_OUTPUTS, metavar="KINDS",
                        help="comma-separated files to write per image and level: " + "; ".join(
                            f"{k}: {v}" for k, v in OUTPUT_KINDS.items()) + f" (default {','.join(DEFAULT_OUTPUTS)}: "
                        "labels to use and overlays to look at)")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: ONNX Runtime static quantization, calibrated once on the first 8 input images and "
                             "cached (faster on a CPU, slightly less accurate: see docs/outputs.md); default none")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images of one size run together, up to this many (default 1 on a CPU, where batching "
                             "only adds memory traffic: 93 vs 70 ms per 500x375 image; 4 on a GPU)")
    parser.add_argument("--max-side", type=int, default=2048,
                        help="the longest side the network sees in one pass, at least 8 (outputs keep the original "
                             "size); 0 = any")
    parser.add_argument("--large", choices=LARGE, default="shrink",
                        help="images above --max-side: shrink them for the network (default: fast) or tile them "
                             "with overlapping windows at full resolution (as eval.py does)")
    parser.add_argument("--probabilities", action="store_true", help="also write probs (same as adding it to --outputs)")
    parser.add_argument("--backoff", metavar="auto|THETA",
                        help="also write node maps (<stem>_*nodes*, legend_nodes.png): each pixel's leaf, or its first "
                             "ancestor at least THETA sure; auto: the threshold eval.py --calibrate-backoff stored")
    add_verbosity(parser)
    return parser


def _calibration_images(paths: Sequence[Path], count: int = 8) -> Callable[[], list[np.ndarray]]:
    """The first ``count`` readable input images, read only if a quantized graph has to be built."""
    def read() -> list[np.ndarray]:
        images = []
        for path in paths:
            try:
                images.append(read_image(path))
            except ImageError:
                continue
            if len(images) == count:
                break
        return images

    return read


def _open(args: argparse.Namespace, device: torch.device, paths: Sequence[Path] = ()) -> tuple[Any, Any, float | None]:
    """The runner for ``--backend`` on ``device``, the taxonomy, and the back-off threshold asked for."""
    from hiertree.checkpoint import calibrated_threshold, read_checkpoint

    info = read_checkpoint(args.checkpoint)
    model_cfg = info["config"].get("model") if isinstance(info["config"].get("model"), dict) else {}
    def build() -> torch.nn.Module:  # the PyTorch model is only built to run it or to fill the ONNX cache
        from hiertree.models import load_model

        return load_model(info["dir"], map_location=device)[0]

    runner = make_runner(args.backend, device, info["dir"], info["taxonomy"], bool(model_cfg.get("flat", False)), build,
                         quantize=args.quantize, calibration=_calibration_images(paths))
    backoff = parse_backoff(args.backoff)
    calibrated = calibrated_threshold(info["dir"], required=True) if backoff == "auto" else None  # single scale
    return runner, info["taxonomy"], resolve_backoff(backoff, calibrated, info["taxonomy"])


class _Writer:
    """Writes each image's files in a thread beside compute (OpenCV's encoders release the GIL). One writer keeps
    up (about 20 ms of files per photo against 70-90 ms of network) and a second only contends for the cores (7.3
    vs 6.5 s for 40 photos on 2 cores); at most ``2 * workers`` images wait, so memory stays flat; the first
    failure is raised by :meth:`wait`."""

    def __init__(self, workers: int = 1) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hiertree-write")
        self.pending: list[Future] = []
        self.limit = 2 * workers

    def submit(self, *args: Any) -> None:
        self.pending.append(self.pool.submit(write_outputs, *args))
        while len(self.pending) > self.limit:
            self.pending.pop(0).result()

    def wait(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)


def _predict_all(args: argparse.Namespace, runner: Any, taxonomy: Any, threshold: float | None, out: Path,
                 paths: list[Path], outputs: tuple[str, ...], warn: Callable[[str], None]) -> int:
    """Read, predict and write every image, ``--batch-size`` at a time; returns how many could not be read."""
    stems, skipped, writer = _unique_stems(paths), 0, _Writer()
    try:
        for start in range(0, len(paths), args.batch_size):
            chunk, images = [], []
            for i in range(start, min(start + args.batch_size, len(paths))):
                try:
                    images.append(read_image(paths[i]))
                    chunk.append(i)
                except ImageError as err:
                    warn(f"{err}; skipped")
                    skipped += 1
            if not images:
                continue
            preds = predict_images(runner, images, getattr(runner, "device", "cpu"), args.batch_size, "probs" in outputs,
                                   backoff=threshold, views=Views(max_side=args.max_side or None, large=args.large))
            for i, image, pred in zip(chunk, images, preds):
                writer.submit(out, stems[i], image, pred, taxonomy, outputs)
    finally:
        writer.wait()
    return skipped


def main(argv: list[str] | None = None) -> int:
    """Predict per-level label maps for images or folders of images with a trained checkpoint.

    An image that cannot be decoded is named in a warning and skipped; the others are written, and the
    command then exits with code 2 and the number of skipped files.
    """
    args = _parser().parse_args(argv)
    logging_from_args(args)
    from hiertree.checkpoint import CheckpointError

    outputs = tuple(dict.fromkeys(args.outputs + (("probs",) if args.probabilities else ())))
    try:
        device = resolve_device(args.device, flag="--device")
        if args.batch_size is None:
            args.batch_size = 1 if device.type == "cpu" else 4
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.max_side < 0 or 0 < args.max_side < 8:
            raise ValueError(f"--max-side must be 0 (any size in one pass) or at least 8, got {args.max_side}")
        paths = find_images(args.inputs)
        runner, taxonomy, threshold = _open(args, device, paths)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if threshold is not None:
            write_node_legend(out, taxonomy)
        skipped = _predict_all(args, runner, taxonomy, threshold, out, paths, outputs,
                               warn=lambda text: warn(PROG, text))
        if skipped:
            raise ImageError(f"{skipped} of {len(paths)} image(s) could not be read and were skipped (named above); "
                               f"the other {len(paths) - skipped} were written to {out}")
    except (ImageError, CheckpointError, BackendError, DeviceError, ValueError, OSError) as err:
        return fail(PROG, err)
    why = backend_choice(args.backend, device)[1]
    print(f"hiertree-predict: {len(paths)} image(s), {taxonomy.num_levels} level(s) each, {runner.name} backend: {why} "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
