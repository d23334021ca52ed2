"""End to end on a CPU: hiertree-predict vs a careful plain smp script, whole processes, side by side in one run.

Both run on the same folder of real Pascal-Part val JPEGs (the first ``--images`` val ids) and on one of them;
runs alternate (hiertree, smp, hiertree, ...), ``--runs`` each, and the medians of wall time, CPU time
(user + system of the process and its children) and peak memory (max RSS) are reported. hiertree runs with its
defaults (``--backend auto``: ONNX Runtime here; ``--quantize auto``: int8 from the ranges the shipped model carries)
on the shipped CPU model after one untimed warm-up run that fills its ONNX cache (the cold first run, which exports
and quantizes the graph, is timed once and reported apart), and once more with ``--quantize none`` (float32) in the
same alternation. The smp script is benchmarks/smp_predict.py. hiertree's float32 ONNX labels and its default (int8)
labels are compared with its PyTorch labels on the same folder.
Results: benchmarks/results/predict-cpu-<date>.{json,md}.

    python benchmarks/predict_cpu.py --data ../shared/datasets/pascal-part
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import cpu_model, provenance, version  # noqa: E402

MODEL = "pascal_part_lite0_cpu"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # every process runs this checkout


def _timed(cmd: list[str]) -> dict:
    """Run ``cmd`` as its own process; wall seconds, CPU seconds and peak RSS (MiB) of that process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_mib": round(usage.ru_maxrss / 1024, 1)}


#: the tools timed, in the order they alternate; "hiertree" is hiertree-predict with its defaults
TOOLS = ("hiertree", "smp", "hiertree float32")


def _commands(images: Path, out: Path) -> dict[str, list[str]]:
    predict = [sys.executable, "-m", "hiertree.cli.predict", "--checkpoint", MODEL, str(images), "--out"]
    return {"hiertree": predict + [str(out / "hiertree")],
            "smp": [sys.executable, str(ROOT / "benchmarks" / "smp_predict.py"), str(images), str(out / "smp")],
            "hiertree float32": predict + [str(out / "float32"), "--quantize", "none"]}


