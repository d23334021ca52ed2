"""What ``hiertree-predict --quantize int8`` costs and gains: per-level mIoU on Pascal-Part val and ms per image,
float32 ONNX vs int8 ONNX, the shipped CPU model, side by side in one run.

The int8 graph is calibrated on the first ``--calibrate`` train images (never val); both graphs predict every
val image at its own size through :func:`hiertree.inference.predictor.predict_images` (as the command does) and are
scored against the val masks by :class:`hiertree.metrics.HierarchicalMetrics`. Results:
benchmarks/results/predict-int8-<date>.{json,md}.

    python benchmarks/predict_int8.py --data ../shared/datasets/pascal-part
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.provenance import cpu_model, provenance
from hiertree.inference.backends import cached_onnx_runner
from hiertree.checkpoint import read_checkpoint, shipped_model
from hiertree.inference.predictor import predict_images
from hiertree.images import read_image
from hiertree.metrics import HierarchicalMetrics

MODEL = "pascal_part_lite0_cpu"


def _ids(data: Path, split: str) -> list[str]:
    return [i.strip() for i in (data / f"{split}_id.txt").read_text().split() if i.strip()]


def _score(runner, data: Path, ids: list[str], taxonomy) -> tuple[dict, float]:
    metrics, seconds = HierarchicalMetrics(taxonomy), 0.0
    for i in ids:
        image = read_image(data / "JPEGImages" / f"{i}.jpg")
        mask = torch.from_numpy(cv2.imread(str(data / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED)).long()
        start = time.perf_counter()
        pred = predict_images(runner, [image])[0]
        seconds += time.perf_counter() - start
        metrics.update(torch.from_numpy(pred["leaf"]).long(), mask)
    levels = metrics.compute()["levels"]
    return {f"L{l}": round(lv["mIoU"], 4) for l, lv in enumerate(levels)}, 1000 * seconds / len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pascal-part"))
    parser.add_argument("--calibrate", type=int, default=8, help="train images the int8 ranges are calibrated on")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val images")
    args = parser.parse_args(argv)
    data = Path(args.data)
    val = _ids(data, "val")[: args.limit]
    calib = _ids(data, "train")[: args.calibrate]
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        folder = Path(tmp) / MODEL
        shutil.copytree(shipped_model(MODEL), folder, ignore=shutil.ignore_patterns(".hiertree-cache"))
        info = read_checkpoint(folder)
        tax = info["taxonomy"]

        def build():
            from hiertree.models import load_model

            return load_model(folder)[0]

        fp32 = cached_onnx_runner(folder, tax, False, build)
        int8 = cached_onnx_runner(folder, tax, False, build, quantize="int8",
                                  calibration=lambda: [read_image(data / "JPEGImages" / f"{i}.jpg") for i in calib])
        rows = {}
        for name, runner in (("float32", fp32), ("int8", int8)):
            miou, ms = _score(runner, data, val, tax)
            rows[name] = {"mIoU": miou, "ms_per_image": round(ms, 1)}
            print(name, rows[name], flush=True)
    delta = {k: round(rows["int8"]["mIoU"][k] - rows["float32"]["mIoU"][k], 4) for k in rows["float32"]["mIoU"]}
    prov = provenance()
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": (prov["git"]["commit"] or "unknown")[:7] + ("+dirty" if prov["git"]["dirty"] else ""),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores", "model": MODEL, "val_images": len(val),
              "calibration": f"first {len(calib)} train images", "rows": rows, "int8_minus_float32": delta,
              "speedup_x": round(rows["float32"]["ms_per_image"] / rows["int8"]["ms_per_image"], 2),
              "command": "python benchmarks/predict_int8.py " + " ".join(argv or sys.argv[1:]), "provenance": prov}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    path = ROOT / "benchmarks" / "results" / f"predict-int8-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    lines = [f"# int8 vs float32 ONNX, {MODEL}, Pascal-Part val", "",
             f"{result['date']}, commit {result['commit']}, {result['machine']}; {len(val)} val images at their own "
             f"size, int8 calibrated on {result['calibration']}.", "", f"Command: `{result['command']}`", "",
             "| graph | L0 mIoU | L1 mIoU | L2 mIoU | ms per image (predict_images) |", "| --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        m = row["mIoU"]
        lines.append(f"| {name} | {m['L0']:.4f} | {m['L1']:.4f} | {m['L2']:.4f} | {row['ms_per_image']:.1f} |")
    lines += ["", f"int8 - float32: {', '.join(f'{k} {v:+.4f}' for k, v in delta.items())}; "
              f"{result['speedup_x']}x the speed.", ""]
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
