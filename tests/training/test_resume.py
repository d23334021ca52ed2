"""Exact resume: stopping and resuming (at an epoch boundary or mid-epoch) reproduces an uninterrupted run bit for bit."""

import csv
import math
from pathlib import Path

import pytest
import torch

from hiertree.config.options import TrainOptions

from hiertree.checkpoint import load_checkpoint, state_digest
from hiertree.config import load_config
from hiertree.data import EpochSampler
from hiertree.training.engine import TrainingError, _schedule, train
from tiny import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]
# 16 samples / batch 8 = 2 steps per epoch; dropout stays on (model default 0.1) so the RNG state matters
TINY = [*TINY_RUN, "train.epochs=4"]


def _train(out: Path, *extra: str) -> dict:
    return train(load_config(ROOT / "configs/demo.yaml", [*TINY, f"train.out_dir={out}", *extra]))


def _final(out: Path) -> tuple[str, dict, dict]:
    ck = load_checkpoint(out, prefer="last")
    state = torch.load(ck["dir"] / "train_state.pt", weights_only=False)
    return state_digest(ck["state_dict"]), ck["metrics"], state


def test_epoch_sampler_encodes_every_index_and_resumes_mid_epoch():
    s = EpochSampler(10, batch_size=3, seed=5)
    s.set_epoch(0)
    full = list(s)
    assert len(full) == 9 and all(10 <= v < 20 for v in full)  # epoch 0 is encoded too: (0 + 1) * 10 + i
    s.set_epoch(0, skip_batches=2)
    assert list(s) == full[6:] and len(s) == 3
    s.set_epoch(1)
    assert all(20 <= v < 30 for v in s) and [v % 10 for v in s] != [v % 10 for v in full]
    shards = [list(EpochSampler(10, 2, 5, rank=r, world=2)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 4


def test_stop_and_resume_equals_uninterrupted_run(tmp_path):
    whole = _train(tmp_path / "whole")
    assert whole["steps"] == 8 and whole["stopped"] is None
    ref_digest, ref_metrics, ref_state = _final(tmp_path / "whole")

    # stopped at an epoch boundary by max_steps (the schedule still spans 4 epochs), resumed by resume=auto
    first = _train(tmp_path / "a", "train.max_steps=4")
    assert first["steps"] == 4
    _, _, state = _final(tmp_path / "a")
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 0)
    resumed = _train(tmp_path / "a", "train.resume=auto")
    assert resumed["steps"] == 8
    digest, metrics, state = _final(tmp_path / "a")
    assert digest == ref_digest
    assert metrics == ref_metrics
    assert state["scheduler"]["last_epoch"] == ref_state["scheduler"]["last_epoch"] == 8
    assert state["optimizer"]["param_groups"][0]["lr"] == ref_state["optimizer"]["param_groups"][0]["lr"]
    assert torch.equal(state["rng"]["torch"], ref_state["rng"]["torch"])
    with open(tmp_path / "a" / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3", "4"]

    # stopped mid-epoch (epoch 2, after its first batch) with a data-loader worker, resumed by path
    _train(tmp_path / "b", "train.max_steps=3", "train.num_workers=1")
    _, _, state = _final(tmp_path / "b")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 1, 3)
    first_half = _epoch_losses(tmp_path / "b")[2]
    first_seconds = _epoch_column(tmp_path / "b", "seconds")[2]
    _train(tmp_path / "b", f"train.resume={tmp_path / 'b'}", "train.num_workers=1")
    digest, metrics, _ = _final(tmp_path / "b")
    assert digest == ref_digest
    assert metrics["tree"] == ref_metrics["tree"]
    # each run logs the mean of its own steps of epoch 2; epoch 2 is logged once, after the resume
    losses, ref_losses = _epoch_losses(tmp_path / "b"), _epoch_losses(tmp_path / "whole")
    assert list(losses) == [1, 2, 3, 4]
    assert (first_half + losses[2]) / 2 == pytest.approx(ref_losses[2], abs=2e-6)
    assert losses[3] == ref_losses[3]
    assert _epoch_column(tmp_path / "b", "seconds")[2] > first_seconds  # the time before the stop is kept


def _epoch_column(out: Path, key: str) -> dict[int, float]:
    with open(out / "metrics.csv") as f:
        return {int(row["epoch"]): float(row[key]) for row in csv.DictReader(f)}


def _epoch_losses(out: Path) -> dict[int, float]:
    return _epoch_column(out, "loss/total")


def test_schedules_by_hand():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cfg = {"schedule": "poly", "warmup_steps": 2, "poly_power": 1.0, "lr": 1.0}

    def lrs(cfg: dict, total: int) -> list[float]:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] = 1.0
        sched, out = _schedule(opt, TrainOptions(**cfg), total), []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    # warmup (s + 1) / 2, then 1 - (s - 2) / (6 - 2)
    assert lrs(cfg, 6) == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    # one-cycle: cosine from 1/25 to 1 over the warmup (2 steps), cosine down to 1e-4 over the remaining 4
    up = [1 / 25, (1 + 1 / 25) / 2]
    down = [1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert lrs({**cfg, "schedule": "onecycle"}, 6) == pytest.approx(up + down)
    assert lrs({**cfg, "schedule": "onecycle", "warmup_steps": 1}, 3)[0] == pytest.approx(1 / 25)  # no zero division


def test_onecycle_resumes_onto_a_longer_run_with_a_warning(tmp_path, caplog):
    _train(tmp_path / "oc", "train.schedule=onecycle", "train.epochs=2")
    caplog.clear()
    resumed = _train(tmp_path / "oc", "train.schedule=onecycle", "train.epochs=3", "train.resume=auto",
                     "train.resume_allow=[train.epochs]")  # lengthened on purpose: refused without the allowance
    assert resumed["steps"] == 6
    assert "written by a 2-epoch run, now train.epochs=3" in caplog.text
    _, _, state = _final(tmp_path / "oc")
    # the lr at step 6 of 6 on the 3-epoch curve: cosine down to lr/1e4 after a 1-step rise
    lr = load_config(ROOT / "configs/demo.yaml", TINY)["train"]["lr"]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr * (1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi)) / 2))


