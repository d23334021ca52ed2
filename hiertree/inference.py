"""Decoding per-level logits into labels that respect the tree."""

from __future__ import annotations

from typing import Any

import torch

from hiertree.taxonomy import Taxonomy

__all__ = ["leaf_path_scores", "tree_consistent_levels", "coarse_logits_from_leaves", "decode", "node_log_probs",
           "backoff_nodes", "backoff_chain", "backoff_stop", "check_threshold"]


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


def decode(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False, probabilities: bool = False,
           backoff: float | None = None) -> dict[str, Any]:
    """Turn per-level logits into ``{"levels", "leaf", "raw"[, "probs"][, "nodes"]}`` (see
    :func:`tree_consistent_levels`); ``backoff`` (a threshold) adds the node map of :func:`backoff_nodes`."""
    leaf, levels = tree_consistent_levels(logits, taxonomy, flat=flat)
    out: dict[str, Any] = {"levels": levels, "leaf": leaf, "raw": [z.argmax(1) for z in logits]}
    if probabilities:
        out["probs"] = [z.float().softmax(1) for z in logits]
    if backoff is not None:
        out["nodes"] = backoff_nodes(logits, taxonomy, backoff, flat=flat)
    return out


def _leaf_log_probs(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool) -> torch.Tensor:
    """[B, num_leaves, H, W] log of the leaf distribution tree-consistent decoding takes the argmax of."""
    scores = logits[-1].float() if flat else leaf_path_scores(logits, taxonomy)
    return torch.log_softmax(scores, dim=1)


def node_log_probs(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False) -> torch.Tensor:
    """[B, num_nodes, H, W]: each node's log-probability, the log of the leaf probabilities summed under it.

    The leaf distribution is the softmax of the path scores (:func:`leaf_path_scores`), so its argmax is the
    tree-consistent leaf; a node's probability is never below any node's under it.
    """
    leaf = _leaf_log_probs(logits, taxonomy, flat)
    inner = [leaf.index_select(1, torch.tensor(taxonomy.leaves_under(n), device=leaf.device)).logsumexp(1)
             for n in taxonomy.node_names[taxonomy.num_leaves:]]
    return torch.cat([leaf, torch.stack(inner, 1)], 1) if inner else leaf


def check_threshold(threshold: float, what: str = "back-off threshold") -> float:
    """A threshold in [0, 1] (a probability), or ValueError saying so."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {threshold!r}; 0 keeps every leaf, "
                         "larger values climb to an ancestor more often")
    return float(threshold)


def backoff_chain(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Node ids [depth, B, H, W] up the argmax leaf's chain and their probabilities [depth, B, H, W]: computed once,
    they give the back-off map of any threshold through :func:`backoff_stop` (calibration scans many)."""
    nodes_lp = node_log_probs(logits, taxonomy, flat)
    leaf = nodes_lp[:, : taxonomy.num_leaves].argmax(1)
    chain = taxonomy.leaf_chains().to(leaf.device)[:, leaf]  # [depth, B, H, W]
    probs = torch.stack([nodes_lp.gather(1, c.unsqueeze(1)).squeeze(1) for c in chain]).exp()
    return chain, probs


def backoff_stop(chain: torch.Tensor, probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """The first node up each chain whose probability reaches ``threshold``; the depth-1 node at the latest."""
    reached = probs >= threshold
    reached[-1] = True
    first = reached.float().argmax(0, keepdim=True)  # argmax returns the first maximum
    return chain.gather(0, first).squeeze(0)


def backoff_nodes(logits: list[torch.Tensor], taxonomy: Taxonomy, threshold: float, flat: bool = False) -> torch.Tensor:
    """LongTensor [B, H, W] of node ids (``Taxonomy.node_id``): per pixel, the argmax leaf or its first ancestor
    whose probability reaches ``threshold`` (a depth-1 node is the last stop).

    ``threshold = 0`` gives the tree-consistent leaf map exactly; a larger threshold never gives a deeper node.
    """
    threshold = check_threshold(threshold)
    chain, probs = backoff_chain(logits, taxonomy, flat)
    return backoff_stop(chain, probs, threshold)
