"""Read a folder of JPEG images and per-pixel leaf-id masks, with errors that name the file.

Layout (``<id>`` from ``<split>_id.txt``, LF or CRLF)::

    root/JPEGImages/<id>.jpg   (or .jpeg / .png, any letter case: .JPG from a camera is found too)
    root/masks/<id>.png        (uint8, one value per pixel)   -- or --
    root/gt_masks/<id>.npy     (uint8 2-D array)
    root/<split>_id.txt        (or a split given as a path to an id list, ``lists/train_20pct.txt``)

Mask values pass through a :class:`~hiertree.tree.labels.LabelMap` (``data.labels``): without one they must be
node ids of the taxonomy (leaf ids, inner node ids, ``ignore_index``).

``__init__`` checks the list and that every file exists (cheap); decoding problems surface in
``__getitem__``. With ``skip_bad=True`` a bad sample is recorded in :attr:`MaskFolder.skipped` and
the next good one (index + 1, + 2, ... modulo the length) is returned instead.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from hiertree.images import IMAGE_SUFFIXES, ImageError, read_image, suffix_variants
from hiertree.tree.labels import LabelMap, LabelMapError
from hiertree.data.errors import DataError
from hiertree.data.layouts.registry import LAYOUTS

if TYPE_CHECKING:
    from hiertree.data.sources import Source
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["MaskFolder", "read_id_list", "open_folder"]

IMAGE_DIR = "JPEGImages"
MASK_FORMATS: tuple[tuple[str, str], ...] = (("masks", ".png"), ("gt_masks", ".npy"))


def read_id_list(path: Path) -> list[str]:
    """Sample ids of a split list: one per line, LF or CRLF, blanks skipped; duplicates are an error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: split list is not UTF-8 text ({err}); write one sample id per line") from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        sid = line.strip()
        if not sid:
            continue
        if sid in first_line:
            raise DataError(
                f"{path}: line {lineno}: duplicate id {sid!r} (first on line {first_line[sid]}); "
                "each sample may be listed once, remove the repeat"
            )
        first_line[sid] = lineno
        ids.append(sid)
    if not ids:
        raise DataError(f"{path}: split list is empty; write one sample id per line")
    return ids


def _read_png_mask(path: Path) -> np.ndarray:
    try:  # Pillow keeps palette indices; OpenCV would expand a palette PNG to colours
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise DataError(
                    f"{path}: mask PNG has mode {im.mode!r}; save it as 8-bit grayscale or palette "
                    "(one leaf id per pixel), not colour"
                )
            return np.asarray(im)
    except ImportError:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except DataError:
        raise
    except Exception as err:  # PIL raises several types for corrupt files
        raise DataError(f"{path}: cannot decode mask PNG ({err}); re-export it as an 8-bit PNG") from None
    if mask is None:
        raise DataError(f"{path}: cannot decode mask PNG; re-export it as an 8-bit PNG")
    return mask


def _read_npy_mask(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err}); re-save it with numpy.save") from None


