"""Evaluate a checkpoint per level: ``python eval.py --checkpoint runs/demo [--data DIR --split val]``."""

import sys

from hiertree.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
