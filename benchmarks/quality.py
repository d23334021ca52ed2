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

The smp variant uses smp's own DeepLabV3+ decoder: of the ``model.*`` settings only the encoder, its
weights and the output stride apply, so command-line overrides of other ``model.*`` keys are refused
when ``smp`` is selected (``--smoke``'s small hiertree decoder is listed as not applied in its row).
Its run folder holds smp weights that ``eval.py`` cannot load; this script is what scores it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import SmpFlatDeepLabV3Plus  # noqa: E402
from benchmarks.provenance import device_name, provenance, version  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hiertree.config import load_config  # noqa: E402
from hiertree.device import resolve_amp  # noqa: E402
from hiertree.data import build_datasets, drop_bad_samples, pad_collate, size_ordered  # noqa: E402
from hiertree.training.engine import train  # noqa: E402
from hiertree.evaluation.evaluate import evaluate  # noqa: E402
from hiertree.inference.predictor import Views  # noqa: E402
from hiertree.tree.taxonomy import Taxonomy  # noqa: E402
from hiertree.models.weights import resolve_encoder_weights  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "smp": ["model.flat=true", "loss.level_weights=[0, 0, 1]", "loss.consistency_weight=0"],
    "flat": ["model.flat=true", "loss.level_weights=[0, 0, 1]", "loss.consistency_weight=0"],
    "heads": ["loss.consistency_weight=0"],
    "heads_kl": [],
    "treemin": ["loss.consistency_weight=0", "loss.tree_min_weight=1.0"],
}
SMP_APPLIES = ("encoder", "encoder_weights", "output_stride")  # the model.* keys the smp variant honours (flat: forced)
TTA_SCALES = (0.75, 1.0, 1.25)
SMOKE = ["train.epochs=1", "train.max_steps=2", "train.batch_size=2", "data.crop=128", "train.num_workers=0",
         "train.warmup_steps=1", "data.longest=160", "eval.max_batches=1", "eval.batch_size=2",
         "model.decoder_channels=32"]
INVOCATIONS = "quality_invocations.json"  # per run folder: one entry per invocation that trained or re-scored it
SMP_NOTE = "NOT_A_HIERTREE_CHECKPOINT.txt"


# ---------------------------------------------------------------------- the smp baseline
def check_smp_overrides(variants: list[str], overrides: list[str]) -> str | None:
    """Why the command line cannot run the smp variant honestly (a ``model.*`` key smp ignores), or None."""
    if "smp" not in variants:
        return None
    ignored = [o for o in overrides if o.split("=", 1)[0].strip().startswith("model.")
               and o.split("=", 1)[0].strip()[len("model."):] not in SMP_APPLIES]
    if not ignored:
        return None
    return (f"the smp variant builds smp's own DeepLabV3+ and would ignore {ignored} (it honours only "
            f"model.{', model.'.join(SMP_APPLIES)}); run smp in a separate invocation without them, "
            "or leave smp out of --variants")


