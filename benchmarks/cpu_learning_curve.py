"""Where a long CPU run stands: val mIoU per level against hours of training, read off its ``metrics.csv``.

Training hours are the epochs' ``seconds`` minus their ``eval_seconds`` (evaluation is not training), summed over
every invocation of the run (a resumed epoch's row carries the seconds before the stop). A run that was paused
(SIGSTOP) counts the pause in its ``seconds``: with ``--pauses`` (a TSV of paused intervals, start and end in epoch
seconds) the hours come instead from the TensorBoard step times of the trajectory the run kept, minus the pauses
and the evaluations that fall inside them. Writes
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


def training_seconds(row: dict) -> float:
    """One metrics.csv epoch's seconds without its evaluation (pauses still in: see :func:`hours_at`)."""
    return float(row["seconds"]) - float(row.get("eval_seconds") or 0)


def curve(metrics_csv: Path) -> list[dict]:
    """``{"epoch", "step", "hours", "mIoU": [L0, L1, ...]}`` for each evaluated epoch, in order."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    points, hours = [], 0.0
    for row in rows:
        hours += training_seconds(row) / 3600
        levels = sorted(k for k in row if k.startswith("mIoU/L") and row[k] not in ("", None))
        if levels:
            points.append({"epoch": int(row["epoch"]), "step": int(row["step"]), "hours": round(hours, 3),
                           "mIoU": [float(row[k]) for k in levels]})
    return points


def _segments(tb_dir: Path) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per process of the run, in start order: its start time and its logged ``(step, wall time)`` pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    segments = []
    for events_file in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        acc.Reload()
        if "step/lr" in acc.Tags()["scalars"]:
            started = float(events_file.name.split(".")[3])
            segments.append((started, [(e.step, e.wall_time) for e in acc.Scalars("step/lr")]))
    return sorted(segments)


def _overlap(start: float, end: float, intervals: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in intervals)


def _kept_timeline(segments, steps_per_epoch: int) -> list[tuple[int, int, float, float, bool]]:
    """``(step_from, step_to, wall_from, wall_to, starts_a_process)`` pieces of the trajectory the run kept.

    A process resumed from the last whole epoch before the next one's first logged step; the steps it computed
    after that checkpoint were lost and are not counted. Wall times between logged steps are interpolated.
    """
    pieces, resume = [], 0
    for k, (started, events) in enumerate(segments):
        stop = None
        if k + 1 < len(segments):
            stop = (segments[k + 1][1][0][0] - 1) // steps_per_epoch * steps_per_epoch
        points = [(resume, started)] + [(s, w) for s, w in events if s > resume and (stop is None or s <= stop)]
        later = [(s, w) for s, w in events if stop is not None and s > stop]
        if stop is not None and later and points[-1][0] < stop:  # interpolate the wall time of the checkpoint
            (s0, w0), (s1, w1) = points[-1], later[0]
            points.append((stop, w0 + (w1 - w0) * (stop - s0) / (s1 - s0)))
        pieces += [(a[0], b[0], a[1], b[1], i == 0) for i, (a, b) in enumerate(zip(points, points[1:]))]
        resume = stop if stop is not None else resume
    return pieces


def hours_at(run: Path, pauses_tsv: Path, steps: list[int]) -> list[float]:
    """Hours of training to each of ``steps``: the kept trajectory's step times, pauses and evaluations taken out."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps_per_epoch = int(rows[0]["step"]) // int(rows[0]["epoch"])
    evals = {int(r["step"]): float(r.get("eval_seconds") or 0) for r in rows}
    pauses = [tuple(map(float, line.split("\t")[:2])) for line in pauses_tsv.read_text().splitlines() if line.strip()]
    pieces = _kept_timeline(_segments(run / "tb"), steps_per_epoch)
    hours = []
    for target in steps:
        seconds = 0.0
        for s0, s1, w0, w1, starts_a_process in pieces:
            if s0 >= target:
                continue
            if s1 > target:  # the last piece, cut at the target step
                w1, s1 = w0 + (w1 - w0) * (target - s0) / (s1 - s0), target
            seconds += (w1 - w0) - _overlap(w0, w1, pauses)
            # an evaluation runs after its epoch's last step, in that process (not in the next one's start-up)
            seconds -= sum(e for step, e in evals.items() if s0 <= step < s1 and not (starts_a_process and step == s0))
        hours.append(round(seconds / 3600, 5))
    return hours


