"""The data loaders a run and an evaluation read from: one rule for workers, collation and per-source scoring."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from hiertree.data.build import by_source
from hiertree.data.dataset import SegDataset, pad_collate, size_ordered
from hiertree.data.sources import resolve_sources

if TYPE_CHECKING:
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["Collate", "worker_init", "loader_workers", "val_loaders", "labelled_nodes"]


@dataclass(frozen=True)
class Collate:
    """:func:`pad_collate` with the taxonomy's ignore index (a picklable callable for worker processes)."""

    ignore_index: int

    def __call__(self, batch: list) -> dict:
        return pad_collate(batch, self.ignore_index)


def worker_init(worker_id: int) -> None:
    """Data-loader workers ignore SIGINT: Ctrl-C reaches the whole process group, and a worker dying of
    it would break the loader while the main process saves. SIGTERM keeps its default, because
    multiprocessing stops workers with it at exit; send SIGTERM to the main process only.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_workers(requested: int) -> int:
    """``train.num_workers``, but never more worker processes than this machine has cores (a config written
    for a 16-core GPU box must not start 14 workers on a laptop)."""
    return max(0, min(int(requested), os.cpu_count() or 1))


def val_loaders(val_ds: SegDataset, taxonomy: "Taxonomy", batch_size: int, workers: int, seed: int = 0,
                rank: int = 0, world: int = 1) -> DataLoader | dict[str, DataLoader]:
    """The evaluation loader of ``val_ds`` (size-ordered: equal sizes share batches, nothing padded), or with
    ``data.sources`` one loader per evaluated source, each scored on its own and in the combined table. Under DDP
    (``world`` > 1) each rank reads every ``world``-th sample from ``rank`` on: its share of the split."""
    workers = loader_workers(workers)

    def loader(ds: SegDataset) -> DataLoader:
        order = size_ordered(ds) or list(range(len(ds)))
        return DataLoader(ds, batch_size=batch_size, sampler=order[rank::world], num_workers=workers,
                          collate_fn=Collate(taxonomy.ignore_index), worker_init_fn=worker_init if workers else None,
                          generator=torch.Generator().manual_seed(seed))

    parts = by_source(val_ds)
    return {name: loader(ds) for name, ds in parts.items()} if parts else loader(val_ds)


def labelled_nodes(data_cfg: dict[str, Any], taxonomy: "Taxonomy") -> dict[str, list[int]] | None:
    """Per source of ``data.sources``, the node ids its label map yields (what its masks can name); None
    for one dataset. Scoring a source leaves out the classes its labels never name."""
    if not data_cfg.get("sources"):
        return None
    return {s.name: s.labels.node_ids() for s in resolve_sources(data_cfg, taxonomy)}
