"""Model-ready samples and batches: :class:`SegDataset` turns a source's ``(image, node-id mask[, id])`` into tensors,
:func:`pad_collate` batches images of different sizes, :func:`size_ordered` lets evaluation batch equal sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from hiertree.data.errors import DataError
from hiertree.data.transforms import PairTransform
from hiertree.images import padded_size

if TYPE_CHECKING:
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["SegDataset", "pad_collate", "size_ordered"]


class SegDataset(torch.utils.data.Dataset):
    """Wrap a source of ``(image, node-id mask[, id])`` into ``{"image": uint8 3xHxW, "mask": long HxW, "id": str,
    "partial": bool}``; ``partial`` says whether some pixel is labelled at an inner node.

    Images stay uint8 (4× fewer bytes to move); the model normalises them for its encoder.
    ``transform`` is a :class:`PairTransform` (or any ``(image, mask) -> (image, mask)`` callable, or
    None). Indices past ``len`` encode ``(epoch + 1) * len + i`` (see ``hiertree.training.engine.EpochSampler``): the
    sample is ``i`` and its augmentation is seeded from that index alone, so it is the same whichever
    worker loads it and a resumed run repeats it exactly. Plain indices keep one random stream per
    data-loader worker (``worker_info.seed``), or ``torch.initial_seed()`` in the main process.
    """

    def __init__(self, source: Sequence, transform: Callable | None, taxonomy: "Taxonomy") -> None:
        self.source = source
        self.transform = transform
        self.taxonomy = taxonomy
        self._seeded_with: int | None = None

    def __len__(self) -> int:
        return len(self.source)

    def _seed_for(self, index: int) -> None:
        t = self.transform
        if isinstance(t, PairTransform) and not t.is_identity:
            t.reseed((t.seed or 0) * 1_000_003 + index)

    def _maybe_reseed(self) -> None:
        t = self.transform
        if not isinstance(t, PairTransform) or t.is_identity:
            return
        info = get_worker_info()
        if info is None:
            if t.seed is None and self._seeded_with is None:
                self._seeded_with = torch.initial_seed()
                t.reseed(self._seeded_with)
        elif self._seeded_with != info.seed:
            self._seeded_with = info.seed
            t.reseed(info.seed + (t.seed or 0))

    def __getitem__(self, index: int) -> dict[str, Any]:
        encoded = index >= len(self.source)
        if encoded:
            self._seed_for(index)
            index %= len(self.source)
        item = self.source[index]
        if len(item) == 3:
            image, mask, sid = item
        elif len(item) == 2:
            (image, mask), sid = item, str(index)
        else:
            raise DataError(f"SegDataset: source item {index} has {len(item)} fields; expected (image, mask[, id])")
        if self.transform is not None:
            if not encoded:
                self._maybe_reseed()
            try:
                image, mask = self.transform(image, mask)
            except cv2.error as err:  # e.g. a 1-pixel side scaled below one pixel
                raise DataError(
                    f"sample {sid!r}: augmentation failed on its {image.shape[0]}x{image.shape[1]} image "
                    f"({str(err).strip().splitlines()[-1]}); images need a side of a few pixels at least; remove it "
                    "from the split list"
                ) from None
        mask = np.asarray(mask)
        top = int(mask.max()) if mask.size else 0
        if top >= self.taxonomy.num_nodes:  # fast path: all values are node ids
            try:
                self.taxonomy.check_mask(mask, where=f"sample {sid!r}")
            except ValueError as err:
                raise DataError(str(err)) from None
        t = self.taxonomy
        partial = top >= t.num_leaves and bool(((mask >= t.num_leaves) & (mask < t.num_nodes)).any())
        return {
            "image": torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "id": str(sid),
            "partial": partial,
        }


def size_ordered(dataset: SegDataset) -> list[int] | None:
    """Sample indices sorted by image size (stable), for evaluation: equal sizes share batches and run unpadded.

    Sizes come from the source's ``mask_size(i)`` (file headers, no decoding); None when the source cannot
    tell (e.g. synthetic data, which has one size anyway) -- keep the natural order then.
    """
    probe = getattr(dataset.source, "mask_size", None)
    if probe is None:
        return None
    sizes = [probe(i) for i in range(len(dataset))]
    if any(s is None for s in sizes):
        return None
    return sorted(range(len(dataset)), key=lambda i: sizes[i])


def pad_collate(batch: Sequence[Mapping[str, Any]], ignore_index: int, multiple: int = 1) -> dict[str, Any]:
    """Stack samples, padding images with 0 and masks with ``ignore_index`` at the bottom/right.

    The padded size is the batch's largest height/width rounded up to ``multiple`` (e.g. the model's
    output stride); ``"size"`` keeps each sample's original ``(h, w)`` for cropping predictions back.
    """
    if not batch:
        raise DataError("pad_collate: empty batch")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise DataError(f"pad_collate: 'multiple' must be a positive integer, got {multiple!r}")
    sizes = [tuple(s["image"].shape[-2:]) for s in batch]
    for s, (h, w) in zip(batch, sizes):
        if tuple(s["mask"].shape) != (h, w):
            raise DataError(f"pad_collate: sample {s.get('id')!r} has image {h}x{w} but mask {tuple(s['mask'].shape)}")
    height, width = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes), multiple)
    first = batch[0]["image"]
    images = first.new_zeros((len(batch), first.shape[0], height, width))
    masks = torch.full((len(batch), height, width), int(ignore_index), dtype=torch.long)
    for k, (s, (h, w)) in enumerate(zip(batch, sizes)):
        images[k, :, :h, :w] = s["image"]
        masks[k, :h, :w] = s["mask"]
    return {"image": images, "mask": masks, "id": [str(s.get("id", k)) for k, s in enumerate(batch)], "size": sizes,
            "partial": any(bool(s.get("partial", False)) for s in batch)}
