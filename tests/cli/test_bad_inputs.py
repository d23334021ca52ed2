"""Inputs that used to crash or mislead: odd image sizes and modes at eval, bad samples in workers, broken resumes.

Each case checks the outcome a user sees: a score, or one error line (exit 2) naming the file and the fix.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from hiertree.cli.eval import main as eval_main
from hiertree.cli.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.decoder_channels=16", "model.skip_channels=8", "model.encoder_weights=null", "train.progress=false", "train.warmup_steps=1",
         "train.threads=1", "train.batch_size=4", "train.epochs=1", "data.crop=64", "eval.batch_size=4"]


pytestmark = pytest.mark.usefixtures("one_thread")  # eval.py leaves torch's default thread count


def _mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : max(h // 4 + 1, 3 * h // 4), w // 3 : max(w // 3 + 1, 2 * w // 3)] = 2
    return mask


def _add(root: Path, sid: str, image: np.ndarray | bytes, mask: np.ndarray, split: str) -> None:
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    path = root / "JPEGImages" / f"{sid}.jpg"
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        cv2.imwrite(str(path), image)
    Image.fromarray(mask, mode="L").save(root / "masks" / f"{sid}.png")
    with open(root / f"{split}_id.txt", "a") as f:
        f.write(sid + "\n")


def _figure(h: int, w: int, channels: int = 3) -> np.ndarray:
    image = np.full((h, w, channels), 90, np.uint8)
    image[_mask(h, w) == 2] = 200
    return image[..., 0] if channels == 1 else image


def _png_bytes(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    """The shared tiny trained run (scores don't matter here, running does)."""
    return tiny_run


def test_eval_any_image_size_and_mode(tmp_path, checkpoint, capsys):
    data = tmp_path / "data"
    rgba = np.dstack([_figure(40, 30), np.full((40, 30), 128, np.uint8)])
    cases = {
        "odd_67x45": (_figure(67, 45), _mask(67, 45)),
        "tiny_3x5": (_figure(3, 5), _mask(3, 5)),
        "one_pixel": (_figure(1, 1), _mask(1, 1)),
        "gray": (_figure(50, 70, channels=1), _mask(50, 70)),
        "rgba_png_named_jpg": (_png_bytes(rgba), _mask(40, 30)),
        "png_16bit_named_jpg": (_png_bytes(_figure(33, 21).astype(np.uint16) * 257), _mask(33, 21)),
    }
    for sid, (image, mask) in cases.items():
        _add(data, sid, image, mask, "val")
    _add(data, "big_4000x3000", _figure(3000, 4000), _mask(3000, 4000), "big")

    out = tmp_path / "val.json"
    assert eval_main(["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == len(cases)
    assert np.sum(result["tree"]["levels"][2]["confusion"]) == sum(m.size for _, m in cases.values())  # each pixel once

    # a 4000x3000 photo: evaluated after resizing its longest side (data.longest), image and mask alike
    out = tmp_path / "big.json"
    assert eval_main(["--checkpoint", str(checkpoint), "--data", str(data), "--split", "big", "--out", str(out),
                      "--device", "cpu", "data.longest=400"]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 1 and np.sum(result["tree"]["levels"][2]["confusion"]) == 400 * 300


def _folder_with_bad_samples(root: Path) -> None:
    for i in range(8):
        _add(root, f"good{i}", _figure(70, 90), _mask(70, 90), "train")
    _add(root, "corrupt", b"\xff\xd8 this is not really a JPEG \xff\xd9", _mask(70, 90), "train")
    bad_mask = _mask(70, 90)
    bad_mask[0, 0] = 12  # not a node id of pascal_part (leaves 0..6, inner nodes 7..9) nor the ignore index
    _add(root, "bad_value", _figure(70, 90), bad_mask, "train")
    for i in range(4):
        _add(root, f"val{i}", _figure(70, 90), _mask(70, 90), "val")


def test_error_inside_a_data_loader_worker_is_one_cli_line(tmp_path, capsys):
    data = tmp_path / "data"
    _folder_with_bad_samples(data)
    code = train_main(["--config", str(ROOT / "configs/demo.yaml"), *SMALL, "data.kind=folder", f"data.root={data}",
                       "train.num_workers=1", f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("hiertree-train: error: ") and "Traceback" not in err[0] and "worker" not in err[0]
    assert "corrupt.jpg" in err[0] or "bad_value.png" in err[0]
    assert "skip_bad" in err[0] or "remove" in err[0] or "values" in err[0]


def test_skip_bad_trains_and_lists_what_it_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    _folder_with_bad_samples(data)
    out = tmp_path / "run"
    assert train_main(["--config", str(ROOT / "configs/demo.yaml"), *SMALL, "data.kind=folder", f"data.root={data}",
                       "data.skip_bad=true", "train.num_workers=1", f"train.out_dir={out}"]) == 0
    assert "skipping 2 bad sample(s)" in capsys.readouterr().err
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["count"] == 2
    assert sorted(s["id"] for s in skipped["samples"]) == ["bad_value", "corrupt"]
    assert all(s["split"] == "train" and str(data) in s["reason"] for s in skipped["samples"])
    state = torch.load(out / "last" / "train_state.pt", weights_only=False)
    assert state["step"] == 2  # the 8 good samples, batch 4


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "does not exist"),
    ("no_train_state", "no train_state.pt"),
    ("truncated_weights", "cannot read checkpoint"),
    ("garbage_train_state", "cannot read training state"),
])
def test_broken_resume_is_one_cli_line(tmp_path, checkpoint, capsys, damage, fragment):
    import shutil

    run = tmp_path / "run"
    if damage != "missing":
        shutil.copytree(checkpoint, run, symlinks=True)
        ck = run / "last"
        if damage == "truncated_weights":
            data = (ck / "model.safetensors").read_bytes()
            (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
        if damage in ("truncated_weights", "garbage_train_state"):
            (ck / "train_state.pt").write_bytes(b"not a torch file")
        if damage == "no_train_state":  # weights without training state (a published model, say)
            (ck / "train_state.pt").unlink()
    code = train_main(["--config", str(ROOT / "configs/demo.yaml"), *SMALL, "data.synthetic.num_train=8",
                       "data.synthetic.num_val=4", "train.num_workers=0", f"train.out_dir={tmp_path / 'out'}",
                       f"train.resume={run}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert str(run) in err[0]


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--max-batches", "-1"], "--max-batches must be at least 1, got -1"),
    pytest.param(["--device", "cuda"], "--device cuda but CUDA is not available here; use --device auto or cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
])
def test_eval_flags_are_checked_and_named(tmp_path, checkpoint, capsys, args, needle):
    out = tmp_path / "e.json"
    assert eval_main(["--checkpoint", str(checkpoint), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hiertree-eval: error: {needle}") and "\n" not in err and "train.device" not in err, err
    assert not out.exists()
