"""The ``hiertree-export`` command: a checkpoint as ONNX with dynamic batch, height and width.

The graph (pad, run, crop, optionally decode) is built by :mod:`hiertree.inference.onnx_graph`.
"""

from __future__ import annotations

import argparse

from hiertree.cli.common import fail
from hiertree.inference.decoding import parse_backoff
from hiertree.inference.onnx_graph import OPSET, OUTPUTS, export_onnx
from hiertree.inference.predictor import backoff_threshold

__all__ = ["main"]

PROG = "hiertree-export"


def main(argv: list[str] | None = None) -> int:
    """Export a trained checkpoint to ONNX (dynamic batch, height and width)."""
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (uses its best)")
    parser.add_argument("--onnx", required=True, help="output .onnx file")
    parser.add_argument("--labels", action="store_true", help="output tree-consistent label maps labels_L{l} (int64) instead of logits")
    parser.add_argument("--output", choices=OUTPUTS, help="what the graph returns (default logits; --labels = labels): "
                        "leaf_probs, the leaf probabilities decoding starts from; nodes, the back-off node map; predict, the "
                        "logits plus the tree-consistent leaf map (what hiertree-predict caches)")
    parser.add_argument("--backoff", metavar="auto|THETA", help="the threshold of --output nodes (auto: the calibrated one)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)
    from hiertree.checkpoint import CheckpointError
    from hiertree.models import load_model

    try:
        model, ck = load_model(args.checkpoint, map_location="cpu")
        threshold = None
        if args.output == "nodes":
            if args.backoff is None:
                raise ValueError("--output nodes needs --backoff auto or a threshold in [0, 1]")
            threshold = backoff_threshold(parse_backoff(args.backoff), model.unchanged_checkpoint, model.taxonomy)
        out = export_onnx(model, args.onnx, labels=args.labels, opset=args.opset, output=args.output,
                          threshold=threshold)
    except (CheckpointError, OSError, ValueError) as err:
        return fail(PROG, err)
    kind = args.output or ("labels" if args.labels else "logits")
    last = ck["taxonomy"].num_levels - 1
    shown = {"logits": f"logits_L0..L{last}", "labels": f"labels_L0..L{last}", "predict": f"logits_L0..L{last}, leaf"}.get(kind, kind)
    print(f"hiertree-export: wrote {out} (input 'images' float32 Nx3xHxW 0..255; outputs {shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
