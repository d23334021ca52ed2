"""The network behind prediction, as one callable: float32 NCHW images 0..255 -> per-level logits at input size.

:class:`TorchRunner` wraps a :class:`~hiertree.models.HierSegModel` (eval mode, inference mode; on a CPU a copy with
folded batch norms, channels_last); :class:`OnnxRunner` runs the graph :func:`hiertree.inference.onnx_graph.export_onnx`
wrote, through ONNX Runtime,
which on a CPU runs the same network faster (it folds batch norm into the convolutions and fuses activations).
Both take any height and width; neither needs its input padded. What decodes their logits does not care which ran.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # PyTorch loads when a TorchRunner is made or an OnnxRunner is fed a tensor: predicting labels
    import torch  # from a cached graph (hiertree-predict's default on a CPU) runs without it

__all__ = ["TorchRunner", "OnnxRunner", "ONNX_PACKAGES", "missing_onnx_packages", "onnx_missing"]

#: What the ONNX Runtime backend needs: ``onnxruntime`` runs the graph, ``onnx`` writes it (export and its metadata).
ONNX_PACKAGES = ("onnxruntime", "onnx")


def missing_onnx_packages() -> list[str]:
    """The packages of :data:`ONNX_PACKAGES` that ``import`` would not find (checked without importing them)."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def onnx_missing(missing: list[str]) -> str:
    """The one line that names what the ONNX Runtime backend lacks and how to install it."""
    return (f"the ONNX Runtime backend needs {' and '.join(missing)}, not installed; install "
            f"{'it' if len(missing) == 1 else 'them'} with `pip install {' '.join(missing)}` (a plain "
            "`pip install hiertree` brings both)")


class TorchRunner:
    """A PyTorch model as a runner: eval mode, inference mode, input channels_last on a CPU.

    On a CPU it runs a copy of the model with its batch norms folded into the convolutions
    (:func:`~hiertree.inference.folding.fold_batchnorm`: one memory pass less per layer, ~10 % faster, outputs
    within float rounding); the copy is made once, so build a new runner after the weights change. Elsewhere
    (``fold=False``, or a GPU) it runs the model itself and leaves it in the mode it found it in. Inputs go in
    channels_last on a CPU (``channels_last`` decides elsewhere: a model trained channels_last on a GPU).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", fold: bool | None = None,
                 channels_last: bool | None = None) -> None:
        import torch

        self.device = torch.device(device)
        cpu = self.device.type == "cpu"
        self.taxonomy = model.taxonomy
        self.flat = bool(getattr(model, "flat", False))
        self.memory_format = torch.channels_last if (cpu if channels_last is None else channels_last) \
            else torch.contiguous_format
        self.model = _folded_copy(model, self.device) if (cpu if fold is None else fold) else model

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return list(self.model(images.to(self.device).contiguous(memory_format=self.memory_format)))
        finally:
            self.model.train(was_training)


def _folded_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An eval-mode, channels_last copy of ``model`` on ``device`` with its batch norms folded."""
    import torch

    from hiertree.inference.folding import fold_batchnorm

    copy_ = copy.deepcopy(model).eval().to(device).to(memory_format=torch.channels_last)
    fold_batchnorm(copy_, torch.full((1, 3, 64, 64), 128.0, device=device))
    return copy_


def _usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one), as PyTorch counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxRunner:
    """An exported hiertree graph (outputs ``logits_L0..``) run by ONNX Runtime on the CPU.

    ``threads`` sets ONNX Runtime's intra-op threads (default: torch's thread count where PyTorch is loaded, else the
    cores this process may use). ``metadata`` is the file's ``metadata_props``, for callers that check where a file came from.
    """

    name = "onnx"

    def __init__(self, path: str | Path, taxonomy: Any, flat: bool = False, threads: int | None = None) -> None:
        if "onnxruntime" in missing_onnx_packages():
            raise RuntimeError(onnx_missing(["onnxruntime"]))
        import onnxruntime as ort

        options = ort.SessionOptions()
        torch = sys.modules.get("torch")  # loaded by the caller or not at all: this runner needs none of it
        options.intra_op_num_threads = threads or (torch.get_num_threads() if torch is not None else _usable_cores())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # worker threads sleep between ops instead of spinning, leaving the cores to decoding and the file writers
        # (whole hiertree-predict runs on 2 cores: 6.9 vs 7.7 s for 40 photos)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.taxonomy = taxonomy
        self.flat = flat
        self.logit_names = [f"logits_L{l}" for l in range(taxonomy.num_levels)]
        if self.outputs not in (self.logit_names, self.logit_names + ["leaf"]):
            raise ValueError(f"{self.path}: the graph outputs {self.outputs}, expected {self.logit_names} (and 'leaf'); "
                             "export it with hiertree-export --output logits or --output predict")
        #: Whether :meth:`leaf` can decode inside the graph (a graph exported with ``output="predict"``).
        self.has_leaf = self.outputs[-1] == "leaf"

    @staticmethod
    def _feed(images: "torch.Tensor | np.ndarray") -> dict:
        if isinstance(images, np.ndarray):
            return {"images": np.ascontiguousarray(images, dtype=np.float32)}
        return {"images": images.detach().to("cpu").float().contiguous().numpy()}

    def __call__(self, images: "torch.Tensor | np.ndarray") -> list[torch.Tensor]:
        import torch

        return [torch.from_numpy(z) for z in self.session.run(self.logit_names, self._feed(images))]

    def leaf(self, images: "torch.Tensor | np.ndarray") -> np.ndarray:
        """The tree-consistent leaf map [N, H, W] (int64 numpy) decoded in the graph (only the ops that lead to it
        run); numpy in and out, no PyTorch needed."""
        return self.session.run(["leaf"], self._feed(images))[0]
