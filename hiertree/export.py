"""ONNX export with dynamic batch, height and width, and the ``hiertree-export`` command.

``HierSegModel.forward`` pads its input to the encoder's multiple with amounts computed from the
shape and skips the pad when it is zero; traced at one size, that branch would be frozen. The
exported graph therefore wraps the model: it always pads (by :func:`hiertree.padding.pad_amount`,
computed in the graph from the input's shape) with the encoder's mean colour, which is exactly what
the model's own padding amounts to after normalisation, runs the model on a multiple-of-stride input,
and crops back to ``H x W``. Labels are decoded by :func:`hiertree.inference.tree_consistent_levels`.
The legacy TorchScript exporter is used (``dynamo=False``): torch >= 2.9 defaults to the dynamo
exporter, which needs ``onnxscript`` and specialises the pad branch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hiertree.inference import tree_consistent_levels
from hiertree.padding import pad_amount

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["ExportWrapper", "export_onnx", "main"]


class ExportWrapper(nn.Module):
    """uint8/float images 0..255 NCHW → per-level logits, or tree-consistent int64 labels (``labels=True``)."""

    def __init__(self, model: nn.Module, labels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.labels = labels
        self.flat = bool(getattr(model, "flat", False))
        self.taxonomy = model.taxonomy
        self.multiple = int(model.encoder.input_multiple)
        self.register_buffer("mean", model.encoder.mean.detach().float().clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pad (always, amounts traced from the input's shape), run the model, crop, optionally decode."""
        h, w = images.shape[-2], images.shape[-1]
        ph, pw = pad_amount(h, self.multiple), pad_amount(w, self.multiple)
        x = F.pad(images.float() - self.mean, (0, pw, 0, ph)) + self.mean
        logits = [z[:, :, :h, :w] for z in self.model(x)]
        if not self.labels:
            return tuple(logits)
        # the taxonomy's look-up tables enter the traced graph as constants
        _, levels = tree_consistent_levels(logits, self.taxonomy, flat=self.flat)
        return tuple(levels)


def export_onnx(model: nn.Module, path: str | Path, labels: bool = False, opset: int = 17, example_size: tuple[int, int] = (64, 64)) -> Path:
    """Write ``model`` as ONNX with dynamic batch/height/width; outputs ``logits_L{l}`` or ``labels_L{l}`` (int64).

    Input ``images``: float32 [N, 3, H, W] with values 0..255 (no normalisation needed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model, labels).eval()
    n = model.taxonomy.num_levels
    names = [f"{'labels' if labels else 'logits'}_L{l}" for l in range(n)]
    dummy = torch.zeros(1, 3, *example_size)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{k: {0: "batch", 2 if not labels else 1: "height", 3 if not labels else 2: "width"} for k in names}}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(wrapper, (dummy,), str(path), input_names=["images"], output_names=names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
    finally:
        model.train(was_training)
    return path


def main(argv: list[str] | None = None) -> int:
    """Export a trained checkpoint to ONNX (dynamic batch, height and width)."""
    parser = argparse.ArgumentParser(prog="hiertree-export", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (uses its best)")
    parser.add_argument("--onnx", required=True, help="output .onnx file")
    parser.add_argument("--labels", action="store_true", help="output tree-consistent label maps labels_L{l} (int64) instead of logits")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    from hiertree.checkpoint import CheckpointError
    from hiertree.models import load_model

    try:
        model, ck = load_model(args.checkpoint, map_location="cpu")
        out = export_onnx(model, args.onnx, labels=args.labels, opset=args.opset)
    except (CheckpointError, OSError) as err:
        print(f"hiertree-export: error: {err}", file=sys.stderr)
        return 2
    kind = "labels" if args.labels else "logits"
    print(f"hiertree-export: wrote {out} (input 'images' float32 Nx3xHxW 0..255; outputs {kind}_L0..L{ck['taxonomy'].num_levels - 1})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
