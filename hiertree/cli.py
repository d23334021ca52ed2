"""Command-line entry points: ``hiertree-train`` (= ``python train.py``), ``hiertree-eval`` (= ``python eval.py``)
and ``hiertree-stats``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from hiertree.logs import add_verbosity, logging_from_args  # noqa: E402 - light: the standard library only

__all__ = ["train_main", "eval_main", "eval_outputs", "stats_main"]


def _one_line(err: Exception) -> str:
    """The error's own message; one raised in a data-loader worker arrives wrapped with the worker's traceback."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text


def _fail(err: Exception) -> int:
    print(f"hiertree: error: {_one_line(err)}", file=sys.stderr)
    return 2


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


def _train_errors() -> tuple[type[Exception], ...]:
    """The errors hiertree-train reports as one line (anything else is a bug and keeps its traceback)."""
    from hiertree.checkpoint import CheckpointError
    from hiertree.config import ConfigError
    from hiertree.data import DataError
    from hiertree.device import DeviceError
    from hiertree.models import EncoderError
    from hiertree.run_state import TrainingError
    from hiertree.taxonomy import TaxonomyError
    from hiertree.weights import WeightsError

    return (ConfigError, TaxonomyError, DataError, EncoderError, CheckpointError, TrainingError, WeightsError, DeviceError)


