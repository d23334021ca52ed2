"""``data.kind: lip`` (Look Into Person) and ``data.kind: cihp`` (Crowd Instance-level Human Parsing), read as they
ship: no conversion.

LIP::

    root/train_images/<id>.jpg   root/train_segmentations/<id>.png   root/train_id.txt
    root/val_images/<id>.jpg     root/val_segmentations/<id>.png     root/val_id.txt

CIHP::

    root/Training/Images/<id>.jpg     root/Training/Category_ids/<id>.png     root/Training/train_id.txt
    root/Validation/Images/<id>.jpg   root/Validation/Category_ids/<id>.png   root/Validation/val_id.txt

Both hold 20 values per pixel (CIHP's value 10 is torso-skin where LIP's is jumpsuits), mapped onto the people tree
by the built-in maps ``hiertree/config/label_maps/{lip,cihp}.yaml``: a value that covers several of the tree's parts
becomes a label at the node above them, left and right merge. ``data.labels`` replaces the map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import read_id_list
from hiertree.data.layouts.pairs import PairedSamples, layout_labels, need_dir, need_root, pair_by_id
from hiertree.data.layouts.registry import LAYOUTS

if TYPE_CHECKING:
    from pathlib import Path

    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["open_lip", "open_cihp"]

_CIHP_FOLDERS = {"train": "Training", "val": "Validation", "test": "Testing"}


def _split_files(root: "Path", split: str, images: str, masks: str, listing: str, kind: str) -> tuple:
    """The split's id list, image folder and mask folder, each checked; errors name the split's expected files."""
    list_path = root / listing
    if not list_path.is_file():
        raise DataError(f"{list_path}: split list of {kind} split {split!r} not found; {kind} splits are train and val "
                        "(data.train_split, data.val_split), see docs/datasets.md for the layout")
    return read_id_list(list_path), need_dir(root / images, kind), need_dir(root / masks, kind), list_path


def _open(src: "Source", taxonomy: "Taxonomy", kind: str, where: Callable[[str], tuple[str, str, str]]) -> tuple:
    """Train and val of a listed layout: ``where(split) -> (images dir, masks dir, list file)`` under the root."""
    root = need_root(src, kind, ", ".join(where("train")))
    labels = layout_labels(src, taxonomy, kind)

    def split(name: str) -> PairedSamples:
        ids, images, masks, listed = _split_files(root, name, *where(name), kind)
        return PairedSamples(root, name, pair_by_id(ids, images, masks, listed, src.skip_bad), labels, src.skip_bad)

    return split(src.train_split), (split(src.val_split) if src.evaluate else None)


@LAYOUTS.register("lip")
def open_lip(src: "Source", taxonomy: "Taxonomy") -> tuple[PairedSamples, PairedSamples | None]:
    """``data.kind: lip``: ``<split>_images/``, ``<split>_segmentations/`` and ``<split>_id.txt`` under ``data.root``."""
    return _open(src, taxonomy, "lip", lambda s: (f"{s}_images", f"{s}_segmentations", f"{s}_id.txt"))


@LAYOUTS.register("cihp")
def open_cihp(src: "Source", taxonomy: "Taxonomy") -> tuple[PairedSamples, PairedSamples | None]:
    """``data.kind: cihp``: ``Training/`` and ``Validation/`` (``Images/``, ``Category_ids/``, ``<split>_id.txt``)."""
    def where(split: str) -> tuple[str, str, str]:
        top = _CIHP_FOLDERS.get(split, split)
        return f"{top}/Images", f"{top}/Category_ids", f"{top}/{split}_id.txt"

    return _open(src, taxonomy, "cihp", where)
