"""Fine-tuning and self-distillation in the trainer: train.init_from loads every weight before the first step,
train.teacher + loss.distill_weight add the teacher's soft targets; both refuse what does not fit, naming it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from hiertree.checkpoint import load_checkpoint
from hiertree.config import load_config
from hiertree.training import engine
from hiertree.training.run_state import TrainingError
from tiny import DEMO, TINY_RUN


def _run(tmp_path, *overrides):
    run = engine._setup(load_config(DEMO, [*TINY_RUN, f"train.out_dir={tmp_path / 'run'}", *overrides]), "", None)
    return run


def test_init_from_loads_every_weight_of_the_checkpoint(tiny_run, tmp_path):
    run = _run(tmp_path, f"train.init_from={tiny_run}", "train.seed=7")  # another seed: other random weights
    source = load_checkpoint(tiny_run)["state_dict"]
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    assert run.optim.scheduler.last_epoch == 0  # a fresh schedule: nothing of the source's training state


def test_init_from_refuses_another_architecture_naming_the_tensor(tiny_run, tmp_path):
    with pytest.raises(TrainingError, match="train.init_from=.*do not fit this config's model .*size mismatch"):
        _run(tmp_path, f"train.init_from={tiny_run}", "model.decoder_channels=24")


def test_init_from_refuses_another_taxonomy(tiny_run, tmp_path):
    tree = tmp_path / "tree.yaml"
    tree.write_text("name: two\ntree:\n  background: 0\n  thing: 1\n")
    with pytest.raises(TrainingError, match="its taxonomy 'pascal_part' .* differs from this run's 'two'"):
        _run(tmp_path, f"train.init_from={tiny_run}", f"taxonomy={tree}", "data.synthetic.roles={background: background, head: thing}")


def test_distillation_needs_weight_and_teacher_together(tiny_run, tmp_path):
    with pytest.raises(TrainingError, match="needs both loss.distill_weight > 0 and train.teacher"):
        _run(tmp_path, "loss.distill_weight=1.0")
    with pytest.raises(TrainingError, match="needs both"):
        _run(tmp_path, f"train.teacher={tiny_run}")


def test_teacher_targets_are_the_flip_average_of_its_probabilities(tiny_run, tmp_path):
    run = _run(tmp_path, f"train.teacher={tiny_run}", "loss.distill_weight=1.0")
    assert not any(p.requires_grad for p in run.teacher.parameters()) and not run.teacher.training
    images = torch.randint(0, 256, (2, 3, 64, 64)).float()
    got = engine._teacher_logits(run, images, [torch.Size([2, c, 64, 64]) for c in run.data.taxonomy.level_sizes])
    with torch.no_grad():
        plain, mirrored = run.teacher(images), run.teacher(images.flip(-1))
    for g, a, b in zip(got, plain, mirrored):
        expected = (a.softmax(1) + b.flip(-1).softmax(1)) / 2
        torch.testing.assert_close(g.exp(), expected, atol=1e-6, rtol=1e-5)


def test_a_fine_tune_with_distillation_and_ohem_trains_and_logs_its_parts(tiny_run, tmp_path):
    from hiertree.training.engine import train

    out = tmp_path / "ft"
    cfg = load_config(DEMO, [*TINY_RUN, f"train.out_dir={out}", f"train.init_from={tiny_run}",
                             f"train.teacher={tiny_run}", "loss.distill_weight=0.5", "loss.ohem_keep=0.3",
                             "loss.ohem_levels=[2]"])
    result = train(cfg)
    assert result["steps"] == 2 and result["stopped"] is None
    with open(Path(out) / "metrics.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["loss/distill"]) > 0 and "mIoU/L2" in row
