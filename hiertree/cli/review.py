"""``hiertree-review``: rank a split's images by how suspect their labels look to a trained model (per-image loss,
disagreement between the heads, disagreement with the mirrored prediction), write ``review.csv``, a contact sheet of
the worst and an ``exclude.txt`` to edit and feed back to training as ``data.exclude``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from hiertree.cli.common import fail
from hiertree.logs import add_verbosity, logging_from_args

__all__ = ["main"]

PROG = "hiertree-review"
DEFAULT_CHECKPOINT = "pascal_part_lite0_cpu"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, metavar="NAME_OR_DIR",
                        help="a shipped model's name, a checkpoint or run folder (uses its best) "
                             f"(default {DEFAULT_CHECKPOINT}, shipped with hiertree)")
    parser.add_argument("--config", "-c", help="YAML config or preset name whose data section says where the images "
                        "are (default: the checkpoint's own)")
    parser.add_argument("--split", default="train", help="the split to review (default train)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for review.csv, contact_sheet.html, "
                        "thumbs/ and exclude.txt")
    parser.add_argument("--top", type=int, default=50, help="the worst this many go to the contact sheet and "
                        "exclude.txt (default 50)")
    parser.add_argument("--limit", type=int, help="review only this many samples, evenly spaced over the split "
                        "(deterministic; default all)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                        help="what runs the network (as hiertree-predict; auto: ONNX Runtime on a CPU when installed)")
    add_verbosity(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. data.root=...")
    return parser


def _data_config(args: argparse.Namespace, checkpoint_config: dict) -> dict:
    """The ``data`` section to read ``--split`` from: ``--config`` (or the checkpoint's) with the overrides, the split
    as both train and val (only it has to exist) and no exclusion list (the review sees the whole split)."""
    from hiertree.config import DEFAULTS, apply_overrides, load_config, merge
    from hiertree.data.sources import without_exclusions

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        saved = {k: v for k, v in checkpoint_config.items() if k in ("taxonomy", "data")}
        cfg = apply_overrides(merge(DEFAULTS, saved, DEFAULTS, source="the checkpoint's config.yaml"), args.overrides)
    return without_exclusions({**cfg["data"], "train_split": args.split, "val_split": args.split})


def _run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Review the split: ``(ranked rows, written paths, samples in the split)``."""
    from hiertree.checkpoint import read_checkpoint
    from hiertree.data import build_datasets
    from hiertree.device import resolve_device
    from hiertree.evaluation.review import rank, review, write_review
    from hiertree.inference.predictor import Predictor

    for flag, value in (("--top", args.top), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    device = resolve_device(args.device, flag="--device")
    info = read_checkpoint(args.checkpoint)
    predictor = Predictor(args.checkpoint, backend=args.backend, device=device)
    taxonomy = predictor.taxonomy
    _, dataset = build_datasets(_data_config(args, info["config"]), taxonomy)
    n = len(dataset)
    indices = None
    if args.limit is not None and args.limit < n:
        indices = sorted({round(k * (n - 1) / max(1, args.limit - 1)) for k in range(args.limit)})
    step = max(1, (len(indices) if indices is not None else n) // 20)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"{PROG}: {done}/{total} reviewed", flush=True)

    rows = review(predictor.runner, dataset, taxonomy, indices, source=args.split, progress=progress)
    if not rows:
        raise ValueError(f"no sample of split {args.split!r} could be read; check the data folder")
    ranked = rank(rows)
    return ranked, write_review(predictor.runner, dataset, taxonomy, ranked, args.out, args.top), n


def main(argv: list[str] | None = None) -> int:
    """Rank the images of a split by per-image loss at the deepest level, disagreement between the heads and
    disagreement with the mirrored prediction; write review.csv, a contact sheet of the worst --top and
    exclude.txt (their ids: edit it, then train with data.exclude=PATH)."""
    args = _parser().parse_args(argv)
    logging_from_args(args)
    from hiertree.checkpoint import CheckpointError
    from hiertree.config import ConfigError
    from hiertree.data.errors import DataError
    from hiertree.device import DeviceError
    from hiertree.inference.backends import BackendError

    start = time.perf_counter()
    try:
        ranked, paths, n = _run(args)
    except (CheckpointError, ConfigError, DataError, DeviceError, BackendError, ValueError, OSError) as err:
        return fail(PROG, err)
    seconds = time.perf_counter() - start
    print(f"{PROG}: {len(ranked)} of {n} sample(s) of split {args.split!r} ranked in {seconds:.0f} s; the worst: "
          + ", ".join(str(r["id"]) for r in ranked[:5]))
    for name in ("csv", "sheet", "exclude"):
        print(f"{PROG}: {paths[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
