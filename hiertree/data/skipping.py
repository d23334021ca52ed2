"""``data.skip_bad``: read every sample of a folder split once and keep only those that load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hiertree.data.errors import DataError
from hiertree.data.layouts.folder import MaskFolder
from hiertree.data.layouts.pairs import PairedSamples
from hiertree.data.sources import Mixture, Subset

if TYPE_CHECKING:
    from hiertree.data.dataset import SegDataset

__all__ = ["drop_bad_samples"]


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
    base, keep = (src.source, src.keep) if isinstance(src, Subset) else (src, list(range(len(src))))
    if not isinstance(base, (MaskFolder, PairedSamples)) or not base.skip_bad:
        return src, []

    def check(i: int) -> dict[str, str] | None:
        try:
            base.load(i)
        except DataError as err:
            return {"split": base.split, "id": base.ids[i], "reason": str(err)}
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = list(pool.map(check, keep))
    bad = [r for r in found if r is not None]
    if len(bad) == len(found):
        raise DataError(f"split {base.split!r} of {base.root}: every sample is bad, e.g. {bad[0]['reason']}")
    if bad:
        return Subset(base, [i for i, r in zip(keep, found) if r is None]), bad
    return src, []
