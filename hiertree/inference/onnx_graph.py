"""The exported ONNX graph: a model wrapped to pad, run, crop and optionally decode, with dynamic batch, height, width.

``HierSegModel.forward`` pads its input to the encoder's multiple with amounts computed from the
shape and skips the pad when it is zero; traced at one size, that branch would be frozen. The
exported graph therefore wraps the model: it always pads (by :func:`hiertree.images.pad_amount`,
computed in the graph from the input's shape) with the encoder's mean colour, which is exactly what
the model's own padding amounts to after normalisation, runs the model on a multiple-of-stride input,
and crops back to ``H x W``. Labels are decoded by :func:`hiertree.inference.tree_consistent_levels`.
The legacy TorchScript exporter is used (``dynamo=False``): torch >= 2.9 defaults to the dynamo
exporter, which needs ``onnxscript`` and specialises the pad branch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hiertree.inference.decoding import backoff_nodes, check_threshold, node_log_probs, path_logit_sums, tree_consistent_levels
from hiertree.images import pad_amount
from hiertree.inference.onnx_format import OPSET

__all__ = ["ExportWrapper", "export_onnx", "stamp_metadata", "OUTPUTS", "OPSET"]



#: What an exported graph returns: per-level logits, tree-consistent labels, the leaf probabilities tree-consistent
#: and back-off decoding are made from, the back-off node map at a fixed threshold, or (``predict``, what
#: hiertree-predict caches) the per-level logits plus the tree-consistent ``leaf`` map decoded inside the graph.
OUTPUTS = ("logits", "labels", "leaf_probs", "nodes", "predict")


class ExportWrapper(nn.Module):
    """uint8/float images 0..255 NCHW → per-level logits, tree-consistent int64 labels (``labels=True`` or
    ``output="labels"``), the leaf probabilities [N, num_leaves, H, W] (``"leaf_probs"``) or the back-off node-id
    map at ``threshold`` (``"nodes"``)."""

    def __init__(self, model: nn.Module, labels: bool = False, output: str | None = None,
                 threshold: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.output = output or ("labels" if labels else "logits")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown export output {self.output!r}; choose one of {', '.join(OUTPUTS)}")
        if self.output == "nodes":
            if threshold is None:
                raise ValueError("output 'nodes' needs a back-off threshold in [0, 1] (or the calibrated one)")
            threshold = check_threshold(threshold)
        self.threshold = threshold
        self.labels = self.output == "labels"
        self.flat = bool(getattr(model, "flat", False))
        self.taxonomy = model.taxonomy
        self.multiple = int(model.encoder.input_multiple)
        self.register_buffer("mean", model.encoder.mean.detach().float().clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pad (always, amounts traced from the input's shape), run the model, crop, optionally decode."""
        h, w = images.shape[-2], images.shape[-1]
        ph, pw = pad_amount(h, self.multiple), pad_amount(w, self.multiple)
        x = F.pad(images.float() - self.mean, (0, pw, 0, ph)) + self.mean
        if self.output == "predict":
            return self._logits_and_leaf(x, h, w)
        logits = [z[:, :, :h, :w] for z in self.model(x)]
        if self.output == "logits":
            return tuple(logits)
        if self.output == "leaf_probs":
            return (node_log_probs(logits, self.taxonomy, flat=self.flat)[:, : self.taxonomy.num_leaves].exp(),)
        if self.output == "nodes":
            return (backoff_nodes(logits, self.taxonomy, self.threshold, flat=self.flat),)
        # the taxonomy's look-up tables enter the traced graph as constants
        _, levels = tree_consistent_levels(logits, self.taxonomy, flat=self.flat)
        return tuple(levels)

    def _logits_and_leaf(self, x: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-level logits and the leaf map; the path sums are linear in the logits, so they are taken at the
        decoder's stride and upsampled once (num_leaves channels, not every level's), exactly the argmax
        tree-consistent decoding takes of the upsampled logits, up to float rounding."""
        low = self.model(x, upsample=False)
        up = [F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, :, :h, :w] for z in low]
        scores = low[-1] if self.flat else path_logit_sums(low, self.taxonomy)
        leaf = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, :, :h, :w].argmax(1)
        return (*up, leaf)


def export_onnx(model: nn.Module, path: str | Path, labels: bool = False, opset: int = OPSET,
                example_size: tuple[int, int] = (64, 64), output: str | None = None, threshold: float | None = None,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as ONNX with dynamic batch/height/width; outputs ``logits_L{l}``, ``labels_L{l}`` (int64),
    ``leaf_probs`` (float32 [N, num_leaves, H, W]) or ``nodes`` (int64 node ids, back-off at ``threshold``).

    Input ``images``: float32 [N, 3, H, W] with values 0..255 (no normalisation needed). ``metadata`` goes into
    the file's ``metadata_props`` (what a cache checks before it trusts a file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model, labels, output, threshold).eval()
    n = model.taxonomy.num_levels
    kind = wrapper.output
    names = [f"{kind}_L{l}" for l in range(n)] if kind in ("logits", "labels") else [kind]
    if kind == "predict":
        names = [f"logits_L{l}" for l in range(n)] + ["leaf"]
    dense = {k for k in names if k.startswith("logits") or k == "leaf_probs"}  # [N, C, H, W]; the rest [N, H, W]
    dummy = torch.zeros(1, 3, *example_size)
    axes = {"images": {0: "batch", 2: "height", 3: "width"},
            **{k: {0: "batch", 2 if k in dense else 1: "height", 3 if k in dense else 2: "width"} for k in names}}
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
    if metadata:
        stamp_metadata(path, metadata)
    return path


def stamp_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Replace an ONNX file's ``metadata_props`` with ``metadata`` (what a cache checks before trusting a file)."""
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=str(value))
    onnx.save(graph, str(path))
