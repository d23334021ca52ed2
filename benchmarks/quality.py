"""Quality benchmark: hiertree vs a flat smp DeepLabV3+ baseline, plus ablations, in one run.

Every variant trains with the same data, crop, augmentation, epochs, batch, optimizer and schedule
(hiertree's engine), and is scored with hiertree's per-level metrics on the val split at native
resolution. Writes ``benchmarks/results/quality-<date>-<device>.json`` and ``.md``.

    python benchmarks/quality.py --data /root/d/datasets/pascal-part            # full run (GPU)
    python benchmarks/quality.py --data ../shared/datasets/pascal-part-sample \
        --smoke                                                                # a few steps (CPU check)

Variants (``--variants``): ``smp`` (flat smp DeepLabV3+, CE on leaves), ``flat`` (hiertree decoder,
one leaf head), ``heads`` (one head per level, CE per level), ``heads_kl`` (+ consistency loss: the
recipe), ``treemin`` (+ HSSN tree-min loss). Each result has tree-consistent and raw per-head
scores, the raw heads' consistency rate, and single-scale vs flip TTA when ``--tta`` is given.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import SmpFlatDeepLabV3Plus  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hiertree.config import load_config  # noqa: E402
from hiertree.data import build_datasets, pad_collate  # noqa: E402
from hiertree.evaluate import evaluate  # noqa: E402
from hiertree.engine import train  # noqa: E402
from hiertree.taxonomy import Taxonomy  # noqa: E402
from hiertree.weights import resolve_encoder_weights  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "smp": ["model.flat=true", "loss.level_weights=[0, 0, 1]", "loss.consistency_weight=0"],
    "flat": ["model.flat=true", "loss.level_weights=[0, 0, 1]", "loss.consistency_weight=0"],
    "heads": ["loss.consistency_weight=0"],
    "heads_kl": [],
    "treemin": ["loss.consistency_weight=0", "loss.tree_min_weight=1.0"],
}
TTA_SCALES = (0.75, 1.0, 1.25)
SMOKE = ["train.epochs=1", "train.max_steps=2", "train.batch_size=2", "data.crop=128", "train.num_workers=0",
         "train.warmup_steps=1", "eval.max_batches=2", "eval.batch_size=2", "model.decoder_channels=32"]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_variant(name: str, base_cfg: Path, overrides: list[str], out_root: Path, tta: bool = False) -> dict:
    run_dir = out_root / name
    # resume=auto: a run cut off (a 10-minute command limit, a lost machine) continues where it stopped
    cfg = load_config(base_cfg, VARIANTS[name] + overrides + [f"train.out_dir={run_dir}", "train.resume=auto"])
    model = None
    if name == "smp":
        weights = resolve_encoder_weights(cfg["model"]["encoder_weights"], cfg["model"]["encoder"])
        model = SmpFlatDeepLabV3Plus(Taxonomy.load(cfg["taxonomy"]), cfg["model"]["encoder"], weights, cfg["model"]["output_stride"])
    command = f"python benchmarks/quality.py --config {base_cfg} " + " ".join(VARIANTS[name] + overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = train(cfg, command=command, model=model)
    seconds = time.time() - t0
    m = result["last_metrics"]
    if m is None:  # finished by an earlier invocation: take its final evaluation
        m = json.loads((run_dir / "last" / "metrics.json").read_text())
    with open(run_dir / "metrics.csv") as f:  # wall time over every invocation: train + per-epoch evaluation
        train_seconds = sum(float(r["seconds"]) for r in csv.DictReader(f))
    row = {
        "variant": name,
        "seconds": round(train_seconds, 1),
        "seconds_this_invocation": round(seconds, 1),
        "steps": result["steps"],
        "seed": cfg["train"]["seed"],
        "command": command,
        "config": cfg,
        "tree": [lv["mIoU"] for lv in m["tree"]["levels"]],
        "raw": [lv["mIoU"] for lv in m["raw"]["levels"]],
        "raw_consistency": m["raw"]["consistency"],
        "tree_consistency": m["tree"]["consistency"],
        "pixel_accuracy": [lv["pixel_accuracy"] for lv in m["tree"]["levels"]],
        "metrics": m,
    }
    if torch.cuda.is_available():
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if tta:
        taxonomy = Taxonomy.load(cfg["taxonomy"])
        _, val_ds = build_datasets(cfg["data"], taxonomy, seed=cfg["train"]["seed"])
        loader = DataLoader(val_ds, batch_size=cfg["eval"]["batch_size"], collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index))
        model = result["model"]
        device = next(model.parameters()).device
        amp = "bf16" if device.type == "cuda" else "none"
        tta_m = evaluate(model, loader, taxonomy, device, amp, hflip=True, scales=TTA_SCALES,
                         max_batches=cfg["eval"]["max_batches"], flat=cfg["model"]["flat"])
        row["tta"] = [lv["mIoU"] for lv in tta_m["tree"]["levels"]]
    return row


def markdown(report: dict) -> str:
    lines = [
        f"# Quality benchmark — {report['date']}",
        "",
        f"- device: {report['device']}; torch {report['torch']}; data: `{report['data']}`",
        f"- base config: `{report['config']}`; overrides: `{' '.join(report['overrides']) or 'none'}`",
        "- scores: val split, single scale, native resolution; mIoU over non-background classes, "
        "one confusion matrix per level over the whole split",
        "",
        "| variant | L0 mIoU | L1 mIoU | L2 mIoU | raw-head L2 | raw heads consistent | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        t = r["tree"] + [float("nan")] * (3 - len(r["tree"]))
        lines.append(f"| {r['variant']} | {t[0]:.4f} | {t[1]:.4f} | {t[2]:.4f} | {r['raw'][-1]:.4f} | "
                     f"{r['raw_consistency']:.4f} | {r['seconds']} |")
    if any("tta" in r for r in report["runs"]):
        lines += ["", f"Flip + multi-scale {list(TTA_SCALES)} test-time augmentation (reported apart from single scale):", "",
                  "| variant | L0 mIoU | L1 mIoU | L2 mIoU |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['variant']} | " + " | ".join(f"{v:.4f}" for v in r["tta"]) + " |" for r in report["runs"] if "tta" in r]
    lines += ["", "Commands:", ""] + [f"- {r['variant']}: `{r['command']}`" for r in report["runs"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Pascal-Part folder (JPEGImages/, masks/ or gt_masks/, *_id.txt)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "pascal_part.yaml"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--runs-dir", default="runs/quality")
    parser.add_argument("--tta", action="store_true", help="also score flip + multi-scale (0.75, 1, 1.25) test-time augmentation")
    parser.add_argument("--smoke", action="store_true", help="a few steps per variant (checks the script, no numbers)")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every variant")
    args = parser.parse_args(argv)
    overrides = [f"data.root={args.data}"] + (SMOKE if args.smoke else []) + args.overrides
    now = dt.datetime.now(dt.timezone.utc)
    report = {"date": now.isoformat(timespec="seconds"), "device": device_name(), "torch": torch.__version__,
              "data": args.data, "config": args.config, "overrides": overrides, "smoke": args.smoke, "runs": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "smoke" if args.smoke else now.strftime("%Y%m%d-%H%M")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    stem = out / f"quality-{tag}-{dev}"
    for variant in args.variants:  # results are written after every variant, so a cut-off run keeps the finished ones
        report["runs"].append(run_variant(variant, Path(args.config), overrides, Path(args.runs_dir), args.tta))
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
