"""Models: a timm encoder, a DeepLab decoder and one head per taxonomy level."""

from hiertree.models.encoder import Encoder, EncoderError
from hiertree.models.hierseg import MODEL_DEFAULTS, HierSegModel, decode

__all__ = ["Encoder", "EncoderError", "HierSegModel", "MODEL_DEFAULTS", "decode"]
