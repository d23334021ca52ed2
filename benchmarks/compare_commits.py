"""CPU speed of two commits side by side: the real trainer and ``benchmarks/speed.py``, runs alternating.

A refactor must not make training or inference slower. This script checks out ``--base`` (a git revision)
into a temporary folder, then alternates the same commands between that checkout and this working tree
(``--rounds`` times, base first in odd rounds, head first in even ones, so machine load hits both alike):

- **trainer**: ``train.py`` on the synthetic demo data for one epoch (``--train-images`` images); the
  figure is training images per second from the run's ``metrics.csv`` ``seconds`` (the loop only, no
  evaluation), so it covers the loader, the step, logging and read-backs as a user runs them;
- **predict**: ``hiertree-predict`` (``python -m hiertree.cli.predict``, its defaults) with each checkout's shipped
  model on ``--predict-images`` Pascal-Part val photos, whole-process wall seconds (start-up included, the ONNX
  graph already cached by one untimed call per checkout);
- **speed.py**: ``benchmarks/speed.py`` with ``--speed-args`` (model-only and end-to-end training img/s of
  hiertree and smp, data pipeline img/s, CPU inference latency of one image).

Each checkout runs its own code (``PYTHONPATH`` points at it). Writes ``<out>/compare-<date>-cpu.{json,md}``
with medians per figure and the head/base ratios.

    python benchmarks/compare_commits.py --base 360416f --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402

TRAIN_ARGS = ["--config", "configs/demo.yaml", "train.epochs=1", "train.eval_every=1", "eval.max_batches=1",
              "train.progress=false", "train.num_workers=2", "train.batch_size=16", "train.log_every=20", "data.synthetic.num_val=8"]
DATA = (ROOT / ".." / "shared" / "datasets" / "pascal-part").resolve()
SPEED_ARGS = (f"--config configs/pascal_part.yaml --data {DATA} --steps 6 --warmup 2 --infer-repeats 5 data.crop=192 "
              "train.batch_size=4 train.num_workers=2")


def _env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}


def _trainer(checkout: Path, images: int, work: Path) -> float:
    """Training images per second of one epoch of ``train.py`` in ``checkout``."""
    out = work / "run"
    cmd = [sys.executable, "train.py", *TRAIN_ARGS, f"data.synthetic.num_train={images}", f"train.out_dir={out}"]
    done = subprocess.run(cmd, cwd=checkout, env=_env(checkout), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed in {checkout}:\n{done.stderr[-2000:]}")
    with open(out / "metrics.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    used = images // 16 * 16  # train.batch_size 16 in the demo config, drop_last
    return used / float(row["seconds"])


def _photos(count: int) -> list[str]:
    ids = (DATA / "val_id.txt").read_text().split()[:count]
    return [str(DATA / "JPEGImages" / f"{i}.jpg") for i in ids]


def _predict(checkout: Path, photos: list[str], work: Path) -> float:
    """Wall seconds of one ``hiertree-predict`` process over ``photos`` with ``checkout``'s shipped model."""
    model = checkout / "pretrained" / "pascal_part_lite0_cpu"
    cmd = [sys.executable, "-m", "hiertree.cli.predict", "--checkpoint", str(model), *photos, "--out", str(work / "pred")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=checkout, env=_env(checkout), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed in {checkout}:\n{done.stderr[-2000:]}")
    return seconds


def _speed(checkout: Path, args: list[str], work: Path) -> dict:
    """The figures ``benchmarks/speed.py`` reports, run from ``checkout``."""
    cmd = [sys.executable, "benchmarks/speed.py", *args, "--out", str(work)]
    done = subprocess.run(cmd, cwd=checkout, env=_env(checkout), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed in {checkout}:\n{done.stderr[-2000:]}")
    report = json.loads(max(work.glob("speed-*.json")).read_text())
    h, s = report["models"]["hiertree"], report["models"]["smp"]
    return {"hiertree_train_model_only_img_s": h["train_img_s_model_only"],
            "hiertree_train_end_to_end_img_s": h["train_img_s_end_to_end"],
            "smp_train_model_only_img_s": s["train_img_s_model_only"],
            "smp_train_end_to_end_img_s": s["train_img_s_end_to_end"],
            "data_pipeline_img_s": report["data_pipeline_img_s"],
            "hiertree_cpu_infer_ms": h["cpu_infer_ms_median"], "smp_cpu_infer_ms": s["cpu_infer_ms_median"]}


def _round(checkouts: dict[str, Path], order: list[str], args: argparse.Namespace, tmp: Path, i: int) -> dict:
    figures: dict[str, dict] = {}
    for name in order:
        work = tmp / f"{name}-{i}"
        work.mkdir()
        row = {"trainer_img_s": _trainer(checkouts[name], args.train_images, work)}
        if args.predict_images:
            row["predict_s"] = _predict(checkouts[name], _photos(args.predict_images), work)
        if args.speed_args:
            row.update(_speed(checkouts[name], shlex.split(args.speed_args), work))
        figures[name] = row
        print(f"round {i + 1} {name}: {row}", flush=True)
    return figures


def _summary(rounds: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for key in rounds[0]["head"]:
        base = statistics.median(r["base"][key] for r in rounds)
        head = statistics.median(r["head"][key] for r in rounds)
        better = head / base if not key.endswith(("_ms", "_s")) or key.endswith("img_s") else base / head  # > 1: faster
        out[key] = {"base": round(base, 2), "head": round(head, 2), "head_speedup_x": round(better, 3)}
    return out


def _markdown(report: dict) -> str:
    lines = [f"# CPU speed: {report['base_commit']} (base) vs {report['head_commit']} (head)", "",
             f"{report['date']}, {report['machine_summary']}, {report['rounds']} alternating rounds, medians. "
             f"Command: `{report['command']}`", "",
             "| figure | base | head | head speed-up |", "| --- | --- | --- | --- |"]
    for key, v in report["summary"].items():
        lines.append(f"| {key} | {v['base']} | {v['head']} | {v['head_speedup_x']}x |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. a commit before a refactor)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=256, help="synthetic training images of the trainer run")
    parser.add_argument("--predict-images", type=int, default=20, help="Pascal-Part val photos of the predict figure "
                        "(0 to skip it)")
    parser.add_argument("--speed-args", default=SPEED_ARGS, help="arguments for benchmarks/speed.py ('' to skip it)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    git = ["git", "-C", str(ROOT)]
    base_commit = subprocess.run([*git, "rev-parse", "--short", args.base], check=True, capture_output=True,
                                 text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(base_dir)], check=True)
        subprocess.run(["git", "-C", str(base_dir), "checkout", "-q", base_commit], check=True)
        checkouts = {"base": base_dir, "head": ROOT}
        for name, checkout in checkouts.items():  # untimed: fills each checkout's ONNX cache
            if args.predict_images:
                _predict(checkout, _photos(1), Path(tmp) / f"warm-{name}")
        rounds = [_round(checkouts, ["base", "head"] if i % 2 == 0 else ["head", "base"], args, Path(tmp), i)
                  for i in range(args.rounds)]
    now = dt.datetime.now(dt.timezone.utc)
    prov = provenance()
    report = {"date": now.isoformat(timespec="seconds"), "base_commit": base_commit,
              "head_commit": (prov.get("git") or {}).get("commit"), "rounds": args.rounds,
              "machine_summary": f"{prov['machine']['cpu']}, {os.cpu_count()} cores, torch {prov['versions']['torch']}",
              "train_args": TRAIN_ARGS, "speed_args": args.speed_args,
              "command": shlex.join(["python", "benchmarks/compare_commits.py", *(argv or sys.argv[1:])]),
              "per_round": rounds, "summary": _summary(rounds), **prov}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compare-{now.strftime('%Y%m%d-%H%M')}-cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    stem.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
