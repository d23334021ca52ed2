"""A back-off threshold whose promise holds on new images, and back-off scores as the literature defines them.

**The promise.** For a target ``P`` and a risk level ``delta``, :func:`calibrate` picks the smallest threshold
θ such that, with probability at least ``1 - delta`` over the calibration images, the *mean over new images of
each image's node accuracy* is at least ``P``. An image's node accuracy is the share of its pixels in scope
(:data:`SCOPES`: by default the pixels the model calls foreground, for people what it calls a person) whose
back-off node is right (the true leaf or one of its ancestors). The unit of sampling is the image: the
pixels of one image rise and fall together, so a promise over 50 million pixels of 410 images is a promise
over 410 draws. The method is Learn-then-Test (Angelopoulos et al., 2021): the thresholds are tested in a fixed
sequence from the most cautious (θ = 1) down, each null hypothesis "the mean risk at θ exceeds ``1 - P``" with a
p-value of the per-image risks, stopping at the first that is not rejected at ``delta``; fixed-sequence testing
needs no multiplicity correction. The p-value is the betting one of Waudby-Smith & Ramdas (2020), which adapts to
how much the images' risks spread (``bound="wsr"``, the default), or Hoeffding-Bentkus (Bates et al., 2021;
``bound="hb"``), which needs only their mean.

**Specificity** (Deng et al., "Hedging your bets", CVPR 2012): the information gain of the predicted node
relative to the root, ``(log K - log |leaves under the node|) / log K`` with ``K`` leaves (1 at a leaf, 0 at the
root), credited on right predictions only. Both accuracy and specificity are reported per image and averaged
over images (the promised quantity), and pooled over pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hiertree.metrics import backoff_pairs
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["GRID", "SCOPES", "LADDER", "ladder", "BOUNDS", "BackoffError", "ImageCurves", "CurveAccumulator", "hb_pvalue", "wsr_pvalue", "pvalue", "min_images",
           "calibrate",
           "largest_target", "split_images", "coverage", "promise", "info_gain"]

#: The thresholds scanned: 0, 0.01, ..., 1.
GRID: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))

#: Which pixels an image's node accuracy counts: ``predicted`` (the default) the pixels whose back-off node is foreground
#: (``Taxonomy.foreground_nodes``: what the model calls a person, the precision view: the risk back-off controls, from
#: the leaves' accuracy at θ = 0 to the foreground's precision at θ = 1), ``foreground`` the pixels whose true leaf is
#: foreground (for people every ``body`` pixel by the truth; the pixels the model misses cap what it can promise),
#: ``all`` every leaf-labelled pixel (background included, which any model gets right).
SCOPES: dict[str, str] = {
    "predicted": "pixels the model calls foreground (for people: a person)",
    "foreground": "pixels that are foreground by the truth (for people: the person's pixels)",
    "all": "leaf-labelled pixels (background included)",
}

#: The promises ``eval.py --calibrate-backoff`` also tabulates for a user to choose from.
LADDER: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


class BackoffError(ValueError):
    """A back-off promise that cannot be made (target or risk out of range, too few images, out of the model's
    reach); the message says what would make it possible."""


def info_gain(taxonomy: Taxonomy) -> np.ndarray:
    """float [num_nodes]: each node's information gain relative to the root, normalised to 1 at a leaf."""
    k = taxonomy.num_leaves
    if k < 2:
        return np.ones(taxonomy.num_nodes)
    sizes = np.array([len(taxonomy.leaves_under(n)) for n in taxonomy.node_names], dtype=np.float64)
    return (math.log(k) - np.log(sizes)) / math.log(k)


