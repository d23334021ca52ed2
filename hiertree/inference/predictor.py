"""One predictor for every way in: :class:`Predictor` (what ``HierSegModel.predict``, ``hiertree-predict`` and the
demo use), :func:`predict_images` and evaluation (test-time augmentation, large images) all run a *runner*
(:mod:`hiertree.inference.runners`, chosen by :func:`hiertree.inference.backends.make_runner`) through
:func:`log_probs`, then decode.

:class:`Predictor` owns what a trained model needs to predict beyond its network: the runtime (PyTorch with folded
batch norms, or ONNX Runtime / int8 with the graph cached beside the checkpoint), the views, the back-off threshold
(a number, or ``"auto"``: the checkpoint's calibrated one) and the writers of :mod:`hiertree.inference.writers`.

:class:`Views` says what one prediction averages and how large images go: flips and scales, and ``max_side``, the
longest side the network sees in one pass; an image above it is either cut into overlapping windows at full
resolution (``large="tile"``, what evaluation does) or shrunk for the network with its logits upsampled back
(``large="shrink"``, what ``hiertree-predict`` does by default: far cheaper on a 4000 x 3000 photo).

:func:`predict_images` takes RGB (or grayscale / RGBA) uint8 arrays of any size, batches images of one size
together (never padding one to another's size), and returns tree-consistent per-level label maps at each image's
original size; logits are upsampled a strip of rows at a time, so a large photo does not need gigabytes.
"""

from __future__ import annotations

import logging
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from hiertree.checkpoint import calibrated_threshold, read_checkpoint
from hiertree.config.options import EvalOptions, check_args
from hiertree.device import device_name, device_type
from hiertree.images import ImageError, read_image, to_rgb
from hiertree.inference.backends import make_runner
from hiertree.inference.decoding import decode, resolve_backoff
from hiertree.inference.runners import TorchRunner
from hiertree.inference.writers import DEFAULT_OUTPUTS, BackgroundWriter, unique_stems, write_node_legend

if TYPE_CHECKING:  # the model code (timm), and PyTorch itself, load only when the network runs in PyTorch or a
    import torch  # result needs tensors: labels from a cached ONNX graph (hiertree-predict's default) need neither
    from hiertree.models.hierseg import HierSegModel

__all__ = ["Views", "Predictor", "log_probs", "predict_batch", "predict_images", "predict_with_model", "as_runner",
           "backoff_threshold"]

log = logging.getLogger(__name__)

LARGE = ("tile", "shrink")


@dataclass(frozen=True)
class Views:
    """What a prediction averages (``hflip``, ``scales``) and how an image whose longer side exceeds ``max_side``
    goes through the network: ``large="tile"`` (``window`` x ``window`` tiles overlapping by ``overlap``) or
    ``"shrink"``; ``max_side=None``: every image in one pass."""

    hflip: bool = False
    scales: tuple[float, ...] = (1.0,)
    max_side: int | None = None
    large: str = "tile"
    window: int = 1024
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.large not in LARGE:
            raise ValueError(f"large={self.large!r}: choose 'tile' (overlapping windows) or 'shrink'")
        checked = check_args(EvalOptions, "Views", scales=list(self.scales), window=self.window, overlap=self.overlap,
                             **({"max_side": self.max_side} if self.max_side is not None else {}))
        object.__setattr__(self, "scales", tuple(checked["scales"]))

    @classmethod
    def from_options(cls, eval_cfg: "Mapping[str, Any] | EvalOptions", **changes: Any) -> "Views":
        """The views a config's ``eval`` section asks for (``hflip``, ``scales``, ``max_side``, ``window``,
        ``overlap``; tiles above ``max_side``), with ``changes`` (e.g. a command line's ``hflip=True``) on top."""
        if isinstance(eval_cfg, EvalOptions):
            eval_cfg = eval_cfg.model_dump()
        keys = ("hflip", "scales", "max_side", "window", "overlap")
        chosen = {k: eval_cfg[k] for k in keys if k in eval_cfg} | {k: v for k, v in changes.items() if v is not None}
        return cls(**{**chosen, "scales": tuple(chosen.get("scales", (1.0,)))}, large="tile")

    @property
    def single(self) -> bool:
        """One plain pass: no flip, one scale of 1."""
        return not self.hflip and self.scales == (1.0,)


def _is_torch(obj: Any, kind: str) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module`` (``kind="module"``) or a ``torch.Tensor``; never imports PyTorch (an
    object cannot be either unless PyTorch is loaded already)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module if kind == "module" else torch.Tensor)


