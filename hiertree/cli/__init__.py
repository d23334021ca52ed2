"""The command-line tools, one module per console script: ``hiertree-train`` (:mod:`.train`), ``hiertree-eval``
(:mod:`.eval`), ``hiertree-stats`` (:mod:`.stats`), ``hiertree-predict`` (:mod:`.predict`), ``hiertree-export``
(:mod:`.export`), ``hiertree-publish`` (:mod:`.publish`), ``hiertree-convert-weights`` (:mod:`.convert_weights`), ``hiertree-review`` (:mod:`.review`).
Only these modules print; the library logs."""
