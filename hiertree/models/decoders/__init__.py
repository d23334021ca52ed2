"""Decoders, one file per architecture (smp's ``decoders/<arch>``), chosen by ``model.decoder``.

A decoder turns the encoder's feature pyramid into one feature map that the per-level heads read. Each file
registers a builder in :data:`DECODERS`::

    @DECODERS.register("fpn")
    def build(channels: Sequence[int], reductions: Sequence[int], options: ModelOptions) -> nn.Module: ...

``channels`` and ``reductions`` describe every map the encoder returns (timm's ``feature_info``, shallow to deep);
the module's ``forward(features)`` takes that list and returns ``[B, out_channels, H / output_reduction, W /
output_reduction]``, the two attributes it must set. A new decoder is a new file here plus its import below.
"""

from hiertree.models.decoders.registry import DECODERS
from hiertree.models.decoders import deeplabv3plus, fpn  # noqa: F401  (each registers its builder)

__all__ = ["DECODERS"]