def _tables(taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right [L, N], credited gain [L, N], node depth - 1 [N]) for (true leaf, predicted node) counts."""
    names = taxonomy.node_names
    right = np.array([[float(names[n] == names[t] or names[n] in taxonomy.ancestors(names[t]))
                       for n in range(taxonomy.num_nodes)] for t in range(taxonomy.num_leaves)])
    depth = np.array([taxonomy.node_depth(n) - 1 for n in names])
    return right, right * info_gain(taxonomy)[None, :], depth


@dataclass
class ImageCurves:
    """Per image (rows) and threshold (columns of ``thresholds``): right pixels, information gain credited on them,
    pixels still at a leaf, pixels at a node of each depth; and each image's scored (leaf-labelled) pixels."""

    ids: list[str]
    thresholds: np.ndarray
    pixels: np.ndarray  # [n]
    right: np.ndarray  # [n, G]
    gain: np.ndarray  # [n, G]
    at_leaf: np.ndarray  # [n, G]
    at_depth: np.ndarray  # [n, G, D]
    scope: str = "all"  # which pixels were counted (:data:`SCOPES`)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> "ImageCurves":
        keep = np.asarray(keep)
        return ImageCurves([i for i, k in zip(self.ids, keep) if k] if keep.dtype == bool else [self.ids[i] for i in keep],
                           self.thresholds, self.pixels[keep], self.right[keep], self.gain[keep], self.at_leaf[keep],
                           self.at_depth[keep], self.scope)

    def accuracy(self) -> np.ndarray:
        """[n, G]: each image's node accuracy at each threshold."""
        return self.right / self.pixels[:, None]

    def summary(self, threshold: float) -> dict[str, Any]:
        """Scores of these images at ``threshold``: the promised quantity (mean over images of node accuracy) with
        its standard error over images, the pooled accuracy, specificity both ways, leaf and level shares."""
        g = int(np.argmin(np.abs(self.thresholds - threshold)))
        acc = self.accuracy()[:, g]
        spec = self.gain[:, g] / self.pixels
        total = self.pixels.sum()
        return {"threshold": float(self.thresholds[g]), "images": len(self), "pixels": int(total),
                "mean_image_accuracy": float(acc.mean()),
                "mean_image_accuracy_stderr": float(acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else math.nan,
                "pooled_accuracy": float(self.right[:, g].sum() / total),
                "mean_image_specificity": float(spec.mean()), "pooled_specificity": float(self.gain[:, g].sum() / total),
                "leaf_share": float(self.at_leaf[:, g].sum() / total),
                "level_shares": {f"L{d}": float(self.at_depth[:, g, d].sum() / total)
                                 for d in range(self.at_depth.shape[2])}}

    def save(self, path: Path) -> None:
        np.savez_compressed(path, ids=np.array(self.ids), thresholds=self.thresholds, pixels=self.pixels,
                            right=self.right, gain=self.gain, at_leaf=self.at_leaf, at_depth=self.at_depth,
                            scope=np.array(self.scope))

    @classmethod
    def load(cls, path: Path) -> "ImageCurves":
        with np.load(path) as f:
            return cls([str(i) for i in f["ids"]], f["thresholds"], f["pixels"], f["right"], f["gain"], f["at_leaf"],
                       f["at_depth"], str(f["scope"]) if "scope" in f.files else "all")


class CurveAccumulator:
    """Collects :class:`ImageCurves` image by image from back-off chains (``hiertree.inference.backoff_chain``)."""

    def __init__(self, taxonomy: Taxonomy, thresholds: Sequence[float] = GRID, scope: str = "predicted") -> None:
        if scope not in SCOPES:
            raise BackoffError(f"unknown back-off scope {scope!r}; choose one of {', '.join(SCOPES)}")
        self.taxonomy, self.thresholds, self.scope = taxonomy, np.asarray(thresholds, dtype=np.float64), scope
        fg = torch.tensor(taxonomy.foreground_nodes(), dtype=torch.long)
        if scope != "all" and len(fg) == 0:
            raise BackoffError(f"taxonomy {taxonomy.name!r} has no foreground node (every top-level node is in "
                               "exclude_from_miou): use the back-off scope 'all'")
        # 1 for the counted (true leaf, back-off node) pairs: rows are true leaves, columns back-off nodes
        leaf = torch.zeros(taxonomy.num_leaves, dtype=torch.float64)
        leaf[fg[fg < taxonomy.num_leaves]] = 1.0
        node = torch.zeros(taxonomy.num_nodes, dtype=torch.float64)
        node[fg] = 1.0
        self._in_scope = ((leaf if scope == "foreground" else torch.ones_like(leaf))[:, None]
                          * (node if scope == "predicted" else torch.ones_like(node))[None, :])
        right, gain, depth = _tables(taxonomy)
        self._right, self._gain = torch.from_numpy(right), torch.from_numpy(gain)
        self._depth = torch.from_numpy(depth)
        self._rows: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    @torch.no_grad()
    def update(self, chain: torch.Tensor, probs: torch.Tensor, target: torch.Tensor, ids: Sequence[str]) -> None:
        """One batch: ``chain``/``probs`` [depth, B, H, W], ``target`` [B, H, W] node ids, one id per image."""
        t = self.taxonomy
        for b, image_id in enumerate(ids):
            pairs = backoff_pairs(t, self.thresholds.tolist(), chain[:, b:b + 1], probs[:, b:b + 1],
                                  target[b:b + 1]).double().cpu()  # [G, L, N]
            # the scope's pixels only; back-off only climbs towards the top-level node, so they are the same at
            # every threshold
            pairs = pairs * self._in_scope
            pixels = int(pairs[0].sum())
            if pixels == 0:  # no pixel in scope (no person in the image): it says nothing about node accuracy
                continue
            at_node = pairs.sum(1)  # [G, N]
            at_depth = torch.stack([at_node[:, self._depth == d].sum(1) for d in range(t.num_levels)], 1)
            self._rows.append((str(image_id), pixels, (pairs * self._right).sum((1, 2)).numpy(),
                               (pairs * self._gain).sum((1, 2)).numpy(), at_node[:, : t.num_leaves].sum(1).numpy(),
                               at_depth.numpy()))

    def curves(self) -> ImageCurves:
        if not self._rows:
            raise BackoffError("no image with leaf-labelled pixels was scored: nothing to calibrate back-off on")
        ids, pixels, right, gain, leaf, depth = zip(*self._rows)
        return ImageCurves(list(ids), self.thresholds, np.array(pixels), np.stack(right), np.stack(gain),
                           np.stack(leaf), np.stack(depth), self.scope)


# ---------------------------------------------------------------------- the guarantee
def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (no SciPy needed)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def hb_pvalue(risk: float, alpha: float, n: int) -> float:
    """Hoeffding-Bentkus p-value of "the mean of ``n`` i.i.d. losses in [0, 1] exceeds ``alpha``" given their
    sample mean ``risk`` (Bates et al. 2021): the smaller of Hoeffding's and Bentkus' tail bounds."""
    a = min(risk, alpha)
    if a <= 0:
        hoeffding = (1 - alpha) ** n
    else:
        h1 = a * math.log(a / alpha) + (1 - a) * math.log((1 - a) / (1 - alpha))
        hoeffding = math.exp(-n * h1)
    bentkus = math.e * _binom_cdf(math.ceil(n * risk), n, alpha)
    return min(1.0, hoeffding, bentkus)


def wsr_pvalue(risks: np.ndarray, alpha: float, delta: float, seed: int = 0) -> float:
    """Betting p-value of "the mean of these i.i.d. losses in [0, 1] exceeds ``alpha``" (Waudby-Smith & Ramdas,
    "Estimating means of bounded random variables by betting", 2020; as Learn-then-Test uses it): the capital
    ``prod (1 - nu_i (x_i - alpha))`` of bets sized by the running variance of the losses seen before is a
    non-negative supermartingale when the mean is at least ``alpha``, so ``1 / max capital`` is a valid p-value
    (Ville's inequality). It adapts to the spread of the losses: far tighter than Hoeffding-Bentkus when the
    images' risks are close to each other. The images are taken in a seeded random order."""
    x = np.asarray(risks, dtype=np.float64)[np.random.default_rng(seed).permutation(len(risks))]
    n = len(x)
    t = np.arange(1, n + 1)
    mean = (np.cumsum(x) + 0.5) / (t + 1)
    var = (np.cumsum((x - mean) ** 2) + 0.25) / (t + 1)
    var = np.concatenate([[0.25], var[:-1]])  # predictable: the variance of the losses before each bet
    nu = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * var)), 1.0)
    log_capital = np.cumsum(np.log1p(-nu * (x - alpha)))
    return float(min(1.0, math.exp(-max(0.0, log_capital.max()))))


