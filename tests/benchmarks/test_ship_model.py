"""benchmarks/ship_model.py end to end on the shared tiny run: fp16 weights, card, scores, a back-off promise."""

import json
import shutil

import pytest
from safetensors.torch import load_file


def test_ship_publishes_fp16_with_scores_and_a_calibrated_backoff(tiny_run, tmp_path):
    import torch

    from benchmarks.ship_model import main
    from hiertree.checkpoint import file_sha256

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    pretrained, results = tmp_path / "pretrained", tmp_path / "results"
    results.mkdir()
    assert main(["--run", str(run), "--checkpoint", str(run / "last"), "--name", "tiny", "--pretrained",
                 str(pretrained), "--results", str(results), "--command", "python train.py ...", "--backoff", "0.03",
                 "data.synthetic.num_val=40"]) == 0
    shipped = pretrained / "tiny"
    assert {p.name for p in shipped.iterdir()} >= {"model.safetensors", "config.yaml", "taxonomy.yaml", "README.md",
                                                    "backoff.json"}
    assert all(t.dtype == torch.float16 for t in load_file(str(shipped / "model.safetensors")).values()
               if t.is_floating_point())
    report = json.loads((results / "results-tiny.json").read_text())
    assert report["training"]["steps"] == 2 and report["training"]["epochs"] == 1
    assert report["training"]["pauses_excluded"] is False and report["training"]["train_seconds"] > 0
    assert report["val"]["images"] == 40 and len(report["val"]["single_scale"]) == 3
    assert report["val"]["fp16_max_abs_diff"] <= 0.002
    stored = json.loads((shipped / "backoff.json").read_text())
    assert stored["weights_sha256"] == file_sha256(shipped / "model.safetensors") and stored["target"] == 0.03
    assert torch.is_grad_enabled()  # the script leaves the process's grad mode as it found it
    card = (shipped / "README.md").read_text()
    assert "## Back-off (`--backoff auto`)" in card and f"θ = {stored['threshold']}" in card
    assert "1 epochs, 2 steps" in card and "40 images" in card


def test_ship_refuses_a_folder_that_is_not_a_run_checkpoint(tiny_run, tmp_path):
    from benchmarks.ship_model import _checkpoint_step

    assert _checkpoint_step(tiny_run / "last") == 2
    with pytest.raises(SystemExit, match="not a run's checkpoint folder"):
        _checkpoint_step(tmp_path)