def _check_mask_array(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.ndim != 2:
        raise DataError(f"{path}: mask must be 2-D (H x W, one leaf id per pixel), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        raise DataError(f"{path}: mask dtype must be uint8, got {mask.dtype}; convert with mask.astype(np.uint8)")
    return mask


class SkipBadSamples:
    """``__getitem__`` of a split that reads samples with ``load(index)``: with ``skip_bad`` a bad sample is recorded
    once in ``skipped`` (and warned about) and the next good one is returned instead. The split sets ``root``,
    ``split``, ``ids``, ``skip_bad``, ``skipped`` and ``_skipped_ids``."""

    root: Path
    split: str
    ids: list[str]
    skip_bad: bool
    skipped: list[tuple[str, str]]
    _skipped_ids: set[str]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        n = len(self.ids)
        if not -n <= index < n:
            raise IndexError(f"split {self.split!r} of {self.root} has {n} samples, asked for index {index}")
        index %= n
        if not self.skip_bad:
            return self.load(index)
        first_error = None
        for step in range(n):
            j = (index + step) % n
            try:
                return self.load(j)
            except DataError as err:
                first_error = first_error or err
                self._record(self.ids[j], str(err))
        raise DataError(f"split {self.split!r} of {self.root}: every sample is bad, e.g. {first_error}")

    def _record(self, sid: str, reason: str) -> None:
        if sid in self._skipped_ids:
            return
        self._skipped_ids.add(sid)
        self.skipped.append((sid, reason))
        warnings.warn(f"skipping bad sample {sid!r}: {reason}", RuntimeWarning, stacklevel=3)


class MaskFolder(SkipBadSamples):
    """Samples ``(image RGB uint8 HxWx3, mask uint8 HxW, id)`` of one split of a mask folder."""

    def __init__(self, root: str | Path, split: str, taxonomy: "Taxonomy", skip_bad: bool = False,
                 labels: LabelMap | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.taxonomy = taxonomy
        self.labels = labels if labels is not None else LabelMap(taxonomy)
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []
        self._skipped_ids: set[str] = set()
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {str(self.root)!r} does not exist or is not a folder; point data.root at the folder "
                f"holding {IMAGE_DIR}/, masks/ or gt_masks/ and <split>_id.txt"
            )
        list_path = Path(split) if split.endswith(".txt") else self.root / f"{split}_id.txt"
        if split.endswith(".txt") and not list_path.is_file():
            raise DataError(f"{list_path}: id list not found (a split ending in .txt is a path to an id list, one id "
                            "per line; relative paths start at the working directory)")
        if not list_path.is_file():
            found = sorted(p.name[: -len("_id.txt")] for p in self.root.glob("*_id.txt"))
            raise DataError(
                f"{list_path}: split list not found; available splits in {self.root}: "
                f"{', '.join(found) if found else 'none (no *_id.txt files)'}"
            )
        self.ids = read_id_list(list_path)
        self._masks: list[Path | None] = []
        self._images: list[Path | None] = []
        self._missing: dict[str, str] = {}
        for sid in self.ids:
            self._masks.append(self._locate(sid))
        if self._missing and not skip_bad:
            first = next(iter(self._missing.values()))
            more = f" (and {len(self._missing) - 1} more ids)" if len(self._missing) > 1 else ""
            raise DataError(f"{first}{more}; listed in {list_path}")
        if len(self._missing) == len(self.ids):
            raise DataError(f"{list_path}: every listed sample is missing files, e.g. {next(iter(self._missing.values()))}")

    def _locate(self, sid: str) -> Path | None:
        image = next((p for ext in suffix_variants() if (p := self.root / IMAGE_DIR / f"{sid}{ext}").is_file()), None)
        self._images.append(image)
        if image is None:
            self._missing[sid] = (f"{self.root / IMAGE_DIR / sid}.jpg: image for id {sid!r} not found (nor "
                                  f"{'/'.join(IMAGE_SUFFIXES[1:])} in any letter case); add it or remove the id from the "
                                  "list")
            return None
        for folder, ext in MASK_FORMATS:
            path = self.root / folder / f"{sid}{ext}"
            if path.is_file():
                return path
        looked = " or ".join(str(self.root / folder / f"{sid}{ext}") for folder, ext in MASK_FORMATS)
        self._missing[sid] = f"mask for id {sid!r} not found: looked for {looked}; add one or remove the id"
        return None

    def __len__(self) -> int:
        return len(self.ids)

    def mask_size(self, index: int) -> tuple[int, int] | None:
        """``(height, width)`` of sample ``index`` from its mask file's header alone (no decoding); None if unknown."""
        path = self._masks[index]
        if path is None:
            return None
        try:
            if path.suffix == ".png":
                with open(path, "rb") as f:
                    head = f.read(24)
                if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
                    return None
                width, height = struct.unpack(">II", head[16:24])
                return int(height), int(width)
            shape = np.load(path, mmap_mode="r").shape
            return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None
        except (OSError, ValueError):
            return None

    def image_path(self, index: int) -> Path:
        return self._images[index] or self.root / IMAGE_DIR / f"{self.ids[index]}.jpg"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Sample ``index`` or a :class:`DataError` naming the bad file; no skipping."""
        sid = self.ids[index]
        mask_path = self._masks[index]
        if mask_path is None:
            raise DataError(self._missing[sid])
        image_path = self.image_path(index)
        try:
            image = read_image(image_path, exif=False)  # masks are not turned by EXIF: neither is the image
        except ImageError as err:
            raise DataError(str(err)) from None
        raw = _read_png_mask(mask_path) if mask_path.suffix == ".png" else _read_npy_mask(mask_path)
        mask = _check_mask_array(raw, mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but image {image_path.name} is "
                f"{image.shape[0]}x{image.shape[1]}; they must match pixel for pixel"
            )
        try:
            mask = self.labels.apply(mask, where=str(mask_path))
        except LabelMapError as err:
            raise DataError(str(err)) from None
        return image, mask, sid

    def load_mask(self, index: int) -> np.ndarray:
        """The node-id mask of sample ``index`` alone (no image decoding), for statistics."""
        mask_path = self._masks[index]
        if mask_path is None:
            raise DataError(self._missing[self.ids[index]])
        raw = _read_png_mask(mask_path) if mask_path.suffix == ".png" else _read_npy_mask(mask_path)
        try:
            return self.labels.apply(_check_mask_array(raw, mask_path), where=str(mask_path))
        except LabelMapError as err:
            raise DataError(str(err)) from None


@LAYOUTS.register("folder")
def open_folder(src: "Source", taxonomy: "Taxonomy") -> tuple[MaskFolder, MaskFolder | None]:
    """``data.kind: folder``: the source's train and val splits under ``data.root`` (see :class:`MaskFolder`)."""
    if not src.root:
        raise DataError("config key 'data.root' is missing: set it to the dataset folder for kind 'folder'")
    train = MaskFolder(src.root, src.train_split, taxonomy, src.skip_bad, src.labels)
    val = MaskFolder(src.root, src.val_split, taxonomy, src.skip_bad, src.labels) if src.evaluate else None
    return train, val
