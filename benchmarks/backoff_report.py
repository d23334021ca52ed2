"""Back-off with a promise, measured: a checkpoint scored on a split image by image, then the calibration the
shipped ``backoff.json`` makes (halves of the split by image), the coverage of the promise over many random
calibration / held-out splits, the largest promise the split supports, per-level mIoU next to mistake severity
and hierarchical P/R/F1, and the accuracy-specificity curve (table + PNG). Writes
``benchmarks/results/backoff-<name>.{md,json,png}``.

    python benchmarks/backoff_report.py --checkpoint pretrained/pascal_part_lite0_cpu \
        --data ../shared/datasets/pascal-part --split val --name pascal_part_lite0_cpu --target 0.9
    python benchmarks/backoff_report.py --checkpoint runs/demo --name demo --target 0.9 \
        --calibration-images 200 data.synthetic.num_val=2000      # synthetic: the other 1800 stand for new images
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.backoff_per_depth import PairAccumulator, compare  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402
from hiertree.config import DEFAULTS, apply_overrides, merge  # noqa: E402
from hiertree.data import build_datasets  # noqa: E402
from hiertree.data.loaders import val_loaders  # noqa: E402
from hiertree.evaluation.backoff import GRID, SCOPES, BackoffError, CurveAccumulator, coverage, largest_target, promise  # noqa: E402
from hiertree.evaluation.evaluate import evaluate  # noqa: E402
from hiertree.inference.predictor import Views  # noqa: E402
from hiertree.models import load_model  # noqa: E402


class _Both:
    """Feeds one evaluation's back-off chains to the one-threshold curves and the per-depth tables."""

    def __init__(self, *accumulators) -> None:
        self.accumulators = accumulators

    def update(self, *args) -> None:
        for a in self.accumulators:
            a.update(*args)


def score(args: argparse.Namespace) -> tuple[dict, object, object]:
    """The split's evaluation (with the pooled back-off curve), its per-image curves and per-depth tables."""
    model, ck = load_model(args.checkpoint, channels_last=True)
    saved = {k: v for k, v in ck["config"].items() if k in ("taxonomy", "data", "model", "eval")}
    cfg = apply_overrides(merge(DEFAULTS, saved, DEFAULTS, source=str(ck["dir"])), args.overrides)
    if args.data:
        cfg["data"].update(kind="folder", root=args.data, sources=None)
    cfg["data"]["val_split"] = cfg["data"]["train_split"] = args.split
    _, val_ds = build_datasets(cfg["data"], ck["taxonomy"], seed=0)
    loader = val_loaders(val_ds, ck["taxonomy"], cfg["eval"]["batch_size"], 0)
    curves, pairs = CurveAccumulator(ck["taxonomy"], scope=args.scope), PairAccumulator(ck["taxonomy"], scope=args.scope)
    views = Views(max_side=cfg["eval"]["max_side"], window=cfg["eval"]["window"], overlap=cfg["eval"]["overlap"])
    result = evaluate(model, loader, ck["taxonomy"], model.encoder.mean.device, views=views, backoff=GRID,
                      image_curves=_Both(curves, pairs))
    return result, curves.curves(), pairs.tables()


def _per_depth(pairs, args: argparse.Namespace) -> dict:
    try:
        return compare(pairs, args.target, args.delta, seed=0)
    except BackoffError as err:
        return {"error": str(err)}