#: The p-values a calibration can test with: ``wsr`` (betting, adapts to the spread of the per-image risks, the
#: default) or ``hb`` (Hoeffding-Bentkus, needs only the mean and the count).
BOUNDS = ("wsr", "hb")


def pvalue(risks: np.ndarray, alpha: float, delta: float, bound: str = "wsr") -> float:
    """The p-value of "the mean of the per-image ``risks`` exceeds ``alpha``" by ``bound`` (:data:`BOUNDS`)."""
    return wsr_pvalue(risks, alpha, delta) if bound == "wsr" else hb_pvalue(float(risks.mean()), alpha, len(risks))


def min_images(target: float, delta: float) -> int:
    """Images a calibration needs before it can promise ``target`` at ``delta`` at all: with every image perfect,
    the p-value is ``target ** n`` (at least this many; a model that errs needs more)."""
    return math.ceil(math.log(delta) / math.log(target))


def _check(target: float, delta: float) -> None:
    for name, value in (("P (the promised accuracy)", target), ("delta (the risk the promise fails)", delta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
            raise BackoffError(f"{name} must be in (0, 1), got {value!r}; e.g. --calibrate-backoff 0.9 --delta 0.1")


def calibrate(curves: ImageCurves, target: float, delta: float = 0.1, bound: str = "wsr") -> dict[str, Any]:
    """The smallest threshold certified for ``target`` at ``delta`` by fixed-sequence testing from θ = 1 down, each
    with the ``bound``'s p-value of the per-image risks (:data:`BOUNDS`); a :class:`BackoffError` naming the images
    needed, or the largest target these images support, when none is."""
    _check(target, delta)
    if bound not in BOUNDS:
        raise BackoffError(f"unknown bound {bound!r}; choose one of {', '.join(BOUNDS)}")
    n, alpha = len(curves), 1.0 - target
    if n < min_images(target, delta):
        raise BackoffError(f"the calibration split has {n} images; promising accuracy {target} at delta {delta} needs "
                           f"at least {min_images(target, delta)} (more when the model errs): calibrate on a larger split")
    risks = 1.0 - curves.accuracy()  # [n, G]
    order = np.argsort(-curves.thresholds)  # most cautious first
    certified, pvalues = None, {}
    for g in order:
        p = pvalue(risks[:, g], alpha, delta, bound)
        pvalues[float(curves.thresholds[g])] = p
        if p > delta:
            break
        certified = int(g)
    if certified is None:
        best = largest_target(curves, delta, bound)
        raise BackoffError(f"no threshold is certified for accuracy {target} at delta {delta} on {n} images: the "
                           f"largest accuracy these images let this model promise is {best:.3f}; ask for at most that")
    return {"threshold": float(curves.thresholds[certified]), "target": target, "delta": delta, "images": n,
            "bound": bound, "calibration_mean_image_accuracy": float(1.0 - risks[:, certified].mean()),
            "p_value": pvalues[float(curves.thresholds[certified])]}


def largest_target(curves: ImageCurves, delta: float = 0.1, bound: str = "wsr") -> float:
    """The largest accuracy a calibration on ``curves`` certifies at ``delta`` (at the most cautious threshold)."""
    risks = 1.0 - curves.accuracy()[:, int(np.argmax(curves.thresholds))]
    lo, hi = 0.0, 1.0  # accuracies: lo certified, hi not
    for _ in range(40):
        mid = (lo + hi) / 2
        if pvalue(risks, 1.0 - mid, delta, bound) <= delta:
            lo = mid
        else:
            hi = mid
    return lo


def split_images(ids: Sequence[str], seed: int = 0, share: float = 0.5) -> np.ndarray:
    """bool [n]: the images in the calibration part of a seeded split by image id (the rest are held out); the
    same id falls on the same side whatever else the split holds."""
    keys = [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2 ** 64 for i in ids]
    return np.array(keys) < share


def coverage(curves: ImageCurves, target: float, delta: float = 0.1, trials: int = 1000, seed: int = 0,
             calibration_images: int | None = None, bound: str = "wsr") -> dict:
    """How often the promise holds on images the calibration never saw: ``trials`` random draws of
    ``calibration_images`` images (default half), calibrate on them, score the mean image accuracy of all the
    others at the chosen threshold. With a large pool the others stand for the population. Returns the share of
    promises kept (it should be at least about ``1 - delta``), how many draws could not certify anything, the mean
    threshold and held-out accuracy."""
    rng = np.random.default_rng(seed)
    n = len(curves)
    size = n // 2 if calibration_images is None else calibration_images
    kept, refused, chosen, held = 0, 0, [], []
    accuracy = curves.accuracy()
    for _ in range(trials):
        mine = np.zeros(n, dtype=bool)
        mine[rng.choice(n, size, replace=False)] = True
        try:
            theta = calibrate(curves.subset(mine), target, delta, bound)["threshold"]
        except BackoffError:
            refused += 1
            continue
        score = float(accuracy[~mine, int(np.argmin(np.abs(curves.thresholds - theta)))].mean())
        kept += score >= target
        chosen.append(theta)
        held.append(score)
    made = trials - refused
    return {"trials": trials, "target": target, "delta": delta, "bound": bound, "calibration_images": size,
            "held_out_images": n - size,
            "promises_made": made, "kept": int(kept), "coverage": kept / made if made else math.nan,
            "threshold_mean": float(np.mean(chosen)) if chosen else math.nan,
            "held_out_accuracy_mean": float(np.mean(held)) if held else math.nan}


def promise(curves: ImageCurves, target: float, delta: float = 0.1, seed: int = 0, split: str = "val",
            held_out: ImageCurves | None = None, held_out_split: str | None = None, bound: str = "wsr") -> dict[str, Any]:
    """Calibrate on images and score the promise on images the calibration never saw: ``held_out`` (another
    split's curves) or, without it, the held-out half of ``curves`` split by image id (:func:`split_images`,
    ``seed``). Returns what ``backoff.json`` records (the caller adds the weights' digest and the TTA)."""
    if held_out is None:
        mine = split_images(curves.ids, seed)
        calibration, held_out = curves.subset(mine), curves.subset(~mine)
        how = f"the images of split {split!r} whose seeded id hash (seed {seed}) falls in the first half"
        held_name = f"the other half of split {split!r} (split by image, seed {seed})"
    else:
        calibration, how, held_name = curves, f"every image of split {split!r}", f"split {held_out_split!r}"
    chosen = calibrate(calibration, target, delta, bound)
    scored = held_out.summary(chosen["threshold"])
    return {"threshold": chosen["threshold"], "target": target, "delta": delta,
            "scope": curves.scope,
            "promise": f"on new images like these, the mean over images of each image's node accuracy (the share of "
                       f"its {SCOPES[curves.scope]} whose back-off node is the true leaf or an ancestor) is at least "
                       f"{target}, with probability at least {1 - delta} over the calibration images",
            "method": "Learn-then-Test: fixed-sequence tests from threshold 1 down, "
                      + ("betting (Waudby-Smith-Ramdas)" if bound == "wsr" else "Hoeffding-Bentkus")
                      + " p-values of the per-image risks (the image is the unit of sampling)",
            "bound": bound, "largest_target": largest_target(calibration, delta, bound),
            "calibration": {"split": split, "images": len(calibration), "which": how,
                            "mean_image_accuracy": chosen["calibration_mean_image_accuracy"], "p_value": chosen["p_value"]},
            "held_out": {"which": held_name, **scored, "promise_kept": scored["mean_image_accuracy"] >= target},
            "held_out_leaves_only": held_out.summary(0.0),
            "ladder": ladder(calibration, held_out, delta=delta, bound=bound)}


def ladder(calibration: ImageCurves, held_out: ImageCurves, targets: Sequence[float] = LADDER, delta: float = 0.1,
           bound: str = "wsr") -> list[dict[str, Any]]:
    """For each promise in ``targets``: the threshold calibrated on ``calibration`` (None where the images cannot
    support it) and, on ``held_out``, the node accuracy and the share of the scope's pixels still at a leaf: the
    curve a user picks a promise from (detail kept against how sure the labels are)."""
    rows = []
    for target in targets:
        try:
            theta = calibrate(calibration, target, delta, bound)["threshold"]
        except BackoffError:
            rows.append({"target": target, "threshold": None})
            continue
        scored = held_out.summary(theta)
        rows.append({"target": target, "threshold": theta, "held_out_mean_image_accuracy": scored["mean_image_accuracy"],
                     "held_out_leaf_share": scored["leaf_share"],
                     "held_out_mean_image_specificity": scored["mean_image_specificity"]})
    return rows
