"""Turn a finished training run into a shipped model with its measured scores.

Scores the run's best checkpoint (or ``--checkpoint``, e.g. the newest of a run still going) on the val split
at native resolution (single scale, and with flip TTA), publishes it as fp16 (``hiertree.cli.publish``) with a
model card, scores the fp16 model too (it must stay within 0.002 mIoU of float32 at every level), calibrates its
back-off promise (``eval.py --calibrate-backoff P``: half of val calibrates, the other half scores it), writes the
int8 calibration file and its check against float32 (``benchmarks/int8_calibrate.py``), and writes
``results-<name>.{json,md}``: machine, date, commit, command, epochs, training hours, per-level mIoU, the raw
heads' tree consistency and the back-off promise.

    python benchmarks/ship_model.py --run runs/pp_cpu --data ../shared/datasets/pascal-part \\
        --name pascal_part_lite0_cpu --command "python train.py ..." --pauses pauses.tsv
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_learning_curve import hours_at, training_seconds  # noqa: E402
from benchmarks.provenance import device_name, provenance  # noqa: E402
from hiertree.cli.eval import main as eval_main  # noqa: E402
from hiertree.cli.publish import publish  # noqa: E402
from hiertree.evaluation.backoff import SCOPES  # noqa: E402
from hiertree.inference.quantization import CALIBRATION_FILE  # noqa: E402
from hiertree.models.hub import card_data, with_front_matter  # noqa: E402
from hiertree.tree.taxonomy import Taxonomy  # noqa: E402

FP16_TOLERANCE = 0.002
LICENCE = ("Images: PASCAL VOC 2008-2010 (Flickr terms of use); labels derived from Pascal-Part (Chen et al. 2014) "
           "merged to six person parts. Research use.")


def _score(checkpoint: Path, data: str | None, out: Path, *flags: str, overrides: tuple[str, ...] = ()) -> dict:
    args = ["--checkpoint", str(checkpoint), *(["--data", data] if data else []), "--split", "val", "--out", str(out),
            "--no-report", "--quiet", *flags, *overrides]
    if eval_main(args) != 0:
        raise SystemExit(f"evaluation failed: eval.py {' '.join(args)}")
    return json.loads(out.read_text())


def _levels(result: dict, key: str = "mIoU") -> list[float]:
    """Per-level mIoU of an evaluation (``key="mIoU_with_background"``: background averaged in, as papers report)."""
    return [round(lv[key], 4) for lv in result["tree"]["levels"]]


def _with_background_line(report: dict) -> list[str]:
    """The card's line with the single-scale mIoU with background averaged in (the number papers report)."""
    bg = report["val"].get("single_scale_with_background")
    if not bg:
        return []
    return ["Single scale with background averaged in (the mIoU papers report on PASCAL-Person-Part; its finest level "
            "is the 7-class number): " + " · ".join(f"L{i} {v:.3f}" for i, v in enumerate(bg)) + ".", ""]


def _checkpoint_step(checkpoint: Path) -> int:
    """The step a run's checkpoint folder was written at (``ckpt-0001234`` -> 1234)."""
    try:
        return int(checkpoint.resolve().name.split("-")[-1])
    except ValueError:
        raise SystemExit(f"{checkpoint}: not a run's checkpoint folder (ckpt-<step>); pass --checkpoint") from None