def as_runner(model: Any, device: str | torch.device = "cpu") -> Any:
    """A runner as it is, a model wrapped as a :class:`~hiertree.inference.runners.TorchRunner`."""
    if _is_torch(model, "module"):
        return TorchRunner(model, device)
    if not (callable(model) and hasattr(model, "taxonomy")):
        raise TypeError(f"expected a HierSegModel or a runner, got {type(model).__name__}")
    return model


def _logits(runner: Any, x: torch.Tensor, views: Views) -> list[torch.Tensor]:
    """One view's logits at ``x``'s size: in one pass, or tile by tile above ``max_side`` (``large="tile"``)."""
    if views.max_side is not None and views.large == "tile" and max(x.shape[-2:]) > views.max_side:
        from hiertree.inference.sliding import sliding_window_logits

        return sliding_window_logits(runner, x, views.window, views.overlap)
    return runner(x)


def log_probs(runner: Any, images: torch.Tensor, views: Views = Views()) -> list[torch.Tensor]:
    """Per-level log of the probabilities averaged over ``views`` (flips, scales), at the input size; with a single
    view, the logits themselves (decoding and scoring read them alike)."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if views.single:
        return [z.float() for z in _logits(runner, images.float(), views)]
    total: list[torch.Tensor] | None = None
    count = 0
    for scale in views.scales:
        x = images.float()
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        for flip in (False, True) if views.hflip else (False,):
            probs = []
            for z in _logits(runner, x.flip(-1) if flip else x, views):
                z = z.float().flip(-1) if flip else z.float()
                if scale != 1.0:
                    z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
                probs.append(z.softmax(1))
            total = probs if total is None else [a + b for a, b in zip(total, probs)]
            count += 1
    return [(p / count).clamp_min(1e-12).log() for p in total]


def predict_batch(runner: Any, images: torch.Tensor, views: Views = Views(), probabilities: bool = False,
                  backoff: float | None = None) -> dict[str, Any]:
    """``{"levels", "leaf", "raw"[, "probs"][, "nodes"]}`` of a tensor batch (NCHW, 0..255), decoded as
    :func:`hiertree.inference.decode` does."""
    return decode(log_probs(runner, images, views), runner.taxonomy, flat=bool(runner.flat),
                  probabilities=probabilities, backoff=backoff)


_STRIP_PIXELS = 1 << 20  # decode about this many output pixels at a time


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int32


def _net_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """The size the network sees: the original one, or shrunk so the longest side is ``max_side``."""
    if max_side is None or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _rows_upsampled(z: torch.Tensor, out_h: int, out_w: int, y0: int, y1: int) -> torch.Tensor:
    """Rows ``y0:y1`` of ``F.interpolate(z, (out_h, out_w), mode="bilinear", align_corners=False)``.

    Interpolates rows by hand (same source coordinates as PyTorch) and columns with 1-D linear
    interpolation, so only the strip is ever materialised.
    """
    import torch
    import torch.nn.functional as F

    c, h, w = z.shape
    if h == out_h:
        rows = z[:, y0:y1]
    else:
        y = (torch.arange(y0, y1, dtype=torch.float64, device=z.device) + 0.5) * (h / out_h) - 0.5
        y = y.clamp_min(0)
        lo = y.floor().long().clamp_max(h - 1)
        hi = (lo + 1).clamp_max(h - 1)
        t = (y - lo).to(z.dtype).view(1, -1, 1)
        rows = z[:, lo] * (1 - t) + z[:, hi] * t
    if w != out_w:
        n = rows.shape[1]
        rows = F.interpolate(rows.reshape(c * n, 1, w), size=out_w, mode="linear", align_corners=False).reshape(c, n, out_w)
    return rows


def _decode_image(logits: list[torch.Tensor], size: tuple[int, int], taxonomy: Any, flat: bool, probabilities: bool,
                  backoff: float | None = None) -> dict[str, Any]:
    """Per-level labels (probabilities, back-off nodes) of one image's logits [C_l, h, w], at ``size``, strip by strip."""
    H, W = size
    levels = [np.empty((H, W), _label_dtype(z.shape[0])) for z in logits]
    leaf = np.empty((H, W), _label_dtype(taxonomy.num_leaves))
    nodes = np.empty((H, W), _label_dtype(taxonomy.num_nodes)) if backoff is not None else None
    probs = [np.empty((z.shape[0], H, W), np.float16) for z in logits] if probabilities else None
    step = max(1, _STRIP_PIXELS // max(W, 1))
    for y0 in range(0, H, step):
        y1 = min(H, y0 + step)
        strip = [_rows_upsampled(z.float(), H, W, y0, y1)[None] for z in logits]
        out = decode(strip, taxonomy, flat=flat, probabilities=probabilities, backoff=backoff, raw=False)
        for l, lab in enumerate(out["levels"]):
            levels[l][y0:y1] = lab[0].cpu().numpy()
        leaf[y0:y1] = out["leaf"][0].cpu().numpy()
        if nodes is not None:
            nodes[y0:y1] = out["nodes"][0].cpu().numpy()
        if probs is not None:
            for l, p in enumerate(out["probs"]):
                probs[l][:, y0:y1] = p[0].cpu().numpy().astype(np.float16)
    result: dict[str, Any] = {"levels": levels, "leaf": leaf, "size": (H, W)}
    if probs is not None:
        result["probs"] = probs
    if nodes is not None:
        result["nodes"] = nodes
    return result


def _from_leaf(leaf: np.ndarray, taxonomy: Any) -> dict[str, Any]:
    """The result of one image from its tree-consistent leaf map (numpy): every level through the taxonomy's LUTs."""
    levels = [lab.astype(_label_dtype(taxonomy.num_classes(l)))
              for l, lab in enumerate(taxonomy.levels_from_leaves(leaf.astype(np.int64, copy=False)))]
    return {"levels": levels, "leaf": leaf.astype(_label_dtype(taxonomy.num_leaves)), "size": tuple(leaf.shape)}


def _groups(net_sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of images with one network size, at most ``batch_size`` at a time: nothing is ever padded."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(net_sizes):
        by_size.setdefault(size, []).append(i)
    return [idx[k : k + batch_size] for idx in by_size.values() for k in range(0, len(idx), batch_size)]


def predict_images(
    model: Any,
    images: Sequence[np.ndarray],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    probabilities: bool = False,
    max_side: int | None = None,
    backoff: float | None = None,
    views: Views | None = None,
) -> list[dict[str, Any]]:
    """Tree-consistent label maps for each image, at its original size.

    ``model``: a :class:`~hiertree.models.HierSegModel` or a runner (:mod:`hiertree.inference.runners`).
    Returns one dict per image, in input order: ``"levels"`` (per-level class-index maps, numpy HxW,
    uint8 up to 256 classes), ``"leaf"`` (leaf-id map), ``"size"`` ``(H, W)`` and, with
    ``probabilities=True``, ``"probs"`` (per-level float16 ``[C_l, H, W]``). Only images of one size share a
    forward pass, so no image is padded to another's size and a batch mate never changes a result. ``views``
    (default: one pass, images above ``max_side`` shrunk) adds flips, scales or tiling. ``backoff`` (a threshold
    in [0, 1]) adds ``"nodes"``: the node-id map of :func:`hiertree.inference.backoff_nodes`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict_images: batch_size must be a positive integer, got {batch_size!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8):
        raise ValueError(f"predict_images: max_side must be None or an integer >= 8, got {max_side!r}")
    views = views or Views(max_side=max_side, large="shrink")
    rgb = [to_rgb(im, where=f"images[{i}]") for i, im in enumerate(images)]
    runner = as_runner(model, device)
    taxonomy = runner.taxonomy
    shrink = views.max_side if views.large == "shrink" else None
    net_sizes = [_net_size(a.shape[0], a.shape[1], shrink) for a in rgb]
    results: list[dict[str, Any] | None] = [None] * len(rgb)
    for idx in _groups(net_sizes, batch_size):
        h, w = net_sizes[idx[0]]
        batch = np.stack([rgb[i] if rgb[i].shape[:2] == (h, w) else _shrunk(rgb[i], h, w) for i in idx])
        if getattr(runner, "has_leaf", False) and not probabilities and backoff is None and views.single and \
                _one_pass(views, h, w) and all(rgb[i].shape[:2] == (h, w) for i in idx):
            nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
            for k, leaf in zip(idx, runner.leaf(nchw)):  # labels only, at the network's size: decoded in the graph,
                results[k] = _from_leaf(leaf, taxonomy)  # numpy in and out (no PyTorch loaded for this)
            continue
        _decode_group(runner, batch, idx, rgb, views, probabilities, backoff, results)
    return results  # type: ignore[return-value]


def _decode_group(runner: Any, batch: np.ndarray, idx: list[int], rgb: Sequence[np.ndarray], views: Views,
                  probabilities: bool, backoff: float | None, results: list) -> None:
    """Logits of one same-size group (NHWC uint8 ``batch``) through PyTorch's decoding, into ``results[idx]``."""
    import torch

    with torch.no_grad():
        logits = log_probs(runner, torch.from_numpy(batch).permute(0, 3, 1, 2).float(), views)
        for k, i in enumerate(idx):
            per_image = [z[k] for z in logits]
            results[i] = _decode_image(per_image, rgb[i].shape[:2], runner.taxonomy, bool(runner.flat), probabilities,
                                       backoff)


def _one_pass(views: Views, h: int, w: int) -> bool:
    return views.max_side is None or views.large == "shrink" or max(h, w) <= views.max_side


def _shrunk(a: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)


def backoff_threshold(backoff: float | str | None, checkpoint: str | Path | None, taxonomy: Any,
                      views: Views = Views()) -> float | None:
    """The back-off threshold ``backoff`` asks for: a number in [0, 1], None, or ``"auto"``: the one calibrated for
    ``checkpoint`` (``eval.py --calibrate-backoff``) with the same test-time augmentation as ``views``; refused
    without a checkpoint whose weights these are (a model built in code, or changed since it was loaded)."""
    calibrated = None
    if backoff == "auto":
        if checkpoint is None:
            raise ValueError("backoff='auto' needs a model loaded by load_model and unchanged since: its "
                             "calibration belongs to the checkpoint's weights; give a threshold in [0, 1]")
        calibrated = calibrated_threshold(checkpoint, views.hflip, views.scales, required=True)
    return resolve_backoff(backoff, calibrated, taxonomy)


#: model -> (backend, device, quantize, weights fingerprint) and the runner built for them: ``model.predict`` called
#: again on the same weights reuses its runner (the folded copy, the ONNX session) instead of building it again
_RUNNERS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, Any]]" = weakref.WeakKeyDictionary()


