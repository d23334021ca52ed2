"""``data.skip_bad``: read every sample of a folder split once and keep only those that load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import MaskFolder
from hiertree.data.layouts.pairs import PairedSamples
from hiertree.data.sources import Mixture

if TYPE_CHECKING:
    from hiertree.data.dataset import SegDataset

__all__ = ["drop_bad_samples"]


class _GoodSamples:
    """The samples of a source that passed :func:`drop_bad_samples`, re-indexed 0..n-1."""

    def __init__(self, source: MaskFolder | PairedSamples, keep: list[int]) -> None:
        self.source, self.keep = source, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> Any:
        return self.source[self.keep[index]]

    def mask_size(self, index: int) -> tuple[int, int] | None:
        return self.source.mask_size(self.keep[index])

    def load_mask(self, index: int) -> Any:
        return self.source.load_mask(self.keep[index])


def drop_bad_samples(dataset: "SegDataset", threads: int = 4) -> list[dict[str, str]]:
    """With ``data.skip_bad``: read every sample of a folder split once, here, and keep only the good ones.

    Scanning in the calling process (threads; decoding releases the GIL) gives one complete,
    deterministic list whatever the number of data-loader workers -- workers only hold copies of the
    dataset, so what they skip never reaches the main process. Returns ``[{"split", "id", "reason"}]``;
    a no-op (``[]``) for other sources or without ``skip_bad``. A :class:`Mixture` is scanned source by source.
    """
    src = dataset.source
    if isinstance(src, Mixture):
        bad: list[dict[str, str]] = []
        for k, part in enumerate(src.parts):
            src.parts[k], found = _drop_in(part, threads)
            bad += [{**r, "id": f"{src.names[k]}/{r['id']}"} for r in found]
        src.reindex()
        return bad
    dataset.source, found = _drop_in(src, threads)
    return found


def _drop_in(src: Any, threads: int) -> tuple[Any, list[dict[str, str]]]:
    """``(the good samples of src, the bad ones)`` for a skip_bad folder; ``(src, [])`` otherwise."""
    if not isinstance(src, (MaskFolder, PairedSamples)) or not src.skip_bad:
        return src, []

    def check(i: int) -> dict[str, str] | None:
        try:
            src.load(i)
        except DataError as err:
            return {"split": src.split, "id": src.ids[i], "reason": str(err)}
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = list(pool.map(check, range(len(src))))
    bad = [r for r in found if r is not None]
    if len(bad) == len(found):
        raise DataError(f"split {src.split!r} of {src.root}: every sample is bad, e.g. {bad[0]['reason']}")
    if bad:
        return _GoodSamples(src, [i for i, r in enumerate(found) if r is None]), bad
    return src, []