def test_resume_rejects_another_model_or_taxonomy(tmp_path):
    _train(tmp_path / "run", "train.max_steps=1", "train.epochs=1")
    with pytest.raises(TrainingError, match=r"config differs \(model.decoder_channels: checkpoint 16, config 24\)"):
        _train(tmp_path / "run", "train.resume=auto", "train.epochs=1", "model.decoder_channels=24")
    with pytest.raises(TrainingError, match="model.encoder: checkpoint 'tf_efficientnet_lite0', config 'resnet18'"):
        _train(tmp_path / "run", "train.resume=auto", "train.epochs=1", "model.encoder=resnet18")
    flat = tmp_path / "two_levels.yaml"  # the same leaves without the middle level
    flat.write_text("name: two_levels\ntree:\n  background: 0\n  body: {low_hand: 1, up_hand: 6, torso: 2, head: 4, "
                    "low_leg: 3, up_leg: 5}\n")
    with pytest.raises(TrainingError, match=r"taxonomy 'pascal_part' \(levels \[2, 3, 7\]\) differs .*levels \[2, 7\]"):
        _train(tmp_path / "run", f"train.resume={tmp_path / 'run'}", f"taxonomy={flat}")


def test_a_scheduler_state_from_torch_onecycle_is_one_clear_error(tmp_path):
    _train(tmp_path / "old", "train.max_steps=1", "train.epochs=1")
    state_path = load_checkpoint(tmp_path / "old", prefer="last")["dir"] / "train_state.pt"
    state = torch.load(state_path, weights_only=False)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    state["scheduler"] = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10).state_dict()
    torch.save(state, state_path)
    with pytest.raises(TrainingError, match=r"train_state.pt: its learning-rate schedule was saved by an older hiertree"):
        _train(tmp_path / "old", "train.resume=auto", "train.epochs=1")


def test_train_steps_sets_the_schedule_and_ends_mid_epoch(tmp_path):
    """train.steps=5 at 2 batches per epoch: three epochs, the last one cut after its first batch, the poly schedule
    at 0 on the last step; stopping at 3 and resuming is bit-identical, and a finished run resumes to nothing."""
    whole = _train(tmp_path / "whole", "train.steps=5", "train.poly_power=1.0")
    assert whole["steps"] == 5 and whole["last_metrics"] is not None
    digest, _, state = _final(tmp_path / "whole")
    assert (state["epoch"], state["batch_in_epoch"], state["scheduler"]["last_epoch"]) == (3, 0, 5)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)
    _train(tmp_path / "cut", "train.steps=5", "train.poly_power=1.0", "train.max_steps=3")
    resumed = _train(tmp_path / "cut", "train.steps=5", "train.poly_power=1.0", "train.resume=auto")
    assert resumed["steps"] == 5 and _final(tmp_path / "cut")[0] == digest
    again = _train(tmp_path / "whole", "train.steps=5", "train.poly_power=1.0", "train.resume=auto")
    assert again["steps"] == 5 and _final(tmp_path / "whole")[0] == digest


def test_resume_refuses_a_changed_schedule_or_data_but_takes_safe_changes(tmp_path, caplog):
    _train(tmp_path / "run", "train.max_steps=1")
    for change, key in [("train.lr=0.5", r"train.lr: checkpoint 0.003, config 0.5"),
                        ("data.crop=48", r"data.crop: checkpoint 64, config 48"),
                        ("train.epochs=5", r"train.epochs: checkpoint 4, config 5")]:
        with pytest.raises(TrainingError, match=rf"cannot resume from .*: the config differs \({key}\); .*"
                                                r"train.resume_allow to go on anyway"):
            _train(tmp_path / "run", "train.resume=auto", change)
    caplog.set_level("INFO", logger="hiertree")
    done = _train(tmp_path / "run", "train.resume=auto", "train.max_steps=2", "train.log_every=3", "eval.hflip=true")
    assert done["steps"] == 2
    assert "resuming with train.log_every changed: 20 -> 3 (does not change what the run computes)" in caplog.text
    done = _train(tmp_path / "run", "train.resume=auto", "train.epochs=5", "train.resume_allow=[train.epochs]")
    assert done["steps"] == 10 and "allowed by train.resume_allow" in caplog.text


def test_resume_under_other_code_says_so(tmp_path, caplog):
    _train(tmp_path / "run", "train.max_steps=1")
    path = load_checkpoint(tmp_path / "run", prefer="last")["dir"] / "train_state.pt"
    state = torch.load(path, weights_only=False)
    assert state["revision"].startswith("0.1.0")
    state["revision"] = "0.0.9+gabc"
    torch.save(state, path)
    caplog.set_level("INFO", logger="hiertree")
    _train(tmp_path / "run", "train.resume=auto", "train.max_steps=2")
    assert "was written by hiertree 0.0.9+gabc; this is 0.1.0" in caplog.text
