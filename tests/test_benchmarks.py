"""The benchmark scripts run end to end (a few steps on CPU) and write well-formed results."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "datasets" / "pascal-part-sample"


@pytest.fixture(autouse=True)
def _needs_smp():
    pytest.importorskip("segmentation_models_pytorch", reason="smp is the benchmark-only extra (pip install hiertree[bench])")


def test_smp_baseline_wrapper_speaks_hiertree():
    import torch

    from benchmarks.baselines import SmpFlatDeepLabV3Plus
    from hiertree.models.hierseg import decode
    from hiertree.taxonomy import Taxonomy

    t = Taxonomy.builtin("pascal_part")
    model = SmpFlatDeepLabV3Plus(t).eval()
    logits = model(torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8))
    assert [tuple(z.shape) for z in logits] == [(1, 2, 50, 70), (1, 3, 50, 70), (1, 7, 50, 70)]
    out = decode(logits, t, flat=True)
    assert torch.equal(out["leaf"], logits[-1].argmax(1))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/datasets/pascal-part-sample is absent (a user's machine)")
def test_quality_benchmark_smoke(tmp_path):
    from benchmarks.quality import main

    rc = main(["--data", str(SAMPLE), "--smoke", "--tta", "--variants", "smp", "heads_kl", "--out", str(tmp_path),
               "--runs-dir", str(tmp_path / "runs"), "model.encoder_weights=null"])
    assert rc == 0
    report = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())
    assert [r["variant"] for r in report["runs"]] == ["smp", "heads_kl"]
    for r in report["runs"]:
        assert len(r["tree"]) == 3 and r["tree_consistency"] == 1.0 and 0.0 <= r["raw_consistency"] <= 1.0
        assert len(r["tta"]) == 3
    md = (tmp_path / "quality-smoke-cpu.md").read_text()
    assert "| smp |" in md and "| heads_kl |" in md and "device: CPU" in md and "test-time augmentation" in md


def test_speed_benchmark_smoke(tmp_path):
    from benchmarks.speed import main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "speed-smoke-cpu.json").read_text())
    for name in ("hiertree", "smp"):
        m = report["models"][name]
        assert m["train_img_s_model_only"] > 0 and m["train_img_s_end_to_end"] > 0 and m["cpu_infer_ms_median"] > 0
    assert report["ratios"]["train_end_to_end_x"] > 0 and report["data_pipeline_img_s"] > 0


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/datasets/pascal-part-sample is absent (a user's machine)")
def test_quality_benchmark_picks_up_finished_runs(tmp_path):
    """A second invocation (e.g. after a command time limit) resumes: finished variants report their results."""
    from benchmarks.quality import main

    argv = ["--data", str(SAMPLE), "--smoke", "--variants", "heads", "--out", str(tmp_path),
            "--runs-dir", str(tmp_path / "runs"), "model.encoder_weights=null", "train.max_steps=null"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())["runs"][0]
    assert main(argv) == 0
    again = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())["runs"][0]
    assert again["tree"] == first["tree"] and again["steps"] == first["steps"]