def curve_without_pauses(run: Path, pauses_tsv: Path) -> list[dict]:
    """:func:`curve` with hours from :func:`hours_at` (pauses and evaluations taken out)."""
    points = curve(run / "metrics.csv")
    for point, hours in zip(points, hours_at(run, pauses_tsv, [p["step"] for p in points])):
        point["hours"] = hours
    return points


def after_phase(points: list[dict], earlier_json: Path) -> list[dict]:
    """An earlier phase's points (its learning-curve JSON; this run started from its final weights) followed by
    ``points``, whose hours count on from the earlier phase's last; every point names its phase (1, 2, ...)."""
    before = json.loads(earlier_json.read_text())["points"]
    phase = max(p.get("phase", 1) for p in before) + 1
    offset = before[-1]["hours"]
    return [{**p, "phase": p.get("phase", 1)} for p in before] + \
        [{**p, "hours": round(p["hours"] + offset, 3), "phase": phase} for p in points]


def _epoch(point: dict) -> str:
    """An epoch's label: ``2.8`` is epoch 8 of phase 2 when the curve has phases."""
    return f"{point['phase']}.{point['epoch']}" if "phase" in point else str(point["epoch"])


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
    for a, b in zip(points, points[1:]):
        if a.get("phase") != b.get("phase"):
            ax.axvline(a["hours"], color="gray", linestyle="--", linewidth=1)
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
    parser.add_argument("--pauses", default=None,
                        help="TSV of paused intervals (start, end in epoch seconds): hours from TensorBoard step times")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--after", default=None, help="the learning-curve JSON of an earlier phase this run started "
                        "from (its final weights): drawn first, this run's hours count on from its last point")
    args = parser.parse_args(argv)
    if args.pauses:
        points = curve_without_pauses(Path(args.run), Path(args.pauses))
    else:
        points = curve(Path(args.run) / "metrics.csv")
    if not points:
        print(f"{args.run}/metrics.csv has no evaluated epoch yet", file=sys.stderr)
        return 2
    if args.after:
        points = after_phase(points, Path(args.after))
    out = Path(args.out)
    png = (Path(args.png) if args.png else out / f"learning-curve-{args.name}.png").resolve()
    plot(points, png, f"{args.name} (dotted: smp GPU anchor)", args.anchors)
    prov = provenance()
    lines = [f"# Learning curve: {args.name}", "", f"Run `{args.run}`, machine {prov['machine']['cpu']} "
             f"({prov['machine']['cpu_count']} cores), commit {prov['git']['commit']}. Hours: training only ("
             + ("TensorBoard step times of the steps the run kept, minus the pauses in `" + args.pauses + "` and the "
                "evaluations" if args.pauses else "each epoch's seconds minus its evaluation")
             + "), summed over every invocation of the run. Val: native resolution, "
             "single scale, mIoU without background."
             + (f" Phases: the points of `{args.after}` first, then this run's (its epochs and steps count from "
                "its own start; dashed line in the figure)." if args.after else ""), "", "| epoch | step | hours | " +
             " | ".join(f"L{k}" for k in range(len(points[0]["mIoU"]))) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in points[0]["mIoU"]) + " |"]
    lines += [f"| {_epoch(p)} | {p['step']} | {p['hours']:.2f} | " + " | ".join(f"{v:.4f}" for v in p["mIoU"]) + " |"
              for p in points]
    lines += ["", f"![learning curve]({Path('..') / '..' / png.relative_to(ROOT) if png.is_relative_to(ROOT) else png})", ""]
    (out / f"learning-curve-{args.name}.md").write_text("\n".join(lines))
    (out / f"learning-curve-{args.name}.json").write_text(json.dumps({"run": args.run, "points": points,
                                                                     "provenance": prov}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
