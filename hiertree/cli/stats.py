"""``hiertree-stats``: count a dataset per node and level; the class weights ``loss.class_weights: auto`` uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiertree.cli.common import fail
from hiertree.logs import add_verbosity, logging_from_args

__all__ = ["main"]

PROG = "hiertree-stats"


def _stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
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


def main(argv: list[str] | None = None) -> int:
    """Count a dataset per node and level: pixels, images, label depth, ignored share, sizes, class weights."""
    args = _stats_parser().parse_args(argv)
    logging_from_args(args)
    from hiertree.config import ConfigError, load_config
    from hiertree.data import DataError, build_datasets
    from hiertree.data.stats import dataset_stats, format_stats, plot_stats, write_json
    from hiertree.tree.taxonomy import Taxonomy, TaxonomyError

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
        return fail(PROG, err)
    for name, stats in result.items():
        print(format_stats(stats, f"{name} split, taxonomy {taxonomy.name!r}:"))
    if args.json:
        write_json(result, Path(args.json))
        print(f"wrote {args.json}")
    if args.plot and plot_stats(next(iter(result.values())), Path(args.plot)):
        print(f"wrote {args.plot}")
    return 0
