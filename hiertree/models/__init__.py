"""Models: a timm encoder, a DeepLab decoder and one head per taxonomy level."""

from hiertree.inference import decode
from hiertree.models.encoder import Encoder, EncoderError
from hiertree.models.hierseg import MODEL_DEFAULTS, HierSegModel, load_model

__all__ = ["Encoder", "EncoderError", "HierSegModel", "MODEL_DEFAULTS", "decode", "load_model"]
