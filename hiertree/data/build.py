"""From a config's ``data`` section to the run's train and val datasets: each source opened by its layout
(:mod:`hiertree.data.layouts`, chosen by ``data.kind``), several sources mixed by weight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hiertree.config.options import DataOptions, SyntheticOptions, defaults, suggest
from hiertree.data.dataset import SegDataset
from hiertree.data.errors import DataError
from hiertree.data.layouts import LAYOUTS
from hiertree.data.sources import Mixture, Source, exclude_ids, resolve_sources, start_weights
from hiertree.data.transforms import eval_transform, train_transform
from hiertree.registry import RegistryError

if TYPE_CHECKING:
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["build_datasets", "by_source", "DATA_KEYS", "SYNTHETIC_KEYS"]


_DEFAULTS = defaults(DataOptions)  # the declared data.* defaults, for keys a caller's dict leaves out
DATA_KEYS: tuple[str, ...] = tuple(DataOptions.model_fields)
SYNTHETIC_KEYS: tuple[str, ...] = tuple(SyntheticOptions.model_fields)


def _check_keys(cfg: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(cfg, Mapping):
        raise DataError(f"config key {where!r}: expected a mapping, got {type(cfg).__name__}")
    for key in cfg:
        if key not in allowed:
            hint = suggest(key, allowed)
            raise DataError(f"config key '{where}.{key}': unknown setting{hint}; allowed: {', '.join(allowed)}")


def _open(src: Source, taxonomy: "Taxonomy") -> tuple[Sequence, Sequence | None]:
    """The train and val samples of one resolved source, read by the layout its ``kind`` names."""
    try:
        layout = LAYOUTS.get(src.kind)
    except RegistryError as err:
        raise DataError(f"config key {err}") from None
    train, val = layout(src, taxonomy)
    if src.exclude:
        train = exclude_ids(train, src.exclude, f"source {src.name!r} ({src.train_split})")
    return train, val


def build_datasets(
    data_cfg: Mapping[str, Any], taxonomy: "Taxonomy", seed: int | None = None
) -> tuple[SegDataset, SegDataset]:
    """``(train, val)`` datasets from the ``data`` section of a config (see :data:`DATA_KEYS`).

    Train gets :func:`train_transform`; val gets :func:`eval_transform` (``longest`` only). Synthetic
    val images use ``data.synthetic.seed + 1``, so they never repeat a training image. ``seed`` fixes
    the augmentation stream (None: it follows torch's seed); it does not change the synthetic images.
    With ``data.sources`` both are a :class:`Mixture`: train of every source (sampled by weight), val of
    the sources with ``evaluate`` (see :func:`by_source` for one dataset per source). ``data.exclude`` (or a
    source's ``exclude``) leaves the ids its file lists out of the training split, never out of val.
    """
    _check_keys(data_cfg, DATA_KEYS, "data")
    _check_keys(data_cfg.get("synthetic") or {}, SYNTHETIC_KEYS, "data.synthetic")
    cfg = {**_DEFAULTS, **data_cfg}
    train_tf = train_transform(crop=cfg["crop"], scale=cfg["scale"], longest=cfg["longest"], hflip=bool(cfg["hflip"]),
                               color_jitter=cfg["color_jitter"], ignore_index=taxonomy.ignore_index, seed=seed)
    val_tf = eval_transform(cfg["longest"])
    sources = resolve_sources(cfg, taxonomy)
    opened = [_open(src, taxonomy) for src in sources]
    if not cfg.get("sources"):
        train_src, val_src = opened[0]
    else:
        train_src = Mixture([(s.name, tr, s.weight) for s, (tr, _) in zip(sources, opened)],
                            weights_start=start_weights(sources))
        scored = [(s.name, va, s.weight) for s, (_, va) in zip(sources, opened) if s.evaluate and va is not None]
        if not scored:
            raise DataError("data.sources: no source is evaluated; set evaluate: true on at least one")
        val_src = Mixture(scored)
    return SegDataset(train_src, train_tf, taxonomy), SegDataset(val_src, val_tf, taxonomy)


def by_source(dataset: SegDataset) -> dict[str, SegDataset]:
    """One dataset per source of a :class:`Mixture` (same transform), in source order; ``{}`` for one source."""
    src = dataset.source
    if not isinstance(src, Mixture):
        return {}
    return {name: SegDataset(part, dataset.transform, dataset.taxonomy) for name, part in zip(src.names, src.parts)}