def analyse(result: dict, curves, pairs, args: argparse.Namespace) -> dict:
    made = promise(curves, args.target, args.delta, seed=0, split=args.split)
    cover = coverage(curves, args.target, args.delta, args.trials, seed=1, calibration_images=args.calibration_images)
    cover_hb = coverage(curves, args.target, args.delta, args.trials, seed=1, calibration_images=args.calibration_images,
                        bound="hb")
    mean_curve = [{"threshold": t, **{k: v for k, v in curves.summary(t).items() if k in (
        "mean_image_accuracy", "mean_image_specificity", "pooled_accuracy", "pooled_specificity", "leaf_share")}}
        for t in GRID[::5]]
    return {"promise": made, "coverage": cover, "coverage_hb": cover_hb, "largest_target_whole_split": largest_target(curves, args.delta),
            "per_depth": _per_depth(pairs, args),
            "images": len(curves), "curve_mean_over_images": mean_curve,
            "levels": [{k: lv[k] for k in ("level", "mIoU", "pixel_accuracy")} for lv in result["tree"]["levels"]],
            "hierarchy": result["tree"]["hierarchy"], "pooled_curve": result["backoff"]}


def _coverage_text(cov: dict, p: dict) -> str:
    head = (f"**Coverage by simulation**: {cov['trials']} random draws of {cov['calibration_images']} calibration "
            f"images, each promise scored on the other {cov['held_out_images']}: ")
    if not cov["promises_made"]:
        return head + f"no draw could certify accuracy {p['target']} (too few images for this promise)."
    return head + (f"{cov['promises_made']} promises made, **{100 * cov['coverage']:.1f} % kept** (at least "
                   f"{100 * (1 - p['delta']):.0f} % - 2 asked); mean threshold {cov['threshold_mean']:.3f}, mean "
                   f"held-out accuracy {cov['held_out_accuracy_mean']:.4f}.")


def _per_depth_text(pd: dict, held: dict) -> str:
    if "error" in pd:
        return f"Two thresholds chosen jointly under the same guarantee: {pd['error']}."
    better = pd["held_out"]["mean_image_specificity"] > held["mean_image_specificity"] + 0.005
    return (f"Two thresholds (a leaf below depth 1 kept when at least theta_leaf sure, an inner node below depth 1 when "
            f"at least theta_inner sure), chosen jointly on the same calibration half under the same guarantee (one "
            f"fixed-sequence path down theta_leaf per theta_inner in 0, 0.05, ..., 1, each at delta / 21), the "
            f"certified pair with the highest calibration specificity (`benchmarks/backoff_per_depth.py`): theta_leaf "
            f"{pd['pair']['theta_leaf']}, theta_inner {pd['pair']['theta_inner']}. On the held-out half: mean image "
            f"accuracy {pd['held_out']['mean_image_accuracy']:.4f}, specificity "
            f"{pd['held_out']['mean_image_specificity']:.4f}, against {held['mean_image_accuracy']:.4f} and "
            f"{held['mean_image_specificity']:.4f} with the single threshold: "
            f"{'per depth is more specific at the same promise' if better else 'per depth buys no specificity worth a second threshold here'}.")


