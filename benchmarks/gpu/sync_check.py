"""The training step on a GPU with ``torch.cuda.set_sync_debug_mode("error")``: any wait for the device inside a
step (a host read, a copy from ordinary host memory) raises, naming the op. Run by ``lease.sh gpu-check``.

    python benchmarks/gpu/sync_check.py --steps 5 [key=value ...]

Steps run on the synthetic demo data with the GPU recipe's model, once per loss setting (default, tree-min,
partial labels, loss at the decoder stride, flat); the read-back between steps (the trainer's one sync per
``train.log_every`` steps) is outside the checked region, as in the trainer. On a machine without CUDA it runs
the same steps on the CPU and says the check needs a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hiertree.config import load_config  # noqa: E402
from hiertree.training import engine  # noqa: E402

SETTINGS = {
    "default": [],
    "tree_min": ["loss.tree_min_weight=0.5"],
    "partial_labels": ["data.labels={0: background, 1: upper_body, 2: torso, 3: lower_body, 4: head, 5: lower_body, "
                       "6: body}"],
    "loss_at_decoder_stride": ["loss.full_resolution=false"],
    "flat": ["model.flat=true"],
}


def check(name: str, overrides: list[str], steps: int) -> str:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(ROOT / "configs" / "demo.yaml", [*overrides, "model.encoder_weights=null",
                                                             "train.num_workers=0", "train.progress=false",
                                                             f"train.out_dir={out}"])
        run = engine._setup(cfg, "", None)
        engine._resume(run)
        window, batches = engine._Window(), iter(run.data.train_loader)
        cuda = run.place.device.type == "cuda"
        for k in range(steps):
            batch = next(batches)
            if cuda:
                torch.cuda.set_sync_debug_mode("error")
            try:
                engine._step(run, batch, window, k + 1)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
        losses = [round(float(v), 4) for v in window.losses]
    return f"{name}: {steps} steps on {run.place.device} ({run.place.amp}) without a device sync; losses {losses}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: the steps run on the CPU, where set_sync_debug_mode checks nothing")
    for name, extra in SETTINGS.items():
        print(check(name, [*extra, *args.overrides], args.steps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
