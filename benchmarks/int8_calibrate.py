"""Write a model's int8 calibration file and check it: the int8 graph against the float graph, per level, on
Pascal-Part val and on held-out train images, with the sampling error over images, and the back-off promise.

The ranges are measured on ``--calibrate`` train images (every k-th id, never val) by
:func:`hiertree.inference.quantization.write_calibration`. The int8 graph is then built from that file alone, as a
user's machine builds it, and both graphs predict every image at its own size through
:func:`hiertree.inference.predictor.predict_images` (what ``hiertree-predict`` runs).

* Checked on val (where the recipe was chosen among variants, so it is not held out), and on ``--heldout`` train images
  that were not calibrated on. The model was trained on those, so their float scores are high; what they check is the
  int8 - float difference on images the recipe was not chosen on.
* The sampling error is a paired bootstrap over images (1000 resamples, 95 % interval of int8 - float).
* The back-off promise is the mean per-image node accuracy at the model's calibrated threshold, on the held-out half
  of val that ``backoff.json`` reports.

The file is copied into ``--model-out`` (the shipped model's folder), with the check recorded in it. Results:
benchmarks/results/int8-check-<date>.{json,md}.

    python benchmarks/int8_calibrate.py --model-out pretrained/pascal_part_lite0_cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.predict_int8 import MODEL, _ids  # noqa: E402
from benchmarks.provenance import cpu_model, provenance  # noqa: E402
from hiertree.checkpoint import read_checkpoint, shipped_model  # noqa: E402
from hiertree.evaluation.backoff import _tables, split_images  # noqa: E402
from hiertree.images import read_image  # noqa: E402
from hiertree.inference.backends import cached_onnx_runner  # noqa: E402
from hiertree.inference.predictor import predict_images  # noqa: E402
from hiertree.inference.quantization import CALIBRATION_FILE, calibration_problem, write_calibration  # noqa: E402
from hiertree.metrics import HierarchicalMetrics  # noqa: E402

GRAPHS = ("float32", "int8")


def _per_image(runners: dict, data: Path, ids: list[str], taxonomy, threshold: float) -> dict:
    """Per graph: the per-image confusion matrices of every level [n, L][C, C], and per image the back-off node
    accuracy over the pixels called foreground (None when it calls none)."""
    right = _tables(taxonomy)[0]
    fg = np.zeros(taxonomy.num_nodes, bool)
    fg[taxonomy.foreground_nodes()] = True
    out = {g: {"confusions": [], "node_accuracy": []} for g in runners}
    for i in ids:
        image = read_image(data / "JPEGImages" / f"{i}.jpg")
        mask = _mask(data, i)
        for g, runner in runners.items():
            pred = predict_images(runner, [image], backoff=threshold)[0]
            if threshold is None:
                pred["nodes"] = pred["leaf"]
            metrics = HierarchicalMetrics(taxonomy)
            metrics.update(torch.from_numpy(pred["leaf"]).long(), torch.from_numpy(mask).long())
            out[g]["confusions"].append([metrics.confusion(l).numpy() for l in range(taxonomy.num_levels)])
            leaf, nodes = mask.astype(np.int64), pred["nodes"].astype(np.int64)
            scope = (leaf < taxonomy.num_leaves) & fg[nodes]
            out[g]["node_accuracy"].append(float(right[leaf[scope], nodes[scope]].mean()) if scope.any() else None)
    return out


def _mask(data: Path, image_id: str) -> np.ndarray:
    """The leaf mask of ``image_id``: ``masks/<id>.png`` (the project's copy) or ``gt_masks/<id>.npy`` (the archive's
    layout)."""
    png = data / "masks" / f"{image_id}.png"
    return cv2.imread(str(png), cv2.IMREAD_UNCHANGED) if png.is_file() else np.load(data / "gt_masks" / f"{image_id}.npy")


def _miou(confusions: list[np.ndarray], scored: list[list[bool]]) -> list[float]:
    """Per level the mIoU without the unscored classes (as HierarchicalMetrics computes it) of summed matrices."""
    out = []
    for conf, keep in zip(confusions, scored):
        tp = np.diag(conf).astype(np.float64)
        denom = conf.sum(0) + conf.sum(1) - tp
        out.append(float(np.mean([tp[c] / denom[c] for c in range(len(tp)) if denom[c] > 0 and keep[c]])))
    return out


def _compare(per: dict, taxonomy, rng: np.random.Generator, resamples: int = 1000) -> dict:
    """mIoU per level of both graphs, int8 - float, and the paired bootstrap 95 % interval of that difference."""
    scored = HierarchicalMetrics(taxonomy)._scored
    stacks = {g: [np.stack([c[l] for c in per[g]["confusions"]]) for l in range(taxonomy.num_levels)] for g in GRAPHS}
    full = {g: _miou([s.sum(0) for s in stacks[g]], scored) for g in GRAPHS}
    n = len(per["float32"]["confusions"])
    deltas = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        a, b = (_miou([s[pick].sum(0) for s in stacks[g]], scored) for g in GRAPHS)
        deltas.append([y - x for x, y in zip(a, b)])
    lo, hi = np.percentile(np.array(deltas), [2.5, 97.5], axis=0)
    return {"images": n, **{g: {f"L{l}": round(v, 4) for l, v in enumerate(full[g])} for g in GRAPHS},
            "int8_minus_float32": {f"L{l}": round(b - a, 4) for l, (a, b) in enumerate(zip(*full.values()))},
            "interval_95": {f"L{l}": [round(float(x), 4), round(float(y), 4)] for l, (x, y) in enumerate(zip(lo, hi))}}


def _backoff(per: dict, val_ids: list[str], threshold: float) -> dict:
    """Mean per-image node accuracy of both graphs at ``threshold`` on the held-out half of val."""
    held = ~split_images(val_ids)
    out = {"threshold": threshold, "which": "the held-out half of val (backoff.json's split)"}
    for g in GRAPHS:
        acc = [a for a, h in zip(per[g]["node_accuracy"], held) if h and a is not None]
        out[g] = {"images": len(acc), "mean_image_accuracy": round(float(np.mean(acc)), 4),
                  "stderr": round(float(np.std(acc, ddof=1) / np.sqrt(len(acc))), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pascal-part"))
    parser.add_argument("--calibrate", type=int, default=64, help="train images the ranges are measured on")
    parser.add_argument("--heldout", type=int, default=410, help="train images (not calibrated on) for the check")
    parser.add_argument("--limit", type=int, default=None, help="check only the first N val images (a smoke run)")
    parser.add_argument("--model", default=MODEL, help="the shipped model (name) or model folder to calibrate")
    parser.add_argument("--model-out", default=None, help="model folder to copy the calibration file into")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder of the results files")
    args = parser.parse_args(argv)
    data = Path(args.data)
    val, train = _ids(data, "val")[: args.limit], _ids(data, "train")
    step = max(1, len(train) // args.calibrate)
    calib = train[::step][: args.calibrate]
    rest = [i for i in train if i not in set(calib)]
    heldout = rest[:: max(1, len(rest) // args.heldout)][: args.heldout][: args.limit]
    with tempfile.TemporaryDirectory(prefix="int8c-") as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(shipped_model(args.model) or Path(args.model), folder, ignore=shutil.ignore_patterns(".hiertree-cache", CALIBRATION_FILE))
        tax = read_checkpoint(folder)["taxonomy"]
        backoff = folder / "backoff.json"
        threshold = json.loads(backoff.read_text())["threshold"] if backoff.is_file() else None

        def build():
            from hiertree.models import load_model

            return load_model(folder)[0]

        fp32 = cached_onnx_runner(folder, tax, False, build, quantize="none")
        path = write_calibration(fp32.path, folder, (read_image(data / "JPEGImages" / f"{i}.jpg") for i in calib))
        int8 = cached_onnx_runner(folder, tax, False, build, quantize="int8", calibration=None)  # from the file alone
        runners = {"float32": fp32, "int8": int8}
        rng = np.random.default_rng(0)
        val_per = _per_image(runners, data, val, tax, threshold)
        result = {"val (recipe chosen here)": _compare(val_per, tax, rng)}
        if heldout:
            result["train, held out from calibration"] = _compare(_per_image(runners, data, heldout, tax, threshold),
                                                                  tax, rng)
        if threshold is not None:
            result["backoff"] = _backoff(val_per, val, threshold)
        record = _record(result, len(calib), step, argv)
        content = json.loads(path.read_text())
        path.write_text(json.dumps({**{k: v for k, v in content.items() if k != "ranges"}, **record,
                                    "ranges": content["ranges"]}, indent=1) + "\n")
        problem = calibration_problem(folder)
        if problem is not None:  # the file must make int8 the model's default, or it is no use shipping
            raise SystemExit(f"int8_calibrate: {problem}")
        if args.model_out:
            shutil.copy(path, Path(args.model_out) / CALIBRATION_FILE)
    _write(record, args.model, Path(args.results))
    return 0


def _record(result: dict, n: int, step: int, argv: list[str] | None) -> dict:
    prov = provenance()
    return {"calibrated_on": f"{n} Pascal-Part train images (every {step}th id)",
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": (prov["git"]["commit"] or "unknown")[:7] + ("+dirty" if prov["git"]["dirty"] else ""),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "command": "python benchmarks/int8_calibrate.py " + " ".join(argv or sys.argv[1:]), "check": result}


def _write(record: dict, model: str, results: Path) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    path = results / f"int8-check-{stamp}.json"
    path.write_text(json.dumps(record, indent=2))
    lines = [f"# int8 (shipped calibration file) vs float32 ONNX, {Path(model).name}", "",
             f"{record['date']}, commit {record['commit']}, {record['machine']}; ranges from "
             f"{record['calibrated_on']}. Command: `{record['command']}`", "",
             "mIoU without background, single scale, every image at its own size; the interval is a paired bootstrap "
             "over images (1000 resamples) of int8 - float32.", "",
             "| images | graph | L0 | L1 | L2 |", "| --- | --- | --- | --- | --- |"]
    for name, row in record["check"].items():
        if name == "backoff":
            continue
        for g in GRAPHS:
            lines.append(f"| {name} ({row['images']}) | {g} | " + " | ".join(f"{row[g][k]:.4f}" for k in row[g]) + " |")
        lines.append(f"| {name} | int8 - float32 [95 % interval] | " + " | ".join(
            f"{row['int8_minus_float32'][k]:+.4f} [{row['interval_95'][k][0]:+.4f}, {row['interval_95'][k][1]:+.4f}]"
            for k in row["int8_minus_float32"]) + " |")
    b = record["check"].get("backoff")
    lines += [] if b is None else ["", f"Back-off at the calibrated threshold {b['threshold']} on {b['which']}: mean per-image node accuracy "
              + ", ".join(f"{g} {b[g]['mean_image_accuracy']:.4f} ± {b[g]['stderr']:.4f} ({b[g]['images']} images)"
                          for g in GRAPHS) + "."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