def markdown(report: dict, args: argparse.Namespace, command: str) -> str:
    p, cov, hier, pd = report["promise"], report["coverage"], report["hierarchy"], report["per_depth"]
    held, cal = p["held_out"], p["calibration"]
    prov = report["provenance"]
    lines = [f"# Back-off with a promise: {args.name}", "",
             f"{report['date']}, commit {prov['git']['commit']}, {prov['machine']['cpu']}. Command: `{command}`.", "",
             f"Checkpoint `{args.checkpoint}`, split `{args.split}`: {report['images']} images with leaf-labelled pixels.",
             "", "| level | mIoU | pixel accuracy |", "| --- | --- | --- |"]
    lines += [f"| L{lv['level']} | {lv['mIoU']:.4f} | {lv['pixel_accuracy']:.4f} |" for lv in report["levels"]]
    hist = ", ".join(f"{k}: {v}" for k, v in hier["severity_histogram"].items())
    lines += ["", f"Mistake severity {hier['mistake_severity']:.3f} levels per wrong leaf (pixels wrong at k levels: "
              f"{hist}); hierarchical P / R / F1 {hier['hP']:.4f} / {hier['hR']:.4f} / {hier['hF1']:.4f}.", "",
              "## The promise", "", f"**{p['promise']}.** {p['method']}.", "",
              f"- calibrated on {cal['images']} images ({cal['which']}): threshold **{p['threshold']}**, their mean "
              f"image accuracy {cal['mean_image_accuracy']:.4f}, p-value {cal['p_value']:.4f} <= delta {p['delta']}",
              f"- scored on the {held['images']} held-out images ({held['which']}): mean image accuracy "
              f"**{held['mean_image_accuracy']:.4f}** ± {held['mean_image_accuracy_stderr']:.4f} (standard error over "
              f"images; the promise is {'kept' if held['promise_kept'] else 'NOT kept'}), pooled over pixels "
              f"{held['pooled_accuracy']:.4f}; specificity (information gain, Deng et al.) "
              f"{held['mean_image_specificity']:.4f} per image, {held['pooled_specificity']:.4f} pooled; "
              f"{100 * held['leaf_share']:.1f} % of the pixels still at a leaf; per level "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in held["level_shares"].items()),
              f"- the same held-out images with every pixel at its leaf (threshold 0): mean image accuracy "
              f"{p['held_out_leaves_only']['mean_image_accuracy']:.4f}, specificity "
              f"{p['held_out_leaves_only']['mean_image_specificity']:.4f}",
              f"- the largest accuracy a calibration on these {cal['images']} images can promise at delta "
              f"{p['delta']}: **{p['largest_target']:.3f}** (on all {report['images']} images: "
              f"{report['largest_target_whole_split']:.3f})", "",
              _coverage_text(cov, p) + " With Hoeffding-Bentkus p-values instead: "
              + _coverage_text(report["coverage_hb"], p).split(": ", 1)[1],
              "", "## The promises to choose from", "",
              "Each promise calibrated on the same half, scored on the held-out half (`eval.py --calibrate-backoff` "
              "prints this ladder too): the stricter the promise, the more pixels leave their leaf for a parent.", "",
              "| promise P | threshold | held-out mean image accuracy | still at a leaf | specificity |",
              "| --- | --- | --- | --- | --- |",
              *[f"| {r['target']} | {r['threshold']} | {r['held_out_mean_image_accuracy']:.4f} | "
                f"{r['held_out_leaf_share']:.4f} | {r['held_out_mean_image_specificity']:.4f} |" if r["threshold"] is not None
                else f"| {r['target']} | - | (not supported by these images) | | |" for r in p["ladder"]],
              "", "## One threshold per depth?", "", _per_depth_text(pd, held), "",
              "## Accuracy and specificity per threshold (all images, mean over images)", "",
              "| threshold | mean image accuracy | mean image specificity | pooled accuracy | still at a leaf |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['threshold']:.2f} | {c['mean_image_accuracy']:.4f} | {c['mean_image_specificity']:.4f} | "
              f"{c['pooled_accuracy']:.4f} | {c['leaf_share']:.4f} |" for c in report["curve_mean_over_images"]]
    return "\n".join(lines + ["", f"![accuracy vs specificity](backoff-{args.name}.png)", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=None, help="a dataset folder (default: the checkpoint's data)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--name", required=True)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--scope", choices=sorted(SCOPES), default="predicted", help="the pixels the promise counts")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--calibration-images", type=int, default=None, help="per draw (default: half the split)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("overrides", nargs="*", help="data.*=value for the split (e.g. data.synthetic.num_val=2000)")
    args = parser.parse_args(argv)
    result, curves, pairs = score(args)
    report = analyse(result, curves, pairs, args)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    report.update(date=f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}", command=command, provenance=provenance())
    out = Path(args.out)
    (out / f"backoff-{args.name}.json").write_text(json.dumps(report, indent=1, default=float))
    (out / f"backoff-{args.name}.md").write_text(markdown(report, args, command))
    from hiertree.evaluation.report import _backoff_curve

    _backoff_curve(result["backoff"], out / f"backoff-{args.name}.png")
    print(markdown(report, args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
