"""The package as a user installs it: the wheel built from this checkout, installed non-editable into a fresh venv,
and used from outside the checkout: every console script answers --help, the demo trains for one step, the shipped
model predicts a photo, and the package data (taxonomies, shipped models) is found inside the installed package.

The venv sees this environment's site-packages for the heavy dependencies (torch and the rest are not downloaded
again, no network); hiertree itself comes from the wheel, which the test checks."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.tiny import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _run(cmd, cwd, timeout=300, **env):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", **env})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with hiertree installed from its wheel (no index, no build isolation: nothing downloaded)."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(work / "dist"), "-q"], cwd=work)
    wheels = list((work / "dist").glob("hiertree-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(work / "venv")], cwd=work)
    python = work / "venv" / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])], cwd=work)
    return work, python


def test_the_installed_package_is_the_wheel_not_the_checkout(venv):
    work, python = venv
    out = _run([python, "-c", "import hiertree, sys; print(hiertree.__file__)"], cwd=work).stdout.strip()
    assert Path(out).is_relative_to(work / "venv"), out


def test_every_console_script_answers_help(venv):
    work, python = venv
    for name in SCRIPTS:
        proc = _run([python.parent / name, "--help"], cwd=work, timeout=120)
        assert proc.stdout.startswith(f"usage: {name} "), proc.stdout[:200]


def test_package_data_is_inside_the_installed_package(venv):
    work, python = venv
    code = ("from hiertree import Taxonomy; from hiertree.checkpoint import shipped_models, shipped_model; "
            "from hiertree.config import presets, resolve_config; "
            "t = Taxonomy.builtin('pascal_part'); print(t.level_sizes, shipped_models(), shipped_model('pascal_part_lite0_cpu'), "
            "presets(), resolve_config('demo'))")
    out = _run([python, "-c", code], cwd=work).stdout
    assert "[2, 3, 7]" in out and "'pascal_part_lite0_cpu'" in out and "'demo'" in out and "'pascal_part_cpu'" in out, out
    assert out.count(str(work / "venv")) == 2, out  # the shipped model and the preset, both inside the venv


def test_the_installed_demo_trains_one_step(venv):
    work, python = venv
    run = work / "run"
    _run([python.parent / "hiertree-train", "--config", "demo", "model.encoder_weights=null", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
          "data.synthetic.size=64", "data.crop=64", "model.decoder_channels=16", "model.skip_channels=8",
          "train.batch_size=4", "train.max_steps=1", "train.num_workers=0", "train.progress=false",
          f"train.out_dir={run}", "eval.batch_size=2", "train.device=cpu"], cwd=work)
    assert (run / "last" / "model.safetensors").is_file() and (run / "metrics.csv").is_file()


def test_the_shipped_model_predicts_a_photo(venv):
    work, python = venv
    photo = work / "photo.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(photo), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    proc = _run([python.parent / "hiertree-predict", "--checkpoint", "pascal_part_lite0_cpu", str(photo), "--out",
                 str(work / "preds")], cwd=work)
    written = sorted(p.name for p in (work / "preds").iterdir())
    assert "photo_labels_L2.png" in written and "photo_L2_overlay.jpg" in written, (written, proc.stdout)
    labels = cv2.imread(str(work / "preds" / "photo_labels_L2.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape[:2] == (96, 128)
