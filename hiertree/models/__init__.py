"""Models: a timm encoder (:mod:`.encoder`), a DeepLab decoder (:mod:`.decoder`), one head per taxonomy level
(:mod:`.hierseg`), and the offline ImageNet weights converter (:mod:`.weights`)."""

from hiertree.models.encoder import Encoder, EncoderError
from hiertree.models.hierseg import HierSegModel, load_model, load_weights

__all__ = ["Encoder", "EncoderError", "HierSegModel", "load_model", "load_weights"]
