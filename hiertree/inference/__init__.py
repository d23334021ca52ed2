"""Prediction, from photos to label maps: :class:`Predictor` (:mod:`.predictor`, the one predictor of
``model.predict``, ``hiertree-predict`` and the demo) and its :class:`Views`; the files it writes (:mod:`.writers`);
tree-consistent decoding and back-off (:mod:`.decoding`); the runtimes that run the network (:mod:`.runners`:
PyTorch with folded batch norms, ONNX Runtime; :mod:`.backends` picks one and caches the graph); the int8 recipe and
the calibration file a model ships (:mod:`.quantization`); sliding windows.

The decoding functions are this package's API: ``hiertree.inference.decode``, ``hiertree.inference.backoff_nodes``.
"""

from hiertree.inference.decoding import (backoff_chain, backoff_nodes, backoff_stop, channel_argmax, check_threshold,
                                         decode, leaf_path_scores, node_log_probs,
                                         parse_backoff, path_logit_sums, resolve_backoff,
                                         tree_consistent_levels)
from hiertree.inference.predictor import Predictor, Views

__all__ = ["Predictor", "Views", "channel_argmax", "path_logit_sums", "resolve_backoff", "leaf_path_scores",
           "tree_consistent_levels", "decode", "node_log_probs", "backoff_nodes", "backoff_chain", "backoff_stop",
           "check_threshold", "parse_backoff"]