class Predictor:
    """A trained model's way from photos to tree-consistent maps: one for ``HierSegModel.predict``,
    ``hiertree-predict`` and the demo, so the same images give the same labels everywhere.

    ``model``: a :class:`~hiertree.models.HierSegModel`, or a checkpoint folder, run folder or shipped model's name
    (then the PyTorch model is only built if the network runs in PyTorch or the ONNX cache misses). ``backend``:
    ``auto`` (ONNX Runtime on a CPU for a checkpoint's unchanged weights, else PyTorch with folded batch norms),
    ``torch`` or ``onnx``. ``quantize``: ``auto`` runs the int8 graph for a model folder that ships its int8
    calibration file when ONNX Runtime runs the network, else float; ``int8`` insists (calibrated by
    ``calibration()`` (images) when the model ships no ranges and the graph is not cached yet); ``none``: float. ``views``: flips, scales and large images (default: one pass, large images shrunk).
    ``backoff``: a threshold in [0, 1] or ``"auto"`` (the checkpoint's calibrated one) adds ``"nodes"``.
    ``batch_size``: images of one size per forward pass (default 1 on a CPU, where batching only adds memory
    traffic; 4 elsewhere).
    """

    def __init__(self, model: "HierSegModel | str | Path", *, backend: str = "auto", device: str | torch.device | None = None,
                 views: Views | None = None, backoff: float | str | None = None, quantize: str | None = "auto",
                 batch_size: int | None = None, calibration: Callable[[], Sequence[np.ndarray]] | None = None) -> None:
        self.views = views or Views(large="shrink")
        if _is_torch(model, "module"):
            self.device = str(device) if device is not None else str(next(model.parameters()).device)
            self.checkpoint, self.taxonomy = model.unchanged_checkpoint, model.taxonomy
            self.runner = _model_runner(model, backend, self.device, quantize, calibration)
        else:
            info = read_checkpoint(model)
            self.device = device_name(str(device or "auto"), flag="device")
            self.checkpoint, self.taxonomy = Path(info["dir"]), info["taxonomy"]
            model_cfg = info["config"].get("model") if isinstance(info["config"].get("model"), dict) else {}
            self.runner = make_runner(backend, self.device, self.checkpoint, self.taxonomy,
                                      bool(model_cfg.get("flat", False)), self._builder(), quantize=quantize,
                                      calibration=calibration)
        self.threshold = backoff_threshold(backoff, self.checkpoint, self.taxonomy, self.views)
        self.batch_size = batch_size or (1 if device_type(self.device) == "cpu" else 4)

    def _builder(self) -> Callable[[], "HierSegModel"]:
        checkpoint, device = self.checkpoint, self.device

        def build() -> "HierSegModel":
            from hiertree.models.hierseg import load_model

            return load_model(checkpoint, map_location=device)[0]

        return build

    def __call__(self, images: "np.ndarray | Sequence[np.ndarray] | torch.Tensor", probabilities: bool = False) -> Any:
        """Maps for a numpy image (one dict), a list of them (one dict each, numpy maps at each image's size) or a
        tensor batch (NCHW, 0..255: one dict of tensors). See :func:`predict_images` for the keys."""
        if _is_torch(images, "tensor"):
            import torch

            with torch.no_grad():
                return predict_batch(self.runner, images, self.views, probabilities, self.threshold)
        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        out = predict_images(self.runner, batch, self.device, self.batch_size, probabilities, backoff=self.threshold,
                             views=self.views)
        return out[0] if single else out

    def predict_files(self, paths: Sequence[str | Path], out_dir: str | Path, outputs: Sequence[str] = DEFAULT_OUTPUTS,
                      on_skip: Callable[[str], None] | None = None) -> int:
        """Read, predict and write each image file (``outputs``: kinds of :data:`~hiertree.inference.writers.WRITERS`)
        into ``out_dir``, writing beside compute; an unreadable image is passed to ``on_skip`` (logged without it) and
        skipped. Returns how many were skipped."""
        out, paths = Path(out_dir), [Path(p) for p in paths]
        out.mkdir(parents=True, exist_ok=True)
        if self.threshold is not None:
            write_node_legend(out, self.taxonomy)
        stems, skipped, writer = unique_stems(paths), 0, BackgroundWriter()
        try:
            for start in range(0, len(paths), self.batch_size):
                chunk, images = [], []
                for i in range(start, min(start + self.batch_size, len(paths))):
                    try:
                        images.append(read_image(paths[i]))
                        chunk.append(i)
                    except ImageError as err:
                        (on_skip or log.warning)(f"{err}; skipped")
                        skipped += 1
                for i, image, pred in zip(chunk, images, self(images, "probs" in outputs) if images else []):
                    writer.submit(out, stems[i], image, pred, self.taxonomy, tuple(outputs))
        finally:
            writer.wait()
        return skipped


