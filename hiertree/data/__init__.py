"""Datasets for hiertree: dataset layouts on disk (:mod:`.layouts`: a mask folder, procedural figures), augmentation,
several sources in one run, batching, resumable epochs and dataset statistics.

Every source yields ``(image uint8 HxWx3 RGB, leaf-id mask uint8 HxW[, id])``; :class:`SegDataset`
turns that into model-ready tensors and :func:`pad_collate` batches images of different sizes.
"""

from hiertree.data.build import DATA_KEYS, SYNTHETIC_KEYS, build_datasets, by_source
from hiertree.data.dataset import SegDataset, pad_collate, size_ordered
from hiertree.data.errors import DataError
from hiertree.data.layouts import LAYOUTS
from hiertree.data.layouts.folder import MaskFolder
from hiertree.data.layouts.synthetic import ROLES, SyntheticFigures, role_map_from_names
from hiertree.data.sampler import EpochSampler
from hiertree.data.skipping import drop_bad_samples
from hiertree.data.sources import Mixture, resolve_sources
from hiertree.data.transforms import PairTransform, eval_transform, normalize_to_tensor, train_transform

__all__ = [
    "DataError",
    "EpochSampler",
    "drop_bad_samples",
    "LAYOUTS",
    "MaskFolder",
    "ROLES",
    "SyntheticFigures",
    "role_map_from_names",
    "PairTransform",
    "train_transform",
    "eval_transform",
    "normalize_to_tensor",
    "SegDataset",
    "pad_collate",
    "size_ordered",
    "build_datasets",
    "by_source",
    "Mixture",
    "resolve_sources",
    "DATA_KEYS",
    "SYNTHETIC_KEYS",
]
