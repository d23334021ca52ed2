"""predict_images on awkward inputs, colour masks, and the hiertree-predict command's files and errors."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hiertree.inference.predictor as predict_mod
from hiertree.inference import decode
from hiertree.cli.predict import main
from tiny import tiny_model
from hiertree.inference.predictor import Predictor, predict_images
from hiertree.tree.colors import colorize, overlay


@pytest.fixture(scope="module")
def taxonomy(pascal):
    return pascal


@pytest.fixture(scope="module")
def model(taxonomy):
    """The shared tiny untrained model (heads scaled up so that labels vary from pixel to pixel), built in code:
    no checkpoint behind it, so it predicts in PyTorch."""
    return tiny_model(taxonomy)


def _images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:45, 0:71]
    smooth = np.stack([yy * 5, xx * 3, (yy + xx) * 2], -1).astype(np.uint8)
    return {
        "odd_rgb": smooth,
        "gray_2d": rng.integers(0, 256, (33, 20), dtype=np.uint8),
        "gray_hw1": rng.integers(0, 256, (19, 26, 1), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (40, 37, 4), dtype=np.uint8),
        "tiny": rng.integers(0, 256, (7, 5, 3), dtype=np.uint8),
    }


def _assert_tree_consistent(levels, taxonomy):
    for l in range(taxonomy.num_levels - 1):
        parent = taxonomy.parent_index(l).numpy()[levels[l + 1].astype(np.int64)]
        np.testing.assert_array_equal(parent, levels[l])


def test_any_size_and_channel_layout_gives_original_size_tree_consistent_labels(model, taxonomy):
    images = _images()
    preds = predict_images(model, list(images.values()), batch_size=3)
    distinct_leaves = set()
    for (name, image), pred in zip(images.items(), preds):
        h, w = image.shape[:2]
        assert pred["size"] == (h, w), name
        assert len(pred["levels"]) == taxonomy.num_levels
        for l, lab in enumerate(pred["levels"]):
            assert lab.shape == (h, w) and lab.dtype == np.uint8, (name, l)
            color = colorize(lab, taxonomy.colors(l))
            assert color.shape == (h, w, 3) and color.dtype == np.uint8
            used = {tuple(c) for c in color.reshape(-1, 3)}
            assert used <= {tuple(c) for c in taxonomy.colors(l)}, (name, l)
        _assert_tree_consistent(pred["levels"], taxonomy)
        for l, lab in enumerate(taxonomy.levels_from_leaves(torch.from_numpy(pred["leaf"]).long())):
            np.testing.assert_array_equal(lab.numpy(), pred["levels"][l])
        distinct_leaves |= set(np.unique(pred["leaf"]).tolist())
    assert len(distinct_leaves) >= 3, "the test model should predict several leaves"


def test_one_image_equals_model_predict_and_rgba_drops_alpha(model):
    image = _images()["odd_rgb"]
    got = predict_images(model, [image])[0]
    ref = model.predict(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    for l in range(len(got["levels"])):
        np.testing.assert_array_equal(got["levels"][l], ref["levels"][l][0].numpy())
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], -1)
    for a, b in zip(predict_images(model, [rgba])[0]["levels"], got["levels"]):
        np.testing.assert_array_equal(a, b)
    gray = image[..., 0]
    as_rgb = predict_images(model, [np.repeat(gray[..., None], 3, -1)])[0]
    for a, b in zip(predict_images(model, [gray])[0]["levels"], as_rgb["levels"]):
        np.testing.assert_array_equal(a, b)


def test_max_side_shrinks_for_the_network_and_upsamples_logits_strip_by_strip(model, taxonomy, monkeypatch):
    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), (201, 300), interpolation=cv2.INTER_LINEAR)
    monkeypatch.setattr(predict_mod, "_STRIP_PIXELS", 5000)  # many strips
    got = predict_images(model, [image], max_side=64, probabilities=True)[0]
    small = cv2.resize(image, (43, 64), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        logits = model(torch.from_numpy(small).permute(2, 0, 1)[None].float())
    up = [F.interpolate(z, size=(300, 201), mode="bilinear", align_corners=False) for z in logits]
    ref = decode(up, taxonomy, probabilities=True)
    for l in range(taxonomy.num_levels):
        assert got["levels"][l].shape == (300, 201)
        agree = (got["levels"][l] == ref["levels"][l][0].numpy()).mean()
        assert agree > 0.999, (l, agree)  # float rounding may flip exact ties only
        p = got["probs"][l]
        assert p.dtype == np.float16 and p.shape == (taxonomy.num_classes(l), 300, 201)
        np.testing.assert_allclose(p.astype(np.float32), ref["probs"][l][0].numpy(), atol=2e-3)
        np.testing.assert_allclose(p.astype(np.float32).sum(0), 1.0, atol=1e-2)
    _assert_tree_consistent(got["levels"], taxonomy)


def test_colorize_overlay_and_bad_inputs():
    palette = np.array([[10, 20, 30], [200, 100, 0]], np.uint8)
    color = colorize(np.array([[0, 1], [255, 1]]), palette)
    np.testing.assert_array_equal(color, [[[10, 20, 30], [200, 100, 0]], [[128, 128, 128], [200, 100, 0]]])
    image = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(overlay(image, color, 0.5)[0, 0], [55, 60, 65])
    with pytest.raises(TypeError, match="uint8"):
        predict_images(None, [np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images\[0\].*shape"):
        predict_images(None, [np.zeros((4, 4, 2), np.uint8)])


# ---------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """The same model saved as a checkpoint (the shared one)."""
    return tiny_checkpoint


def _write_inputs(folder):
    folder.mkdir()
    images = _images()
    cv2.imwrite(str(folder / "odd.png"), images["odd_rgb"][..., ::-1])
    cv2.imwrite(str(folder / "gray.png"), images["gray_2d"])
    cv2.imwrite(str(folder / "alpha.png"), images["rgba"])
    (folder / "notes.txt").write_text("not an image")
    return images


def test_cli_writes_masks_overlays_labels_and_probabilities(checkpoint, taxonomy, tmp_path, model):
    images = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
                 "--batch-size", "2", "--probabilities", "--outputs", "labels,color,overlay"]) == 0
    sizes = {"odd": images["odd_rgb"].shape[:2], "gray": images["gray_2d"].shape, "alpha": images["rgba"].shape[:2]}
    expected = set()
    for stem in sizes:
        expected |= {f"{stem}_L{l}.png" for l in range(3)} | {f"{stem}_L{l}_overlay.jpg" for l in range(3)}
        expected |= {f"{stem}_labels_L{l}.png" for l in range(3)} | {f"{stem}_probs.npz"}
    assert {p.name for p in out.iterdir()} == expected
    for stem, (h, w) in sizes.items():
        labels = [cv2.imread(str(out / f"{stem}_labels_L{l}.png"), cv2.IMREAD_UNCHANGED) for l in range(3)]
        _assert_tree_consistent(labels, taxonomy)
        probs = np.load(out / f"{stem}_probs.npz")
        for l in range(3):
            assert labels[l].shape == (h, w) and labels[l].dtype == np.uint8
            color = cv2.imread(str(out / f"{stem}_L{l}.png"))[..., ::-1]
            np.testing.assert_array_equal(color, colorize(labels[l], taxonomy.colors(l)))
            assert cv2.imread(str(out / f"{stem}_L{l}_overlay.jpg")).shape == (h, w, 3)
            assert probs[f"L{l}"].shape == (taxonomy.num_classes(l), h, w)
            assert probs[f"L{l}"].dtype == np.float16
            np.testing.assert_allclose(probs[f"L{l}"].astype(np.float32).sum(0), 1.0, atol=1e-2)
            assert list(probs[f"classes_L{l}"]) == taxonomy.classes(l)
    # the files hold what the API predicts for the same image
    ref = predict_images(model, [images["odd_rgb"]])[0]
    np.testing.assert_array_equal(cv2.imread(str(out / "odd_labels_L2.png"), cv2.IMREAD_UNCHANGED), ref["levels"][2])


def test_cli_errors_are_one_line_with_exit_2(checkpoint, tmp_path, capsys):
    _write_inputs(tmp_path / "in")
    cases = {
        "does not exist": ["--checkpoint", str(tmp_path / "nope"), str(tmp_path / "in")],
        "no images found": ["--checkpoint", str(checkpoint), str(tmp_path / "empty")],
        "cannot read image": ["--checkpoint", str(checkpoint), str(tmp_path / "in" / "notes.txt")],
    }
    (tmp_path / "empty").mkdir()
    for value in ("5", "-1"):
        cases[f"--max-side must be 0 (any size in one pass) or at least 8, got {value}"] = [
            "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--max-side", value]
    for needle, argv in cases.items():
        assert main([*argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2, needle
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and err.startswith("hiertree-predict: error:"), err
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertree-predict: error: --device 'gpu' is not a device") and "\n" not in err, err


def test_cli_skips_an_undecodable_image_names_it_and_exits_2(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    _write_inputs(folder)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), str(folder), "--out", str(out), "--device", "cpu", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in "".join(err), err
    # the one image reader of hiertree (datasets and predict alike) says what is wrong with the file
    assert err[0].startswith("hiertree-predict: warning: ") and "bad.jpg: truncated JPEG" in err[0] and "skipped" in err[0]
    assert err[1].startswith("hiertree-predict: error: 1 of 4 image(s) could not be read") and str(out) in err[1]
    for stem in ("alpha", "gray", "odd"):  # the images sorted after the bad one are written too
        assert {f"{stem}_labels_L{l}.png" for l in range(3)} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("bad*"))


def test_cli_reports_a_failed_write(checkpoint, tmp_path, capsys, monkeypatch):
    import hiertree.cli.predict as predict

    _write_inputs(tmp_path / "in")
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)  # what OpenCV returns on a full disk / no permission
    assert predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "in" / "odd.png"), "--out", str(tmp_path / "o"),
                         "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertree-predict: error: cannot write") and "odd_labels_L0.png" in err and "\n" not in err, err


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_api_and_cli_give_the_same_labels_through_the_same_runner(checkpoint, tmp_path, backend):
    """One predictor: model.predict and hiertree-predict choose the same runner (ONNX Runtime's cached graph, or
    PyTorch with folded batch norms) and write the same labels for the same photos."""
    from hiertree.images import read_image
    from hiertree.models import load_model

    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--device", "cpu",
                 "--backend", backend, "--outputs", "labels"]) == 0
    model = load_model(checkpoint)[0]
    runner = Predictor(model, backend=backend).runner
    assert runner.name == backend
    if backend == "torch":  # the API folds batch norms as the command does: none is left in the network it runs
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.model.modules())
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the user's model is untouched
    for stem in ("odd", "gray", "alpha"):
        api = model.predict(read_image(tmp_path / "in" / f"{stem}.png"), backend=backend)
        for l in range(3):
            np.testing.assert_array_equal(cv2.imread(str(out / f"{stem}_labels_L{l}.png"), cv2.IMREAD_UNCHANGED),
                                          api["levels"][l])
