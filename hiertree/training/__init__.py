"""Training: the loop (:mod:`.engine`), what a run carries across a stop (:mod:`.run_state`), DDP plumbing
(:mod:`.distributed`), and its logs (:mod:`.tblog`: metrics.csv and TensorBoard; :mod:`.trackers`: W&B, MLflow)."""
