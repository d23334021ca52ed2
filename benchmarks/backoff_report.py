"""Issue 12's results file from an ``eval.py --calibrate-backoff P`` JSON: per-level mIoU next to mistake severity
and hierarchical P/R/F1, the calibrated threshold, and the accuracy-specificity curve (table + PNG).

    python eval.py --checkpoint runs/demo --calibrate-backoff 0.95 --out runs/demo/eval-backoff.json --no-report
    python benchmarks/backoff_report.py --eval runs/demo/eval-backoff.json --name demo --command "python eval.py ..."
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.partial_labels import _commit, _machine  # noqa: E402


def _lines(result: dict, name: str, command: str) -> list[str]:
    hier = result["tree"]["hierarchy"]
    cal = result.get("backoff_calibrated")
    lines = [f"# Back-off and mistake severity: {name}", "",
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}, commit {_commit()}, {_machine()}.", "",
             f"Checkpoint `{result['checkpoint']}`, split `{result['split']}` ({result['images']} images).", "",
             f"Command: `{command}`", "", "| level | mIoU | pixel accuracy |", "| --- | --- | --- |"]
    lines += [f"| L{lv['level']} | {lv['mIoU']:.4f} | {lv['pixel_accuracy']:.4f} |" for lv in result["tree"]["levels"]]
    hist = ", ".join(f"{k}: {v}" for k, v in hier["severity_histogram"].items())
    lines += ["", f"- mistake severity {hier['mistake_severity']:.3f} levels per wrong leaf (pixels wrong at k levels: {hist})",
              f"- hierarchical P / R / F1 {hier['hP']:.4f} / {hier['hR']:.4f} / {hier['hF1']:.4f}"]
    if cal:
        lines.append(f"- calibrated back-off threshold {cal['threshold']} for accuracy >= the target: accuracy "
                     f"{cal['accuracy']:.4f}, specificity {cal['specificity']:.4f}, still at a leaf {cal['leaf_coverage']:.4f}")
    lines += ["", "| threshold | accuracy | specificity | still at a leaf |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['threshold']:.2f} | {p['accuracy']:.4f} | {p['specificity']:.4f} | {p['leaf_coverage']:.4f} |"
              for p in result["backoff"][::10]]
    return lines + ["", f"![accuracy vs specificity](backoff-{name}.png)", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", required=True, help="the eval JSON (with a back-off curve)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--command", default="")
    args = parser.parse_args(argv)
    result = json.loads(Path(args.eval).read_text())
    if "backoff" not in result:
        print(f"{args.eval}: no back-off curve; evaluate with --calibrate-backoff P", file=sys.stderr)
        return 2
    out = ROOT / "benchmarks" / "results"
    keep = {k: result[k] for k in ("checkpoint", "split", "images", "backoff", "backoff_calibrated") if k in result}
    keep["levels"] = [{k: lv[k] for k in ("level", "mIoU", "pixel_accuracy")} for lv in result["tree"]["levels"]]
    keep["hierarchy"] = result["tree"]["hierarchy"]
    keep.update(command=args.command, commit=_commit(), machine=_machine())
    (out / f"backoff-{args.name}.json").write_text(json.dumps(keep, indent=2))
    (out / f"backoff-{args.name}.md").write_text("\n".join(_lines(result, args.name, args.command)))
    from hiertree.report import _backoff_curve

    _backoff_curve(result["backoff"], out / f"backoff-{args.name}.png")
    print(f"wrote {out / f'backoff-{args.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
