"""What the human-parsing layouts share: a split as a list of ``(id, image file, mask files)`` read as the dataset
ships it, and each layout's built-in label map onto the people tree.

A layout module (``lip.py``, ``atr.py``, ...) finds its files and hands them to :class:`PairedSamples`; masks are
read by Pillow (palette indices kept), a sample with several mask files (MHP: one per person) is merged by the
largest value per pixel, and values go through the source's label map -- the layout's own map onto
the nodes of the taxonomy its YAML file names, unless ``data.labels`` gives one.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import SkipBadSamples
from hiertree.images import ImageError, read_image, suffix_variants
from hiertree.tree.labels import LabelMap, LabelMapError

if TYPE_CHECKING:
    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["PairedSamples", "Sample", "builtin_label_map", "find_image", "layout_labels", "need_root", "need_dir", "pair_by_id",
           "read_label_png"]

log = logging.getLogger(__name__)

#: one sample: its id, its image file, its mask files (several: merged per pixel by the largest value)
Sample = tuple[str, Path, tuple[Path, ...]]


def need_root(src: "Source", kind: str, holds: str) -> Path:
    """The source's root folder, or an error saying what ``data.root`` of layout ``kind`` should hold."""
    if not src.root:
        raise DataError(f"config key 'data.root' is missing: set it to the {kind} folder (the one holding {holds})")
    root = Path(src.root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} (layout {kind}) does not exist or is not a folder; point it at the "
                        f"folder holding {holds}")
    return root


def need_dir(path: Path, kind: str) -> Path:
    """``path`` if it is a folder, else an error naming it and the layout that expects it."""
    if not path.is_dir():
        raise DataError(f"{path}: folder not found; layout {kind} expects it there (see docs/datasets.md)")
    return path


def find_image(folder: Path, sid: str) -> Path | None:
    """The image file of ``sid`` in ``folder`` (.jpg, .png, ... in any letter case), None if there is none."""
    return next((p for ext in suffix_variants() if (p := folder / f"{sid}{ext}").is_file()), None)


def pair_by_id(ids: Sequence[str], image_dir: Path, mask_dir: Path, listed_in: Path, skip_bad: bool,
               mask_suffix: str = ".png") -> list[Sample]:
    """``(id, image, (mask,))`` for each listed id: image ``image_dir/<id>.jpg`` (any image suffix), mask
    ``mask_dir/<id><mask_suffix>``. A missing file is an error naming it, or with ``skip_bad`` a warning and the id
    left out."""
    samples: list[Sample] = []
    missing: list[str] = []
    for sid in ids:
        image, mask = find_image(image_dir, sid), mask_dir / f"{sid}{mask_suffix}"
        if image is None:
            missing.append(f"{image_dir / sid}.jpg: image for id {sid!r} not found")
        elif not mask.is_file():
            missing.append(f"{mask}: mask for id {sid!r} not found")
        else:
            samples.append((sid, image, (mask,)))
    if missing and not skip_bad:
        more = f" (and {len(missing) - 1} more ids)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}{more}; listed in {listed_in}: add the files or remove the ids (or set "
                        "data.skip_bad=true to leave them out)")
    if missing:
        log.warning("data.skip_bad: %d id(s) of %s have no files and are left out, e.g. %s", len(missing), listed_in,
                    missing[0])
    return samples


#: the built-in value -> node maps of the layouts, one YAML file per ``data.kind`` (data, not code: the node names
#: belong to the taxonomy the file names)
LABEL_MAPS = Path(__file__).resolve().parents[2] / "config" / "label_maps"


@functools.cache
def builtin_label_map(kind: str) -> tuple[str, dict[int, str], dict[int, str]]:
    """Layout ``kind``'s built-in map: ``(taxonomy it names, value -> its meaning, value -> node or 'ignore')``."""
    import yaml

    path = LABEL_MAPS / f"{kind}.yaml"
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as err:
        raise DataError(f"{path}: built-in label map of layout {kind!r} not readable ({err}); set data.labels") from None
    values = spec["values"]
    return spec["taxonomy"], {v: e["name"] for v, e in values.items()}, {v: e["node"] for v, e in values.items()}


