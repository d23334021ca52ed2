"""The training step never waits for the device, and a non-finite loss changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hiertree.training import engine
from hiertree.config import load_config
from tiny import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]
TINY = [*TINY_RUN, "train.grad_clip=1.0"]


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor value by the host (``.item()``, ``bool()``, ``float()``: each a device sync on GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def run(tmp_path):
    run = engine._setup(load_config(ROOT / "configs/demo.yaml", [*TINY, f"train.out_dir={tmp_path}"]), "", None)
    engine._resume(run)
    return run


def test_the_counter_sees_a_host_read():
    with _HostReads() as reads:
        bool(torch.isfinite(torch.ones(())))
    assert reads.count == 1


def test_a_training_step_reads_nothing_back(run):
    batch = next(iter(run.data.train_loader))
    window = engine._Window()
    before = [p.detach().clone() for p in run.model.parameters()]
    with _HostReads() as reads:
        engine._step(run, batch, window, 1)
        engine._step(run, batch, window, 2)
    assert reads.count == 0
    assert len(window.batches) == 2 and set(window.sums) >= {"total", "ce/L0"}
    assert any(not torch.equal(a, p) for a, p in zip(before, run.model.parameters()))  # it did train


def test_a_non_finite_step_updates_no_weight_and_no_optimizer_state(run, monkeypatch):
    batch = next(iter(run.data.train_loader))
    window = engine._Window()
    engine._step(run, batch, window, 1)  # one good step, so the optimizer holds state
    params = [p.detach().clone() for p in run.model.parameters()]
    states = {k: v.clone() for k, v in run.optim.optimizer.state[next(run.model.parameters())].items()}
    real = run.optim.criterion.forward
    monkeypatch.setattr(run.optim.criterion, "forward", lambda *a, **k: (lambda t, parts: (t * float("nan"), parts))(*real(*a, **k)))
    engine._step(run, batch, window, 2)
    assert all(torch.equal(a, p) for a, p in zip(params, run.model.parameters()))
    after = run.optim.optimizer.state[next(run.model.parameters())]
    assert all(torch.equal(states[k], after[k]) for k in states)  # step count, moments: untouched
    assert [float(b) for b in window.bad] == [0.0, 1.0]
