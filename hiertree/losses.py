"""Hierarchy-aware training losses: per-level cross-entropy, head consistency and HSSN tree-min.

* **Cross-entropy** per level against the level's targets (derived from the node-id mask through the
  taxonomy), with ``ignore_index``; levels are combined as a weighted *sum*. A pixel labelled at an
  inner node ``n`` (a partial label) is supervised as far as its label goes: ordinary cross-entropy
  where ``n`` or its ancestor is a class, and below, ``-log`` of the probability summed over the classes
  under ``n`` (a logsumexp), so the model is never told a part it was not given.
* **Consistency** between adjacent heads: KL(p_coarse || q), where q is the fine head's softmax
  summed into the coarse classes. It needs no labels and is exactly 0 when the heads agree.
* **Tree-min** (HSSN, Li et al., CVPR 2022, "Deep Hierarchical Semantic Segmentation"): each
  (level, class) is a node with score sigmoid(logit); a positive node is pushed up through the
  minimum score over itself and its ancestors, a negative one down through the maximum score over
  itself and its descendants, so confident predictions respect the tree. Under a partial label the
  classes under ``n`` are neither positive nor negative; every other class is negative.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiertree.config.options import LossOptions, validate_options
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["HierarchicalLoss", "consistency_kl", "tree_min_loss"]


# ---------------------------------------------------------------------- functional forms
def _children_groups(parent_matrix: Tensor) -> list[Tensor]:
    """Per coarse class, the LongTensor of its fine children of a caller's matrix (checked to be a parent map).

    Only for :func:`consistency_kl`, which takes any matrix; a taxonomy's own groups are ``Taxonomy.children``.
    """
    if parent_matrix.dim() != 2:
        raise ValueError(
            f"parent_matrix must be 2-D [C_fine, C_coarse], got shape {tuple(parent_matrix.shape)}; "
            "use Taxonomy.parent_matrix(level)"
        )
    pm = parent_matrix.detach().cpu()
    if not bool(((pm == 0) | (pm == 1)).all()) or not bool((pm.sum(1) == 1).all()):
        raise ValueError("parent_matrix must be one-hot per row (each fine class has exactly one parent)")
    counts = pm.sum(0)
    if not bool((counts > 0).all()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"coarse classes {empty} have no children in parent_matrix; every coarse class needs one")
    return [torch.nonzero(pm[:, c]).flatten() for c in range(pm.shape[1])]


def _consistency_kl(logits_coarse: Tensor, logits_fine: Tensor, groups: list[Tensor]) -> Tensor:
    if logits_coarse.dim() < 2 or logits_fine.dim() != logits_coarse.dim():
        raise ValueError(
            f"logits must be [B, C, ...] with the same number of dims, got {tuple(logits_coarse.shape)} "
            f"and {tuple(logits_fine.shape)}"
        )
    if logits_coarse.shape[0] != logits_fine.shape[0] or logits_coarse.shape[2:] != logits_fine.shape[2:]:
        raise ValueError(
            f"coarse logits {tuple(logits_coarse.shape)} and fine logits {tuple(logits_fine.shape)} must share "
            "batch and spatial size; resize one head before comparing them"
        )
    if logits_coarse.shape[1] != len(groups):
        raise ValueError(f"coarse logits have {logits_coarse.shape[1]} classes, parent_matrix has {len(groups)}")
    n_fine = sum(len(g) for g in groups)
    if logits_fine.shape[1] != n_fine:
        raise ValueError(f"fine logits have {logits_fine.shape[1]} classes, parent_matrix has {n_fine}")
    logp_coarse = F.log_softmax(logits_coarse.float(), dim=1)
    logp_fine = F.log_softmax(logits_fine.float(), dim=1)
    # log q_c = logsumexp of the children's log-probabilities: stable even for tiny probabilities.
    log_q = torch.stack(
        [torch.logsumexp(logp_fine.index_select(1, g.to(logp_fine.device)), dim=1) for g in groups], dim=1
    )
    kl = (logp_coarse.exp() * (logp_coarse - log_q)).sum(1)
    return kl.mean()


def consistency_kl(logits_coarse: Tensor, logits_fine: Tensor, parent_matrix: Tensor) -> Tensor:
    """Mean over all pixels of KL(softmax(coarse) || fine probabilities summed per parent).

    ``logits_coarse`` [B, C_l, ...], ``logits_fine`` [B, C_{l+1}, ...] with the same spatial size,
    ``parent_matrix`` [C_{l+1}, C_l] one-hot (``Taxonomy.parent_matrix(l)``). Needs no labels; it is
    0 exactly when the coarse head equals the fine head marginalised onto the coarse classes.
    """
    return _consistency_kl(logits_coarse, logits_fine, _children_groups(parent_matrix))


def _tree_min(
    logits: Sequence[Tensor], level_targets: Sequence[Tensor], parent_index: Sequence[Tensor], ignore_index: int,
    allowed: Sequence[Tensor | None] | None = None, valid: Tensor | None = None, check: bool = True,
) -> Tensor:
    """``allowed[l]`` (bool [B, C_l, ...], None where every pixel is exact) marks the classes a partial label
    leaves open; ``valid`` then says which pixels carry a label at all (default: no level ignores them).
    ``check``: raise on targets out of range (reads a value back to the host: off in the trainer's step)."""
    n = len(logits)
    if len(level_targets) != n or len(parent_index) != n - 1:
        raise ValueError(
            f"got {len(logits)} logit maps, {len(level_targets)} target maps and {len(parent_index)} parent maps; "
            "need one logit and target map per level"
        )
    z = [x.float() for x in logits]
    shape = (z[0].shape[0],) + tuple(z[0].shape[2:])
    for l in range(n):
        if (z[l].shape[0],) + tuple(z[l].shape[2:]) != shape or tuple(level_targets[l].shape) != shape:
            raise ValueError(
                f"level {l}: logits {tuple(z[l].shape)} / targets {tuple(level_targets[l].shape)} do not match "
                f"batch and spatial size {shape} of level 0; all levels must share one resolution"
            )
    # sigmoid is monotone, so min/max of scores = sigmoid of min/max of logits; working on logits lets
    # -log(m) = softplus(-z_min) and -log(1 - M) = softplus(z_max) be exact without an eps clamp.
    z_min = [z[0]]
    for l in range(1, n):
        parents = parent_index[l - 1].to(z[l].device)
        z_min.append(torch.minimum(z[l], z_min[l - 1].index_select(1, parents)))
    z_max = [z[-1]]
    for l in range(n - 2, -1, -1):
        parents = parent_index[l].to(z[l].device)
        finer = z_max[0]
        index = parents.view(1, -1, *([1] * (finer.dim() - 2))).expand_as(finer)
        z_max.insert(0, z[l].scatter_reduce(1, index, finer, reduce="amax", include_self=True))

    if valid is None:
        valid = torch.ones(shape, dtype=torch.bool, device=z[0].device)
        for t in level_targets:
            valid &= t != ignore_index
    allowed = allowed or [None] * n
    per_pixel = torch.zeros(shape, device=z[0].device)
    num_nodes = 0
    for l in range(n):
        c = z[l].shape[1]
        num_nodes += c
        t = level_targets[l].to(z[l].device).long()
        exact = valid & (t != ignore_index)
        safe = torch.where(exact, t, torch.zeros_like(t))
        if check and bool(((safe < 0) | (safe >= c)).any()):
            raise ValueError(f"level {l} targets must be in 0..{c - 1} or ignore_index {ignore_index}")
        neg = F.softplus(z_max[l])  # -log(1 - M_v) for every node
        pos = F.softplus(-z_min[l])  # -log(m_v)
        idx = safe.unsqueeze(1)
        if allowed[l] is None:
            per_pixel = per_pixel + neg.sum(1) + (pos.gather(1, idx) - neg.gather(1, idx)).squeeze(1)
        else:  # negatives: the classes the label rules out; the positive only where the label names one class
            per_pixel = per_pixel + (neg * ~allowed[l]).sum(1) + pos.gather(1, idx).squeeze(1) * exact
    total = (per_pixel * valid).sum()
    return total / valid.sum().clamp_min(1) / num_nodes


def tree_min_loss(
    logits: Sequence[Tensor], level_targets: Sequence[Tensor], taxonomy: Taxonomy, ignore_index: int | None = None
) -> Tensor:
    """HSSN tree-min loss over all (level, class) nodes, averaged over valid pixels and nodes.

    ``logits`` is one [B, C_l, ...] map per level and ``level_targets`` one class-index map per level
    (``taxonomy.to_levels(leaf_mask)``), all at one resolution. With s = sigmoid(logits), m_v = min of s
    over v and its ancestors and M_v = max of s over v and its descendants, each pixel costs
    sum_v [-y_v log m_v - (1 - y_v) log(1 - M_v)]. Pixels ignored at any level are left out; an all-ignore
    batch gives 0. ``ignore_index`` defaults to the taxonomy's.
    """
    if len(logits) != taxonomy.num_levels:
        raise ValueError(f"got {len(logits)} logit maps; taxonomy {taxonomy.name!r} has {taxonomy.num_levels} levels")
    ignore = taxonomy.ignore_index if ignore_index is None else ignore_index
    parents = [taxonomy.parent_index(l) for l in range(taxonomy.num_levels - 1)]
    return _tree_min(logits, level_targets, parents, ignore)


def _check_class_weights(weights: Sequence[Sequence[float]] | None, sizes: list[int],
                         taxonomy: Taxonomy) -> list[list[float]] | None:
    """Per-level class weights for the cross-entropy: one list per level, one finite number > 0 per class."""
    if weights is None:
        return None
    if not isinstance(weights, (list, tuple)) or len(weights) != len(sizes):
        raise ValueError(f"class_weights must hold one list per level of taxonomy {taxonomy.name!r} "
                         f"({len(sizes)} levels, sizes {sizes}), got {weights!r}")
    out = []
    for l, (row, size) in enumerate(zip(weights, sizes)):
        ok = isinstance(row, (list, tuple)) and len(row) == size and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf") for v in row)
        if not ok:
            raise ValueError(f"class_weights[{l}] must be {size} numbers > 0 (classes {taxonomy.classes(l)}), got {row!r}")
        out.append([float(v) for v in row])
    return out


# ---------------------------------------------------------------------- module
class HierarchicalLoss(nn.Module):
    """Weighted per-level cross-entropy plus optional consistency and tree-min terms.

    ``total = ce_weight * sum_l level_weights[l] * CE_l + consistency_weight * KL + tree_min_weight * TM
    + distill_weight * D`` where KL is :func:`consistency_kl` averaged over adjacent level pairs, TM is
    :func:`tree_min_loss` and D is :meth:`distillation` from a teacher's logits (``forward(..., teacher=)``).
    With ``ohem_keep < 1`` the levels in ``ohem_levels`` average their cross-entropy over only that share of the
    batch's labelled pixels, the hardest ones (online hard-example mining). ``forward`` returns ``(total, parts)``; each part is its *weighted*
    contribution (``ce/L0``, ``ce/L1``, ..., ``consistency``, ``tree_min`` and ``distill`` when their weight
    is non-zero), so the parts other than ``total`` add up to ``total``.

    Lower-resolution loss: when a level's logits are smaller (or larger) than the mask, the leaf
    mask is resized to the logits by picking the label at each cell's centre (nearest-exact: values
    are picked, never blended, and aligned with how the logits are upsampled back) instead of
    upsampling the logits. Computing the loss at the head's stride this way is a
    deliberate speed and memory saving; upsample the logits yourself for a full-resolution loss.

    ``class_weights`` (one list per level) weight each class's cross-entropy, normalised by the summed
    weight of the labelled pixels as torch's weighted mean is; partial labels weigh 1.
    """

    def __init__(self, taxonomy: Taxonomy, **options: Any) -> None:
        """``options``: any :class:`~hiertree.config.options.LossOptions` field by name (``consistency_weight=``,
        ``level_weights=``, ...); the others keep their declared defaults, the config's. ``class_weights`` are lists
        (the trainer resolves ``auto`` from the training masks); ``full_resolution`` is the trainer's business (it
        decides the logits' size) and is accepted here only so a config's ``loss`` section can be passed whole.
        Unknown names or refused values raise ValueError naming them."""
        super().__init__()
        self.taxonomy = taxonomy
        self.num_levels = taxonomy.num_levels
        self.ignore_index = taxonomy.ignore_index
        # the config was checked already; a direct caller is checked here, against the same declarations
        class_weights = options.pop("class_weights", None)  # checked per level below, with the classes named
        if class_weights == "auto":
            raise ValueError("HierarchicalLoss: class_weights='auto' is resolved from the training masks by the trainer "
                             "(hiertree.data.stats.median_frequency_weights); pass the per-level lists")
        opts = validate_options(LossOptions, options, "HierarchicalLoss").model_dump()
        level_weights = opts["level_weights"] or [1.0] * self.num_levels
        if len(level_weights) != self.num_levels:
            raise ValueError(
                f"level_weights has {len(level_weights)} entries but taxonomy {taxonomy.name!r} has "
                f"{self.num_levels} levels; give one weight per level (coarse to fine)"
            )
        self.level_weights = level_weights
        self.consistency_weight = opts["consistency_weight"]
        self.tree_min_weight = opts["tree_min_weight"]
        self.ce_weight = opts["ce_weight"]
        self.label_smoothing = opts["label_smoothing"]
        self.pseudo_weight = opts["partial_pseudo_weight"]
        self.pseudo_threshold = opts["partial_pseudo_threshold"]
        self.ohem_keep = opts["ohem_keep"]
        self.ohem_levels = set(range(self.num_levels) if opts["ohem_levels"] is None else opts["ohem_levels"])
        if any(l >= self.num_levels for l in self.ohem_levels):
            raise ValueError(f"ohem_levels {sorted(self.ohem_levels)}: taxonomy {taxonomy.name!r} has levels "
                             f"0..{self.num_levels - 1}")
        self.distill_weight = opts["distill_weight"]
        self.sizes = [taxonomy.num_classes(l) for l in range(self.num_levels)]
        for l in range(self.num_levels - 1):
            self.register_buffer(f"_parent_index_{l}", taxonomy.parent_index(l), persistent=False)
        self.partial_levels = taxonomy.partial_levels()
        for l in range(self.num_levels):
            # row per mask value (node ids, then one all-True row for ignore and anything else): the classes a
            # label leaves open at level l; and whether that label is partial there
            sets = torch.ones(taxonomy.num_nodes + 1, self.sizes[l], dtype=torch.bool)
            sets[: taxonomy.num_nodes] = taxonomy.label_sets(l)
            partial = torch.zeros(taxonomy.num_nodes + 1, dtype=torch.bool)
            partial[: taxonomy.num_nodes] = taxonomy.label_sets(l).sum(1) > 1
            self.register_buffer(f"_sets_{l}", sets, persistent=False)
            self.register_buffer(f"_partial_{l}", partial, persistent=False)
        self.class_weights = _check_class_weights(class_weights, self.sizes, taxonomy)
        for l, w in enumerate(self.class_weights or []):
            self.register_buffer(f"_class_weight_{l}", torch.tensor(w, dtype=torch.float32), persistent=False)

    #: Raise on mask values that are no node id nor ignore (costs a host sync per call); the trainer turns it
    #: off because :class:`~hiertree.data.SegDataset` already checked every mask where it was loaded.
    check_targets: bool = True

    def _parents(self) -> list[Tensor]:
        return [getattr(self, f"_parent_index_{l}") for l in range(self.num_levels - 1)]

    def _nodes_at(self, mask: Tensor, size: tuple[int, ...], cache: dict) -> Tensor:
        """The node-id mask at ``size`` (the label at each cell's centre), cached per size."""
        key = ("nodes", size)
        if key not in cache:
            cache[key] = mask
            if tuple(mask.shape[1:]) != size:
                cache[key] = F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
        return cache[key]

    def _targets_at(self, mask: Tensor, size: tuple[int, ...], cache: dict) -> list[Tensor]:
        if size not in cache:
            cache[size] = self.taxonomy.to_levels(self._nodes_at(mask, size, cache), check=self.check_targets)
        return cache[size]

    def _table_index(self, nodes: Tensor) -> Tensor:
        """Mask values as rows of the per-level set tables: node ids as they are, anything else the last row."""
        n = self.taxonomy.num_nodes
        return torch.where((nodes >= 0) & (nodes < n), nodes, torch.full_like(nodes, n))

    def _allowed(self, nodes: Tensor, level: int) -> Tensor:
        """Bool [B, C_l, h, w]: the classes each pixel's label leaves open at ``level``."""
        return getattr(self, f"_sets_{level}")[self._table_index(nodes)].movedim(-1, 1)

    def _level_ce(self, x: Tensor, level: int, mask: Tensor, cache: dict, partial: bool) -> Tensor:
        """Cross-entropy of one level, a partial label's -log of its summed probability included, per labelled pixel."""
        target = self._targets_at(mask, tuple(x.shape[2:]), cache)[level]
        weight = getattr(self, f"_class_weight_{level}") if self.class_weights else None
        if self.ohem_keep < 1 and level in self.ohem_levels:
            return self._mined_ce(x, level, target, weight, mask, cache, partial)
        ce_sum = F.cross_entropy(x.float(), target, weight=weight, ignore_index=self.ignore_index, reduction="sum",
                                 label_smoothing=self.label_smoothing)
        exact = target != self.ignore_index
        count = weight[torch.where(exact, target, 0)].mul(exact).sum() if weight is not None else exact.sum()
        if partial and level in self.partial_levels:
            nodes = self._nodes_at(mask, tuple(x.shape[2:]), cache)
            is_partial = getattr(self, f"_partial_{level}")[self._table_index(nodes)]
            open_classes = self._allowed(nodes, level)
            logp = F.log_softmax(x.float(), dim=1)
            # exact and ignored pixels take the all-True row: logsumexp 0, a finite gradient, weight 0
            nll = -logp.masked_fill(~open_classes, float("-inf")).logsumexp(1)
            ce_sum = ce_sum + torch.where(is_partial, nll, 0.0).sum()
            if self.pseudo_weight > 0:
                ce_sum = ce_sum + self.pseudo_weight * self._pseudo_nll(logp, open_classes, is_partial).sum()
            count = count + is_partial.sum()
        return ce_sum / count.clamp_min(1)  # 0, not nan, for all-ignore

    def _mined_ce(self, x: Tensor, level: int, target: Tensor, weight: Tensor | None, mask: Tensor, cache: dict,
                  partial: bool) -> Tensor:
        """OHEM: the level's cross-entropy (partial labels' terms included) averaged over the ``ohem_keep`` share of
        the batch's labelled pixels with the highest loss; the others add nothing (their gradient is 0)."""
        pixel = F.cross_entropy(x.float(), target, weight=weight, ignore_index=self.ignore_index, reduction="none",
                                label_smoothing=self.label_smoothing)
        labelled = target != self.ignore_index
        if partial and level in self.partial_levels:
            nodes = self._nodes_at(mask, tuple(x.shape[2:]), cache)
            is_partial = getattr(self, f"_partial_{level}")[self._table_index(nodes)]
            logp = F.log_softmax(x.float(), dim=1)
            nll = -logp.masked_fill(~self._allowed(nodes, level), float("-inf")).logsumexp(1)
            pixel = pixel + torch.where(is_partial, nll, 0.0)
            labelled = labelled | is_partial
        losses = pixel[labelled]
        if losses.numel() == 0:
            return pixel.sum() * 0.0
        keep = max(1, math.ceil(self.ohem_keep * losses.numel()))
        return losses.topk(keep, sorted=False).values.mean()

    def distillation(self, logits: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        """Mean over levels and pixels of KL(teacher || model): the teacher's per-level softmax (``teacher``: its
        logits or log-probabilities, at the model's logits' size) as soft targets; needs no labels."""
        total = logits[0].new_zeros((), dtype=torch.float32)
        for z, t in zip(logits, teacher, strict=True):
            log_t = F.log_softmax(t.float(), dim=1)
            total = total + (log_t.exp() * (log_t - F.log_softmax(z.float(), dim=1))).sum(1).mean()
        return total / len(logits)

    def _pseudo_nll(self, logp: Tensor, open_classes: Tensor, is_partial: Tensor) -> Tensor:
        """Per pixel, -log p of the model's own best class among those its partial label leaves open, where that
        class holds ``pseudo_threshold`` of the open classes' probability (0 elsewhere). The choice is detached:
        only the log-probability is trained, pulling each partial pixel towards one class under its label."""
        with torch.no_grad():
            inside = logp.masked_fill(~open_classes, float("-inf"))
            best, pick = inside.max(1)
            confident = (best - inside.logsumexp(1)).exp() >= self.pseudo_threshold
        return -logp.gather(1, pick.unsqueeze(1)).squeeze(1) * (is_partial & confident)

    def _cross_level_terms(self, logits: Sequence[Tensor], leaf_mask: Tensor, cache: dict, partial: bool) -> dict[str, Tensor]:
        """The weighted consistency and tree-min terms (those switched on), which need every level at one size."""
        parts: dict[str, Tensor] = {}
        if (self.consistency_weight > 0 or self.tree_min_weight > 0) and len({tuple(x.shape[2:]) for x in logits}) > 1:
            raise ValueError(
                f"consistency/tree-min need all levels at one resolution, got {[tuple(x.shape[2:]) for x in logits]}; "
                "resize the heads to a common size or disable these terms"
            )
        if self.consistency_weight > 0:
            kl = logits[0].new_zeros((), dtype=torch.float32)
            if self.num_levels > 1:
                kl = sum(  # the children groups live on the logits' device once (no copy per step)
                    _consistency_kl(logits[l], logits[l + 1], self.taxonomy.children(l, device=logits[l].device))
                    for l in range(self.num_levels - 1)
                ) / (self.num_levels - 1)
            parts["consistency"] = self.consistency_weight * kl
        if self.tree_min_weight > 0:
            size = tuple(logits[0].shape[2:])
            targets = self._targets_at(leaf_mask, size, cache)
            allowed, valid = None, None
            if partial:
                nodes = self._nodes_at(leaf_mask, size, cache)
                allowed = [self._allowed(nodes, l) if l in self.partial_levels else None for l in range(self.num_levels)]
                valid = (nodes >= 0) & (nodes < self.taxonomy.num_nodes)
            tm = _tree_min(logits, targets, self._parents(), self.ignore_index, allowed, valid, check=self.check_targets)
            parts["tree_min"] = self.tree_min_weight * tm
        return parts

    def forward(self, logits: Sequence[Tensor], leaf_mask: Tensor, partial: bool | None = None,
                teacher: Sequence[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``logits``: one [B, C_l, h, w] map per level; ``leaf_mask``: LongTensor [B, H, W] of node ids (leaf
        masks are node masks). ``partial``: whether any pixel may be labelled at an inner node; ``None`` asks
        the mask (one host sync); ``False`` skips the partial-label terms (the trainer knows per batch).
        ``teacher``: a teacher's per-level logits at the logits' size, for the ``distill_weight`` term."""
        if len(logits) != self.num_levels:
            raise ValueError(
                f"got {len(logits)} logit maps but taxonomy {self.taxonomy.name!r} has {self.num_levels} levels; "
                "pass one [B, C_l, h, w] tensor per level, coarse to fine"
            )
        if leaf_mask.dim() != 3 or leaf_mask.dtype.is_floating_point:
            raise ValueError(
                f"leaf_mask must be an integer tensor [B, H, W], got {leaf_mask.dtype} {tuple(leaf_mask.shape)}"
            )
        for l, x in enumerate(logits):
            if x.dim() != 4 or x.shape[1] != self.sizes[l] or x.shape[0] != leaf_mask.shape[0]:
                raise ValueError(
                    f"logits[{l}] has shape {tuple(x.shape)}; expected [{leaf_mask.shape[0]}, {self.sizes[l]}, h, w] "
                    f"(batch of the mask, {self.sizes[l]} classes at level {l})"
                )
        leaf_mask = leaf_mask.long()
        if partial is None:
            partial = bool(((leaf_mask >= self.taxonomy.num_leaves) & (leaf_mask < self.taxonomy.num_nodes)).any())
        partial = partial and bool(self.partial_levels)
        cache: dict = {}
        parts: dict[str, Tensor] = {}
        total = logits[0].new_zeros((), dtype=torch.float32)
        for l, x in enumerate(logits):
            if self.ce_weight * self.level_weights[l] == 0:
                # a switched-off level skips its cross-entropy but stays in the graph (zero gradient): DDP
                # requires every parameter to take part, and weight decay still reaches its head
                part = x.float().sum() * 0.0
            else:
                part = self.ce_weight * self.level_weights[l] * self._level_ce(x, l, leaf_mask, cache, partial)
            parts[f"ce/L{l}"] = part
            total = total + part

        parts.update(self._cross_level_terms(logits, leaf_mask, cache, partial))
        if self.distill_weight > 0:
            if teacher is None:
                raise ValueError("distill_weight > 0 needs the teacher's logits (forward(..., teacher=...)); the "
                                 "trainer passes them when train.teacher is set")
            parts["distill"] = self.distill_weight * self.distillation(logits, teacher)
        for name in ("consistency", "tree_min", "distill"):
            if name in parts:
                total = total + parts[name]
        parts["total"] = total
        return total, parts
