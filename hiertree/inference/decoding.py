"""Decoding per-level logits into labels that respect the tree."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hiertree.tree.taxonomy import Taxonomy

if TYPE_CHECKING:  # imported where a function computes: the threshold helpers serve commands that need no PyTorch
    import torch

__all__ = ["channel_argmax", "path_logit_sums", "resolve_backoff", "leaf_path_scores", "tree_consistent_levels", "decode", "node_log_probs",
           "backoff_nodes", "backoff_chain", "backoff_stop", "check_threshold", "parse_backoff"]


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(1)`` (ties: the first index). On a CPU, with few channels, as a running maximum over channels:
    torch's argmax along the channel dim of an NCHW map strides through memory and is several times slower than
    C vectorised compares (22 ms vs 5 ms for 7 x 500 x 375 on 2 cores). Channels-last maps (channels adjacent in
    memory), GPUs and traced graphs (ONNX export) keep the argmax."""
    import torch

    tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if x.device.type != "cpu" or x.dim() < 3 or not 1 < x.shape[1] <= 64 or x.stride(1) == 1 or tracing:
        return x.argmax(1)
    best = x[:, 0]
    index = torch.zeros(best.shape, dtype=torch.long)
    for c in range(1, x.shape[1]):
        better = x[:, c] > best
        best = torch.maximum(best, x[:, c])
        index.masked_fill_(better, c)
    return index


def path_logit_sums(logits: list[torch.Tensor], taxonomy: Taxonomy) -> torch.Tensor:
    """[B, num_leaves, H, W]: each leaf's raw logits summed along its path over the heads (a leaf carried down
    through several levels collects its own class at each of them).

    This is :func:`leaf_path_scores` plus a per-pixel constant (log_softmax(z)_c = z_c - logsumexp(z), and the
    logsumexp terms are the same for every leaf), so it has the same argmax and softmax for less work, and it is
    linear in the logits, so it may be taken before upsampling."""
    score = None
    for level, z in enumerate(logits):
        term = z.float().index_select(1, taxonomy.leaf_to_class(level, device=z.device))
        score = term if score is None else score + term
    return score


def leaf_path_scores(logits: list[torch.Tensor], taxonomy: Taxonomy) -> torch.Tensor:
    """[B, num_leaves, H, W]: each leaf's score is the sum of log-probabilities of its path over the heads."""
    return path_logit_sums(logits, taxonomy) - sum(z.float().logsumexp(1, keepdim=True) for z in logits)


def _leaf_scores(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool) -> torch.Tensor:
    """What tree-consistent decoding takes the argmax (and back-off the softmax) of: path logit sums, or a flat
    model's own leaf logits."""
    return logits[-1].float() if flat else path_logit_sums(logits, taxonomy)


def tree_consistent_levels(
    logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Argmax over leaves of the path score, then coarser levels through the taxonomy's LUTs."""
    leaf = channel_argmax(_leaf_scores(logits, taxonomy, flat))
    return leaf, taxonomy.levels_from_leaves(leaf)


def decode(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False, probabilities: bool = False,
           backoff: float | None = None, raw: bool = True) -> dict[str, Any]:
    """Turn per-level logits into ``{"levels", "leaf"[, "raw"][, "probs"][, "nodes"]}`` (see
    :func:`tree_consistent_levels`); ``raw``: each head's own argmax; ``backoff`` (a threshold) adds the node map of
    :func:`backoff_nodes`."""
    leaf, levels = tree_consistent_levels(logits, taxonomy, flat=flat)
    out: dict[str, Any] = {"levels": levels, "leaf": leaf}
    if raw:
        out["raw"] = [channel_argmax(z) for z in logits]
    if probabilities:
        out["probs"] = [z.float().softmax(1) for z in logits]
    if backoff is not None:
        out["nodes"] = backoff_nodes(logits, taxonomy, backoff, flat=flat)
    return out


def _node_log_probs(leaf_scores: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    import torch

    leaf = torch.log_softmax(leaf_scores, dim=1)
    inner = [leaf.index_select(1, under).logsumexp(1) for under in taxonomy.inner_leaf_sets(device=leaf.device)]
    return torch.cat([leaf, torch.stack(inner, 1)], 1) if inner else leaf


def node_log_probs(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool = False) -> torch.Tensor:
    """[B, num_nodes, H, W]: each node's log-probability, the log of the leaf probabilities summed under it.

    The leaf distribution is the softmax of the path scores (:func:`leaf_path_scores`), so its argmax is the
    tree-consistent leaf; a node's probability is never below any node's under it.
    """
    return _node_log_probs(_leaf_scores(logits, taxonomy, flat), taxonomy)


def check_threshold(threshold: float, what: str = "back-off threshold") -> float:
    """A threshold in [0, 1] (a probability), or ValueError saying so."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {threshold!r}; 0 keeps every leaf, "
                         "larger values climb to an ancestor more often")
    return float(threshold)


def parse_backoff(text: str | None, flag: str = "--backoff") -> float | str | None:
    """A command line's back-off value: ``auto``, a threshold in [0, 1], or None when the flag was not given."""
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{flag} takes 'auto' or a threshold in [0, 1], got {text!r}") from None
    return check_threshold(value, flag)


_WARNED_ONE_LEVEL: set[str] = set()


def resolve_backoff(backoff: float | str | None, calibrated: float | None, taxonomy: Taxonomy) -> float | None:
    """A threshold from ``backoff``: a number in [0, 1], ``"auto"`` (the ``calibrated`` one) or None (no back-off)."""
    if backoff == "auto":
        if calibrated is None:
            raise ValueError("this model has no calibrated back-off threshold; calibrate one with "
                             "`eval.py --checkpoint CKPT --calibrate-backoff 0.95`, or give a threshold in [0, 1]")
        return calibrated
    if backoff is None:
        return None
    if taxonomy.num_levels == 1 and taxonomy.name not in _WARNED_ONE_LEVEL:
        _WARNED_ONE_LEVEL.add(taxonomy.name)  # said once per tree, not once per image
        logging.getLogger(__name__).warning("taxonomy %r has one level: back-off predictions are the leaves",
                                            taxonomy.name)
    return check_threshold(backoff)


def backoff_chain(logits: list[torch.Tensor], taxonomy: Taxonomy, flat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Node ids [depth, B, H, W] up the argmax leaf's chain and their probabilities [depth, B, H, W]: computed once,
    they give the back-off map of any threshold through :func:`backoff_stop` (calibration scans many)."""
    scores = _leaf_scores(logits, taxonomy, flat)  # once, for the leaf decoding picks and the node probabilities
    nodes_lp = _node_log_probs(scores, taxonomy)
    leaf = channel_argmax(scores)
    chain = taxonomy.leaf_chains(device=leaf.device)[:, leaf]  # [depth, B, H, W]
    import torch

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