def layout_labels(src: "Source", taxonomy: "Taxonomy", kind: str) -> LabelMap:
    """The source's ``data.labels`` when given, else layout ``kind``'s built-in map (:func:`builtin_label_map`)."""
    if not src.labels.is_identity:
        return src.labels
    tree, _, builtin = builtin_label_map(kind)
    try:
        return LabelMap(taxonomy, builtin, where=f"layout {kind}'s built-in label map")
    except LabelMapError as err:
        raise DataError(f"{err}; the built-in map names nodes of taxonomy {tree!r}: for another tree set "
                        f"data.labels (one node name per {kind} value, docs/datasets.md lists them)") from None


def read_label_png(path: Path, color: bool = False) -> np.ndarray:
    """A label PNG as a 2-D array: grayscale or palette indices; ``color``: a 3-channel PNG whose channels repeat
    the label (MHP v2) is read as its first channel."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception as err:  # Pillow raises several types for corrupt files
        raise DataError(f"{path}: cannot decode label PNG ({err}); re-download or remove that sample") from None
    if mode in ("RGB", "RGBA") and color:
        return np.ascontiguousarray(arr[..., 0])
    if arr.ndim != 2 or arr.dtype.kind not in "ui":
        raise DataError(f"{path}: label PNG has mode {mode!r}; expected 8-bit grayscale or palette (one value per "
                        "pixel)")
    return arr


def _png_size(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


class PairedSamples(SkipBadSamples):
    """One split of a listed dataset: ``(image RGB uint8 HxWx3, node-id mask, id)`` per sample.

    ``samples``: ``(id, image path, mask paths)``; ``color_masks``: 3-channel label PNGs are read as one channel.
    With ``skip_bad`` a bad sample is recorded in :attr:`skipped` and the next good one is returned instead
    (``data.skip_bad`` also drops them up front: :func:`hiertree.data.skipping.drop_bad_samples`).
    """

    def __init__(self, root: Path, split: str, samples: Sequence[Sample], labels: LabelMap, skip_bad: bool = False,
                 color_masks: bool = False) -> None:
        if not samples:
            raise DataError(f"split {split!r} of {root}: no samples found; check the split's list and folders")
        self.root, self.split, self.labels = Path(root), split, labels
        self.samples = list(samples)
        self.ids = [s[0] for s in self.samples]
        self.skip_bad, self.color_masks = skip_bad, color_masks
        self.skipped: list[tuple[str, str]] = []
        self._skipped_ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def mask_size(self, index: int) -> tuple[int, int] | None:
        """``(height, width)`` of sample ``index`` from its first mask file's header (no decoding)."""
        return _png_size(self.samples[index][2][0])

    def _raw_mask(self, index: int) -> np.ndarray:
        sid, _, paths = self.samples[index]
        merged = None
        for path in paths:
            mask = read_label_png(path, self.color_masks)
            if merged is not None and mask.shape != merged.shape:
                raise DataError(f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but {paths[0].name} of the same "
                                f"image {sid!r} is {merged.shape[0]}x{merged.shape[1]}; they must match")
            merged = mask if merged is None else np.maximum(merged, mask)
        return merged

    def load_mask(self, index: int) -> np.ndarray:
        """The node-id mask of sample ``index`` alone (no image decoding), for statistics."""
        paths = self.samples[index][2]
        try:
            return self.labels.apply(self._raw_mask(index), where=str(paths[0]))
        except LabelMapError as err:
            raise DataError(str(err)) from None

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Sample ``index`` or a :class:`DataError` naming the bad file; no skipping."""
        sid, image_path, paths = self.samples[index]
        try:
            image = read_image(image_path, exif=False)
        except ImageError as err:
            raise DataError(str(err)) from None
        mask = self.load_mask(index)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{paths[0]}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but image {image_path.name} "
                            f"is {image.shape[0]}x{image.shape[1]}; they must match pixel for pixel")
        return image, mask, sid
