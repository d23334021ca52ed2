"""Scoring a split per level (:mod:`.evaluate`: TTA, tiling, back-off curves and their calibration) and the
human-readable report (:mod:`.report`)."""
