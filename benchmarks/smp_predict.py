"""The baseline of benchmarks/predict_cpu.py: how a careful smp user predicts a folder of photos on a CPU.

A flat 7-class smp DeepLabV3+ with the same encoder (tf_efficientnet_lite0, output stride 16), eager, in
inference mode with channels_last weights and inputs; per image: read, normalise, pad to the stride, forward,
crop, argmax, write the label PNG and an overlay JPEG. Weights are random (speed does not depend on them; smp's
hub weights cannot be downloaded here). Imports only what it uses; hiertree is not imported.

    python benchmarks/smp_predict.py IMAGES_FOLDER OUT_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

MEAN = np.array([0.5, 0.5, 0.5], np.float32) * 255  # tf_efficientnet_lite0's timm config
STD = np.array([0.5, 0.5, 0.5], np.float32) * 255
PALETTE = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128]],
                   np.uint8)


def main(src: str, dst: str) -> int:
    torch.manual_seed(0)
    net = smp.DeepLabV3Plus("tu-tf_efficientnet_lite0", encoder_weights=None, classes=7, encoder_output_stride=16)
    net = net.eval().to(memory_format=torch.channels_last)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with torch.inference_mode():
        for path in paths:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            rgb = bgr[..., ::-1].astype(np.float32)
            x = torch.from_numpy((rgb - MEAN) / STD).permute(2, 0, 1)[None]
            h, w = x.shape[-2:]
            x = F.pad(x, (0, (-w) % 16, 0, (-h) % 16)).contiguous(memory_format=torch.channels_last)
            labels = net(x)[0, :, :h, :w].argmax(0).to(torch.uint8).numpy()
            cv2.imwrite(str(out / f"{path.stem}_labels.png"), labels)
            color = PALETTE[labels]
            blend = (0.5 * rgb + 0.5 * color).astype(np.uint8)
            cv2.imwrite(str(out / f"{path.stem}_overlay.jpg"), blend[..., ::-1])
    print(f"smp_predict: {len(paths)} image(s) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
