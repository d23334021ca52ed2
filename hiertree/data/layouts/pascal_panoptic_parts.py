"""``data.kind: pascal_panoptic_parts`` (PASCAL-Panoptic-Parts: de Geus, Meletis et al., CVPR 2021), read as it
ships, beside the PASCAL VOC 2010 images it labels::

    root/labels/training/<id>.tif      (one 32-bit integer TIFF per image: a panoptic-parts uid per pixel)
    root/labels/validation/<id>.tif    (root may also be the labels/ folder itself)
    root/JPEGImages/<id>.jpg           (or root/VOCdevkit/VOC2010/JPEGImages/, root/VOC2010/JPEGImages/)

Split ``train`` is every TIFF in ``training/``, ``val`` every one in ``validation/`` (the folder names work too).
PPP ships no images: unpack its ``labels/`` into the VOC2010 folder, or link VOC's ``JPEGImages/`` into the PPP folder.

The uids are decoded by the dataset's own tool, ``panoptic_parts.utils.format.decode_uids`` with the package's PPP
dataset spec (countable part instances folded), into the semantic-part id ``sid_pid`` of each pixel; a part-void uid
(part id 0) counts as its instance's semantic label, as PPP's label format says. ``sid_pid`` values map onto the people
tree by ``hiertree/config/label_maps/pascal_panoptic_parts.yaml``: only people are parsed (a person pixel without a
part label is a label at the node above the parts), every other class is background, void is ignored. ``data.labels``
replaces the map. The ``panoptic_parts`` package is an optional extra: ``pip install "hiertree[panoptic]"``.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from hiertree.data.errors import DataError
from hiertree.data.layouts.pairs import PairedSamples, layout_labels, need_dir, need_root, pair_by_id
from hiertree.data.layouts.registry import LAYOUTS

if TYPE_CHECKING:
    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["PanopticPartsSamples", "open_pascal_panoptic_parts", "panoptic_parts_tools", "read_uids"]

KIND = "pascal_panoptic_parts"
INSTALL = 'pip install "hiertree[panoptic]"'
IMAGE_DIRS = ("JPEGImages", "VOCdevkit/VOC2010/JPEGImages", "VOC2010/JPEGImages")
SPLIT_DIRS = {"train": "training", "val": "validation"}
SPEC = "specs/dataset_specs/ppp_datasetspec.yaml"


@functools.cache
def panoptic_parts_tools() -> SimpleNamespace:
    """``decode_uids``, ``encode_ids`` and PPP's ``DatasetSpec`` (``spec``) from the ``panoptic_parts`` package,
    imported on first use; a :class:`DataError` saying how to install it when it is missing."""
    # panoptic_parts 2.0rc6 refuses Python >= 3.10 at import (it reads "3.10" as 3.1 <= 3.6: its dataset_spec.py
    # tests float(platform.python_version()[:3])); it is told a 3.9 while it is imported, and only then.
    real = platform.python_version
    platform.python_version = lambda: "3.9.0"
    try:
        import panoptic_parts
        from panoptic_parts.specs.dataset_spec import DatasetSpec
        from panoptic_parts.utils.format import decode_uids, encode_ids
    except ImportError as err:
        raise DataError(f"data.kind {KIND} decodes the PASCAL-Panoptic-Parts labels with the panoptic_parts package, "
                        f"which is not installed ({err}); install it with: {INSTALL}") from None
    finally:
        platform.python_version = real
    spec_path = Path(panoptic_parts.__file__).resolve().parent / SPEC
    try:
        spec = DatasetSpec(str(spec_path))
    except Exception as err:  # a missing or unreadable file, or a spec of another version
        raise DataError(f"{spec_path}: the panoptic_parts package's PASCAL-Panoptic-Parts spec is not readable "
                        f"({err}); reinstall it with: {INSTALL}") from None
    return SimpleNamespace(decode_uids=decode_uids, encode_ids=encode_ids, spec=spec)


def read_uids(path: Path) -> np.ndarray:
    """A PPP label TIFF as a 2-D int32 array of uids, read as the dataset's own code reads it (Pillow)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except Exception as err:  # Pillow raises several types for corrupt files
        raise DataError(f"{path}: cannot decode label TIFF ({err}); re-download or remove that sample") from None
    if arr.ndim != 2 or arr.dtype.kind not in "ui":
        raise DataError(f"{path}: label TIFF has mode {mode!r}; PASCAL-Panoptic-Parts labels are 32-bit integer "
                        "images, one uid per pixel")
    return arr.astype(np.int32)


