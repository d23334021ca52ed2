"""Train a hierarchical segmentation model: ``python train.py --config configs/demo.yaml [key=value ...]``."""

import sys

from hiertree.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
