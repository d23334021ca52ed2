"""Decoding per-level logits into labels that respect the tree."""

from __future__ import annotations

from typing import Any

import torch

from hiertree.taxonomy import Taxonomy

__all__ = ["leaf_path_scores", "tree_consistent_levels", "coarse_logits_from_leaves", "decode"]


def leaf_path_scores(logits: list[torch.Tensor], taxonomy: Taxonomy) -> torch.Tensor:
    """[B, num_leaves, H, W]: each leaf's score is the sum of log-probabilities of its path over the heads.

    A leaf carried down through several levels collects its own class at each of them.
    """
    score = None
    for level, z in enumerate(logits):
        logp = torch.log_softmax(z.float(), dim=1)
        idx = taxonomy.leaf_to_class(level).to(z.device)
        term = logp.index_select(1, idx)
        score = term if score is None else score + term
    return score


def tree_consistent_levels(
    logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Argmax over leaves of the path score, then coarser levels through the taxonomy's LUTs."""
    if flat:
        leaf = logits[-1].argmax(1)
    else:
        leaf = leaf_path_scores(logits, taxonomy).argmax(1)
    return leaf, taxonomy.levels_from_leaves(leaf)


def coarse_logits_from_leaves(leaf_logits: torch.Tensor, taxonomy: Taxonomy) -> list[torch.Tensor]:
    """Per-level logits of a flat leaf head: logsumexp over each class's leaves (= summed probabilities).

    The coarse levels are computed in float32 whatever the input dtype (bf16 logsumexp loses ~3 digits).
    """
    out = []
    full = leaf_logits.float()
    leaves = taxonomy.num_levels - 1
    for level in range(leaves):
        groups = [full.index_select(1, g.to(full.device)).logsumexp(1) for g in taxonomy.children(level, leaves)]
        out.append(torch.stack(groups, 1))
    out.append(leaf_logits)
    return out


def decode(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False, probabilities: bool = False) -> dict[str, Any]:
    """Turn per-level logits into ``{"levels", "leaf", "raw"[, "probs"]}`` (see :func:`tree_consistent_levels`)."""
    leaf, levels = tree_consistent_levels(logits, taxonomy, flat=flat)
    out: dict[str, Any] = {"levels": levels, "leaf": leaf, "raw": [z.argmax(1) for z in logits]}
    if probabilities:
        out["probs"] = [z.float().softmax(1) for z in logits]
    return out
