"""HierSegModel: encoder → decoder (``model.decoder``) → one 1×1 head per taxonomy level; building it and loading
weights. The network only: prediction (runtimes, views, decoding, back-off) lives above it in
:mod:`hiertree.inference`, which :meth:`HierSegModel.predict` reaches through :data:`hiertree.registry.PREDICTORS`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hiertree.checkpoint import CheckpointError, load_checkpoint
from hiertree.config.options import ModelOptions, validate_options
from hiertree.images import pad_amount
from hiertree.models.decoders import DECODERS
from hiertree.models.encoder import Encoder
from hiertree.models.hub import push_to_hub, resolve_pretrained, save_pretrained
from hiertree.registry import PREDICTORS
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["HierSegModel", "load_model", "load_weights"]


class HierSegModel(nn.Module):
    """Hierarchical semantic segmentation on a :class:`~hiertree.Taxonomy`.

    ``forward`` takes images with values 0..255 (uint8 or float, NCHW) and returns one logit map per
    level (coarse to fine). With ``flat=True`` there is a single head on the leaves and coarser
    levels are derived from it (the classic flat baseline, for ablations). :meth:`predict` decodes
    labels that are consistent with the tree by construction.
    """

    def __init__(self, taxonomy: Taxonomy, **options: Any) -> None:
        """``options``: any :class:`~hiertree.config.options.ModelOptions` field by name (``encoder=``,
        ``decoder_channels=``, ...); the others keep their declared defaults. ``self.config`` is the validated
        options as a plain dict. Unknown names or refused values raise ValueError naming them."""
        super().__init__()
        opts = validate_options(ModelOptions, options, "HierSegModel")
        self.taxonomy = taxonomy
        self.flat = opts.flat
        self.config = opts.model_dump()
        build_decoder = DECODERS.get(opts.decoder)  # an unknown name: a RegistryError (a ValueError) with the choices
        self.encoder = Encoder(opts.encoder, opts.encoder_weights, opts.output_stride)
        self.decoder = build_decoder(self.encoder.channels, self.encoder.reductions, opts)
        sizes = [taxonomy.num_leaves] if opts.flat else taxonomy.level_sizes
        self.heads = nn.ModuleList(nn.Conv2d(self.decoder.out_channels, n, 1) for n in sizes)
        self.output_reduction: int = self.decoder.output_reduction

    @classmethod
    def from_config(cls, taxonomy: Taxonomy, cfg: dict[str, Any]) -> "HierSegModel":
        """The model a config's ``model`` section describes (keys it leaves out keep their defaults)."""
        return cls(taxonomy, **cfg)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, map_location: str | torch.device = "cpu", prefer: str = "best",
                        revision: str | None = None, cache_dir: str | Path | None = None) -> "HierSegModel":
        """A trained model from a checkpoint, run or :meth:`save_pretrained` folder, a shipped model's name, or a Hub
        repo id (``"org/name"``, fetched with ``huggingface_hub``; only the local Hub cache under ``HF_HUB_OFFLINE=1``)."""
        model, _ = load_model(resolve_pretrained(name_or_path, revision, cache_dir), prefer=prefer, map_location=map_location)
        return model

    def save_pretrained(self, save_directory: str | Path, **options: Any) -> Path:
        """Write this model in the Hugging Face Hub layout (``model.safetensors``, ``config.json``, ``README.md`` with
        the Hub's front matter); :meth:`from_pretrained` loads it back. ``options``: ``metrics=`` (an evaluation
        result, for the card's per-level mIoU), ``card=`` (Markdown body), ``dtype=``, ``license=``, ``datasets=``,
        ``tags=`` (:func:`hiertree.models.hub.save_pretrained`)."""
        return save_pretrained(self, save_directory, **options)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """:meth:`save_pretrained` into a temporary folder and upload it to the Hub repo ``repo_id`` (network and a
        token needed); ``options`` as :func:`hiertree.models.hub.push_to_hub` takes them. Returns the commit URL."""
        return push_to_hub(self, repo_id, **options)

    def forward(self, images: torch.Tensor, upsample: bool = True) -> list[torch.Tensor]:
        """Logits per level, at input size (``upsample=True``) or at the decoder's stride."""
        h, w = images.shape[-2:]
        m = self.encoder.input_multiple
        ph, pw = pad_amount(h, m), pad_amount(w, m)
        x = self.encoder.normalize(images)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        feats = self.decoder(self.encoder(x))
        logits = [head(feats) for head in self.heads]
        if self.flat:
            logits = self.taxonomy.coarse_logits(logits[0])
        if upsample:
            size = (h + ph, w + pw)
            logits = [F.interpolate(z, size=size, mode="bilinear", align_corners=False)[..., :h, :w] for z in logits]
        elif ph or pw:
            r = self.output_reduction
            logits = [z[..., : -(-h // r), : -(-w // r)] for z in logits]
        return logits

    #: The checkpoint folder :func:`load_model` read this model from (None for a model built in code).
    checkpoint_dir: Path | None = None
    _loaded_as: tuple | None = None

    def fingerprint(self) -> tuple:
        """Storage and in-place version of every tensor: changes when weights are trained, loaded or moved."""
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    @property
    def unchanged_checkpoint(self) -> Path | None:
        """The checkpoint folder these weights were loaded from, if they are still exactly those weights (so its
        cached ONNX graph and its calibrated back-off belong to them); None for a model built in code or changed
        since :func:`load_model`."""
        return self.checkpoint_dir if self.checkpoint_dir is not None and self._loaded_as == self.fingerprint() else None

    def predict(self, images: "torch.Tensor | np.ndarray | list[np.ndarray]", probabilities: bool = False,
                backoff: float | str | None = None, backend: str = "auto", quantize: str | None = "auto",
                max_side: int | None = None, large: str = "shrink", hflip: bool = False,
                scales: tuple[float, ...] = (1.0,)) -> Any:
        """Tree-consistent label maps per level, optionally per-level probabilities and back-off nodes: a door to
        :class:`hiertree.inference.Predictor`, the one predictor of ``hiertree-predict`` and evaluation, so the same
        images give the same labels.

        A tensor batch (NCHW, 0..255) gives ``{"levels", "leaf", "raw"[, "probs"]}`` as tensors. A numpy
        image (HxW, HxWx1, HxWx3 or HxWx4, uint8) or a list of them, of any sizes, gives numpy maps at each image's
        own size (one dict per image; a single dict for a single image). ``backoff`` (a threshold in [0, 1], or
        ``"auto"`` for the calibrated one) adds ``"nodes"``: per pixel the leaf or its first ancestor that is that
        sure. ``backend`` ``auto`` runs ONNX Runtime on a CPU when the model is a checkpoint's, unchanged since
        :func:`load_model` (the graph is exported once and cached with the checkpoint), else PyTorch with folded
        batch norms; ``torch`` always runs PyTorch, ``onnx`` insists. ``quantize`` ``auto`` runs the int8 graph when
        the network runs in ONNX Runtime and the model ships its int8 calibration file (as the shipped CPU model
        does), else float; ``"int8"`` insists, ``"none"`` keeps float.
        Images whose longer side exceeds ``max_side`` are shrunk for the network (``large="shrink"``) or cut into
        overlapping windows (``"tile"``); ``hflip`` and ``scales`` average mirrored and rescaled views.
        """
        return PREDICTORS.get("default")(self, images, probabilities=probabilities, backoff=backoff, backend=backend,
                                         quantize=quantize, max_side=max_side, large=large, hflip=hflip,
                                         scales=tuple(scales))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """Load ``state`` into ``model``; None when every tensor fit, else what did not: ``("shape", the first size
    mismatch)`` or ``("keys", the missing and unexpected names)``, for the caller to word as its error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of another shape
        return "shape", next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
    if missing or unexpected:
        return "keys", f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    return None


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
    problem = load_weights(model, ck["state_dict"])
    if problem and problem[0] == "shape":
        raise CheckpointError(
            f"{ck['dir'] / 'model.safetensors'}: weights do not fit the model that config.yaml and taxonomy.yaml "
            f"describe ({problem[1]}); keep the three files of one checkpoint together"
        )
    if problem:
        raise CheckpointError(f"{ck['dir']}: weights do not match the model its config describes ({problem[1]}); was "
                              "it written by another hiertree version?")
    model.config["encoder_weights"] = ck["config"]["model"].get("encoder_weights")
    if channels_last:  # inference-only models (eval/predict CLIs): oneDNN convolutions ~1.3x faster on CPU, same
        # outputs up to float rounding; off by default since safetensors refuses to save such (non-contiguous) tensors
        model = model.to(memory_format=torch.channels_last)
    model = model.to(map_location).eval()
    model.checkpoint_dir, model._loaded_as = Path(ck["dir"]), model.fingerprint()
    return model, ck
