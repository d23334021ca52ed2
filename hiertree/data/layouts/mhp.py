"""``data.kind: mhp_v2`` (LV-MHP v2, Multi-Human Parsing), read as it ships::

    root/list/<split>.txt                          (one image id per line)
    root/<split>/images/<id>.jpg
    root/<split>/parsing_annos/<id>_<NN>_<MM>.png  (one PNG per person: NN people in the image, this is person MM)

The people of an image are merged into one mask, the largest value winning where two overlap (a labelled part
over background always wins). PNGs saved with three equal channels are read as one. MHP v2 names 58 values;
``hiertree/config/label_maps/mhp_v2.yaml`` maps the body parts and clothes onto the people tree (a value that covers
several of its parts becomes the node above them) and ignores what people hold or carry. ``data.labels`` replaces
the map.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import read_id_list
from hiertree.data.layouts.pairs import PairedSamples, Sample, find_image, layout_labels, need_dir, need_root
from hiertree.data.layouts.registry import LAYOUTS

if TYPE_CHECKING:
    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["open_mhp_v2"]

_ANNO = re.compile(r"^(?P<id>.+)_(?P<n>\d+)_(?P<m>\d+)\.png$")


def _annotations(folder: Path) -> dict[str, list[Path]]:
    """Per image id, its per-person PNGs (sorted), from one listing of ``parsing_annos/``."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in folder.iterdir():
        match = _ANNO.match(path.name)
        if match:
            found[match["id"]].append(path)
    return {sid: sorted(paths) for sid, paths in found.items()}


def _samples(root: Path, split: str, skip_bad: bool) -> list[Sample]:
    listed = root / "list" / f"{split}.txt"
    if not listed.is_file():
        raise DataError(f"{listed}: MHP v2 split list not found; splits are train and val (list/train.txt, "
                        "list/val.txt)")
    images = need_dir(root / split / "images", "mhp_v2")
    annos = _annotations(need_dir(root / split / "parsing_annos", "mhp_v2"))
    samples, missing = [], []
    for sid in read_id_list(listed):
        image = find_image(images, sid)
        if image is None or sid not in annos:
            missing.append(f"{images / sid}.jpg" if image is None else f"{root / split / 'parsing_annos' / sid}_*.png")
            continue
        samples.append((sid, image, tuple(annos[sid])))
    if missing and not skip_bad:
        raise DataError(f"{missing[0]}: not found ({len(missing)} listed id(s) lack files); listed in {listed}: add "
                        "the files or remove the ids (or set data.skip_bad=true to leave them out)")
    return samples


@LAYOUTS.register("mhp_v2")
def open_mhp_v2(src: "Source", taxonomy: "Taxonomy") -> tuple[PairedSamples, PairedSamples | None]:
    """``data.kind: mhp_v2``: ``list/``, ``<split>/images/`` and ``<split>/parsing_annos/`` under ``data.root``."""
    root = need_root(src, "mhp_v2", "list/, train/ and val/")
    labels = layout_labels(src, taxonomy, "mhp_v2")

    def split(name: str) -> PairedSamples:
        return PairedSamples(root, name, _samples(root, name, src.skip_bad), labels, src.skip_bad, color_masks=True)

    return split(src.train_split), (split(src.val_split) if src.evaluate else None)
