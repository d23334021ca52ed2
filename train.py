"""Train a hierarchical segmentation model: ``python train.py --config configs/demo.yaml [key=value ...]``."""

import sys

from hiertree.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
