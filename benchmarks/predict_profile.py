"""Where a whole ``hiertree-predict`` process spends its time on a CPU: a stage-by-stage breakdown, measured.

Each run is a fresh process (``--child``) that times its imports (the command's own: PyTorch is not among them
since the predict path stopped loading it, and the child reports whether anything loaded it), then runs the command's
``main()`` with timers wrapped around the stages of the predict path: opening the checkpoint and the cached ONNX
graph (``Predictor(...)``), JPEG decoding (``read_image``), the network (the ONNX Runtime session, labels decoded in
the graph), the per-level label maps from the leaf map, and the encoding and writing of the output files (the
writer thread) plus what the main thread waits for it at the end. Stages in the writer thread overlap the network,
so the stages add up to more than the wall time. Medians of ``--runs`` processes after one warm-up (which fills the
ONNX cache); 40 Pascal-Part val JPEGs and one of them, the command's defaults (labels + overlay).
Results: benchmarks/results/predict-profile-<date>.{json,md}.

    python benchmarks/predict_profile.py --data ../shared/datasets/pascal-part
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "pascal_part_lite0_cpu"
STAGES = ["import hiertree-predict's modules", "open checkpoint + ONNX graph", "JPEG decode", "network (ONNX)",
          "level maps from leaf", "encode + write files (writer thread)", "wait for writer at end", "other", "wall",
          "process wall (with interpreter start and exit)"]


def _timed(seconds: dict, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start
    return wrapper


def _child(images: list[str], out: str) -> None:
    """One whole predict process with stage timers; prints the stage seconds as JSON."""
    seconds: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    import hiertree.cli.predict as cli
    import hiertree.inference.predictor as predictor
    import hiertree.inference.runners as runners
    import hiertree.inference.writers as writers

    seconds["import hiertree-predict's modules"] = time.perf_counter() - t0
    predictor.read_image = _timed(seconds, "JPEG decode", predictor.read_image)
    predictor._from_leaf = _timed(seconds, "level maps from leaf", predictor._from_leaf)
    runners.OnnxRunner.leaf = _timed(seconds, "network (ONNX)", runners.OnnxRunner.leaf)
    cli.Predictor = _timed(seconds, "open checkpoint + ONNX graph", cli.Predictor)
    writers.BackgroundWriter.submit = _wrap_submit(seconds, writers)
    writers.BackgroundWriter.wait = _timed(seconds, "wait for writer at end", writers.BackgroundWriter.wait)
    code = cli.main(["--checkpoint", MODEL, *images, "--out", out])
    seconds["wall"] = time.perf_counter() - t0
    assert code == 0, f"hiertree-predict exited with {code}"
    known = sum(v for k, v in seconds.items() if k not in ("wall", "encode + write files (writer thread)"))
    seconds["other"] = max(0.0, seconds["wall"] - known)
    print(json.dumps({**seconds, "torch loaded": float("torch" in sys.modules)}))


def _wrap_submit(seconds: dict, writers):
    write = _timed(seconds, "encode + write files (writer thread)", writers.write_outputs)

    def submit(self, *args):
        self.pending.append(self.pool.submit(write, *args))
        while len(self.pending) > self.limit:
            self.pending.pop(0).result()
    return submit


def _run(images: list[str], runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    samples = []
    with tempfile.TemporaryDirectory() as out:
        for k in range(runs + 1):
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            text = subprocess.run([sys.executable, __file__, "--child", out, *images], env=env, check=True,
                                  capture_output=True, text=True).stdout
            if k:  # the first run is the warm-up
                samples.append({**json.loads(text.strip().splitlines()[-1]),
                                STAGES[-1]: time.perf_counter() - start})
    medians = {s: round(statistics.median(x.get(s, 0.0) for x in samples), 3) for s in STAGES}
    return {**medians, "torch loaded": any(x.get("torch loaded") for x in samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pascal-part"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[1:], args.child[0])
        return 0
    sys.path.insert(0, str(ROOT))
    from benchmarks.provenance import cpu_model, provenance

    data = Path(args.data)
    ids = [i.strip() for i in (data / "val_id.txt").read_text().split() if i.strip()][: args.images]
    images = [str(data / "JPEGImages" / f"{i}.jpg") for i in ids]
    table = {f"{len(images)} images": _run(images, args.runs), "1 image": _run(images[:1], args.runs)}
    _write(table, args, provenance(), cpu_model())
    return 0


def _write(table: dict, args, prov: dict, cpu: str) -> None:
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": (prov["git"]["commit"] or "unknown")[:7] + ("+dirty" if prov["git"]["dirty"] else ""),
              "machine": f"{cpu}, {os.cpu_count()} cores", "model": MODEL, "runs": args.runs, "seconds": table,
              "command": f"python benchmarks/predict_profile.py --images {args.images} --runs {args.runs}",
              "provenance": prov}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    path = ROOT / "benchmarks" / "results" / f"predict-profile-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    cols = list(table)
    lines = ["# Where hiertree-predict spends a CPU process's time", "",
             f"{result['date']}, commit {result['commit']}, {result['machine']}; {MODEL}, defaults (ONNX Runtime, "
             f"labels + overlay for every level), medians of {args.runs} whole processes after a warm-up.", "",
             f"Command: `{result['command']}`", "",
             "| stage | " + " | ".join(f"{c}: s" for c in cols) + " | " + " | ".join(f"{c}: share of wall" for c in cols)
             + " |", "| --- |" + " --- |" * (2 * len(cols))]
    for stage in STAGES:
        secs = [table[c][stage] for c in cols]
        shares = [f"{100 * s / table[c][STAGES[-1]]:.0f} %" for s, c in zip(secs, cols)]
        lines.append(f"| {stage} | " + " | ".join(f"{s:.3f}" for s in secs) + " | " + " | ".join(shares) + " |")
    loaded = [c for c in cols if table[c]["torch loaded"]]
    lines += ["", f"PyTorch loaded by the predict process: {'yes, in ' + ', '.join(loaded) if loaded else 'no'}.",
              "", "The writer thread overlaps the network, so its row is not part of the wall-time sum; "
              "'other' is the wall time not inside any other main-thread stage (argument parsing, finding the files, "
              "interpreter start-up is not included: the timers start at the first import).", ""]
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