def _training(run: Path, step: int, pauses: Path | None) -> dict:
    """Epochs, steps and hours of training up to ``step`` (evaluations excluded; pauses too with ``pauses``)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    config_yaml = (run / "config.yaml").read_text()
    if pauses is not None:
        train = hours_at(run, pauses, [step])[0] * 3600
    else:
        train = sum(training_seconds(r) for r in rows)
    return {"epochs": int(float(rows[-1]["epoch"])), "steps": step, "train_seconds": round(train, 1),
            "train_hours": round(train / 3600, 2), "pauses_excluded": pauses is not None,
            "schedule_epochs": yaml.safe_load(config_yaml)["train"]["epochs"],
            "seconds_with_evaluation_and_pauses": round(sum(float(r["seconds"]) for r in rows), 1),
            "config_yaml": config_yaml}


def _machine(machine: dict | str) -> str:
    """``AMD EPYC, 2 cores, 2 torch threads`` (a device name as it is)."""
    if not isinstance(machine, dict):
        return str(machine)
    return f"{machine['cpu']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch threads, " + (
        f"GPU {machine['cuda']}" if machine.get("cuda") else "no GPU")


def _trained(training: dict) -> str:
    """How much training the shipped weights saw, and of which schedule."""
    epochs, planned = training["epochs"], training["schedule_epochs"]
    of = f"{epochs} epochs" if epochs >= planned else f"{epochs} of the schedule's {planned} epochs (the run goes on)"
    excluded = "evaluations and pauses excluded" if training["pauses_excluded"] else "evaluations excluded"
    return (f"{of}, {training['steps']} steps, {training['train_hours']:.2f} hours of training "
            f"({training['train_seconds']:.0f} s, {excluded})")


def _card(name: str, report: dict) -> str:
    s, f, h = report["val"]["single_scale"], report["val"]["hflip"], report["val"]["fp16_single_scale"]
    classes = ["background, body", "background, upper_body, lower_body", "the 7 leaves"]
    rows = [f"| L{i} ({classes[i] if i < 3 else ''}) | {s[i]:.3f} | {f[i]:.3f} | {h[i]:.3f} |" for i in range(len(s))]
    return "\n".join([
        f"# {name}: people parts (hiertree)", "",
        "Tree-consistent segmentation of people into body / upper and lower body / 7 parts "
        "(`Taxonomy.builtin(\"pascal_part\")`), one head per level, `tf_efficientnet_lite0` encoder.", "",
        f"- trained on: Pascal-Part people, train split ({report['data']}), {_trained(report['training'])} on "
        f"{_machine(report['machine'])}",
        f"- command: `{report['command']}`",
        *([f"- how it was trained: {report['note']}"] if report.get("note") else []),
        f"- date: {report['date']}, commit {report['commit']}",
        "- weights: float16 safetensors (loaded into a float32 model)", "",
        f"## Validation ({report['val']['images']} images, native resolution, mIoU without background)", "",
        "| level | single scale | flip TTA | fp16 weights, single scale |", "| --- | --- | --- | --- |", *rows, "",
        *_with_background_line(report),
        f"Raw per-head argmax agrees with the tree on {report['val']['raw_consistency']:.4f} of pixels; "
        "decoded predictions are tree-consistent by construction.", "",
        "## Use", "", "```python", "from hiertree import HierSegModel",
        f"model = HierSegModel.from_pretrained(\"{name}\")", "out = model.predict(rgb_uint8_image)   # levels, leaf",
        "```", "", f"`hiertree-predict --checkpoint {name} photo.jpg --out preds/`", "",
        *_backoff_section(report.get("backoff")),
        *int8_section(report.get("int8")),
        "## Licence of the data", "", LICENCE, ""])


def int8_section(record: dict | None) -> list[str]:
    """The card's int8 paragraph: where the shipped ranges come from and what int8 costs against float32."""
    if not record:
        return []
    check = record["check"]
    rows = [f"| {name} ({row['images']}) | " + " | ".join(
        f"{row['int8_minus_float32'][k]:+.4f} [{row['interval_95'][k][0]:+.4f}, {row['interval_95'][k][1]:+.4f}]"
        for k in row["int8_minus_float32"]) + " |" for name, row in check.items() if name != "backoff"]
    b = check.get("backoff")
    return ["## int8 on a CPU (the default of `hiertree-predict` and `model.predict` there)", "",
            f"`{CALIBRATION_FILE}` holds the activation ranges of the int8 graph, measured on {record['calibrated_on']}, "
            "never on val, so no user calibrates; `--quantize none` keeps float32. int8 - float32 mIoU (95 % interval, "
            "paired bootstrap over images):", "", "| images | L0 | L1 | L2 |", "| --- | --- | --- | --- |", *rows, "",
            *([f"Back-off at θ = {b['threshold']} on {b['which']}: node accuracy {b['int8']['mean_image_accuracy']:.4f} "
               f"± {b['int8']['stderr']:.4f} with int8 ({b['float32']['mean_image_accuracy']:.4f} ± "
               f"{b['float32']['stderr']:.4f} float32)."] if b else []),
            f"Measured {record['date']}, commit {record['commit']}, "
            f"{record['machine']}: `{record['command']}`.", ""]


