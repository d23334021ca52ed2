"""Which static int8 recipe keeps the shipped CPU model's accuracy: ONNX Runtime quantization variants of the same
float graph, each scored per level on Pascal-Part val against the float graph, side by side in one run.

Variants differ in the number of train images the activation ranges are calibrated on (never val), the calibration
method (min/max or a percentile of each activation's histogram), which op types are quantized (every op, or only the
convolutions so that resizes, the decoding tail and the logits stay float) and which convolutions stay float (the
stem, the heads, the decoding tail). The recipe that :func:`hiertree.inference.backends._quantize` uses is chosen from this table on
val; its held-out check is the int8 row of the shipped model's card. Results:
benchmarks/results/int8-variants-<date>.{json,md}.

    python benchmarks/int8_variants.py --data ../shared/datasets/pascal-part
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.predict_int8 import MODEL, _ids, _score  # noqa: E402
from benchmarks.provenance import cpu_model, provenance  # noqa: E402
from hiertree.checkpoint import read_checkpoint, shipped_model  # noqa: E402
from hiertree.images import read_image  # noqa: E402
from hiertree.inference.backends import cached_onnx_runner, onnx_cache_meta, onnx_cache_path  # noqa: E402
from hiertree.inference.quantization import BODY  # noqa: E402  (TAIL: every node outside it)
from hiertree.inference.runners import OnnxRunner  # noqa: E402

#: name -> (calibration images, method, op types quantized (None: all), conv name fragments left float; TAIL: every
#: node outside encoder and decoder, DEPTHWISE: every grouped convolution)
VARIANTS = {
    "all ops, 8 imgs (old default)": (8, "minmax", None, ()),
    "all ops, 64 imgs": (64, "minmax", None, ()),
    "all ops, 64 imgs, heads + tail float": (64, "minmax", None, ("TAIL",)),
    "all ops, 64 imgs, stem + heads + tail float": (64, "minmax", None, ("TAIL", "conv_stem")),
    "all ops, 64 imgs, stem + decoder fuse + heads + tail float": (64, "minmax", None, ("TAIL", "conv_stem", "/fuse")),
    "all ops, 64 imgs, depthwise convs + stem + heads + tail float": (64, "minmax", None, ("TAIL", "conv_stem",
                                                                                           "DEPTHWISE")),
    "convs only, 64 imgs, stem + heads + tail float": (64, "minmax", ["Conv"], ("TAIL", "conv_stem")),
    "convs only, 64 imgs, encoder only (stem, decoder, heads, tail float)": (64, "minmax", ["Conv"],
                                                                              ("TAIL", "conv_stem", "/model/decoder/")),
    "convs only, 64 imgs, stem + decoder fuse + heads + tail float": (64, "minmax", ["Conv"], ("TAIL", "conv_stem",
                                                                                               "/fuse")),
    "convs + activations, 64 imgs, stem + heads + tail float": (64, "minmax", ["Conv", "Clip", "Relu"],
                                                                 ("TAIL", "conv_stem")),
    "all ops, 64 imgs, percentile, stem + heads + tail float": (64, "percentile", None, ("TAIL", "conv_stem")),
    "all ops, 64 imgs, entropy, stem + heads + tail float": (64, "entropy", None, ("TAIL", "conv_stem")),
    "convs only, 64 imgs, percentile, stem + heads + tail float": (64, "percentile", ["Conv"], ("TAIL", "conv_stem")),
    "all ops but Add, 64 imgs, stem + heads + tail float": (64, "minmax", ["Conv", "Clip", "Relu", "Resize", "Concat",
                                                                            "Mul", "ReduceMean", "Pad"],
                                                             ("TAIL", "conv_stem")),
}
#: calibration method name -> ONNX Runtime's CalibrationMethod member and its options
_METHODS = {"minmax": ("MinMax", {}), "percentile": ("Percentile", {"CalibPercentile": 99.999}),
            "entropy": ("Entropy", {})}
#: images per calibration pass: the histogram methods keep every activation of a pass in memory, and stack a
#: pass's arrays (so images of different sizes go one per pass)
_CHUNK = 1


def _groups(node) -> int:
    """A Conv node's ``group`` attribute (1 when absent): above 1 for depthwise convolutions."""
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def _quantize(src: Path, dst: Path, images: list[np.ndarray], method: str, ops: list[str] | None,
              float_convs: tuple[str, ...], cache: Path) -> None:
    """Quantize ``src`` to ``dst``; the activation ranges of every tensor are calibrated once per image set and
    method into ``cache`` (ONNX Runtime's calibration cache), in passes of ``_CHUNK`` images."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = [np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32) for a in images]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(())

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.it = iter({"images": x} for x in feeds[start_index:end_index])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    exclude = [n.name for n in onnx.load(str(pre)).graph.node
               if any(f in n.name for f in float_convs) or ("TAIL" in float_convs and not n.name.startswith(BODY))
               or ("DEPTHWISE" in float_convs and n.op_type == "Conv" and _groups(n) > 1)]
    member, extra = _METHODS[method]
    if not cache.is_file():  # ranges of every tensor (all op types), so that each variant can reuse them
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, member), calibration_cache_path=str(cache),
                        extra_options={**extra, "CalibStridedMinMax": math.gcd(_CHUNK, len(feeds))})
    quantize_static(str(pre), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=ops, nodes_to_exclude=exclude,
                    calibrate_method=getattr(CalibrationMethod, member), calibration_cache_path=str(cache),
                    extra_options=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/pascal-part"))
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val images")
    parser.add_argument("--only", nargs="*", default=None, help="variant numbers (0-based) to run")
    args = parser.parse_args(argv)
    data = Path(args.data)
    val, train = _ids(data, "val")[: args.limit], _ids(data, "train")
    step = max(1, len(train) // 64)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="int8v-") as tmp:
        folder = Path(tmp) / MODEL
        shutil.copytree(shipped_model(MODEL), folder, ignore=shutil.ignore_patterns(".hiertree-cache"))
        tax = read_checkpoint(folder)["taxonomy"]

        def build():
            from hiertree.models import load_model

            return load_model(folder)[0]

        fp32 = cached_onnx_runner(folder, tax, False, build)
        src = onnx_cache_path(folder, onnx_cache_meta(folder))
        miou, ms = _score(fp32, data, val, tax)
        rows["float32"] = {"mIoU": miou, "ms_per_image": round(ms, 1)}
        print("float32", rows["float32"], flush=True)
        for k, (name, (n, method, ops, float_convs)) in enumerate(VARIANTS.items()):
            if args.only is not None and str(k) not in args.only:
                continue
            ids = train[:n] if n <= 8 else train[::step][:n]  # 64: spread over the whole train list
            dst = Path(tmp) / f"v{k}.onnx"
            _quantize(src, dst, [read_image(data / "JPEGImages" / f"{i}.jpg") for i in ids], method, ops, float_convs,
                      Path(tmp) / f"ranges-{n}-{method}.json")
            miou, ms = _score(OnnxRunner(dst, tax), data, val, tax)
            delta = {lv: round(miou[lv] - rows["float32"]["mIoU"][lv], 4) for lv in miou}
            rows[name] = {"mIoU": miou, "ms_per_image": round(ms, 1), "minus_float32": delta}
            print(name, rows[name], flush=True)
    _write(rows, val, argv)
    return 0


def _write(rows: dict, val: list[str], argv: list[str] | None) -> None:
    prov = provenance()
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": (prov["git"]["commit"] or "unknown")[:7] + ("+dirty" if prov["git"]["dirty"] else ""),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores", "model": MODEL, "val_images": len(val),
              "rows": rows, "command": "python benchmarks/int8_variants.py " + " ".join(argv or sys.argv[1:]),
              "provenance": prov}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    path = ROOT / "benchmarks" / "results" / f"int8-variants-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    lines = [f"# int8 recipes vs float32 ONNX, {MODEL}, Pascal-Part val (chosen on val)", "",
             f"{result['date']}, commit {result['commit']}, {result['machine']}; {len(val)} val images at their own "
             "size; calibration images from train (64: every 44th id).", "", f"Command: `{result['command']}`", "",
             "| graph | L0 | L1 | L2 | L0 - float | L1 - float | L2 - float | ms per image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        m, d = row["mIoU"], row.get("minus_float32", {"L0": 0, "L1": 0, "L2": 0})
        lines.append(f"| {name} | {m['L0']:.4f} | {m['L1']:.4f} | {m['L2']:.4f} | {d['L0']:+.4f} | {d['L1']:+.4f} | "
                     f"{d['L2']:+.4f} | {row['ms_per_image']:.1f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
