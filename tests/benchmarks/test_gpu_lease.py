"""The prepared GPU lease scripts run end to end on CPU (--smoke on the Pascal-Part sample) before any lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT.parent / "shared" / "datasets" / "pascal-part-sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/datasets/pascal-part-sample is absent (a user's machine)")


def _run(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # this interpreter, whatever python3 is on PATH (a venv need not be active): a python3 that fails comes first
    trap = tmp_path / "trap"
    trap.mkdir(exist_ok=True)
    (trap / "python3").write_text("#!/bin/sh\necho 'the lease script ran python3 from PATH, not $PYTHON' >&2\nexit 9\n")
    (trap / "python3").chmod(0o755)
    full = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable,
            "PATH": f"{trap}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / script), "smoke"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_quality_lease_trains_scores_publishes_and_brings_back_eight_files(tmp_path):
    out = tmp_path / "out"
    proc = _run("lease.sh", tmp_path, RUN_SMOKE=str(tmp_path / "runs" / "run"), OUT_SMOKE=str(out))
    assert "calibration:" in proc.stderr and "training 1 epochs" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["README.md", "config.yaml", "metrics.csv", "model.safetensors", "results-pascal_part_lite0.json",
                            "results-pascal_part_lite0.md", "taxonomy.yaml", "train.log"])  # at most 8 come back
    report = json.loads((out / "results-pascal_part_lite0.json").read_text())
    val = report["val"]
    assert len(val["single_scale"]) == len(val["hflip"]) == len(val["fp16_single_scale"]) == 3
    assert val["fp16_max_abs_diff"] <= 0.002 and val["images"] == 8
    assert report["training"]["epochs"] == 1 and report["command"].startswith("python train.py")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype.is_floating_point
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} <= {"torch.float16", "torch.int64"}
    assert "| L2" in (out / "README.md").read_text()


def test_speed_lease_measures_both_models_every_lever_and_a_profile(tmp_path):
    pytest.importorskip("segmentation_models_pytorch", reason="the speed lease compares against smp")
    out = tmp_path / "speed"
    _run("speed_lease.sh", tmp_path, OUT_SMOKE=str(out))
    main = json.loads(next(out.glob("speed-2*.json")).read_text())
    assert {"hiertree", "smp", "hiertree_levers", "hiertree_profile"} <= set(main["models"])
    assert set(main["models"]["hiertree_levers"]) == {"batch_8", "no_channels_last", "loss_at_decoder_stride"}  # smoke: no compile
    assert all(r["train_img_s_end_to_end"] > 0 for r in main["models"]["hiertree_levers"].values())
    assert 0 < sum(k["share"] for k in main["models"]["hiertree_profile"]) <= 1
    assert main["data_pipeline_img_s_per_worker"] > 0
    assert (out / "speed-workers-4.json").is_file() and (out / "speed-workers-8.json").is_file()

