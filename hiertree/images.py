"""Image files and arrays: reading, finding and normalising images to HxWx3 uint8 RGB, and padding sizes up to a
multiple (the one place that arithmetic lives: the model, the traced ONNX graph, image prediction and ``pad_collate``
all round sizes up with :func:`pad_amount`, so their padded sizes agree by construction)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

__all__ = ["ImageError", "IMAGE_SUFFIXES", "suffix_variants", "to_rgb", "read_image", "find_images", "pad_amount",
           "padded_size"]

#: The image files hiertree reads (datasets and hiertree-predict), in any letter case.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(RuntimeError):
    """Input paths or images cannot be used; the message names the path and the fix."""


def to_rgb(image: np.ndarray, where: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB from HxW / HxWx1 grayscale, HxWx3 RGB or HxWx4 RGBA (alpha dropped).

    uint16 images are scaled to 8 bits; other dtypes are refused (convert to uint8 first).
    """
    a = np.asarray(image)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype != np.uint8:
        raise TypeError(f"{where}: expected a uint8 image (values 0..255), got dtype {a.dtype}; convert it with .astype(np.uint8)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{where}: expected HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}; images are channels-last")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{where}: empty image of shape {a.shape}")
    return np.ascontiguousarray(a)



_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def suffix_variants() -> tuple[str, ...]:
    """:data:`IMAGE_SUFFIXES` as a file system with case-sensitive names may hold them: ``.jpg``, ``.JPG``, ``.Jpg``."""
    return tuple(dict.fromkeys(v for s in IMAGE_SUFFIXES for v in (s, s.upper(), s[:2].upper() + s[2:])))


def read_image(path: str | Path, exif: bool = True) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file; grayscale and alpha handled. ``exif``: turn the image as its EXIF
    orientation says (what a photo's viewer shows); datasets read with ``exif=False``, as their masks are not turned.

    An unreadable, empty, truncated (JPEG without its end marker) or undecodable file is an :class:`ImageError`
    naming the file and the fix.
    """
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"{path}: cannot read image file ({err}); check that it exists and is readable") from None
    if data.size == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes); re-copy it or leave it out")
    raw = data.tobytes()
    if raw[:2] == _JPEG_SOI and not raw.rstrip(b"\x00 \t\r\n").endswith(_JPEG_EOI):
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker, {data.size} bytes); re-copy or re-download "
                         "it, or use skip_bad=True to skip it")
    flags = cv2.IMREAD_COLOR if exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(data, flags)
    if bgr is None:
        raise ImageError(f"{path}: not a decodable image ({data.size} bytes, starts {raw[:4]!r}); replace it with a "
                         "valid JPEG or PNG, or leave it out")
    return np.ascontiguousarray(bgr[..., ::-1])


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in the given folders."""
    import cv2

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            if not cv2.haveImageReader(str(p)):
                raise ImageError(f"cannot read image {str(p)!r}: not an image format OpenCV decodes")
            found.append(p)
        else:
            raise ImageError(f"input {str(p)!r} does not exist; give image files or folders of images")
    if not found:
        raise ImageError(f"no images found in {[str(i) for i in inputs]} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found



Size = TypeVar("Size")


def pad_amount(size: Size, multiple: int) -> Size:
    """How much to add to ``size`` to reach the next multiple of ``multiple`` (0 when it is one already).

    Works on Python ints and, unchanged, on the 0-d tensors a shape yields while tracing for ONNX, so
    an exported graph computes its pads from the input's dynamic height and width.
    """
    return (multiple - size % multiple) % multiple  # type: ignore[operator]


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """``(height, width)`` each rounded up to a multiple of ``multiple``."""
    return height + pad_amount(height, multiple), width + pad_amount(width, multiple)
