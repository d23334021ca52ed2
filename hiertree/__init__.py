"""hiertree: hierarchy-aware semantic segmentation for PyTorch.

The :class:`Taxonomy` (a class tree written in YAML) sizes everything else: the multi-head
:class:`HierSegModel`, the :class:`HierarchicalLoss`, the per-level :class:`HierarchicalMetrics`
and the datasets' per-level targets.
"""

from hiertree.registry import PREDICTORS
from hiertree.tree.taxonomy import Taxonomy, TaxonomyError
from hiertree.version import __version__

# The package root wires the layers: models/ sits below inference/, so HierSegModel.predict asks this registry for
# the predictor instead of importing it (imported on the first predict call).
PREDICTORS.register_lazy("default", "hiertree.inference.predictor:predict_with_model")

__all__ = ["Taxonomy", "TaxonomyError", "HierSegModel", "HierarchicalLoss", "HierarchicalMetrics", "LabelMap", "__version__"]


def __getattr__(name: str):
    # heavy modules (timm, albumentations) load on first use, so `import hiertree` stays fast
    if name == "HierSegModel":
        from hiertree.models import HierSegModel

        return HierSegModel
    if name == "HierarchicalLoss":
        from hiertree.losses import HierarchicalLoss

        return HierarchicalLoss
    if name == "HierarchicalMetrics":
        from hiertree.metrics import HierarchicalMetrics

        return HierarchicalMetrics
    if name == "LabelMap":
        from hiertree.tree.labels import LabelMap

        return LabelMap
    raise AttributeError(f"module 'hiertree' has no attribute {name!r}")