def train_main(argv: list[str] | None = None) -> int:
    """Train from a YAML config plus ``key=value`` overrides (overrides win)."""
    parser = argparse.ArgumentParser(prog="hiertree-train", description=train_main.__doc__)
    parser.add_argument("--config", "-c", help="YAML config (see configs/); defaults apply to missing keys")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- file <- overrides) as YAML and exit")
    add_verbosity(parser)
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=5 model.encoder=resnet18")
    args = parser.parse_args(argv)
    logging_from_args(args)
    from hiertree.config import dump_config, load_config

    command = " ".join(["python train.py"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        from hiertree.engine import train

        result = train(cfg, command=command)
    except _train_errors() as err:
        return _fail(err)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"hiertree: run folder {result['run_dir']} (best checkpoint: {result['run_dir']}/best)")
    if result["stopped"]:  # 128 + signal number, as a shell reports a signalled job: 130 SIGINT, 143 SIGTERM
        return 128 + int(result["signal"] or 15)
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiertree-eval", description=eval_main.__doc__)
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
    back.add_argument("--backoff", type=float, metavar="THETA",
                      help="also score back-off predictions at this threshold in [0, 1] (accuracy, specificity)")
    back.add_argument("--calibrate-backoff", type=float, metavar="P",
                      help="pick the smallest threshold whose back-off predictions are right on a share P of the "
                           "pixels (e.g. 0.95) and store it with the checkpoint (backoff.json), for --backoff auto")
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


def _backoff_thresholds(args: argparse.Namespace) -> tuple[float, ...]:
    """The thresholds to score: the calibration grid, the one asked for, or none; bad values as ConfigError."""
    from hiertree.config import ConfigError
    from hiertree.evaluate import BACKOFF_GRID
    from hiertree.inference import check_threshold

    if args.calibrate_backoff is not None:
        if not 0.0 < args.calibrate_backoff <= 1.0:
            raise ConfigError(f"--calibrate-backoff must be a share of pixels in (0, 1], got {args.calibrate_backoff} "
                              "(e.g. 0.95: back-off predictions right on 95 % of the pixels)")
        return BACKOFF_GRID
    if args.backoff is None:
        return ()
    try:
        return (check_threshold(args.backoff, "--backoff"),)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _print_backoff(args: argparse.Namespace, result: dict, ck: dict) -> None:
    """The back-off line; with --calibrate-backoff the chosen threshold, stored in the checkpoint folder."""
    from hiertree.checkpoint import save_backoff
    from hiertree.evaluate import calibrate_backoff

    if "backoff" not in result:
        return
    point = result["backoff"][0]
    if args.calibrate_backoff is not None:
        point = calibrate_backoff(result["backoff"], args.calibrate_backoff)
        where = save_backoff(ck["dir"], {"threshold": point["threshold"], "target": args.calibrate_backoff,
                                         "split": result["split"], **{k: point[k] for k in ("accuracy", "specificity",
                                                                                           "leaf_coverage", "level_shares")}})
        result["backoff_calibrated"] = point
        print(f"calibrated back-off threshold {point['threshold']} for accuracy >= {args.calibrate_backoff}: wrote {where}")
    print(f"back-off at {point['threshold']}: accuracy {point['accuracy']:.4f}, specificity {point['specificity']:.4f}, "
          f"still at a leaf {point['leaf_coverage']:.4f}; predicted per level: "
          + ", ".join(f"{k} {v:.4f}" for k, v in point.get("level_shares", {}).items()))


def _eval_run(args: argparse.Namespace) -> tuple[dict, dict, Any, Any, Any, list]:
    """Load the checkpoint and score the split: ``(result, cfg, ck, model, dataset, skipped)``."""
    from hiertree.config import ConfigError
    from hiertree.data import build_datasets, drop_bad_samples
    from hiertree.data.loaders import labelled_nodes, val_loaders
    from hiertree.device import DeviceError, resolve_device
    from hiertree.evaluate import evaluate
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
    cfg, taxonomy = _eval_config(args, ck), ck["taxonomy"]
    _, val_ds = build_datasets(cfg["data"], taxonomy, seed=cfg["train"]["seed"])
    skipped = drop_bad_samples(val_ds)  # data.skip_bad=true: scored without them, listed in the JSON
    loader = val_loaders(val_ds, taxonomy, args.batch_size or cfg["eval"]["batch_size"], cfg["train"]["num_workers"],
                         cfg["train"]["seed"])  # data.sources: one loader per evaluated source, as training scores them
    amp = "bf16" if device.type == "cuda" else "none"
    ecfg = cfg["eval"]
    thresholds = _backoff_thresholds(args)
    result = evaluate(model, loader, taxonomy, device, amp, args.hflip or ecfg["hflip"], args.scales or ecfg["scales"],
                      args.max_batches, flat=model.flat, max_side=ecfg["max_side"], window=ecfg["window"],
                      overlap=ecfg["overlap"], labelled=labelled_nodes(cfg["data"], taxonomy), backoff=thresholds)
    result.update({"checkpoint": str(ck["dir"]), "split": cfg["data"]["val_split"], "hflip": args.hflip or ecfg["hflip"],
                   "scales": list(args.scales or ecfg["scales"]), "images": len(val_ds), "device": str(device),
                   "skipped": skipped})
    return result, cfg, ck, model, val_ds, skipped


def eval_main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint per level (mIoU, pixel accuracy, per-class IoU); writes the table as JSON."""
    args = _eval_parser().parse_args(argv)
    logging_from_args(args)
    from hiertree.checkpoint import CheckpointError
    from hiertree.config import ConfigError
    from hiertree.data import DataError
    from hiertree.metrics import format_scores

    try:
        result, cfg, ck, model, val_ds, skipped = _eval_run(args)
    except (ConfigError, DataError, CheckpointError) as err:
        return _fail(err)
    split, scales = result["split"], result["scales"]
    print(f"checkpoint {ck['dir']} on {cfg['data']['kind']} split {split!r} ({len(val_ds)} images)"
          f"{', hflip' if result['hflip'] else ''}{', scales ' + str(scales) if list(scales) != [1.0] else ''}")
    print(format_scores(result))
    print(f"raw per-head argmax: tree-consistent pixels {result['raw']['consistency']:.4f}")
    hier = result["tree"].get("hierarchy", {})
    if hier:
        print(f"hierarchy: mistake severity {hier['mistake_severity']:.3f} levels, hP {hier['hP']:.4f}, "
              f"hR {hier['hR']:.4f}, hF1 {hier['hF1']:.4f}")
    try:
        _print_backoff(args, result, ck)
    except (ValueError, OSError) as err:
        return _fail(err)
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
        from hiertree.report import collect_samples, write_report

        k = args.report_samples
        samples = collect_samples(model, dataset, taxonomy, model.encoder.mean.device, k=k) if k > 0 else None
        print(f"wrote {write_report(result, taxonomy, report_dir, samples=samples, k=k)}")
    except ImportError as err:
        if args.report:
            return _fail(err)
        print(f"hiertree: report skipped ({err})")
    return 0


def _stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiertree-stats", description=stats_main.__doc__)
    parser.add_argument("--config", "-c", help="YAML config whose data (and data.sources) to count; default: the defaults")
    parser.add_argument("--data", help="a dataset folder instead of the config's data (kind folder)")
    parser.add_argument("--taxonomy", help="built-in taxonomy name or YAML (default: the config's)")
    parser.add_argument("--split", choices=("train", "val", "both"), default="train", help="which split to count")
    parser.add_argument("--max-images", type=int, help="read at most this many masks per source (a quick look)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers and class weights as JSON")
    parser.add_argument("--plot", metavar="FILE", help="also draw pixels per class and level as a PNG (matplotlib)")
    add_verbosity(parser)
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.labels='{0: background}'")
    return parser


def stats_main(argv: list[str] | None = None) -> int:
    """Count a dataset per node and level: pixels, images, label depth, ignored share, sizes, class weights."""
    args = _stats_parser().parse_args(argv)
    logging_from_args(args)
    from hiertree.config import ConfigError, load_config
    from hiertree.data import DataError, build_datasets
    from hiertree.stats import dataset_stats, format_stats, plot_stats, write_json
    from hiertree.taxonomy import Taxonomy, TaxonomyError

    try:
        if args.max_images is not None and args.max_images < 1:
            raise ConfigError(f"--max-images must be at least 1, got {args.max_images}; leave it out to read every mask")
        cfg = load_config(args.config, args.overrides)
        if args.data:
            cfg["data"].update(kind="folder", root=args.data, sources=None)
        taxonomy = Taxonomy.load(args.taxonomy or cfg["taxonomy"])
        train_ds, val_ds = build_datasets(cfg["data"], taxonomy)
        splits = {"train": [("train", train_ds)], "val": [("val", val_ds)],
                  "both": [("train", train_ds), ("val", val_ds)]}[args.split]
        result = {name: dataset_stats(ds, taxonomy, args.max_images) for name, ds in splits}
    except (ConfigError, DataError, TaxonomyError) as err:
        return _fail(err)
    for name, stats in result.items():
        print(format_stats(stats, f"{name} split, taxonomy {taxonomy.name!r}:"))
    if args.json:
        write_json(result, Path(args.json))
        print(f"wrote {args.json}")
    if args.plot and plot_stats(next(iter(result.values())), Path(args.plot)):
        print(f"wrote {args.plot}")
    return 0