def _median(rows: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def _series(images: Path, out: Path, runs: int) -> dict:
    cmds = _commands(images, out)
    for name in ("hiertree", "hiertree float32"):  # warm-ups: fill the float and int8 graph caches
        subprocess.run(cmds[name], check=True, capture_output=True, env=ENV)
    rows: dict[str, list[dict]] = {name: [] for name in TOOLS}
    for _ in range(runs):
        for name in TOOLS:  # alternating, so drift hits all alike
            shutil.rmtree(out / {"hiertree float32": "float32"}.get(name, name), ignore_errors=True)
            rows[name].append(_timed(cmds[name]))
    med = {name: _median(r) for name, r in rows.items()}
    return {"runs": rows, "median": med,
            "speedup_wall_x": round(med["smp"]["wall_s"] / med["hiertree"]["wall_s"], 2),
            "wall_share_of_smp": round(med["hiertree"]["wall_s"] / med["smp"]["wall_s"], 3),
            "float32_wall_share_of_smp": round(med["hiertree float32"]["wall_s"] / med["smp"]["wall_s"], 3),
            "memory_ratio": round(med["hiertree"]["peak_mib"] / med["smp"]["peak_mib"], 2)}


def _agreement(images: Path, out: Path, levels: int) -> dict:
    """Per level, the share of pixels where hiertree's float32 ONNX labels, and its default (int8) labels, equal its
    PyTorch labels, over the folder."""
    runs = {"onnx float32": ["--backend", "onnx", "--quantize", "none"], "default (int8)": [], "torch": ["--backend", "torch"]}
    for name, flags in runs.items():
        subprocess.run([sys.executable, "-m", "hiertree.cli.predict", "--checkpoint", MODEL, str(images), "--out",
                        str(out / name), "--outputs", "labels", *flags], check=True, capture_output=True, env=ENV)
    result = {}
    for name in ("onnx float32", "default (int8)"):
        same, total = np.zeros(levels), 0
        for path in sorted((out / "torch").glob("*_labels_L0.png")):
            stem = path.name[: -len("_labels_L0.png")]
            for l in range(levels):
                a, b = (cv2.imread(str(out / k / f"{stem}_labels_L{l}.png"), cv2.IMREAD_UNCHANGED) for k in (name, "torch"))
                same[l] += int((a == b).sum())
            total += a.size
        result[name] = {f"L{l}": round(float(same[l] / total), 6) for l in range(levels)}
    return result


def _cold(images: Path, out: Path) -> dict:
    """One hiertree run with an empty ONNX cache: the export is paid once per checkpoint."""
    from hiertree.checkpoint import shipped_model

    cache = shipped_model(MODEL) / ".hiertree-cache"
    shutil.rmtree(cache, ignore_errors=True)
    return _timed(_commands(images, out)["hiertree"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pascal-part"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    data = Path(args.data)
    ids = [i.strip() for i in (data / "val_id.txt").read_text().split() if i.strip()][: args.images]
    with tempfile.TemporaryDirectory(prefix="predict-cpu-") as tmp:
        folder, one, out = Path(tmp) / "folder", Path(tmp) / "one", Path(tmp) / "out"
        folder.mkdir()
        one.mkdir()
        for i in ids:
            shutil.copy(data / "JPEGImages" / f"{i}.jpg", folder)
        shutil.copy(data / "JPEGImages" / f"{ids[0]}.jpg", one)
        sizes = sorted({cv2.imread(str(p)).shape[:2] for p in folder.iterdir()})
        cold = _cold(folder, out)
        result = {"folder": _series(folder, out, args.runs), "one_image": _series(one, out, args.runs),
                  "cold_first_run_folder": cold, "labels_equal_torch": _agreement(folder, out / "agree", 3)}
    prov = provenance()
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": (prov["git"]["commit"] or "unknown")[:7] + ("+dirty" if prov["git"]["dirty"] else ""),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores", "torch": prov["versions"]["torch"],
            "onnxruntime": version("onnxruntime"), "provenance": prov,
            "command": "python benchmarks/predict_cpu.py " + " ".join(argv or sys.argv[1:]),
            "images": len(ids), "image_sizes": f"{len(sizes)} distinct, {sizes[0]}..{sizes[-1]}", "model": MODEL,
            "hiertree_cmd": "hiertree-predict --checkpoint pascal_part_lite0_cpu IMAGES --out OUT (defaults: backend "
                            "auto = onnx, quantize auto = int8 from the model's ranges, outputs labels,overlay for 3 "
                            "levels = 6 files per image); hiertree float32 adds --quantize none",
            "smp_cmd": "python benchmarks/smp_predict.py IMAGES OUT (label PNG + overlay JPEG per image)", **result}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    path = ROOT / "benchmarks" / "results" / f"predict-cpu-{stamp}.json"
    path.write_text(json.dumps(info, indent=2))
    path.with_suffix(".md").write_text(_markdown(info))
    print(path.with_suffix(".md").read_text())
    return 0


def _markdown(info: dict) -> str:
    lines = ["# hiertree-predict vs a plain smp script, CPU, whole processes", "",
             f"{info['date']}, commit {info['commit']}, {info['machine']}, torch {info['torch']}, "
             f"onnxruntime {info['onnxruntime']}. {info['images']} Pascal-Part val JPEGs ({info['image_sizes']}).", "",
             f"Command: `{info['command']}`", "", f"- hiertree: `{info['hiertree_cmd']}`", f"- smp: `{info['smp_cmd']}`", "",
             "| input | tool | wall s | CPU s | peak MiB |", "| --- | --- | --- | --- | --- |"]
    for key, name in (("folder", f"{info['images']} images"), ("one_image", "1 image")):
        for tool in TOOLS:
            m = info[key]["median"][tool]
            lines.append(f"| {name} | {tool} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {m['peak_mib']:.0f} |")
    f, o = info["folder"], info["one_image"]
    agree = info["labels_equal_torch"]
    lines += ["", f"Medians of {len(f['runs']['smp'])} alternating runs. hiertree (defaults) takes **{f['wall_share_of_smp']}** of "
              f"smp's wall time on the folder ({f['speedup_wall_x']}x faster) and **{o['wall_share_of_smp']}** on one "
              f"image ({o['speedup_wall_x']}x); with --quantize none {f['float32_wall_share_of_smp']} and "
              f"{o['float32_wall_share_of_smp']}. Peak memory {f['memory_ratio']}x smp's.",
              f"The cold first run (exports, quantizes and caches the graph): {info['cold_first_run_folder']['wall_s']:.1f} s.",
              "Labels equal to hiertree's PyTorch labels, share of pixels: " + "; ".join(
                  f"{name}: " + ", ".join(f"{k} {100 * v:.3f} %" for k, v in agree[name].items()) for name in agree)
              + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
