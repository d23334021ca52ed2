"""Per-level segmentation metrics accumulated over a whole split.

One confusion matrix per taxonomy level is accumulated on the tensors' own device (CPU or CUDA, no
host sync per batch) and turned into IoU, mIoU and pixel accuracy only in :meth:`compute`. IoU is
computed from the split-wide confusion matrix (not averaged per image), which is the usual
definition for semantic segmentation benchmarks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from hiertree.tree.taxonomy import Taxonomy

__all__ = ["FROM_TAXONOMY", "HierarchicalMetrics", "backoff_pairs", "format_table", "format_scores"]

Prediction = torch.Tensor | Sequence[torch.Tensor]


class _FromTaxonomy:
    """Type of :data:`FROM_TAXONOMY`, the default that takes the excluded classes from the taxonomy."""

    def __repr__(self) -> str:
        return "FROM_TAXONOMY"


#: ``HierarchicalMetrics(background=...)`` default: leave out the taxonomy's ``exclude_from_miou`` classes.
FROM_TAXONOMY = _FromTaxonomy()


def _expressible(taxonomy: Taxonomy, level: int, labelled: Sequence[int]) -> list[bool]:
    """Per class of ``level``: whether some node the targets may hold names exactly that class."""
    lut = taxonomy.node_lut(level)
    named = {int(lut[n]) for n in labelled}
    return [c in named for c in range(taxonomy.num_classes(level))]


def _scored(taxonomy: Taxonomy, level: int, background: str | None | _FromTaxonomy) -> list[bool]:
    """Per class of ``level``: whether the headline mIoU averages it."""
    if isinstance(background, _FromTaxonomy):
        return taxonomy.miou_mask(level).tolist()
    return [name != background for name in taxonomy.classes(level)]


class HierarchicalMetrics:
    """Confusion-matrix metrics for every level of a taxonomy.

    ``update(pred, target)`` takes a node-id target map (a leaf-id map is one) and either a leaf-id prediction map (the
    coarser levels are derived through the taxonomy, so they always agree with the tree) or a list
    with one class-index map per level (e.g. each head's argmax), in which case the share of pixels
    whose per-level predictions agree with the tree is reported as ``consistency``.

    The headline ``mIoU`` leaves out the taxonomy's ``exclude_from_miou`` classes (by default a
    top-level ``background`` leaf) at every level where they are a class; ``mIoU_with_background``
    keeps every class and each level's ``mIoU_excludes`` lists what was left out. ``background``
    overrides the taxonomy for existing callers: a class name to leave out instead, or ``None`` to
    average over all classes everywhere.
    """

    def __init__(self, taxonomy: Taxonomy, background: str | None | _FromTaxonomy = FROM_TAXONOMY,
                 labelled: Sequence[int] | None = None) -> None:
        self.taxonomy = taxonomy
        self.num_levels = taxonomy.num_levels
        self.sizes = [taxonomy.num_classes(l) for l in range(self.num_levels)]
        self._parent_index = [taxonomy.parent_index(l) for l in range(self.num_levels - 1)]
        self._scored = [_scored(taxonomy, l, background) for l in range(self.num_levels)]
        self._labelled = None if labelled is None else [_expressible(taxonomy, l, labelled) for l in range(self.num_levels)]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far (call at the start of each evaluation)."""
        self._confusion: list[torch.Tensor] | None = None
        self._consistent: torch.Tensor | None = None
        self._pixels: torch.Tensor | None = None
        self._leaf_node: torch.Tensor | None = None  # true leaf x predicted node (the tree's leaf predictions)
        self._backoff: torch.Tensor | None = None  # true leaf x predicted node (back-off predictions)

    # ------------------------------------------------------------------ accumulation
    def _pairs(self, target: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """int64 [num_leaves, num_nodes] counts of (true leaf, predicted node) over the leaf-labelled pixels."""
        t = self.taxonomy
        keep = (target >= 0) & (target < t.num_leaves)
        idx = target[keep] * t.num_nodes + nodes[keep]
        return torch.bincount(idx, minlength=t.num_leaves * t.num_nodes).reshape(t.num_leaves, t.num_nodes)

    def _add_pairs(self, attr: str, pairs: torch.Tensor) -> None:
        current = getattr(self, attr)
        setattr(self, attr, pairs if current is None else current.to(pairs.device) + pairs)

    @torch.no_grad()
    def update_backoff(self, nodes: torch.Tensor, target: torch.Tensor) -> None:
        """Add back-off predictions (node ids, ``hiertree.inference.backoff_nodes``) against a target map;
        scored under ``compute()["hierarchy"]["backoff"]`` on the leaf-labelled pixels."""
        target, nodes = torch.as_tensor(target).long(), torch.as_tensor(nodes).long()
        if nodes.shape != target.shape:
            raise ValueError(f"back-off nodes have shape {tuple(nodes.shape)} but target has {tuple(target.shape)}")
        n = self.taxonomy.num_nodes
        if nodes.numel() and (int(nodes.min()) < 0 or int(nodes.max()) >= n):
            raise ValueError(f"back-off nodes must be node ids 0..{n - 1} of taxonomy {self.taxonomy.name!r}")
        self._add_pairs("_backoff", self._pairs(target, nodes))

    @staticmethod
    @torch.no_grad()
    def update_backoff_curve(curve: Sequence["HierarchicalMetrics"], thresholds: Sequence[float],
                             chain: torch.Tensor, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add the back-off predictions of every threshold to its metrics in ``curve`` in one pass over the pixels
        (:func:`backoff_pairs`); equal to calling :meth:`update_backoff` with ``backoff_stop(chain, probs,
        threshold)`` for each."""
        pairs = backoff_pairs(curve[0].taxonomy, thresholds, chain, probs, target)
        for j, metrics in enumerate(curve):
            metrics._add_pairs("_backoff", pairs[j].contiguous())

    def _state_on(self, device: torch.device) -> None:
        if self._confusion is None:
            self._confusion = [torch.zeros(c, c, dtype=torch.int64, device=device) for c in self.sizes]
            self._consistent = torch.zeros((), dtype=torch.int64, device=device)
            self._pixels = torch.zeros((), dtype=torch.int64, device=device)
        elif self._confusion[0].device != device:
            self._confusion = [m.to(device) for m in self._confusion]
            self._consistent = self._consistent.to(device)
            self._pixels = self._pixels.to(device)

    @torch.no_grad()
    def update(self, pred: Prediction, target: torch.Tensor) -> None:
        """Add one batch: ``target`` is a leaf-id map [B,H,W] or [H,W] (may hold ignore_index);
        ``pred`` is a leaf-id map of the same shape or a list of per-level class-index maps."""
        target = torch.as_tensor(target)
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"target must be an integer leaf-id map, got dtype {target.dtype}; cast it with .long()")
        target = target.long()
        level_targets = self.taxonomy.to_levels(target)  # raises on values that are no node id nor ignore
        valid = target != self.taxonomy.ignore_index  # labelled at some node (at its own depth at least)

        per_level = isinstance(pred, (list, tuple))
        if per_level:
            if len(pred) != self.num_levels:
                raise ValueError(
                    f"got {len(pred)} per-level prediction maps but taxonomy {self.taxonomy.name!r} has "
                    f"{self.num_levels} levels; pass one class-index map per level (coarse to fine)"
                )
            level_preds = [self._check_pred(p, target, f"pred[{l}]", self.sizes[l]) for l, p in enumerate(pred)]
        else:
            leaf_pred = self._check_pred(pred, target, "pred", self.taxonomy.num_leaves)
            level_preds = self.taxonomy.levels_from_leaves(leaf_pred)

        self._state_on(target.device)
        assert self._confusion is not None and self._consistent is not None and self._pixels is not None
        n_valid = valid.sum()
        for l, (t, p) in enumerate(zip(level_targets, level_preds)):
            c = self.sizes[l]
            scored = t != self.taxonomy.ignore_index  # a partial label is not scored below its node
            idx = t[scored] * c + p[scored]
            self._confusion[l] += torch.bincount(idx, minlength=c * c).reshape(c, c)
        # the deepest level's prediction is a leaf (per-level input: the finest head's own argmax)
        self._add_pairs("_leaf_node", self._pairs(target, level_preds[-1]))
        if per_level:
            agree = torch.ones_like(valid)
            for l, parents in enumerate(self._parent_index):
                agree &= parents.to(target.device)[level_preds[l + 1]] == level_preds[l]
            self._consistent += (agree & valid).sum()
        else:
            self._consistent += n_valid
        self._pixels += n_valid

    def _check_pred(self, pred: torch.Tensor, target: torch.Tensor, where: str, num: int) -> torch.Tensor:
        pred = torch.as_tensor(pred)
        if pred.dtype.is_floating_point or pred.dtype == torch.bool:
            raise TypeError(
                f"{where} must hold integer class indices, got dtype {pred.dtype}; "
                "take logits.argmax(1) before calling update"
            )
        if pred.shape != target.shape:
            raise ValueError(
                f"{where} has shape {tuple(pred.shape)} but target has {tuple(target.shape)}; "
                "resize the prediction to the label resolution first"
            )
        if pred.device != target.device:
            raise ValueError(f"{where} is on {pred.device} but target is on {target.device}; put both on one device")
        pred = pred.long()
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num):
            raise ValueError(
                f"{where} holds values in [{int(pred.min())}, {int(pred.max())}] but must be in 0..{num - 1}; "
                "predictions cannot contain ignore_index or ids outside the taxonomy"
            )
        return pred

    def merge(self, other: "HierarchicalMetrics") -> None:
        """Add what ``other`` (same taxonomy and settings) accumulated, e.g. to combine per-source scores."""
        if other.sizes != self.sizes:
            raise ValueError(f"cannot merge metrics of levels {other.sizes} into metrics of levels {self.sizes}")
        if other._confusion is None:
            return
        self._state_on(other._confusion[0].device)
        assert self._confusion is not None and self._consistent is not None and self._pixels is not None
        for mine, theirs in zip(self._confusion, other._confusion):
            mine += theirs
        self._consistent += other._consistent
        self._pixels += other._pixels
        for attr in ("_leaf_node", "_backoff"):
            if getattr(other, attr) is not None:
                self._add_pairs(attr, getattr(other, attr))

    def all_reduce(self, device: torch.device) -> None:
        """Sum the counts over the ranks of the process group (each rank scored its share of a split): afterwards
        every rank holds the whole split's counts. A rank that saw nothing takes part with zeros."""
        import torch.distributed as dist

        t = self.taxonomy
        self._state_on(device)
        if self._leaf_node is None:
            self._leaf_node = torch.zeros(t.num_leaves, t.num_nodes, dtype=torch.int64, device=device)
        has_backoff = torch.tensor(float(self._backoff is not None), device=device)
        dist.all_reduce(has_backoff, op=dist.ReduceOp.MAX)
        if has_backoff.item() and self._backoff is None:
            self._backoff = torch.zeros(t.num_leaves, t.num_nodes, dtype=torch.int64, device=device)
        self._leaf_node = self._leaf_node.to(device)
        self._backoff = None if self._backoff is None else self._backoff.to(device)
        tensors = [*self._confusion, self._consistent, self._pixels, self._leaf_node]
        for tensor in tensors + ([self._backoff] if self._backoff is not None else []):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    # ------------------------------------------------------------------ results
    def confusion(self, level: int) -> torch.Tensor:
        """int64 [C_l, C_l] confusion matrix of ``level`` on CPU (rows = target, cols = prediction)."""
        if self._confusion is None:
            c = self.sizes[level]
            return torch.zeros(c, c, dtype=torch.int64)
        return self._confusion[level].cpu()

    def compute(self) -> dict[str, Any]:
        """Per-level IoU / mIoU / pixel accuracy and scored pixels, tree consistency and the labelled pixel total.

        A pixel labelled at an inner node counts at the levels where its label names one class and is left
        out below: ``levels[l]["pixels"]`` is how many pixels level ``l`` scored, ``pixels`` how many carried
        any label.

        Undefined values are reported, not invented: the IoU of a class absent from both target and
        prediction is ``None`` (and left out of the means); a mean over no defined class, the pixel
        accuracy and the consistency of an empty split are ``nan``.
        """
        levels = []
        for l in range(self.num_levels):
            conf = self.confusion(l).double()
            tp = conf.diag()
            denom = conf.sum(0) + conf.sum(1) - tp
            names = self.taxonomy.classes(l)
            can = self._labelled[l] if self._labelled is not None else [True] * len(names)
            iou: dict[str, float | None] = {
                name: (float(tp[i] / denom[i]) if denom[i] > 0 and can[i] else None) for i, name in enumerate(names)
            }
            scored = self._scored[l]
            fg = [v for v, keep in zip(iou.values(), scored) if v is not None and keep]
            every = [v for v in iou.values() if v is not None]
            total = float(conf.sum())
            levels.append(
                {
                    "level": l,
                    "classes": names,
                    "iou": iou,
                    "mIoU": _mean(fg),
                    "mIoU_with_background": _mean(every),
                    "mIoU_excludes": [name for name, keep in zip(names, scored) if not keep],
                    "pixel_accuracy": float(tp.sum()) / total if total > 0 else math.nan,
                    "pixels": int(total),
                    "unlabelled_classes": [name for name, ok in zip(names, can) if not ok],
                    "confusion": self.confusion(l).tolist(),
                }
            )
        pixels = int(self._pixels) if self._pixels is not None else 0
        consistent = int(self._consistent) if self._consistent is not None else 0
        out = {
            "levels": levels,
            "consistency": consistent / pixels if pixels > 0 else math.nan,
            "pixels": pixels,
        }
        if self._leaf_node is not None or self._backoff is not None:
            out["hierarchy"] = hierarchy_scores(self.taxonomy, self._leaf_node, self._backoff)
        return out


def _tables(taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """Per (true leaf, predicted node): levels wrong, shared ancestors, right-or-ancestor, information gain credited
    on right predictions (Deng et al. 2012: ``(log K - log |leaves under the node|) / log K``, 1 at a leaf);
    node set sizes."""
    L, N, D = taxonomy.num_leaves, taxonomy.num_nodes, taxonomy.num_levels
    names = taxonomy.node_names
    anc = [set([n, *taxonomy.ancestors(n)]) for n in names]
    wrong = torch.zeros(L, N)
    shared = torch.zeros(L, N)
    right = torch.zeros(L, N)
    gain = torch.zeros(L, N)
    k = float(L)
    luts = [taxonomy.node_lut(l) for l in range(D)]
    for t in range(L):
        for n in range(N):
            shared[t, n] = len(anc[t] & anc[n])
            right[t, n] = float(names[n] in anc[t])
            under = float(len(taxonomy.leaves_under(names[n])))
            gain[t, n] = right[t, n] * ((math.log(k) - math.log(under)) / math.log(k) if L > 1 else 1.0)
            if n < L:
                wrong[t, n] = sum(int(luts[l][t] != luts[l][n]) for l in range(D))
    size = torch.tensor([float(len(a)) for a in anc])
    return {"wrong": wrong, "shared": shared, "right": right, "gain": gain, "size": size}


@torch.no_grad()
def backoff_pairs(taxonomy: Taxonomy, thresholds: Sequence[float], chain: torch.Tensor, probs: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """int64 [len(thresholds), num_leaves, num_nodes]: per threshold, the (true leaf, back-off node) counts over the
    leaf-labelled pixels, for every threshold in one pass (``chain``, ``probs``:
    :func:`hiertree.inference.backoff_chain`). Chain position k is what back-off predicts exactly for the
    thresholds in (max of the probabilities before k, probability of k] (the last position: every threshold above
    that maximum), so per position two bincounts over (true leaf, node, threshold index) and a cumulative sum give
    every threshold's counts at once."""
    t = taxonomy
    grid, order = torch.sort(torch.tensor([float(x) for x in thresholds], dtype=probs.dtype, device=probs.device))
    g = len(thresholds)
    keep = (target >= 0) & (target < t.num_leaves)
    leaf, chain, probs = target[keep].long(), chain[:, keep], probs[:, keep]
    diff = torch.zeros(t.num_leaves * t.num_nodes * (g + 1), dtype=torch.int64, device=probs.device)
    before = torch.full_like(probs[0], float("-inf"))
    for k in range(chain.shape[0]):
        start = torch.searchsorted(grid, before.contiguous(), right=True)
        end = (torch.searchsorted(grid, probs[k].contiguous(), right=True) if k < chain.shape[0] - 1
               else torch.full_like(start, g))
        key = (leaf * t.num_nodes + chain[k]) * (g + 1)
        diff += torch.bincount(key + start, minlength=diff.numel()) - torch.bincount(key + torch.maximum(start, end),
                                                                                  minlength=diff.numel())
        before = torch.maximum(before, probs[k])
    pairs = diff.view(t.num_leaves, t.num_nodes, g + 1)[..., :g].cumsum(-1)
    out = torch.empty(g, t.num_leaves, t.num_nodes, dtype=torch.int64, device=probs.device)
    out[order] = pairs.permute(2, 0, 1)
    return out


def hierarchy_scores(taxonomy: Taxonomy, leaf_node: torch.Tensor | None, backoff: torch.Tensor | None) -> dict[str, Any]:
    """Mistake severity and hierarchical precision / recall / F1 of leaf predictions, and the accuracy and
    specificity of back-off predictions, from (true leaf x predicted node) counts.

    * ``mistake_severity``: over pixels whose predicted leaf is wrong, the mean number of levels at which the
      prediction is wrong (Bertinetto et al. 2020); ``severity_histogram[k]`` counts pixels wrong at k levels.
    * ``hP``/``hR``/``hF1``: micro-averaged over pixels, on the sets {node} + ancestors of truth and prediction.
    * ``backoff``: ``accuracy`` (the node is the true leaf or one of its ancestors), ``specificity`` (the
      information gain of the node relative to the root, normalised to 1 at a leaf, credited on right predictions
      only: Deng et al., "Hedging your bets", CVPR 2012), ``leaf_coverage`` (share still predicted at a leaf),
      ``level_shares`` (share predicted at a node of each depth: ``L0`` the depth-1 nodes, ...).
    """
    tab = _tables(taxonomy)
    out: dict[str, Any] = {}
    for name, counts in (("leaf", leaf_node), ("backoff", backoff)):
        if counts is None:
            continue
        c = counts.double().cpu()
        total = float(c.sum())
        shared = float((c * tab["shared"]).sum())
        pred_size = float((c * tab["size"].double()).sum())
        true_size = float((c.sum(1) * tab["size"][: taxonomy.num_leaves].double()).sum())
        hp = shared / pred_size if pred_size else math.nan
        hr = shared / true_size if true_size else math.nan
        scores = {"pixels": int(total), "hP": hp, "hR": hr,
                  "hF1": 2 * hp * hr / (hp + hr) if hp + hr > 0 else math.nan,
                  "accuracy": float((c * tab["right"]).sum()) / total if total else math.nan,
                  "specificity": float((c * tab["gain"]).sum()) / total if total else math.nan,
                  "leaf_coverage": float(c[:, : taxonomy.num_leaves].sum()) / total if total else math.nan}
        if name == "leaf":
            leaves = c[:, : taxonomy.num_leaves]
            mistakes = leaves * (tab["wrong"][:, : taxonomy.num_leaves] > 0)
            hist = [int((leaves * (tab["wrong"][:, : taxonomy.num_leaves] == k)).sum())
                    for k in range(1, taxonomy.num_levels + 1)]
            n_wrong = float(mistakes.sum())
            scores["mistake_severity"] = float((leaves * tab["wrong"][:, : taxonomy.num_leaves]).sum()) / n_wrong \
                if n_wrong else math.nan
            scores["severity_histogram"] = {str(k): v for k, v in enumerate(hist, start=1)}
            out.update(scores)
        else:
            depth = torch.tensor([float(taxonomy.node_depth(n)) for n in taxonomy.node_names], dtype=torch.float64)
            at = c.sum(0)  # pixels per predicted node
            scores["level_shares"] = {f"L{d - 1}": float(at[depth == d].sum()) / total if total else math.nan
                                      for d in range(1, taxonomy.num_levels + 1)}
            out["backoff"] = scores
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _pct(value: float | None) -> str:
    if value is None:
        return "    n/a"
    if math.isnan(value):
        return "    nan"
    return f"{100.0 * value:7.2f}"


def format_table(result: dict[str, Any]) -> str:
    """Render a :meth:`HierarchicalMetrics.compute` result as a plain-text table (values in %)."""
    lines = [f"{'level':<7}{'mIoU':>8}{'mIoU_bg':>9}{'pix_acc':>9}"]
    for lv in result["levels"]:
        lines.append(
            f"{'L' + str(lv['level']):<7}{_pct(lv['mIoU']):>8}{_pct(lv['mIoU_with_background']):>9}"
            f"{_pct(lv['pixel_accuracy']):>9}"
        )
    for lv in result["levels"]:
        lines.append(f"per-class IoU, L{lv['level']}:")
        width = max((len(n) for n in lv["classes"]), default=0)
        for name in lv["classes"]:
            lines.append(f"  {name:<{width}} {_pct(lv['iou'][name])}")
    lines.append(f"consistency {_pct(result['consistency'])}   pixels {result['pixels']}")
    return "\n".join(lines)


def format_scores(result: dict[str, Any]) -> str:
    """An evaluation's tables: with ``data.sources`` each source's (and how far its labels reach), then the
    combined one; else the one table (:func:`format_table`)."""
    parts = []
    for name, scored in result.get("sources", {}).items():
        reach = ", ".join(f"L{lv['level']} {lv['pixels']}" for lv in scored["tree"]["levels"])
        parts.append(f"source {name} (pixels scored: {reach}):\n{format_table(scored['tree'])}")
    parts.append(("all sources:\n" if "sources" in result else "") + format_table(result["tree"]))
    return "\n".join(parts)
