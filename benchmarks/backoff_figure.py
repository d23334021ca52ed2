"""The README's back-off picture: photo | parts (tree-consistent leaves) | back-off nodes | where it backed off
(the pixels said as a parent, the rest greyed), each panel captioned, with a legend of the nodes shown.

    python -c "import skimage.data, cv2; cv2.imwrite('astronaut.png', skimage.data.astronaut()[..., ::-1])"
    python benchmarks/backoff_figure.py --checkpoint pascal_part_lite0_cpu --image astronaut.png \\
        --out docs/images/backoff_astronaut.jpg

(``skimage.data.astronaut()``: Eileen Collins, NASA, public domain; a photo that may go in the repository, unlike the
dataset's.)
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


def _captioned(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((24, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def _legend(tax, node_ids: np.ndarray, width: int) -> np.ndarray:
    """One row: a colour swatch and the name of each node in the picture (inner nodes marked as parents)."""
    bar = np.full((28, width, 3), 255, np.uint8)
    x, colors = 4, tax.node_colors()
    for n in node_ids.tolist():
        name = tax.node_name(n) + (" (parent)" if n >= tax.num_leaves else "")
        cv2.rectangle(bar, (x, 8), (x + 14, 22), tuple(int(c) for c in colors[n]), -1)
        cv2.putText(bar, name, (x + 18, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        x += 24 + 8 * len(name)
    return bar


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
    inner = pred["nodes"] >= tax.num_leaves
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2) // 2 + 64
    moved = np.where(inner[..., None], nodes, grey).astype(np.uint8)
    captions = ("photo", "parts (leaves)", "back-off nodes", "said as a parent")
    panels = [_captioned(cv2.resize(p, (round(p.shape[1] * h / p.shape[0]), h), interpolation=cv2.INTER_AREA), c)
              for p, c in zip((image, parts, nodes, moved), captions)]
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    row = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    row = np.concatenate([row, _legend(tax, np.unique(pred["nodes"]), row.shape[1])], axis=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, np.ascontiguousarray(row[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    shown = calibrated_threshold(ck["dir"], required=True) if backoff == "auto" else backoff
    share = float((pred["nodes"] >= tax.num_leaves).mean())
    print(f"wrote {args.out} (threshold {shown}; {share:.1%} of pixels backed off to an inner node)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
