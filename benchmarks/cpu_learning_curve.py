"""Where a long CPU run stands: val mIoU per level against hours of training, read off its ``metrics.csv``.

Training hours are the epochs' ``seconds`` minus their ``eval_seconds`` (evaluation is not training), summed over
every invocation of the run (a resumed epoch's row carries the seconds before the stop). Writes
``benchmarks/results/learning-curve-<name>.{md,json}`` and the PNG (``--png``, default beside them) that the README
shows, so the next budget can be read off it.

    python benchmarks/cpu_learning_curve.py --run runs/pascal_part_cpu --name pascal_part_lite0_cpu \
        --png docs/images/learning_curve_cpu.png
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402


def curve(metrics_csv: Path) -> list[dict]:
    """``{"epoch", "step", "hours", "mIoU": [L0, L1, ...]}`` for each evaluated epoch, in order."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    points, hours = [], 0.0
    for row in rows:
        hours += (float(row["seconds"]) - float(row.get("eval_seconds") or 0)) / 3600
        levels = sorted(k for k in row if k.startswith("mIoU/L") and row[k] not in ("", None))
        if levels:
            points.append({"epoch": int(row["epoch"]), "step": int(row["step"]), "hours": round(hours, 3),
                           "mIoU": [float(row[k]) for k in levels]})
    return points


def plot(points: list[dict], path: Path, title: str, anchors: list[float] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for level in range(len(points[0]["mIoU"])):
        ax.plot([p["hours"] for p in points], [p["mIoU"][level] for p in points], marker="o", color=colors[level % 4],
                label=f"L{level}")
        if anchors and level < len(anchors):
            ax.axhline(anchors[level], color=colors[level % 4], linestyle=":", linewidth=1)
    ax.set_xlabel("hours of training on 2 CPU cores")
    ax.set_ylabel("val mIoU (no background)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the run folder (its metrics.csv)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--png", default=None)
    parser.add_argument("--anchors", type=float, nargs="*", default=[0.835, 0.703, 0.598],
                        help="dotted lines per level (default: the flat smp DeepLabV3+ GPU anchor on val)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    points = curve(Path(args.run) / "metrics.csv")
    if not points:
        print(f"{args.run}/metrics.csv has no evaluated epoch yet", file=sys.stderr)
        return 2
    out = Path(args.out)
    png = (Path(args.png) if args.png else out / f"learning-curve-{args.name}.png").resolve()
    plot(points, png, f"{args.name}: val mIoU vs CPU-hours (dotted: smp GPU anchor)", args.anchors)
    prov = provenance()
    lines = [f"# Learning curve: {args.name}", "", f"Run `{args.run}`, machine {prov['machine']['cpu']} "
             f"({prov['machine']['cpu_count']} cores), commit {prov['git']['commit']}. Hours: training only (each "
             "epoch's seconds minus its evaluation), summed over every invocation of the run. Val: native resolution, "
             "single scale, mIoU without background.", "", "| epoch | step | hours | " +
             " | ".join(f"L{k}" for k in range(len(points[0]["mIoU"]))) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in points[0]["mIoU"]) + " |"]
    lines += [f"| {p['epoch']} | {p['step']} | {p['hours']:.2f} | " + " | ".join(f"{v:.4f}" for v in p["mIoU"]) + " |"
              for p in points]
    lines += ["", f"![learning curve]({Path('..') / '..' / png.relative_to(ROOT) if png.is_relative_to(ROOT) else png})", ""]
    (out / f"learning-curve-{args.name}.md").write_text("\n".join(lines))
    (out / f"learning-curve-{args.name}.json").write_text(json.dumps({"run": args.run, "points": points,
                                                                     "provenance": prov}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