def _backoff_section(record: dict | None) -> list[str]:
    """The card's back-off paragraph: the promise, where it was calibrated, how it scored on other images, and the
    ladder of promises a user can calibrate instead."""
    if not record:
        return []
    cal, held, leaves = record["calibration"], record["held_out"], record["held_out_leaves_only"]
    counted = SCOPES[record.get("scope", "all")]
    lines = ["## Back-off (`--backoff auto`)", "",
             f"`backoff.json` promises: {record['promise']}. Threshold θ = {record['threshold']}, calibrated on "
             f"{cal['images']} val images ({cal['which']}), δ = {record['delta']}, {record['method']}; the largest "
             f"promise those images support at this δ: {record['largest_target']:.3f}.", "",
             f"Scored on {held['images']} val images it never saw ({held['which']}), on the {counted}: node accuracy "
             f"{held['mean_image_accuracy']:.4f} ± {held['mean_image_accuracy_stderr']:.4f} (mean over images; promise "
             f"{'kept' if held['promise_kept'] else 'NOT kept'}; every pixel at its leaf: "
             f"{leaves['mean_image_accuracy']:.4f}), {100 * held['leaf_share']:.1f} % of them still at a leaf (the rest "
             "said as their parent), information-gain specificity "
             f"{held['mean_image_specificity']:.4f} (Deng et al.; 1 = every pixel a correct leaf; leaves only: "
             f"{leaves['mean_image_specificity']:.4f}). The test split decides whether it holds on new images; the "
             f"promise is made for images like these with probability {1 - record['delta']:.2f}.", ""]
    ladder = [r for r in record.get("ladder", []) if r["threshold"] is not None]
    if ladder:
        lines += ["Other promises, calibrated and scored the same way (`python eval.py --checkpoint NAME "
                  "--calibrate-backoff P` stores one):", "",
                  "| promise P | θ | held-out node accuracy | still at a leaf |", "| --- | --- | --- | --- |",
                  *[f"| {r['target']} | {r['threshold']} | {r['held_out_mean_image_accuracy']:.3f} | "
                    f"{100 * r['held_out_leaf_share']:.1f} % |" for r in ladder], ""]
    return lines


