"""Evaluate a checkpoint per level: ``python eval.py --checkpoint runs/demo [--data DIR --split val]``."""

import sys

from hiertree.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
