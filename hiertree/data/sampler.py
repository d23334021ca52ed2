"""The order in which training visits its samples: seeded per epoch, sharded over ranks, resumable mid-epoch."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from hiertree.data.errors import DataError

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch, seeded by (seed, epoch), sharded over ranks, resumable mid-epoch.

    Each yielded value is ``(epoch + 1) * len(dataset) + index`` -- always past ``len``, epoch 0
    included -- so :class:`~hiertree.data.SegDataset` seeds that sample's augmentation from
    (epoch, index) alone, whatever worker loads it and wherever in the epoch a run resumed.

    ``weights`` (one probability per sample, e.g. :meth:`~hiertree.data.Mixture.sample_weights`) draws the
    epoch's ``n`` samples with replacement in those proportions instead of a permutation; the draw is
    seeded by (seed, epoch) too, so mixing several sources stays deterministic and resumable.
    ``weights_start`` (with ``weights``) are the probabilities at the first step: each step's samples are
    drawn from the blend that moves linearly from them to ``weights`` at the last step, ``total_steps`` (default:
    ``epochs`` whole epochs).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 weights: Sequence[float] | None = None, weights_start: Sequence[float] | None = None,
                 epochs: int = 1, total_steps: int | None = None) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        for name, w in (("weights", weights), ("weights_start", weights_start)):
            if w is not None and len(w) != n:
                raise DataError(f"EpochSampler: {len(w)} {name} for {n} samples; give one per sample")
        if weights_start is not None and weights is None:
            raise DataError("EpochSampler: weights_start needs weights (the probabilities at the last step)")
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        self.weights_start = None if weights_start is None else torch.tensor(weights_start, dtype=torch.float64)
        self.epoch, self.skip_batches = 0, 0
        per_rank = n // world
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the training split has {n} samples, fewer than one batch of {batch_size} per rank ({world}); "
                "lower train.batch_size or add data"
            )
        self.total_steps = total_steps or epochs * self.batches_per_epoch

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def _moving_draw(self, g: torch.Generator) -> torch.Tensor:
        """One draw of ``world * batch_size`` samples per step of the epoch, from that step's blend of weights."""
        last = max(self.total_steps - 1, 1)
        draws = []
        for b in range(self.batches_per_epoch):
            t = min((self.epoch * self.batches_per_epoch + b) / last, 1.0)
            blend = (1 - t) * self.weights_start + t * self.weights
            draws.append(torch.multinomial(blend, self.world * self.batch_size, replacement=True, generator=g))
        return torch.cat(draws)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        elif self.weights_start is None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = self._moving_draw(g)
        usable = self.batches_per_epoch * self.batch_size
        mine = order[self.rank :: self.world][:usable]
        for i in mine[self.skip_batches * self.batch_size :].tolist():
            yield (self.epoch + 1) * self.n + i