def build_smp(cfg: dict) -> tuple[SmpFlatDeepLabV3Plus, dict]:
    """The smp model, initialised from ``train.seed``, and the settings it really has (for the row)."""
    m = cfg["model"]
    weights = resolve_encoder_weights(m["encoder_weights"], m["encoder"])
    torch.manual_seed(cfg["train"]["seed"])  # the engine seeds only after the model exists: do it here
    model = SmpFlatDeepLabV3Plus(Taxonomy.load(cfg["taxonomy"]), m["encoder"], weights, m["output_stride"])
    net_cfg = dict(getattr(model.net, "config", None) or getattr(model.net, "_hub_mixin_config", {}))
    settings = {
        "architecture": "segmentation_models_pytorch.DeepLabV3Plus (benchmarks/baselines.py SmpFlatDeepLabV3Plus)",
        "smp_version": version("segmentation_models_pytorch"),
        "encoder": net_cfg.get("encoder_name", f"tu-{m['encoder']}"),
        "encoder_weights": m["encoder_weights"],
        "encoder_weights_file": str(weights) if weights else None,
        "encoder_output_stride": net_cfg.get("encoder_output_stride", m["output_stride"]),
        "decoder_channels": net_cfg.get("decoder_channels"),
        "decoder_atrous_rates": list(net_cfg.get("decoder_atrous_rates") or []),
        "decoder_aspp_separable": net_cfg.get("decoder_aspp_separable"),
        "decoder_aspp_dropout": net_cfg.get("decoder_aspp_dropout"),
        "upsampling": net_cfg.get("upsampling"),
        "classes": net_cfg.get("classes"),
        "flat": True,
        "init_seed": cfg["train"]["seed"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, settings


def write_smp_note(run_dir: Path, settings: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SMP_NOTE).write_text(
        "This run folder was written by benchmarks/quality.py's smp variant.\n"
        "Its checkpoints hold segmentation_models_pytorch DeepLabV3Plus weights, not a hiertree HierSegModel:\n"
        "config.yaml and the model cards' model section describe a hiertree model that was never built.\n"
        "eval.py / hiertree-predict / hiertree-export cannot load it ('weights do not match');\n"
        "quality.py scores it (re-running the same quality.py command re-scores it without retraining).\n\n"
        f"smp model actually trained:\n{json.dumps(settings, indent=2)}\n")


# ---------------------------------------------------------------------- per-variant bookkeeping
def record_invocation(run_dir: Path, entry: dict) -> list[dict]:
    """Append this invocation to the run folder's log and return every invocation so far.

    Peak GPU memory is reset per process, so a variant trained over several invocations (a resume
    after a time limit) reports the max over the recorded ones; an invocation killed before it
    returned records nothing (its resumed successor trains the same steps, hence the same peak).
    """
    path = run_dir / INVOCATIONS
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs.append(entry)
    tmp = path.with_name(f".{INVOCATIONS}.tmp")
    tmp.write_text(json.dumps(runs, indent=2))
    tmp.replace(path)
    return runs


def max_peak_gib(invocations: list[dict]) -> float | None:
    peaks = [r["peak_memory_gib"] for r in invocations if r.get("peak_memory_gib") is not None]
    return max(peaks) if peaks else None


def wall_seconds(run_dir: Path) -> float:
    """Train + per-epoch evaluation seconds over every invocation: the engine's metrics.csv ``seconds``.

    A re-logged epoch (a resume) replaces its row there and carries the seconds spent before the stop.
    """
    with open(run_dir / "metrics.csv") as f:
        return sum(float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds"))


def evaluate_like_engine(model: torch.nn.Module, cfg: dict, hflip: bool, scales: tuple[float, ...]) -> tuple[dict, list]:
    """Score ``model`` on val as hiertree.training.engine's per-epoch evaluation does (bad samples dropped,
    same loader, amp, channels_last, tiling above eval.max_side), with the given flip and scales."""
    tcfg, ecfg = cfg["train"], cfg["eval"]
    taxonomy = Taxonomy.load(cfg["taxonomy"])
    device = next(model.parameters()).device
    amp = resolve_amp(tcfg["amp"], device)
    channels_last = tcfg["channels_last"] is True or (tcfg["channels_last"] == "auto" and device.type == "cuda")
    _, val_ds = build_datasets(cfg["data"], taxonomy, seed=tcfg["seed"])
    skipped = drop_bad_samples(val_ds)
    loader = DataLoader(val_ds, batch_size=ecfg["batch_size"], sampler=size_ordered(val_ds), num_workers=tcfg["num_workers"],
                        collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index),
                        generator=torch.Generator().manual_seed(tcfg["seed"]))
    views = Views(hflip=hflip, scales=tuple(scales), max_side=ecfg["max_side"], window=ecfg["window"],
                  overlap=ecfg["overlap"])
    metrics = evaluate(model, loader, taxonomy, device, views=views, amp=amp, max_batches=ecfg["max_batches"],
                       flat=cfg["model"]["flat"], channels_last=channels_last)
    return metrics, skipped


# ---------------------------------------------------------------------- one variant
def run_variant(name: str, base_cfg: Path, overrides: list[str], out_root: Path, command: str, tta: bool = False) -> dict:
    run_dir = out_root / name
    # resume=auto: a run cut off (a 10-minute command limit, a lost machine) continues where it stopped
    effective = VARIANTS[name] + overrides + [f"train.out_dir={run_dir}", "train.resume=auto"]
    cfg = load_config(base_cfg, effective)
    model, recorded_cfg = None, cfg
    if name == "smp":
        model, smp_settings = build_smp(cfg)
        write_smp_note(run_dir, smp_settings)
        recorded_cfg = copy.deepcopy(cfg)
        recorded_cfg["model"] = smp_settings
        recorded_cfg["hiertree_model_settings_not_applied"] = {k: v for k, v in cfg["model"].items()
                                                                if k not in (*SMP_APPLIES, "flat")}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = train(cfg, command=command, model=model)
    seconds = time.time() - t0
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    invocations = record_invocation(run_dir, {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "seconds": round(seconds, 1), "steps_after": result["steps"], "stopped": result["stopped"],
        "device": device_name(), "peak_memory_gib": peak})
    m = result["last_metrics"]
    if m is None:  # finished by an earlier invocation: take its final evaluation
        m = json.loads((run_dir / "last" / "metrics.json").read_text())
    row = {
        "variant": name,
        "seed": cfg["train"]["seed"],
        "steps": result["steps"],
        "stopped": result["stopped"],
        "seconds": round(wall_seconds(run_dir), 1),
        "seconds_this_invocation": round(seconds, 1),
        "invocations": len(invocations),
        "peak_memory_gib": max_peak_gib(invocations),  # GPU only (null on CPU); max over invocations
        "effective_overrides": effective,  # applied to --config in this order, as load_config(config, overrides)
        "config": recorded_cfg,
        "run_dir": str(run_dir),
        "tree": [lv["mIoU"] for lv in m["tree"]["levels"]],
        "raw": [lv["mIoU"] for lv in m["raw"]["levels"]],
        "raw_consistency": m["raw"]["consistency"],
        "tree_consistency": m["tree"]["consistency"],
        "pixel_accuracy": [lv["pixel_accuracy"] for lv in m["tree"]["levels"]],
        "metrics": m,
    }
    if name == "smp":
        row["note"] = (f"smp weights: {run_dir / SMP_NOTE}; scored only by quality.py (eval.py cannot load them); "
                       f"hiertree model settings not applied: {json.dumps(recorded_cfg['hiertree_model_settings_not_applied'])}")
    if tta:
        tta_m, skipped = evaluate_like_engine(result["model"], cfg, hflip=True, scales=TTA_SCALES)
        row["tta"] = [lv["mIoU"] for lv in tta_m["tree"]["levels"]]
        row["tta_metrics"] = tta_m
        row["tta_skipped"] = skipped
    return row


# ---------------------------------------------------------------------- report
def miou_scope(runs: list[dict]) -> str:
    """Which classes the mIoU columns average: the taxonomy's ``exclude_from_miou``, as the metrics recorded it."""
    levels = [lv for r in runs for lv in r["metrics"]["tree"]["levels"]]
    if not levels or any("mIoU_excludes" not in lv for lv in levels):
        return "over the classes the taxonomy does not exclude (its exclude_from_miou)"
    excluded = list(dict.fromkeys(n for lv in levels for n in lv["mIoU_excludes"]))
    return f"without {', '.join(excluded)}" if excluded else "over every class"


def markdown(report: dict) -> str:
    v, git, mach = report["versions"], report["git"], report["machine"]
    rev = "not a git checkout" if git["commit"] is None else git["commit"] + (" (uncommitted changes)" if git["dirty"] else "")
    cuda = mach["cuda"]
    lines = [
        f"# Quality benchmark — {report['date']}" + (" (--smoke: a script check, no meaningful numbers)" if report["smoke"] else ""),
        "",
        f"- device: {report['device']}" + (f" (CUDA {cuda['cuda']}, cuDNN {cuda['cudnn']})" if cuda else ""),
        f"- CPU: {mach['cpu']}, {mach['cpu_count']} cores, {mach['torch_threads']} torch threads; {mach['platform']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- code: git {rev}; sources sha256 {report['source_sha256'][:16]}",
        f"- data: `{report['data']}`; base config: `{report['config']}`; "
        f"overrides: `{' '.join(report['overrides']) or 'none'}`",
        f"- command (in `{report['cwd']}`): `{report['command']}`",
        f"- scores: val split, single scale, native resolution; mIoU {miou_scope(report['runs'])}, "
        "one confusion matrix per level over the whole split",
        "- seconds: training + per-epoch evaluation summed over invocations (each run's metrics.csv); "
        "peak GiB: max GPU memory allocated over invocations (— on CPU)",
        "",
        "| variant | seed | L0 mIoU | L1 mIoU | L2 mIoU | raw-head L2 | raw heads consistent | steps | seconds | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        t = r["tree"] + [float("nan")] * (3 - len(r["tree"]))
        peak = "—" if r["peak_memory_gib"] is None else r["peak_memory_gib"]
        lines.append(f"| {r['variant']} | {r['seed']} | {t[0]:.4f} | {t[1]:.4f} | {t[2]:.4f} | {r['raw'][-1]:.4f} | "
                     f"{r['raw_consistency']:.4f} | {r['steps']} | {r['seconds']} | {peak} |")
    if any("tta" in r for r in report["runs"]):
        lines += ["", f"Flip + multi-scale {list(TTA_SCALES)} test-time augmentation (reported apart from single scale):", "",
                  "| variant | L0 mIoU | L1 mIoU | L2 mIoU |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['variant']} | " + " | ".join(f"{x:.4f}" for x in r["tta"]) + " |" for r in report["runs"] if "tta" in r]
    for r in report["runs"]:
        if r["variant"] == "smp":
            s = r["config"]["model"]
            lines += ["", f"smp row: smp {s['smp_version']} DeepLabV3+ (`{s['encoder']}`, output stride "
                      f"{s['encoder_output_stride']}, decoder channels {s['decoder_channels']}, atrous rates "
                      f"{s['decoder_atrous_rates']}, initialised with seed {s['init_seed']}); hiertree model settings not "
                      f"applied: `{json.dumps(r['config']['hiertree_model_settings_not_applied'])}`. Its run folder is not a hiertree "
                      f"checkpoint (`{SMP_NOTE}`): only this script scores it."]
    lines += ["", "Per-variant config overrides (applied in order to the base config):", ""]
    lines += [f"- {r['variant']}: `{shlex.join(r['effective_overrides'])}`" for r in report["runs"]] + [""]
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
    parser.add_argument("overrides", nargs="*",
                        help="config overrides applied to every variant (not right after --variants, which takes every word)")
    raw_args = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(raw_args)
    refusal = check_smp_overrides(args.variants, args.overrides)
    if refusal:
        parser.error(refusal)
    script = sys.argv[0] if argv is None else str(Path(__file__).resolve())
    command = shlex.join([sys.executable, script, *raw_args])  # the real invocation, runnable from report["cwd"]
    overrides = [f"data.root={args.data}"] + (SMOKE if args.smoke else []) + args.overrides
    now = dt.datetime.now(dt.timezone.utc)
    report = {"date": now.isoformat(timespec="seconds"), "device": device_name(), "command": command, "cwd": os.getcwd(),
              **provenance(), "data": args.data, "config": args.config, "overrides": overrides, "smoke": args.smoke,
              "runs": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "smoke" if args.smoke else now.strftime("%Y%m%d-%H%M")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    stem = out / f"quality-{tag}-{dev}"
    for variant in args.variants:  # results are written after every variant, so a cut-off run keeps the finished ones
        report["runs"].append(run_variant(variant, Path(args.config), overrides, Path(args.runs_dir), command, args.tta))
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
