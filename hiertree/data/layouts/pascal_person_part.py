"""``data.kind: pascal_person_part`` (Pascal-Person-Part: Chen et al. 2014's six part classes of Pascal VOC people),
read as it is usually kept::

    root/JPEGImages/<id>.jpg
    root/SegmentationPart/<id>.png          (or pascal_person_part_gt/, as the original archive names it)
    root/pascal_person_part_trainval_list/<split>_id.txt   (or <split>.txt, list/<split>_id.txt, <split>_id.txt)

A list line is an id (``2008_000003``) or, as the original archive writes it, an image and a mask path
(``/JPEGImages/2008_000003.jpg /SegmentationPart/2008_000003.png``): the image's file stem is the id. Its 7 values
are exactly the leaves of the people tree (``hiertree/config/label_maps/pascal_person_part.yaml``); 255 stays
ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import read_id_list
from hiertree.data.layouts.pairs import PairedSamples, layout_labels, need_dir, need_root, pair_by_id
from hiertree.data.layouts.registry import LAYOUTS

if TYPE_CHECKING:
    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["open_pascal_person_part"]

IMAGES = "JPEGImages"
MASK_DIRS = ("SegmentationPart", "pascal_person_part_gt")
_LISTS = ("pascal_person_part_trainval_list/{}_id.txt", "pascal_person_part_trainval_list/{}.txt", "list/{}_id.txt",
          "{}_id.txt")


def _list_path(root: Path, split: str) -> Path:
    if split.endswith(".txt"):
        if not Path(split).is_file():
            raise DataError(f"{split}: id list not found (a split ending in .txt is a path to an id list)")
        return Path(split)
    for pattern in _LISTS:
        if (root / pattern.format(split)).is_file():
            return root / pattern.format(split)
    looked = ", ".join(pattern.format(split) for pattern in _LISTS)
    raise DataError(f"{root}: no list of Pascal-Person-Part split {split!r}; looked for {looked}")


def _ids(path: Path) -> list[str]:
    """Ids of a list file whose lines are ids or ``image mask`` path pairs."""
    return [Path(line.split()[0]).stem for line in read_id_list(path)]


@LAYOUTS.register("pascal_person_part")
def open_pascal_person_part(src: "Source", taxonomy: "Taxonomy") -> tuple[PairedSamples, PairedSamples | None]:
    """``data.kind: pascal_person_part``: ``JPEGImages/``, ``SegmentationPart/`` and split lists under ``data.root``."""
    root = need_root(src, "pascal_person_part", f"{IMAGES}/, {MASK_DIRS[0]}/ and pascal_person_part_trainval_list/")
    labels = layout_labels(src, taxonomy, "pascal_person_part")
    images = need_dir(root / IMAGES, "pascal_person_part")
    masks = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    if masks is None:
        raise DataError(f"{root}: no mask folder; layout pascal_person_part expects {' or '.join(MASK_DIRS)}/ there")

    def split(name: str) -> PairedSamples:
        listed = _list_path(root, name)
        return PairedSamples(root, name, pair_by_id(_ids(listed), images, masks, listed, src.skip_bad), labels,
                             src.skip_bad)

    return split(src.train_split), (split(src.val_split) if src.evaluate else None)