def decode_sid_pid(uids: np.ndarray, path: Path) -> np.ndarray:
    """Each pixel's semantic-part id ``sid_pid`` (``decode_uids(..., return_sids_pids=True)`` with PPP's spec); a
    part-void uid ``SS_III_00`` is first written as ``SS_III``, which PPP's label format says it equals."""
    pp = panoptic_parts_tools()
    try:
        sids, iids, pids = pp.decode_uids(uids)
        uids = np.where(pids == 0, pp.encode_ids(sids, iids, np.full_like(pids, -1)), uids).astype(np.int32)
        *_, sid_pid = pp.decode_uids(uids, return_sids_pids=True, experimental_dataset_spec=pp.spec)
    except (ValueError, AssertionError) as err:  # the package's own checks of the encoding and of the spec's ids
        raise DataError(f"{path}: not a PASCAL-Panoptic-Parts label ({err or 'an id outside its dataset spec'}); "
                        "re-download or remove that sample") from None
    return np.asarray(sid_pid, dtype=np.int32)


class PanopticPartsSamples(PairedSamples):
    """A PPP split: :class:`PairedSamples` whose masks are label TIFFs decoded to ``sid_pid`` values."""

    def mask_size(self, index: int) -> tuple[int, int] | None:
        """``(height, width)`` of sample ``index`` from its TIFF's header (Pillow decodes no pixel to tell)."""
        from PIL import Image

        try:
            with Image.open(self.samples[index][2][0]) as im:
                return int(im.height), int(im.width)
        except Exception:  # unreadable: the sample's error comes when it is loaded
            return None

    def _raw_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][2][0]
        return decode_sid_pid(read_uids(path), path)


def _label_dir(root: Path, split: str) -> Path:
    folder = SPLIT_DIRS.get(split, split)
    if split not in SPLIT_DIRS and split not in SPLIT_DIRS.values():
        raise DataError(f"PASCAL-Panoptic-Parts split {split!r}: its splits are train and val (labels/training/, "
                        "labels/validation/); set data.train_split / data.val_split to one of them")
    for path in (root / "labels" / folder, root / folder):
        if path.is_dir():
            return path
    return need_dir(root / "labels" / folder, KIND)


def _image_dir(root: Path) -> Path:
    found = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if found is None:
        raise DataError(f"{root}: no PASCAL VOC 2010 images; layout {KIND} looks for {', '.join(IMAGE_DIRS)} there "
                        f"(PPP ships labels only: unpack its labels/ into VOC2010/, or link VOC2010/JPEGImages into "
                        f"{root})")
    return found


@LAYOUTS.register(KIND)
def open_pascal_panoptic_parts(src: "Source", taxonomy: "Taxonomy") -> tuple[PairedSamples, PairedSamples | None]:
    """``data.kind: pascal_panoptic_parts``: ``labels/{training,validation}/*.tif`` and the VOC ``JPEGImages/``."""
    root = need_root(src, KIND, "labels/training/, labels/validation/ and JPEGImages/")
    panoptic_parts_tools()  # the missing package is said before any file is looked at
    labels = layout_labels(src, taxonomy, KIND)
    images = _image_dir(root)

    def split(name: str) -> PanopticPartsSamples:
        masks = _label_dir(root, name)
        ids = sorted(p.stem for p in masks.glob("*.tif"))
        if not ids:
            raise DataError(f"{masks}: no label TIFFs (*.tif) of split {name!r}; layout {KIND} reads them there")
        return PanopticPartsSamples(root, name, pair_by_id(ids, images, masks, masks, src.skip_bad, ".tif"), labels,
                                    src.skip_bad)

    return split(src.train_split), (split(src.val_split) if src.evaluate else None)
