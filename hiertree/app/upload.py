"""An uploaded file as the photo the page predicts on, or one clear message saying what was wrong and what to do.

The pixels are decoded as :func:`hiertree.images.read_image` decodes a file for ``hiertree-predict`` (OpenCV, EXIF
orientation applied, grayscale repeated to three channels, alpha dropped, 16 bits scaled to 8), so a photo gives the
page the labels the command line gives it; what was converted is said in a note. A photo whose longer side exceeds
``max_side`` is shrunk for the page (and said so); one smaller than :data:`MIN_SIDE` is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

__all__ = ["UploadError", "Photo", "decode_upload", "MIN_SIDE", "MAX_BYTES", "FORMATS"]

log = logging.getLogger(__name__)

#: The shortest side a photo may have: the network sees the image in 32-pixel cells, a smaller one has no detail.
MIN_SIDE = 32
#: The largest upload read, in bytes (a camera's JPEG is 3 to 15 MB).
MAX_BYTES = 40 * 1024 * 1024
#: What to upload, in words.
FORMATS = "a JPEG, PNG, WebP, BMP or TIFF photo"

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


class UploadError(ValueError):
    """An upload the page cannot use; the message names the file, what was wrong and what to do."""


@dataclass
class Photo:
    """The RGB uint8 image the page predicts on, its size as uploaded (width, height) and what was done to it."""

    rgb: np.ndarray
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def _mode_notes(unchanged: np.ndarray) -> list[str]:
    """Notes on a decoded image's channels and depth (the pixels the model sees are always 8-bit RGB)."""
    notes = []
    channels = 1 if unchanged.ndim == 2 else unchanged.shape[2]
    if channels == 1:
        notes.append("grayscale image: its one channel was repeated as red, green and blue (the model was trained "
                     "on colour photos, so expect it to be less sure)")
    elif channels == 2:
        notes.append("grayscale image with transparency: the gray channel was repeated as red, green and blue and the "
                     "transparency dropped")
    elif channels == 4:
        notes.append("RGBA image: the transparency (alpha channel) was dropped; transparent areas show the colour "
                     "stored under them")
    if unchanged.dtype != np.uint8:
        notes.append(f"{unchanged.dtype.itemsize * 8}-bit image: scaled to 8 bits per channel")
    return notes


def _decode(data: bytes, name: str) -> tuple[np.ndarray, list[str]]:
    """RGB pixels of ``data`` and notes on its mode, or an UploadError."""
    import cv2

    if data[:2] == _JPEG_SOI and not data.rstrip(b"\x00 \t\r\n").endswith(_JPEG_EOI):
        raise UploadError(f"{name}: truncated JPEG (no end-of-image marker, {len(data)} bytes); upload the whole file "
                          "again")
    raw = np.frombuffer(data, np.uint8)
    unchanged = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if unchanged is None or unchanged.size == 0:
        raise UploadError(f"{name}: not an image ({len(data)} bytes starting {data[:8]!r} that OpenCV cannot decode); "
                          f"upload {FORMATS}")
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)  # what read_image gives hiertree-predict: EXIF turned, 8-bit BGR
    if bgr is None:
        raise UploadError(f"{name}: an image OpenCV decodes only as it is stored ({unchanged.dtype}, shape "
                          f"{unchanged.shape}), not as a colour photo; save it as an 8-bit JPEG or PNG and upload that")
    return np.ascontiguousarray(bgr[..., ::-1]), _mode_notes(unchanged)


def decode_upload(data: bytes, name: str = "upload", max_side: int = 1024) -> Photo:
    """The photo in ``data`` (a file's bytes), shrunk so its longer side is at most ``max_side`` (0: never).

    Raises :class:`UploadError` for an empty, oversized, undecodable or truncated file, or one smaller than
    :data:`MIN_SIDE` on a side.
    """
    if not data:
        raise UploadError(f"{name}: the file is empty (0 bytes); upload {FORMATS}")
    if len(data) > MAX_BYTES:
        raise UploadError(f"{name}: the file is {len(data) / 2**20:.0f} MiB, above the page's limit of "
                          f"{MAX_BYTES // 2**20} MiB; save a smaller copy (a photo at 4000 pixels is about 5 MiB)")
    rgb, notes = _decode(data, name)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise UploadError(f"{name}: the image is {w}x{h} pixels, too small to segment (the page needs at least "
                          f"{MIN_SIDE} pixels on each side); upload a larger photo")
    if max_side and max(h, w) > max_side:
        rgb = _shrink(rgb, max_side)
        notes.append(f"large image: shrunk from {w}x{h} to {rgb.shape[1]}x{rgb.shape[0]} pixels for the page "
                     f"(longer side at most {max_side}; hiertree-predict labels it at full size)")
    log.debug("%s: %dx%d, %s", name, w, h, "; ".join(notes) or "RGB")
    return Photo(rgb, (w, h), notes)


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``rgb`` resized (area interpolation) so its longer side is ``max_side``."""
    import cv2

    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
