"""ONNX export: exported at 64x64, the graph must match PyTorch at other sizes and batch sizes."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest
import torch

import onnxruntime as ort  # a base dependency: the fast CPU predict path

from hiertree.checkpoint import save_checkpoint
from hiertree.cli.export import main
from hiertree.inference.onnx_graph import export_onnx
from tiny import tiny_model
from hiertree.tree.taxonomy import Taxonomy

SIZES = [(2, 96, 80), (1, 45, 71)]


@pytest.fixture(scope="module")
def model():
    """Tiny model with non-trivial BatchNorm statistics and heads scaled up so that labels vary."""
    m = tiny_model(Taxonomy.builtin("pascal_part"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.add_(0.1 * (torch.rand(mod.running_mean.shape, generator=g) - 0.5))
                mod.running_var.mul_(1.0 + 0.1 * (torch.rand(mod.running_var.shape, generator=g) - 0.5))
    return m


def _inputs(n, h, w):
    """Smooth colour gradients plus noise: structured enough for the labels to vary across the image."""
    rng = np.random.default_rng(h * w)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([255 * yy, 255 * xx, 255 * (1 - yy) * xx])[None] * rng.uniform(0.5, 1.0, (n, 3, 1, 1))
    return np.clip(base + rng.normal(0, 20, (n, 3, h, w)), 0, 255).astype(np.float32)


def test_logits_match_pytorch_at_other_sizes(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits_L0", "logits_L1", "logits_L2"]
    for n, h, w in SIZES:
        x = _inputs(n, h, w)
        got = sess.run(None, {"images": x})
        with torch.no_grad():
            ref = model(torch.from_numpy(x))
        for g, r in zip(got, ref):
            assert g.shape == tuple(r.shape) == (n, r.shape[1], h, w)
            assert float(np.abs(g - r.numpy()).max()) < 1e-3
            assert float(r.std()) > 0.1  # the comparison is not between near-constant maps


def test_cli_labels_mode_equals_model_predict(model, tmp_path, capsys):
    cfg = {"taxonomy": "pascal_part", "model": dict(model.config)}
    save_checkpoint(tmp_path / "run", "ckpt-0000001", model, cfg, model.taxonomy, links=("last", "best"))
    out = tmp_path / "labels.onnx"
    assert main(["--checkpoint", str(tmp_path / "run"), "--onnx", str(out), "--labels"]) == 0
    assert "labels_L0" in capsys.readouterr().out
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["labels_L0", "labels_L1", "labels_L2"]
    for n, h, w in SIZES:
        x = _inputs(n, h, w)
        got = sess.run(None, {"images": x})
        ref = model.predict(torch.from_numpy(x))["levels"]
        assert len(np.unique(ref[-1].numpy())) >= 2  # not a constant map
        for g, r in zip(got, ref):
            assert g.dtype == np.int64 and g.shape == (n, h, w)
            np.testing.assert_array_equal(g, r.numpy())


def test_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err
