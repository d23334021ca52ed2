"""The one tiny run the tests share: overrides of configs/demo.yaml small enough for a 2-core CPU in seconds.

Tests compose it (``[*TINY_RUN, "train.epochs=4"]``) instead of writing their own list; ``conftest.py`` builds the
shared trained run (``tiny_run``) and the shared untrained checkpoint (``tiny_checkpoint``) from it.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"

#: 16 synthetic 64² training images (2 steps of 8), 4 val images, a 16-channel decoder, no download, no worker,
#: on the CPU even where a GPU is visible (bit-identical resumes, gloo DDP and the step tests need it).
TINY_RUN = [
    "data.crop=64", "data.synthetic.size=64", "data.synthetic.num_train=16", "data.synthetic.num_val=4",
    "model.decoder_channels=16", "model.skip_channels=8", "model.encoder_weights=null", "train.epochs=1",
    "train.batch_size=8", "train.num_workers=0", "train.progress=false", "train.warmup_steps=1", "train.threads=1",
    "eval.batch_size=4", "train.device=cpu",
]


def tiny_model(taxonomy, seed: int = 0):
    """An untrained tiny model (16-channel decoder) in eval mode, its heads scaled x30 so labels vary pixel to pixel."""
    import torch

    from hiertree.models import HierSegModel

    torch.manual_seed(seed)
    model = HierSegModel(taxonomy, decoder_channels=16, skip_channels=8).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(30.0)
    return model


def save_tiny(folder: Path, model, taxonomy) -> Path:
    """``model`` saved as train.py saves a checkpoint: ``folder/ckpt-0000001`` with ``last`` and ``best``; returns
    the checkpoint folder."""
    from hiertree.checkpoint import save_checkpoint

    save_checkpoint(folder, "ckpt-0000001", model, {"taxonomy": taxonomy.name, "model": dict(model.config)}, taxonomy,
                    links=("last", "best"))
    return folder / "ckpt-0000001"