def _model_runner(model: "HierSegModel", backend: str, device: torch.device, quantize: str | None,
                  calibration: Callable[[], Sequence[np.ndarray]] | None) -> Any:
    """The runner for a model object, reused while its weights stay the same (see :data:`_RUNNERS`)."""
    key = (backend, str(device), quantize, model.fingerprint())
    cached = _RUNNERS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    checkpoint = model.unchanged_checkpoint
    if checkpoint is None and (backend == "onnx" or quantize == "int8"):
        raise ValueError("backend='onnx' (and quantize='int8') need a model loaded by load_model and unchanged since "
                         "(its ONNX graph is cached with the checkpoint); use backend='torch', or export it with "
                         "hiertree-export")
    runner = make_runner(backend if checkpoint else "torch", device, checkpoint, model.taxonomy, model.flat,
                         lambda: model, quantize=quantize, calibration=calibration)
    if getattr(runner, "model", None) is not model:  # a runner holding the model itself would keep it alive forever
        _RUNNERS[model] = (key, runner)
    return runner


def predict_with_model(model: "HierSegModel", images: Any, probabilities: bool = False, backoff: float | str | None = None,
                       backend: str = "auto", quantize: str | None = "auto", max_side: int | None = None,
                       large: str = "shrink", hflip: bool = False, scales: tuple[float, ...] = (1.0,)) -> Any:
    """What :meth:`HierSegModel.predict` runs (its door, wired by the package root): a :class:`Predictor` for these
    arguments; int8 calibrates on the first 8 of these images when its graph is not cached yet."""
    if _is_torch(images, "tensor"):
        first = lambda: [im.permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy() for im in images[:8]]  # noqa: E731
    else:
        first = lambda: ([images] if isinstance(images, np.ndarray) else list(images))[:8]  # noqa: E731
    views = Views(hflip=hflip, scales=tuple(scales), max_side=max_side, large=large)
    return Predictor(model, backend=backend, views=views, backoff=backoff, quantize=quantize, batch_size=4,
                     calibration=first)(images, probabilities)
