"""The ``hiertree-predict`` command: per-level colour masks, overlays and label PNGs for image files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hiertree.cli.common import fail, warn
from hiertree.device import DeviceError, device_name
from hiertree.images import ImageError, find_images, read_image
from hiertree.inference.backends import BACKENDS, BackendError, backend_choice
from hiertree.inference.decoding import parse_backoff
from hiertree.inference.predictor import LARGE, Predictor, Views
from hiertree.inference.writers import DEFAULT_OUTPUTS, describe_outputs, parse_outputs
from hiertree.logs import add_verbosity, logging_from_args

__all__ = ["main"]

PROG = "hiertree-predict"


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
                            f"{k}: {v}" for k, v in describe_outputs().items()) + f" (default {','.join(DEFAULT_OUTPUTS)}: "
                        "labels to use and overlays to look at)")
    parser.add_argument("--quantize", choices=("auto", "none", "int8"), default="auto",
                        help="int8: ONNX Runtime static quantization, cached (faster on a CPU; see docs/outputs.md for "
                             "what it costs), its ranges from the model's int8_calibration.json or else calibrated on "
                             "the first 8 input images; none: float32; auto (default): int8 when the model ships "
                             "int8_calibration.json (the shipped CPU model does) and ONNX Runtime runs it, else none")
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


def _open(args: argparse.Namespace, device: str, paths: Sequence[Path] = ()) -> Predictor:
    """The predictor for ``--checkpoint``, ``--backend``, ``--quantize``, ``--max-side``/``--large`` and
    ``--backoff`` (auto: the threshold calibrated for single-scale predictions)."""
    views = Views(max_side=args.max_side or None, large=args.large)
    return Predictor(args.checkpoint, backend=args.backend, device=device, views=views,
                     backoff=parse_backoff(args.backoff), quantize=args.quantize,
                     batch_size=args.batch_size, calibration=_calibration_images(paths))


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
        device = device_name(args.device, flag="--device")  # no PyTorch loaded for a CPU-only machine's answer
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.max_side < 0 or 0 < args.max_side < 8:
            raise ValueError(f"--max-side must be 0 (any size in one pass) or at least 8, got {args.max_side}")
        paths = find_images(args.inputs)
        predictor = _open(args, device, paths)
        out = Path(args.out)
        skipped = predictor.predict_files(paths, out, outputs, on_skip=lambda text: warn(PROG, text))
        if skipped:
            raise ImageError(f"{skipped} of {len(paths)} image(s) could not be read and were skipped (named above); "
                               f"the other {len(paths) - skipped} were written to {out}")
    except (ImageError, CheckpointError, BackendError, DeviceError, ValueError, OSError) as err:
        return fail(PROG, err)
    why = backend_choice(args.backend, device)[1]
    print(f"hiertree-predict: {len(paths)} image(s), {predictor.taxonomy.num_levels} level(s) each, "
          f"{predictor.runner.name} backend: {why} "
          f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
