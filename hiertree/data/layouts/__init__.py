"""Dataset layouts, one file per way a dataset lies on disk, chosen by ``data.kind``: ``folder`` (images, masks and
``<split>_id.txt`` lists: :mod:`.folder`), ``synthetic`` (procedural figures, no files: :mod:`.synthetic`), and
human-parsing datasets as they ship (``lip``, ``cihp``: :mod:`.lip`; ``atr``; ``pascal_person_part``; ``mhp_v2``:
:mod:`.mhp`; ``pascal_panoptic_parts``, whose TIFF labels the optional ``panoptic_parts`` package decodes; their shared
reading: :mod:`.pairs`; docs/datasets.md).

Each file registers an opener in :data:`LAYOUTS`::

    @LAYOUTS.register("mykind")
    def open_mykind(source: Source, taxonomy: Taxonomy) -> tuple[Sequence, Sequence | None]: ...

``source`` is the resolved :class:`~hiertree.data.sources.Source` (root, splits, label map, ...); the opener
returns the train samples and the val samples (None when ``source.evaluate`` is false), each a sequence of
``(image uint8 HxWx3 RGB, node-id mask[, id])`` whose masks went through ``source.labels``. A new layout is a new
file here plus its import below.
"""

from hiertree.data.layouts.registry import LAYOUTS
from hiertree.data.layouts import folder, synthetic  # noqa: F401  (each registers its opener)
from hiertree.data.layouts import atr, lip, mhp, pascal_person_part  # noqa: F401  (human parsing: docs/datasets.md)
from hiertree.data.layouts import pascal_panoptic_parts  # noqa: F401  (needs the panoptic extra only when used)

__all__ = ["LAYOUTS"]
