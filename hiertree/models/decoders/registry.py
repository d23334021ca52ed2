"""The decoder registry: ``model.decoder`` names an entry (see :mod:`hiertree.models.decoders`)."""

from __future__ import annotations

from hiertree.registry import Registry

__all__ = ["DECODERS"]

#: name -> ``build(channels, reductions, options) -> nn.Module`` (the decoder files register themselves)
DECODERS: Registry = Registry("decoder", "model.decoder")
