"""Prediction, from logits to label maps: tree-consistent decoding and back-off (:mod:`.decoding`), numpy images of
any size through one predictor (:mod:`.predictor`), the runtimes that run the network (:mod:`.runners`: PyTorch with
folded batch norms, ONNX Runtime, int8; :mod:`.backends` picks one and caches the graph), padding, sliding windows.

The decoding functions are this package's API: ``hiertree.inference.decode``, ``hiertree.inference.backoff_nodes``.
"""

from hiertree.inference.decoding import (backoff_chain, backoff_nodes, backoff_stop, channel_argmax, check_threshold,
                                         coarse_logits_from_leaves, decode, leaf_path_scores, node_log_probs,
                                         parse_backoff, path_logit_sums, resolve_backoff,
                                         tree_consistent_levels)

__all__ = ["channel_argmax", "path_logit_sums", "resolve_backoff", "leaf_path_scores", "tree_consistent_levels",
           "coarse_logits_from_leaves", "decode", "node_log_probs", "backoff_nodes", "backoff_chain", "backoff_stop",
           "check_threshold", "parse_backoff"]
