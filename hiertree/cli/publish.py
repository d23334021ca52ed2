"""Publish a trained checkpoint as a model others load by name: fp16 weights, config, taxonomy, model card.

``hiertree-publish --checkpoint runs/pascal_part --out pretrained/pascal_part_lite0 --card card.md`` writes
``model.safetensors`` (floating tensors in float16: half the size, scores within rounding of float32),
``config.yaml`` (the run's config with ``model.encoder_weights`` cleared: the trained weights replace any
ImageNet ones), ``taxonomy.yaml``, ``metrics.json`` when the checkpoint has one, and ``README.md`` (the card
given, else the checkpoint's own). No training state travels. A folder under the repository's
``pretrained/`` is a shipped model: ``HierSegModel.from_pretrained(name)``, ``hiertree-predict --checkpoint
name`` and ``eval.py --checkpoint name`` find it by name, with no download.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from hiertree.checkpoint import CheckpointError, load_checkpoint
from hiertree.cli.common import fail
from hiertree.models.hub import card_data, with_front_matter

__all__ = ["publish", "main"]

PROG = "hiertree-publish"

_MAX_FILE_BYTES = 16_000_000  # what a shipped file may weigh (git hosting, package size)


def publish(checkpoint: str | Path, out_dir: str | Path, card: str | None = None,
            dtype: torch.dtype = torch.float16) -> Path:
    """Write the shipped-model folder ``out_dir`` from ``checkpoint``; returns it."""
    ck = load_checkpoint(checkpoint)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; publish into a new folder or remove it first")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in ck["state_dict"].items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "dtype": str(dtype).split(".")[-1]})
    cfg = dict(ck["config"])
    cfg["model"] = {**cfg.get("model", {}), "encoder_weights": None}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (out / "taxonomy.yaml").write_text(ck["taxonomy"].to_yaml())
    if ck["metrics"] is not None:
        (out / "metrics.json").write_text(json.dumps(ck["metrics"], indent=2))
    readme = card if card is not None else _own_card(ck["dir"])
    if readme:  # with the front matter the Hub reads (library, task, per-level mIoU)
        (out / "README.md").write_text(with_front_matter(readme, card_data(ck["taxonomy"], ck["metrics"], model_name=out.name)))
    big = [p.name for p in out.iterdir() if p.stat().st_size > _MAX_FILE_BYTES]
    if big:
        raise CheckpointError(f"{out}: {big} exceed {_MAX_FILE_BYTES // 1_000_000} MB; ship a smaller model")
    return out


def _own_card(folder: Path) -> str | None:
    path = folder / "README.md"
    return path.read_text() if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Publish a checkpoint as an fp16 model folder (weights, config, taxonomy, model card)."""
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (uses its best)")
    parser.add_argument("--out", required=True, help="new folder to write, e.g. pretrained/my_model")
    parser.add_argument("--card", help="Markdown file to ship as README.md (default: the checkpoint's own card)")
    args = parser.parse_args(argv)
    try:
        card = Path(args.card).read_text() if args.card else None
        out = publish(args.checkpoint, args.out, card)
    except (CheckpointError, OSError) as err:
        return fail(PROG, err)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"hiertree-publish: wrote {out} ({size:.1f} MB: {', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