def ship(run: Path, data: str | None, name: str, pretrained: Path, results: Path, command: str, note: str = "",
         checkpoint: Path | None = None, pauses: Path | None = None, backoff: float | None = 0.75,
         delta: float = 0.1, overrides: tuple[str, ...] = ()) -> dict:
    """Score, publish, score the fp16 weights, calibrate back-off, write the card and the results files."""
    work = results / f".ship-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    checkpoint = (checkpoint or run / "best").resolve()
    single = _score(checkpoint, data, work / "single.json", overrides=overrides)
    flip = _score(checkpoint, data, work / "hflip.json", "--hflip", overrides=overrides)
    prov = provenance()
    report = {"name": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": device_name(), "commit": (prov.get("git") or {}).get("commit") or prov["source_sha256"][:12],
              "command": command, "note": note, "data": data, "checkpoint": checkpoint.name,
              "training": _training(run, _checkpoint_step(checkpoint), pauses),
              "val": {"single_scale": _levels(single), "hflip": _levels(flip),
                      "single_scale_with_background": _levels(single, "mIoU_with_background"),
                      "raw_consistency": round(single["raw"]["consistency"], 4), "images": single["images"]},
              **prov}
    target = pretrained / name
    shutil.rmtree(target, ignore_errors=True)
    publish(checkpoint, target, card="(scores follow)\n")
    half = _score(target, data, work / "fp16.json", overrides=overrides)
    report["val"]["fp16_single_scale"] = _levels(half)
    report["val"]["fp16_max_abs_diff"] = max(abs(a - b) for a, b in zip(_levels(half), _levels(single)))
    if backoff is not None:  # writes target/backoff.json, tied to the fp16 weights' digest
        calibrated = _score(target, data, work / "backoff.json", "--calibrate-backoff", str(backoff), "--delta", str(delta),
                            overrides=overrides)
        report["backoff"] = calibrated["backoff_promise"]
        report["backoff"]["command"] = " ".join(["python eval.py --checkpoint", name, *(["--data", data] if data else []),
                                                 f"--split val --calibrate-backoff {backoff} --delta {delta}", *overrides])
    # writes target/int8_calibration.json (what makes int8 the CPU default) with its int8 vs float check, which the
    # report and the card repeat (its own results files stay in the work folder); it reads a folder dataset
    if data and (Path(data) / "JPEGImages").is_dir():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "int8_calibrate.py"), "--model", str(target),
                        "--model-out", str(target), "--results", str(work), "--data", data], check=True)
        report["int8"] = {k: v for k, v in json.loads((target / CALIBRATION_FILE).read_text()).items() if k != "ranges"}
    else:
        print(f"ship_model: no {CALIBRATION_FILE} (int8 stays off by default): benchmarks/int8_calibrate.py needs a "
              "folder dataset (--data with JPEGImages/)")
    report["eval_seconds"] = round(time.time() - t0, 1)
    # the card's model-index: the float32 single-scale val scores of its table
    front = card_data(Taxonomy.from_yaml(target / "taxonomy.yaml"), {**single, "split": "val"}, model_name=name, license="other",
                      license_name="pascal-voc-research-use", datasets=["pascal-part"],
                      dataset_name="Pascal-Part people (val)", tags=["people", "human-parsing", "body-parts"])
    (target / "README.md").write_text(with_front_matter(_card(name, report), front))
    (results / f"results-{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (results / f"results-{name}.md").write_text(_card(name, report))
    shutil.rmtree(work, ignore_errors=True)
    if report["val"]["fp16_max_abs_diff"] > FP16_TOLERANCE:
        raise SystemExit(f"fp16 weights differ by {report['val']['fp16_max_abs_diff']} mIoU (> {FP16_TOLERANCE})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the training run folder")
    parser.add_argument("--data", default=None, help="the dataset folder (its val split is scored; default: the run's)")
    parser.add_argument("--name", required=True, help="the shipped model's name, e.g. pascal_part_lite0")
    parser.add_argument("--pretrained", default=str(ROOT / "pretrained"), help="where shipped models live")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--command", default="", help="the training command, for the card and results")
    parser.add_argument("--note", default="", help="what the card should say about the recipe and the run")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder of the run (default: its best)")
    parser.add_argument("--pauses", default=None, help="TSV of the run's paused intervals: hours without them "
                                                       "(benchmarks/cpu_learning_curve.py)")
    parser.add_argument("--backoff", type=lambda v: None if v == "none" else float(v), default=0.75,
                        help="the node accuracy to promise on the pixels called a person (back-off; 0.75 for the "
                        "people-parts model), or none (a split too small to calibrate on)")
    parser.add_argument("--delta", type=float, default=0.1, help="the risk that the promise fails")
    parser.add_argument("overrides", nargs="*", help="data.*=value overrides for every evaluation")
    args = parser.parse_args(argv)
    with torch.no_grad():
        report = ship(Path(args.run), args.data, args.name, Path(args.pretrained), Path(args.results), args.command,
                      args.note, Path(args.checkpoint) if args.checkpoint else None,
                      Path(args.pauses) if args.pauses else None, args.backoff, args.delta, tuple(args.overrides))
    print(json.dumps(report["val"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
