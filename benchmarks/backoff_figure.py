"""The README's back-off picture: photo | parts (tree-consistent leaves) | back-off nodes, side by side.

    python benchmarks/backoff_figure.py --checkpoint pascal_part_lite0_cpu \\
        --image ../shared/datasets/pascal-part/JPEGImages/2008_000144.jpg --out docs/images/backoff_pascal_cpu.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hiertree.checkpoint import calibrated_threshold  # noqa: E402
from hiertree.tree.colors import colorize, overlay  # noqa: E402
from hiertree.images import read_image  # noqa: E402
from hiertree.models import load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backoff", default="auto", help="'auto' (the calibrated threshold) or a number")
    parser.add_argument("--height", type=int, default=220, help="height of each panel (pixels)")
    args = parser.parse_args(argv)
    model, ck = load_model(args.checkpoint, channels_last=True)
    tax = ck["taxonomy"]
    image = read_image(args.image)
    backoff = args.backoff if args.backoff == "auto" else float(args.backoff)
    pred = model.predict(image, backoff=backoff)
    parts = overlay(image, colorize(pred["levels"][-1], tax.colors(-1)), 0.6)
    nodes = overlay(image, colorize(pred["nodes"], tax.node_colors()), 0.6)
    h = args.height
    panels = [cv2.resize(p, (round(p.shape[1] * h / p.shape[0]), h), interpolation=cv2.INTER_AREA)
              for p in (image, parts, nodes)]
    gap = np.full((h, 6, 3), 255, np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, np.ascontiguousarray(row[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    shown = calibrated_threshold(ck["dir"], required=True) if backoff == "auto" else backoff
    share = float((pred["nodes"] >= tax.num_leaves).mean())
    print(f"wrote {args.out} (threshold {shown}; {share:.1%} of pixels backed off to an inner node)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
