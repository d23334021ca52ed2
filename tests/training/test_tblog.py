"""TrainLogger: metrics.csv grows its columns, curves.png is drawn, TensorBoard gets the scalars and images."""

import csv
import math

import numpy as np
import pytest
import torch

from hiertree.training.tblog import TrainLogger, sample_grid


def _epoch_scalars(e):
    s = {"lr": 1e-3 / (e + 1), "loss/total": 2.0 / (e + 1), **{f"loss/ce/L{l}": 0.5 / (e + 1) + l for l in range(3)}}
    if e >= 1:  # validation metrics appear only from the second epoch: the header must grow
        s.update({f"mIoU/L{l}": 0.2 * e + 0.1 * l for l in range(3)})
    return s


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_grows_columns_and_holds_the_values(pascal, tmp_path):
    log = TrainLogger(tmp_path, pascal, tensorboard=False)
    for e in range(3):
        log.log_step(e * 10, {"lr": 1e-3, "loss/total": torch.tensor(1.5)})
        log.log_epoch(e + 1, (e + 1) * 10, _epoch_scalars(e))
    rows = _read(tmp_path / "metrics.csv")
    header = list(rows[0])
    assert header[:2] == ["epoch", "step"] and "mIoU/L2" in header and "loss/ce/L1" in header
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and [int(r["step"]) for r in rows] == [10, 20, 30]
    assert rows[0]["mIoU/L0"] == ""  # not logged in the first epoch
    for e, r in enumerate(rows):
        for key, value in _epoch_scalars(e).items():
            assert math.isclose(float(r[key]), value, rel_tol=1e-12), (e, key)
    assert not (tmp_path / "tb").exists() and not (tmp_path / "log.csv").exists()
    log.close()
    # a resumed run reads the file back and replaces epochs logged again
    again = TrainLogger(tmp_path, pascal, tensorboard=False)
    again.log_epoch(3, 31, {**_epoch_scalars(2), "extra": 7})
    rows = _read(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 31] and rows[-1]["extra"] == "7" and rows[0]["extra"] == ""
    again.close()
    # resumed from epoch 1 with no new key: epochs 2 and 3 leave the file too, not only the memory
    back = TrainLogger(tmp_path, pascal, tensorboard=False)
    back.log_epoch(2, 21, {"lr": 5e-4, "loss/total": 9.0})
    rows = _read(tmp_path / "metrics.csv")
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 10), (2, 21)] and rows[1]["loss/total"] == "9"
    back.close()
    # a fresh run into the same folder starts the file afresh
    fresh = TrainLogger(tmp_path, pascal, tensorboard=False, resume=False)
    fresh.log_epoch(1, 5, {"loss/total": 3.0})
    assert [(r["epoch"], r["step"], r["loss/total"]) for r in _read(tmp_path / "metrics.csv")] == [("1", "5", "3")]
    fresh.close()


def test_curves_png_has_real_content(pascal, tmp_path):
    pytest.importorskip("matplotlib", reason="curves.png is drawn with matplotlib (pip install hiertree[report])")
    from PIL import Image

    with TrainLogger(tmp_path, pascal, tensorboard=False) as log:
        for e in range(4):
            for s in range(5):
                log.log_step(e * 5 + s, {"lr": 1e-3 * (1 - (e * 5 + s) / 20)})
            log.log_epoch(e + 1, (e + 1) * 5, _epoch_scalars(e))
    with Image.open(tmp_path / "curves.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] >= 250 and pixels.shape[1] >= 800
    non_white = (pixels < 240).any(-1).mean()
    colors = {tuple(c) for c in pixels[::2, ::2].reshape(-1, 3)}
    assert 0.02 < non_white < 0.6 and len(colors) > 50
    # matplotlib's default line colours (tab:blue, tab:orange) and the lr curve's tab:purple are drawn
    for rgb in ((31, 119, 180), (255, 127, 14), (148, 103, 189)):
        assert (np.abs(pixels.astype(int) - rgb).sum(-1) < 30).sum() > 50, rgb


def test_sample_grid_layout(pascal):
    images = torch.full((3, 3, 8, 10), 50, dtype=torch.uint8)
    targets = torch.zeros(3, 8, 10, dtype=torch.long)
    targets[:, :, 5:] = 3
    targets[:, 0] = 255
    preds = [t.clone() for t in pascal.to_levels(targets.clamp_max(6))]
    grid = sample_grid(images, targets, preds, pascal, max_items=2, gap=2)
    assert grid.shape == (2 * 8 + 2, 7 * 10 + 6 * 2, 3)
    truth_leaf = grid[:8, 5 * 12 : 5 * 12 + 10]
    assert (truth_leaf[0] == 128).all()  # the ignore row is grey
    np.testing.assert_array_equal(truth_leaf[4, 6], pascal.colors(2)[3])


def test_tensorboard_events_hold_the_scalars_and_images(pascal, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the tensorboard package (pip install hiertree[logging])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TrainLogger(tmp_path, pascal, tensorboard=True)
    for e in range(2):
        log.log_step(e, {"loss/total": 3.0 - e, "lr": 0.01})
        log.log_epoch(e + 1, e + 1, _epoch_scalars(e))
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    targets = torch.randint(0, 7, (2, 16, 16))
    log.log_images(2, images, targets, pascal.to_levels(targets))
    log.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    for tag in ("lr", "loss/total", "loss/ce/L0", "loss/ce/L2", "mIoU/L1", "step/lr", "step/loss/total"):
        assert tag in tags["scalars"], tag
    assert [round(e.value, 6) for e in acc.Scalars("loss/ce/L1")] == [1.5, 1.25]
    assert [e.step for e in acc.Scalars("mIoU/L2")] == [2] and math.isclose(acc.Scalars("mIoU/L2")[0].value, 0.4, rel_tol=1e-6)
    assert "samples" in tags["images"]
    img = acc.Images("samples")[0]
    assert (img.height, img.width) == (2 * 16 + 2, 7 * 16 + 6 * 2)
