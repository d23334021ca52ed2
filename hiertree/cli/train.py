"""``hiertree-train`` (= ``python train.py``): train from a YAML config plus ``key=value`` overrides."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from hiertree.cli.common import EXIT_SIGNAL_BASE, fail
from hiertree.logs import add_verbosity, logging_from_args

__all__ = ["main"]

PROG = "hiertree-train"


def _train_errors() -> tuple[type[Exception], ...]:
    """The errors hiertree-train reports as one line (anything else is a bug and keeps its traceback)."""
    from hiertree.checkpoint import CheckpointError
    from hiertree.config import ConfigError
    from hiertree.data import DataError
    from hiertree.device import DeviceError
    from hiertree.models import EncoderError
    from hiertree.training.run_state import TrainingError
    from hiertree.tree.taxonomy import TaxonomyError
    from hiertree.models.weights import WeightsError

    return (ConfigError, TaxonomyError, DataError, EncoderError, CheckpointError, TrainingError, WeightsError, DeviceError)


def main(argv: list[str] | None = None) -> int:
    """Train from a YAML config plus ``key=value`` overrides (overrides win)."""
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
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
        from hiertree.training.engine import train

        result = train(cfg, command=command)
    except _train_errors() as err:
        return fail(PROG, err)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"hiertree: run folder {result['run_dir']} (best checkpoint: {result['run_dir']}/best)")
    if result["stopped"]:  # 128 + signal number, as a shell reports a signalled job: 130 SIGINT, 143 SIGTERM
        return EXIT_SIGNAL_BASE + int(result["signal"] or 15)
    return 0
