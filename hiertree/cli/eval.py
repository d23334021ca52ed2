"""``hiertree-eval`` (= ``python eval.py``): score a checkpoint per level, write the JSON and a report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from hiertree.cli.common import fail
from hiertree.logs import add_verbosity, logging_from_args

__all__ = ["main", "eval_outputs"]

PROG = "hiertree-eval"


def eval_outputs(checkpoint: str | Path, ck: dict, split: str) -> tuple[Path, Path]:
    """Default eval JSON and report folder: next to the checkpoint folder, never inside it.

    ``--checkpoint runs/demo`` (a run folder, its ``best``) gives ``runs/demo/eval-val-best.json`` and
    ``runs/demo/report-val-best/``; ``runs/demo/last`` gives ``...-last``; a checkpoint folder
    ``models/mine`` gives ``models/eval-val-mine.json``. A published checkpoint folder is never written
    to, and a save that moves ``last``/``best`` (and prunes the old folder) cannot delete the results.
    """
    given = Path(os.path.abspath(checkpoint))
    home = given.parent if (given / "model.safetensors").is_file() else given
    return home / f"eval-{split}-{ck['name']}.json", home / f"report-{split}-{ck['name']}"


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (uses its best)")
    parser.add_argument("--data", help="dataset folder (JPEGImages/, masks/ or gt_masks/, <split>_id.txt); default: the checkpoint's data")
    parser.add_argument("--split", default=None, help="split to score (default: the config's val split)")
    parser.add_argument("--out", help="JSON file to write (default: next to the checkpoint folder, "
                        "<run>/eval-<split>-<best|last|folder name>.json)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--hflip", action="store_true", help="test-time augmentation: average with the mirrored image")
    parser.add_argument("--scales", type=float, nargs="+", help="test-time scales, e.g. 0.75 1 1.25")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-batches", type=int)
    parser.add_argument("--report", metavar="DIR", help="where to write the Markdown report with charts (default: "
                        "report-<split>-<name> next to the JSON; needs matplotlib: hiertree[report])")
    parser.add_argument("--no-report", action="store_true", help="write the JSON only")
    parser.add_argument("--report-samples", type=int, default=4, help="worst and best images shown in the report (0: none)")
    back = parser.add_mutually_exclusive_group()
    back.add_argument("--backoff", metavar="auto|THETA",
                      help="also score back-off predictions at this threshold in [0, 1] (accuracy, specificity)")
    back.add_argument("--calibrate-backoff", type=float, metavar="P",
                      help="promise node accuracy P on new images (e.g. 0.9): the smallest threshold that keeps it "
                           "with probability 1 - delta, the image the unit (Learn-then-Test), calibrated on half of "
                           "the split's images and scored on the other half (or --calibration-split); stored with "
                           "the checkpoint (backoff.json) for --backoff auto")
    parser.add_argument("--backoff-scope", choices=("predicted", "foreground", "all"), default="predicted",
                        help="which pixels the promise counts: predicted (default: the pixels the model calls a person, "
                        "the taxonomy's foreground: when it names a part, how often that part or its parent is right), "
                        "foreground (the person's pixels by the truth, missed ones included) or all (every labelled "
                        "pixel, background included); docs/backoff.md says why")
    parser.add_argument("--delta", type=float, default=0.1, help="the risk that the calibrated promise fails (0.1)")
    parser.add_argument("--calibration-split", metavar="SPLIT", help="calibrate on this split and score the promise on "
                        "--split (default: the two halves of --split, by image)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split of images into halves (0)")
    parser.add_argument("--bound", choices=("wsr", "hb"), default="wsr", help="p-values of the calibration: wsr "
                        "(betting, adapts to the spread of the images' risks; default) or hb (Hoeffding-Bentkus)")
    add_verbosity(parser)
    parser.add_argument("overrides", nargs="*", help="data.*=value overrides for the dataset")
    return parser


def _eval_config(args: argparse.Namespace, ck: dict) -> dict:
    """The checkpoint's own data/model/eval settings, then the command line's."""
    from hiertree.config import DEFAULTS, apply_overrides, merge

    # only what evaluation uses: a training-only value that today's rules refuse must not block scoring
    saved = {k: v for k, v in ck["config"].items() if k in ("taxonomy", "data", "model", "eval")}
    train = ck["config"].get("train") if isinstance(ck["config"].get("train"), dict) else {}
    saved["train"] = {k: train[k] for k in ("seed", "num_workers") if k in train}
    cfg = merge(DEFAULTS, saved, DEFAULTS, source=str(ck["dir"] / "config.yaml"))
    cfg = apply_overrides(cfg, args.overrides)
    if args.data:  # one folder replaces the run's data sources; data.labels=... maps its mask values
        cfg["data"]["kind"], cfg["data"]["root"], cfg["data"]["sources"] = "folder", args.data, None
    if args.split:
        cfg["data"]["val_split"] = args.split
    cfg["data"]["train_split"] = cfg["data"]["val_split"]  # only the scored split has to exist
    return cfg


def _backoff_thresholds(args: argparse.Namespace, ck: dict, hflip: bool, scales: list[float]) -> tuple[float, ...]:
    """The thresholds to score over the pixels: the whole grid when calibrating (the report's curve), the one asked
    for (``auto``: the checkpoint's calibrated one, refused for other weights or TTA), or none."""
    from hiertree.checkpoint import calibrated_threshold
    from hiertree.evaluation.backoff import GRID
    from hiertree.inference.decoding import parse_backoff

    if args.calibrate_backoff is not None:
        return GRID
    value = parse_backoff(args.backoff)
    if value == "auto":
        value = calibrated_threshold(ck["dir"], hflip, scales, required=True)
    return () if value is None else (value,)


def _setup(args: argparse.Namespace) -> tuple[Any, dict, dict, Any]:
    """``(model, checkpoint, config, device)``; bad flags as ConfigError."""
    from hiertree.config import ConfigError
    from hiertree.device import DeviceError, resolve_device
    from hiertree.models import load_model

    for flag, value, default in (("--batch-size", args.batch_size, "use the config's eval.batch_size"),
                                 ("--max-batches", args.max_batches, "score the whole split")):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}; leave it out to {default}")
    try:
        device = resolve_device(args.device, flag="--device")
    except DeviceError as err:
        raise ConfigError(str(err)) from None
    model, ck = load_model(args.checkpoint, map_location=device, channels_last=True)
    return model, ck, _eval_config(args, ck), device


def _score(args: argparse.Namespace, model: Any, ck: dict, cfg: dict, device: Any, split: str,
           backoff: tuple[float, ...] = (), image_curves: Any = None) -> tuple[dict, Any, list]:
    """Score ``split`` of the config's data: ``(result, dataset, skipped samples)``."""
    from hiertree.data import build_datasets, drop_bad_samples
    from hiertree.data.loaders import labelled_nodes, val_loaders
    from hiertree.data.sources import without_exclusions
    from hiertree.device import resolve_amp
    from hiertree.evaluation.evaluate import evaluate
    from hiertree.inference.predictor import Views

    taxonomy, ecfg = ck["taxonomy"], cfg["eval"]
    # only the scored split has to exist, and a training exclusion list has no say over it
    data = without_exclusions({**cfg["data"], "val_split": split, "train_split": split})
    _, val_ds = build_datasets(data, taxonomy, seed=cfg["train"]["seed"])
    skipped = drop_bad_samples(val_ds)  # data.skip_bad=true: scored without them, listed in the JSON
    loader = val_loaders(val_ds, taxonomy, args.batch_size or ecfg["batch_size"], cfg["train"]["num_workers"],
                         cfg["train"]["seed"])  # data.sources: one loader per evaluated source, as training scores them
    views = Views.from_options(ecfg, hflip=args.hflip or None, scales=args.scales or None)
    result = evaluate(model, loader, taxonomy, device, views=views, amp=resolve_amp("auto", device),
                      max_batches=args.max_batches, flat=model.flat, labelled=labelled_nodes(data, taxonomy),
                      backoff=backoff, image_curves=image_curves)
    return result, val_ds, skipped


def _calibrate(args: argparse.Namespace, model: Any, ck: dict, cfg: dict, device: Any, curves: Any, result: dict) -> dict:
    """Calibrate the back-off promise, score it on images it never saw, store it with the checkpoint."""
    from hiertree.checkpoint import file_sha256, save_backoff
    from hiertree.evaluation.backoff import CurveAccumulator, promise

    split = result["split"]
    if args.calibration_split:
        other = CurveAccumulator(ck["taxonomy"], scope=args.backoff_scope)
        _score(args, model, ck, cfg, device, args.calibration_split, image_curves=other)
        record = promise(other.curves(), args.calibrate_backoff, args.delta, split=args.calibration_split,
                         held_out=curves.curves(), held_out_split=split, bound=args.bound)
    else:
        record = promise(curves.curves(), args.calibrate_backoff, args.delta, seed=args.seed, split=split,
                         bound=args.bound)
    record.update(weights_sha256=file_sha256(ck["dir"] / "model.safetensors"),
                  tta={"hflip": result["hflip"], "scales": result["scales"]})
    record["stored"] = str(save_backoff(ck["dir"], record))
    return record


def _print_backoff(result: dict) -> None:
    """The back-off lines: the promise (calibration, held-out score) or the one threshold scored."""
    record = result.get("backoff_promise")
    if record is not None:
        held, cal = record["held_out"], record["calibration"]
        print(f"back-off promise: node accuracy >= {record['target']} on new images with probability >= "
              f"{1 - record['delta']:.2f}; threshold {record['threshold']} from {cal['images']} images "
              f"(the largest promise they support: {record['largest_target']:.3f}); stored in {record['stored']}")
        print(f"held out ({held['images']} images, {held['which']}): mean image accuracy "
              f"{held['mean_image_accuracy']:.4f} ± {held['mean_image_accuracy_stderr']:.4f} "
              f"({'kept' if held['promise_kept'] else 'NOT kept'}), specificity {held['mean_image_specificity']:.4f}, "
              f"still at a leaf {held['leaf_share']:.4f} (counted: {record.get('scope', 'all')} pixels)")
        _print_ladder(record.get("ladder", []))
        return
    if "backoff" in result:
        point = result["backoff"][0]
        print(f"back-off at {point['threshold']}: accuracy {point['accuracy']:.4f}, specificity "
              f"{point['specificity']:.4f}, still at a leaf {point['leaf_coverage']:.4f}; predicted per level: "
              + ", ".join(f"{k} {v:.4f}" for k, v in point.get("level_shares", {}).items()))


def _print_ladder(rows: list[dict]) -> None:
    """The promises a user can choose from: threshold, and on the held-out images accuracy and detail kept."""
    if not rows:
        return
    print("promise  threshold  held-out accuracy  still at a leaf  specificity")
    for r in rows:
        if r["threshold"] is None:
            print(f"{r['target']:<8} {'-':<10} (these images cannot support it)")
            continue
        print(f"{r['target']:<8} {r['threshold']:<10} {r['held_out_mean_image_accuracy']:<18.4f} "
              f"{r['held_out_leaf_share']:<16.4f} {r['held_out_mean_image_specificity']:.4f}")


def _eval_run(args: argparse.Namespace) -> tuple[dict, dict, Any, Any, Any, list]:
    """Load the checkpoint and score the split (calibrating back-off when asked):
    ``(result, cfg, ck, model, dataset, skipped)``."""
    from hiertree.evaluation.backoff import CurveAccumulator

    model, ck, cfg, device = _setup(args)
    hflip, scales = args.hflip or cfg["eval"]["hflip"], list(args.scales or cfg["eval"]["scales"])
    curves = CurveAccumulator(ck["taxonomy"], scope=args.backoff_scope) if args.calibrate_backoff is not None else None
    split = cfg["data"]["val_split"]
    result, val_ds, skipped = _score(args, model, ck, cfg, device, split, _backoff_thresholds(args, ck, hflip, scales),
                                     curves)
    result.update({"checkpoint": str(ck["dir"]), "split": split, "hflip": hflip, "scales": scales,
                   "images": len(val_ds), "device": str(device), "skipped": skipped})
    if curves is not None:
        result["backoff_promise"] = _calibrate(args, model, ck, cfg, device, curves, result)
    return result, cfg, ck, model, val_ds, skipped


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint per level (mIoU, pixel accuracy, per-class IoU); writes the table as JSON."""
    args = _eval_parser().parse_args(argv)
    logging_from_args(args)
    from hiertree.checkpoint import CheckpointError
    from hiertree.config import ConfigError
    from hiertree.data import DataError
    from hiertree.evaluation.backoff import BackoffError
    from hiertree.metrics import format_scores

    try:
        result, cfg, ck, model, val_ds, skipped = _eval_run(args)
    except (ConfigError, DataError, CheckpointError, BackoffError, OSError, ValueError) as err:
        return fail(PROG, err)
    split, scales = result["split"], result["scales"]
    print(f"checkpoint {ck['dir']} on {cfg['data']['kind']} split {split!r} ({len(val_ds)} images)"
          f"{', hflip' if result['hflip'] else ''}{', scales ' + str(scales) if list(scales) != [1.0] else ''}")
    print(format_scores(result))
    print(f"raw per-head argmax: tree-consistent pixels {result['raw']['consistency']:.4f}")
    hier = result["tree"].get("hierarchy", {})
    if hier:
        print(f"hierarchy: mistake severity {hier['mistake_severity']:.3f} levels, hP {hier['hP']:.4f}, "
              f"hR {hier['hR']:.4f}, hF1 {hier['hF1']:.4f}")
    _print_backoff(result)
    if skipped:
        print(f"skipped {len(skipped)} bad sample(s) (data.skip_bad): {', '.join(s['id'] for s in skipped)}")
    default_json, default_report = eval_outputs(args.checkpoint, ck, split)
    out = Path(args.out) if args.out else default_json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    if args.no_report:
        return 0
    report_dir = Path(args.report) if args.report else (out.parent / f"report-{split}" if args.out else default_report)
    return _eval_report(args, result, ck["taxonomy"], model, val_ds, report_dir)


def _eval_report(args: argparse.Namespace, result: dict, taxonomy: Any, model: Any, dataset: Any, report_dir: Path) -> int:
    try:
        from hiertree.evaluation.report import collect_samples, write_report

        k = args.report_samples
        samples = collect_samples(model, dataset, taxonomy, model.encoder.mean.device, k=k) if k > 0 else None
        print(f"wrote {write_report(result, taxonomy, report_dir, samples=samples, k=k)}")
    except ImportError as err:
        if args.report:
            return fail(PROG, err)
        print(f"{PROG}: report skipped ({err})")
    return 0
