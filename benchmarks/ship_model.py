"""Turn a finished training run into a shipped model with its measured scores.

Scores the run's best checkpoint on the val split at native resolution (single scale, and with flip TTA),
publishes it as fp16 (``hiertree.cli.publish``) with a model card, scores the fp16 model too (it must stay
within 0.002 mIoU of float32 at every level), and writes ``results-<name>.{json,md}``: machine, date,
commit, command, epochs, training wall time, per-level mIoU and the raw heads' tree consistency.

    python benchmarks/ship_model.py --run runs/pp_cpu --data ../shared/datasets/pascal-part \\
        --name pascal_part_lite0_cpu --command "python train.py ..."
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import device_name, provenance  # noqa: E402
from hiertree.cli.eval import main as eval_main  # noqa: E402
from hiertree.cli.publish import publish  # noqa: E402

FP16_TOLERANCE = 0.002
LICENCE = ("Images: PASCAL VOC 2008-2010 (Flickr terms of use); labels derived from Pascal-Part (Chen et al. 2014) "
           "merged to six person parts. Research use.")


def _score(checkpoint: Path, data: str, out: Path, *flags: str) -> dict:
    args = ["--checkpoint", str(checkpoint), "--data", data, "--split", "val", "--out", str(out), "--no-report",
            "--quiet", *flags]
    if eval_main(args) != 0:
        raise SystemExit(f"evaluation failed: eval.py {' '.join(args)}")
    return json.loads(out.read_text())


def _levels(result: dict) -> list[float]:
    return [round(lv["mIoU"], 4) for lv in result["tree"]["levels"]]


def _training(run: Path) -> dict:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    config = (run / "config.yaml").read_text()
    train = sum(float(r["seconds"]) - float(r.get("eval_seconds") or 0) for r in rows)  # evaluation is not training
    return {"epochs": int(float(rows[-1]["epoch"])), "steps": int(float(rows[-1]["step"])),
            "train_seconds": round(train, 1), "train_hours": round(train / 3600, 2),
            "seconds_with_evaluation": round(sum(float(r["seconds"]) for r in rows), 1), "config_yaml": config}


def _card(name: str, report: dict) -> str:
    s, f, h = report["val"]["single_scale"], report["val"]["hflip"], report["val"]["fp16_single_scale"]
    classes = ["background, body", "background, upper_body, lower_body", "the 7 leaves"]
    rows = [f"| L{i} ({classes[i] if i < 3 else ''}) | {s[i]:.3f} | {f[i]:.3f} | {h[i]:.3f} |" for i in range(len(s))]
    return "\n".join([
        f"# {name}: people parts (hiertree)", "",
        "Tree-consistent segmentation of people into body / upper and lower body / 7 parts "
        "(`Taxonomy.builtin(\"pascal_part\")`), one head per level, `tf_efficientnet_lite0` encoder.", "",
        f"- trained on: Pascal-Part people, train split ({report['data']}), {report['training']['epochs']} epochs, "
        f"{report['training']['steps']} steps, {report['training']['train_hours']:.2f} hours of training "
        f"({report['training']['train_seconds']:.0f} s, evaluations excluded) on {report['machine']}",
        f"- command: `{report['command']}`",
        *([f"- how it was trained: {report['note']}"] if report.get("note") else []),
        f"- date: {report['date']}, commit {report['commit']}",
        "- weights: float16 safetensors (loaded into a float32 model)", "",
        "## Validation (410 images, native resolution, mIoU without background)", "",
        "| level | single scale | flip TTA | fp16 weights, single scale |", "| --- | --- | --- | --- |", *rows, "",
        f"Raw per-head argmax agrees with the tree on {report['val']['raw_consistency']:.4f} of pixels; "
        "decoded predictions are tree-consistent by construction.", "",
        "## Use", "", "```python", "from hiertree import HierSegModel",
        f"model = HierSegModel.from_pretrained(\"{name}\")", "out = model.predict(rgb_uint8_image)   # levels, leaf",
        "```", "", f"`hiertree-predict --checkpoint {name} photo.jpg --out preds/`", "",
        "## Licence of the data", "", LICENCE, ""])


def ship(run: Path, data: str, name: str, pretrained: Path, results: Path, command: str, note: str = "") -> dict:
    work = results / f".ship-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    single = _score(run, data, work / "single.json")
    flip = _score(run, data, work / "hflip.json", "--hflip")
    prov = provenance()
    report = {"name": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": device_name(), "commit": (prov.get("git") or {}).get("commit") or prov["source_sha256"][:12],
              "command": command, "note": note, "data": data, "training": _training(run),
              "val": {"single_scale": _levels(single), "hflip": _levels(flip),
                      "raw_consistency": round(single["raw"]["consistency"], 4), "images": single["images"]},
              **prov}
    target = pretrained / name
    shutil.rmtree(target, ignore_errors=True)
    publish(run, target, card="(scores follow)\n")
    half = _score(target, data, work / "fp16.json")
    report["val"]["fp16_single_scale"] = _levels(half)
    report["val"]["fp16_max_abs_diff"] = max(abs(a - b) for a, b in zip(_levels(half), _levels(single)))
    report["eval_seconds"] = round(time.time() - t0, 1)
    (target / "README.md").write_text(_card(name, report))
    (results / f"results-{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (results / f"results-{name}.md").write_text(_card(name, report))
    shutil.rmtree(work, ignore_errors=True)
    if report["val"]["fp16_max_abs_diff"] > FP16_TOLERANCE:
        raise SystemExit(f"fp16 weights differ by {report['val']['fp16_max_abs_diff']} mIoU (> {FP16_TOLERANCE})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the training run folder")
    parser.add_argument("--data", required=True, help="the dataset folder (its val split is scored)")
    parser.add_argument("--name", required=True, help="the shipped model's name, e.g. pascal_part_lite0")
    parser.add_argument("--pretrained", default=str(ROOT / "pretrained"), help="where shipped models live")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--command", default="", help="the training command, for the card and results")
    parser.add_argument("--note", default="", help="what the card should say about the recipe and the run")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    report = ship(Path(args.run), args.data, args.name, Path(args.pretrained), Path(args.results), args.command,
                  args.note)
    print(json.dumps(report["val"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
