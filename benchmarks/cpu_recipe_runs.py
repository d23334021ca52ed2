"""Short training runs of equal wall time, one per recipe: which recipe buys the most val mIoU per CPU-hour.

The fastest step is not the best recipe when the faster settings cost accuracy per step. Each arm here trains
the CPU recipe (``--config``) with its overrides for ``--minutes`` of training, with its schedule set for that
length from the first step: ``train.steps`` = minutes x the arm's whole-trainer img/s measured by
``benchmarks/cpu_train_levers.py`` (``--levers``, the JSON it wrote) / batch size. Each arm is then scored on
val at native resolution (the engine's final evaluation, single scale). Arms run one after another (two torch
jobs at once slow both), each in its own run folder under ``--runs``; an interrupted call resumes its arm
(``train.resume=auto``) and skips finished ones.

    python benchmarks/cpu_recipe_runs.py --levers benchmarks/results/cpu-levers-20261204.json --minutes 25

Writes ``benchmarks/results/cpu-recipes-<tag>.{json,md}``: per arm the steps, images, training seconds (from
the run's metrics.csv), val mIoU per level and their mean per CPU-hour of training.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_train_levers import VARIANTS  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402

#: arm -> the lever benchmark's variant it trains (its overrides of the CPU recipe, its measured img/s)
ARMS: dict[str, str] = {"today": "baseline", "same_math_faster": "cl+workers_0", "fast": "fast"}


def _measured(levers: dict, variant: str) -> tuple[float, int]:
    """``(img/s, batch size)`` of a variant of the lever benchmark."""
    rows = {r["variant"]: r for r in levers["rows"]}
    if variant not in rows:
        raise SystemExit(f"{variant!r} is not in the lever results ({', '.join(rows)}); run cpu_train_levers.py with it")
    return rows[variant]["img_per_s"], rows[variant]["batch_size"]


def _train(arm: str, overrides: list[str], steps: int, args: argparse.Namespace) -> list[str]:
    out = Path(args.runs) / arm
    cmd = [sys.executable, "train.py", "--config", args.config, *overrides, f"train.steps={steps}",
           "train.eval_every=100000", "train.progress=false", "train.log_every=50", f"train.out_dir={out}",
           "train.resume=auto", *args.overrides]
    if not (out / "metrics.json").is_file():
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(Path(args.runs) / f"{arm}.log", "a") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return cmd


def _row(arm: str, variant: str, img_s: float, steps: int, batch: int, cmd: list[str], runs: Path) -> dict:
    out = runs / arm
    with open(out / "metrics.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    seconds = sum(float(r["seconds"]) - float(r.get("eval_seconds") or 0) for r in epochs)  # training only
    metrics = json.loads((out / "metrics.json").read_text())
    miou = [lv["mIoU"] for lv in metrics["tree"]["levels"]]
    hours = seconds / 3600
    return {"arm": arm, "sized_by": variant, "planned_img_per_s": img_s, "steps": steps, "images": steps * batch,
            "train_seconds": round(seconds, 1), "img_per_s": steps * batch / seconds, "val_mIoU": miou,
            "mean_mIoU": sum(miou) / len(miou), "mean_mIoU_per_cpu_hour": sum(miou) / len(miou) / hours,
            "command": shlex.join(cmd)}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# CPU recipes at equal wall time, {meta['date']}", "",
             f"Machine: {meta['provenance']['machine']['cpu']}, {meta['provenance']['machine']['cpu_count']} cores; "
             f"commit {meta['provenance']['git']['commit']}. Command: `{meta['command']}`.",
             f"Each arm: `{meta['config']}` plus its overrides, {meta['minutes']} minutes of training planned from the "
             f"lever benchmark's img/s ({meta['levers']}), its schedule over exactly those steps; val "
             "(410 images, native resolution, single scale, mIoU without background).", "",
             "| arm | overrides | steps | train min | img/s | L0 | L1 | L2 | mean | mean per CPU-hour |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        l0, l1, l2 = r["val_mIoU"][:3]
        lines.append(f"| {r['arm']} | `{' '.join(VARIANTS[ARMS[r['arm']]]) or '-'}` | {r['steps']} | "
                     f"{r['train_seconds'] / 60:.1f} | {r['img_per_s']:.2f} | {l0:.3f} | {l1:.3f} | {l2:.3f} | "
                     f"{r['mean_mIoU']:.3f} | {r['mean_mIoU_per_cpu_hour']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levers", required=True, help="JSON written by benchmarks/cpu_train_levers.py")
    parser.add_argument("--config", default="configs/pascal_part_cpu.yaml")
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), help=f"arms to run (default all: {', '.join(ARMS)})")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "recipes"), help="run folders (not in git)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value for every arm (e.g. data.root=...)")
    args = parser.parse_args(argv)
    levers = json.loads(Path(args.levers).read_text())
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    rows = []
    for arm in args.arms:
        variant = ARMS[arm]
        overrides = VARIANTS[variant]
        img_s, batch = _measured(levers, variant)
        steps = max(1, round(args.minutes * 60 * img_s / batch))
        cmd = _train(arm, overrides, steps, args)
        rows.append(_row(arm, variant, img_s, steps, batch, cmd, Path(args.runs)))
        print(json.dumps(rows[-1]), flush=True)
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "command": shlex.join([sys.executable, *sys.argv]),
            "config": args.config, "minutes": args.minutes, "levers": args.levers, "provenance": provenance()}
    stem = Path(args.out) / f"cpu-recipes-{args.tag or now.strftime('%Y%m%d-%H%M')}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
