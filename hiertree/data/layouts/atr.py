"""``data.kind: atr`` (the ATR human parsing dataset), read as it ships::

    root/JPEGImages/<id>.jpg
    root/SegmentationClassAug/<id>.png     (18 values)

ATR has no official train/val split. Splits here, in this order:

- a split ending in ``.txt`` is a path to an id list (one id per line);
- ``root/<split>_id.txt`` when that file exists (your own lists);
- otherwise ``train`` and ``val`` are cut deterministically from every id that has an image and a mask: an id is in
  ``val`` when the first 8 hex digits of the MD5 of its name, as an integer, are divisible by 10 (about 10 %,
  the same ids on every machine and whatever files are added); ``all`` is every id.

Values map onto the people tree by ``hiertree/config/label_maps/atr.yaml`` (a value over several parts labels the
node above them, the bag is ignored); ``data.labels`` replaces the map.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import read_id_list
from hiertree.data.layouts.pairs import PairedSamples, layout_labels, need_dir, need_root, pair_by_id
from hiertree.data.layouts.registry import LAYOUTS

if TYPE_CHECKING:
    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["atr_is_val", "open_atr"]

IMAGES, MASKS = "JPEGImages", "SegmentationClassAug"
_CUT_SPLITS = ("train", "val", "all")


def atr_is_val(sid: str) -> bool:
    """Whether id ``sid`` is in ATR's cut ``val`` split: MD5 of the id, first 8 hex digits, divisible by 10."""
    return int(hashlib.md5(sid.encode("utf-8")).hexdigest()[:8], 16) % 10 == 0


def _ids(root: Path, split: str) -> tuple[list[str], Path]:
    """The ids of ``split`` and where they came from (a list file, or the mask folder for a cut split)."""
    listed = Path(split) if split.endswith(".txt") else root / f"{split}_id.txt"
    if listed.is_file():
        return read_id_list(listed), listed
    if split.endswith(".txt"):
        raise DataError(f"{listed}: id list not found (a split ending in .txt is a path to an id list; relative paths "
                        "start at the working directory)")
    if split not in _CUT_SPLITS:
        raise DataError(f"ATR split {split!r}: no {listed.name} in {root}; ATR's splits are cut from its files as "
                        f"{', '.join(_CUT_SPLITS)}, or give an id list (a path ending in .txt)")
    masks = need_dir(root / MASKS, "atr")
    ids = sorted(p.stem for p in masks.glob("*.png"))
    if split != "all":
        ids = [sid for sid in ids if atr_is_val(sid) == (split == "val")]
    return ids, masks


@LAYOUTS.register("atr")
def open_atr(src: "Source", taxonomy: "Taxonomy") -> tuple[PairedSamples, PairedSamples | None]:
    """``data.kind: atr``: ``JPEGImages/`` and ``SegmentationClassAug/`` under ``data.root``, split as above."""
    root = need_root(src, "atr", f"{IMAGES}/ and {MASKS}/")
    labels = layout_labels(src, taxonomy, "atr")
    images, masks = need_dir(root / IMAGES, "atr"), need_dir(root / MASKS, "atr")

    def split(name: str) -> PairedSamples:
        ids, listed = _ids(root, name)
        return PairedSamples(root, name, pair_by_id(ids, images, masks, listed, src.skip_bad), labels, src.skip_bad)

    return split(src.train_split), (split(src.val_split) if src.evaluate else None)
