"""The flat smp DeepLabV3+ baseline, wrapped to hiertree's model interface so both train in one loop.

segmentation_models_pytorch is a benchmark-only dependency (``pip install hiertree[bench]``).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hiertree.tree.taxonomy import Taxonomy

__all__ = ["SmpFlatDeepLabV3Plus"]


class SmpFlatDeepLabV3Plus(nn.Module):
    """smp ``DeepLabV3Plus("tu-<encoder>")`` with one flat head over the leaves.

    Takes 0..255 images like :class:`hiertree.HierSegModel`, normalises with the encoder's timm
    config, pads to 32 and returns per-level logits (coarse levels = summed leaf probabilities), so
    hiertree's loss, metrics and tree decoding apply unchanged. ``flat = True`` makes decoding take
    the leaf argmax, exactly what an smp user would do.
    """

    flat = True

    def __init__(self, taxonomy: Taxonomy, encoder: str = "tf_efficientnet_lite0", weights: str | None = None, output_stride: int = 16) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.taxonomy = taxonomy
        self.net = smp.DeepLabV3Plus(f"tu-{encoder}", encoder_weights=None, classes=taxonomy.num_leaves, encoder_output_stride=output_stride)
        if weights:
            state = load_file(weights)
            missing, _ = self.net.encoder.model.load_state_dict(state, strict=False)
            if missing:
                raise RuntimeError(f"{weights} lacks encoder tensors {missing[:5]} for {encoder}")
        cfg = timm.get_pretrained_cfg(encoder).to_dict() if timm.get_pretrained_cfg(encoder) else {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255, persistent=False)

    def leaf_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The smp network's own output for 0..255 images: [B, num_leaves, H, W], what an smp user trains on."""
        h, w = images.shape[-2:]
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.net(x)[..., :h, :w]

    def forward(self, images: torch.Tensor, upsample: bool = True) -> list[torch.Tensor]:
        """Per-level logits (coarse levels from summed leaf probabilities) for hiertree's loop and metrics."""
        return self.taxonomy.coarse_logits(self.leaf_logits(images))
