"""Does one back-off threshold per depth buy specificity at the same promise? (issue 26, item 4)

Two thresholds instead of one: ``theta_leaf`` for stopping at a leaf below depth 1 and ``theta_inner`` for stopping
at an inner node below depth 1 (on the Pascal-Part tree these are exactly one threshold per depth: parts at depth
3, upper/lower body at depth 2; a depth-1 node is always the last stop). Per image, a table over both grids gives
right pixels and information gain credited on them for every pair at once (interval arithmetic along each chain,
as ``hiertree.metrics.backoff_pairs`` does for one threshold). The pair is chosen jointly under the same guarantee:
one fixed-sequence Learn-then-Test path down ``theta_leaf`` per value of ``theta_inner``, each at delta / (number
of paths) (Bonferroni), the certified pair with the highest calibration specificity. It is compared with the single
threshold of ``hiertree.evaluation.backoff.calibrate`` on the same calibration and held-out halves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hiertree.evaluation.backoff import GRID, BackoffError, info_gain, pvalue, split_images

INNER_GRID: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(21))


@dataclass
class PairTables:
    """Per image: right pixels and credited information gain for each (theta_leaf, theta_inner), scored pixels."""

    ids: list[str]
    right: np.ndarray  # [n, len(GRID), len(INNER_GRID)]
    gain: np.ndarray
    pixels: np.ndarray

    def subset(self, keep: np.ndarray) -> "PairTables":
        return PairTables([i for i, k in zip(self.ids, keep) if k], self.right[keep], self.gain[keep], self.pixels[keep])


class PairAccumulator:
    def __init__(self, taxonomy, scope: str = "predicted") -> None:
        names = taxonomy.node_names
        self.taxonomy, self.scope = taxonomy, scope
        fg = torch.zeros(taxonomy.num_nodes, dtype=torch.bool)
        fg[taxonomy.foreground_nodes()] = True
        self.foreground = fg  # the pixels counted (hiertree.evaluation.backoff.SCOPES): by true leaf or predicted node
        right = [[float(names[n] == names[t] or names[n] in taxonomy.ancestors(names[t]))
                  for n in range(taxonomy.num_nodes)] for t in range(taxonomy.num_leaves)]
        self.right = torch.tensor(right, dtype=torch.float64)
        self.gain = self.right * torch.from_numpy(info_gain(taxonomy))[None, :]
        self.grid = torch.tensor(GRID, dtype=torch.float64)
        self.inner = torch.tensor(INNER_GRID, dtype=torch.float64)
        self.rows: list[tuple[str, int, np.ndarray, np.ndarray]] = []

    @torch.no_grad()
    def update(self, chain: torch.Tensor, probs: torch.Tensor, target: torch.Tensor, ids) -> None:
        for b, image_id in enumerate(ids):
            keep = (target[b] >= 0) & (target[b] < self.taxonomy.num_leaves)
            if self.scope == "foreground":
                keep &= self.foreground[target[b].clamp(0, self.taxonomy.num_nodes - 1).cpu()].to(keep.device)
            elif self.scope == "predicted":  # the chain's last node (depth 1) is the same at every threshold
                keep &= self.foreground[chain[-1, b].cpu()].to(keep.device)
            if not bool(keep.any()):
                continue
            t, c, p = target[b][keep].cpu().long(), chain[:, b][:, keep].cpu(), probs[:, b][:, keep].cpu().double()
            self.rows.append((str(image_id), int(keep.sum()), *(self._table(t, c, p, table) for table in
                                                                 (self.right, self.gain))))

    def _table(self, t: torch.Tensor, chain: torch.Tensor, p: torch.Tensor, table: torch.Tensor) -> np.ndarray:
        g, g2, depth = len(self.grid), len(self.inner), chain.shape[0]
        value = [table[t, chain[k]] for k in range(depth)]
        at_top = chain[0] == chain[-1]  # a depth-1 leaf: always itself
        b0 = torch.where(at_top, torch.full_like(t, g), torch.searchsorted(self.grid, p[0].contiguous(), right=True))
        leaf = torch.bincount(b0, weights=value[0], minlength=g + 1)  # accepted for theta_leaf index < b0
        accepted = leaf.flip(0).cumsum(0).flip(0)[1:]  # [g]: sum over b0 > index
        diff = torch.zeros((g + 1) * (g2 + 1), dtype=torch.float64)
        before = torch.full_like(p[0], float("-inf"))
        for k in range(1, depth):
            start = torch.searchsorted(self.inner, before.contiguous(), right=True)
            end = torch.searchsorted(self.inner, p[k].contiguous(), right=True) if k < depth - 1 else torch.full_like(start, g2)
            end = torch.maximum(start, end)
            diff += torch.bincount(b0 * (g2 + 1) + start, weights=value[k], minlength=diff.numel())
            diff -= torch.bincount(b0 * (g2 + 1) + end, weights=value[k], minlength=diff.numel())
            before = torch.maximum(before, p[k])
        rejected = diff.view(g + 1, g2 + 1)[:, :g2].cumsum(1)[:g].cumsum(0)  # [g, g2]: sum over b0 <= index
        return (accepted[:, None] + rejected).numpy()

    def tables(self) -> PairTables:
        ids, pixels, right, gain = zip(*self.rows)
        return PairTables(list(ids), np.stack(right), np.stack(gain), np.array(pixels))


def calibrate_pair(tables: PairTables, target: float, delta: float, bound: str = "wsr") -> dict:
    """Bonferroni over one fixed sequence per theta_inner (down theta_leaf from 1), the same p-values as the single
    threshold's; the certified pair with the highest mean image specificity on these images."""
    n, alpha, paths = len(tables.ids), 1.0 - target, len(INNER_GRID)
    per_image = tables.right / tables.pixels[:, None, None]  # [n, g, g2]
    acc = per_image.mean(0)
    spec = (tables.gain / tables.pixels[:, None, None]).mean(0)
    best = None
    for j in range(paths):
        for i in range(len(GRID) - 1, -1, -1):
            if pvalue(1.0 - per_image[:, i, j], alpha, delta / paths, bound) > delta / paths:
                break
            if best is None or spec[i, j] > spec[best]:
                best = (i, j)
    if best is None:
        raise BackoffError(f"no pair of thresholds is certified for accuracy {target} at delta {delta} on {n} images")
    return {"theta_leaf": GRID[best[0]], "theta_inner": INNER_GRID[best[1]], "calibration_specificity": float(spec[best]),
            "calibration_accuracy": float(acc[best])}


def held_out(tables: PairTables, theta_leaf: float, theta_inner: float) -> dict:
    i, j = GRID.index(theta_leaf), INNER_GRID.index(theta_inner)
    acc = tables.right[:, i, j] / tables.pixels
    spec = tables.gain[:, i, j] / tables.pixels
    return {"mean_image_accuracy": float(acc.mean()), "mean_image_accuracy_stderr": float(acc.std(ddof=1) / math.sqrt(len(acc))),
            "mean_image_specificity": float(spec.mean()), "images": len(acc)}


def compare(tables: PairTables, target: float, delta: float, seed: int = 0) -> dict:
    """The per-depth pair calibrated on one half of the images (split by id as the shipped calibration is) and
    scored on the other half."""
    mine = split_images(tables.ids, seed)
    pair = calibrate_pair(tables.subset(mine), target, delta)
    return {"pair": pair, "held_out": held_out(tables.subset(~mine), pair["theta_leaf"], pair["theta_inner"])}
