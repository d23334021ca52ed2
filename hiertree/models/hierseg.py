"""HierSegModel: encoder → DeepLab decoder → one 1×1 head per taxonomy level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hiertree.checkpoint import CheckpointError, load_backoff, load_checkpoint
from hiertree.inference import coarse_logits_from_leaves, decode, resolve_backoff
from hiertree.models.decoder import DeepLabDecoder
from hiertree.models.encoder import Encoder
from hiertree.options import ModelOptions, defaults, validate_options
from hiertree.padding import pad_amount
from hiertree.taxonomy import Taxonomy

__all__ = ["HierSegModel", "MODEL_DEFAULTS", "load_model"]

#: The declared model defaults (:class:`~hiertree.options.ModelOptions`) as a plain dict, kept for callers.
MODEL_DEFAULTS: dict[str, Any] = defaults(ModelOptions)


class HierSegModel(nn.Module):
    """Hierarchical semantic segmentation on a :class:`~hiertree.Taxonomy`.

    ``forward`` takes images with values 0..255 (uint8 or float, NCHW) and returns one logit map per
    level (coarse to fine). With ``flat=True`` there is a single head on the leaves and coarser
    levels are derived from it (the classic flat baseline, for ablations). :meth:`predict` decodes
    labels that are consistent with the tree by construction.
    """

    def __init__(self, taxonomy: Taxonomy, **options: Any) -> None:
        """``options``: any :class:`~hiertree.options.ModelOptions` field by name (``encoder=``,
        ``decoder_channels=``, ...); the others keep their declared defaults. ``self.config`` is the validated
        options as a plain dict. Unknown names or refused values raise ValueError naming them."""
        super().__init__()
        opts = validate_options(ModelOptions, options, "HierSegModel")
        self.taxonomy = taxonomy
        self.flat = opts.flat
        self.config = opts.model_dump()
        os_ = opts.output_stride
        rates = tuple(opts.aspp_rates) if opts.aspp_rates else tuple(r * 16 // os_ for r in (6, 12, 18))
        self.encoder = Encoder(opts.encoder, opts.encoder_weights, os_)
        self.decoder = DeepLabDecoder(self.encoder.out_channels, opts.decoder_channels, rates, opts.skip,
                                      opts.skip_channels, opts.separable, opts.dropout, opts.fuse_convs)
        sizes = [taxonomy.num_leaves] if opts.flat else taxonomy.level_sizes
        self.heads = nn.ModuleList(nn.Conv2d(opts.decoder_channels, n, 1) for n in sizes)
        self.output_reduction = self.encoder.reductions[0] if opts.skip else self.encoder.reductions[1]

    @classmethod
    def from_config(cls, taxonomy: Taxonomy, cfg: dict[str, Any]) -> "HierSegModel":
        """The model a config's ``model`` section describes (keys it leaves out keep their defaults)."""
        return cls(taxonomy, **cfg)

    @classmethod
    def from_pretrained(cls, path: str, map_location: str | torch.device = "cpu", prefer: str = "best") -> "HierSegModel":
        """Rebuild a trained model from a checkpoint or run folder alone (no network, no other file)."""
        model, _ = load_model(path, prefer=prefer, map_location=map_location)
        return model

    def forward(self, images: torch.Tensor, upsample: bool = True) -> list[torch.Tensor]:
        """Logits per level, at input size (``upsample=True``) or at the decoder's stride."""
        h, w = images.shape[-2:]
        m = self.encoder.input_multiple
        ph, pw = pad_amount(h, m), pad_amount(w, m)
        x = self.encoder.normalize(images)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        low, high = self.encoder(x)
        feats = self.decoder(low, high)
        logits = [head(feats) for head in self.heads]
        if self.flat:
            logits = coarse_logits_from_leaves(logits[0], self.taxonomy)
        if upsample:
            size = (h + ph, w + pw)
            logits = [F.interpolate(z, size=size, mode="bilinear", align_corners=False)[..., :h, :w] for z in logits]
        elif ph or pw:
            r = self.output_reduction
            logits = [z[..., : -(-h // r), : -(-w // r)] for z in logits]
        return logits

    #: The back-off threshold calibrated on a split (``eval.py --calibrate-backoff``), set by :func:`load_model`.
    backoff_threshold: float | None = None

    def resolve_backoff(self, backoff: float | str | None) -> float | None:
        """A threshold from ``backoff``: a number in [0, 1], ``"auto"`` (the calibrated one) or None."""
        return resolve_backoff(backoff, self.backoff_threshold, self.taxonomy)

    #: The checkpoint folder :func:`load_model` read this model from (None for a model built in code).
    checkpoint_dir: Path | None = None
    _loaded_as: tuple | None = None

    def _fingerprint(self) -> tuple:
        """Storage and in-place version of every tensor: changes when weights are trained, loaded or moved."""
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    def _runner(self, backend: str, device: torch.device) -> Any:
        """The network as a runner: ONNX Runtime (graph cached with the checkpoint) or this model in PyTorch."""
        from hiertree.backends import cached_onnx_runner, choose_backend
        from hiertree.runners import TorchRunner

        unchanged = self.checkpoint_dir is not None and self._loaded_as == self._fingerprint()
        chosen = choose_backend(backend, device)
        if chosen == "onnx" and not unchanged:
            if backend == "onnx":
                raise ValueError("backend='onnx' needs a model loaded by load_model and unchanged since (its ONNX graph "
                                 "is cached with the checkpoint); use backend='torch', or export it with hiertree-export")
            chosen = "torch"
        if chosen == "torch":
            return TorchRunner(self, device)
        cached = getattr(self, "_onnx", None)
        if cached is None or cached[0] != self._loaded_as:
            import copy

            build = lambda: copy.deepcopy(self).cpu()  # noqa: E731 - exported once per checkpoint
            self._onnx = (self._loaded_as, cached_onnx_runner(self.checkpoint_dir, self.taxonomy, self.flat, build))
        return self._onnx[1]

    @torch.no_grad()
    def predict(self, images: "torch.Tensor | np.ndarray | list[np.ndarray]", probabilities: bool = False,
                backoff: float | str | None = None, backend: str = "auto") -> Any:
        """Tree-consistent label maps per level, each head's raw argmax, optionally per-level probabilities.

        A tensor batch (NCHW, 0..255) gives ``{"levels", "leaf", "raw"[, "probs"]}`` as tensors. A numpy
        image (HxW, HxWx1, HxWx3 or HxWx4, uint8) or a list of them, of any sizes, goes through
        :func:`hiertree.predict.predict_images` and gives numpy maps at each image's own size (one dict
        per image; a single dict for a single image). ``backoff`` (a threshold in [0, 1], or ``"auto"`` for the
        calibrated one) adds ``"nodes"``: per pixel the leaf or its first ancestor that is that sure.
        ``backend`` (numpy images): ``auto`` runs ONNX Runtime on a CPU when it is installed and the model is a
        checkpoint's, unchanged since :func:`load_model` (the graph is exported once and cached with the checkpoint);
        ``torch`` always runs this model; ``onnx`` insists.
        """
        threshold = self.resolve_backoff(backoff)
        if isinstance(images, (np.ndarray, list, tuple)):
            from hiertree.image_predict import predict_images

            device = next(self.parameters()).device
            single = isinstance(images, np.ndarray)
            out = predict_images(self._runner(backend, device), [images] if single else list(images), device=device,
                                 probabilities=probabilities, backoff=threshold)
            return out[0] if single else out
        logits = self(images)
        return decode(logits, self.taxonomy, flat=self.flat, probabilities=probabilities, backoff=threshold)


def load_model(path: str | Path, prefer: str = "best", map_location: str | torch.device = "cpu",
               channels_last: bool = False) -> tuple["HierSegModel", dict[str, Any]]:
    """Rebuild a :class:`HierSegModel` from a checkpoint folder alone (no network, no other file).

    ``channels_last=True`` lays the convolution weights out for faster inference (what ``eval.py`` and
    ``hiertree-predict`` do); the same works for a model you hold: ``model.to(memory_format=torch.channels_last)``.
    """
    ck = load_checkpoint(path, prefer)
    if not isinstance(ck["config"].get("model"), dict):
        raise CheckpointError(
            f"{ck['dir'] / 'config.yaml'}: expected a mapping with a 'model:' section, found keys "
            f"{sorted(map(str, ck['config']))}; use a checkpoint folder written by hiertree-train "
            "(its config.yaml describes the model)"
        )
    model_cfg = dict(ck["config"]["model"])
    model_cfg["encoder_weights"] = None  # the trained weights below replace any pretrained ones
    try:
        model = HierSegModel.from_config(ck["taxonomy"], model_cfg)
    except Exception as err:  # unknown keys, an encoder timm does not know, values of the wrong type
        raise CheckpointError(
            f"{ck['dir'] / 'config.yaml'}: its 'model:' section does not build a model "
            f"({type(err).__name__}: {err}); was it written by another hiertree version or edited by hand?"
        ) from None
    try:
        missing, unexpected = model.load_state_dict(ck["state_dict"], strict=False)
    except RuntimeError as err:  # tensors of another shape
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise CheckpointError(
            f"{ck['dir'] / 'model.safetensors'}: weights do not fit the model that config.yaml and taxonomy.yaml "
            f"describe ({first}); keep the three files of one checkpoint together"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ck['dir']}: weights do not match the model its config describes "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); was it written by another hiertree version?"
        )
    model.config["encoder_weights"] = ck["config"]["model"].get("encoder_weights")
    calibration = load_backoff(ck["dir"])
    model.backoff_threshold = None if calibration is None else float(calibration["threshold"])
    if channels_last:  # inference-only models (eval/predict CLIs): oneDNN convolutions ~1.3x faster on CPU, same
        # outputs up to float rounding; off by default since safetensors refuses to save such (non-contiguous) tensors
        model = model.to(memory_format=torch.channels_last)
    model = model.to(map_location).eval()
    model.checkpoint_dir, model._loaded_as = Path(ck["dir"]), model._fingerprint()
    return model, ck
