"""DDP on CPU: two gloo ranks under torchrun train in lockstep, rank 0 saves, every rank resumes from it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from hiertree.checkpoint import load_checkpoint, state_digest
from tiny import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]
# 16 samples, 2 ranks x batch 4 = 2 steps per epoch
TINY = [*TINY_RUN, "train.batch_size=4", "train.epochs=2", "loss.level_weights=[0, 1, 1]"]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    # --standalone: torchrun binds its own rendezvous store to a free port (no pick-then-bind race)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--config", "configs/demo.yaml", *TINY, *args]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}  # read now: conftest's env applies
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _rank_digest(stdout: str) -> str:
    found = re.findall(r"all 2 ranks hold identical weights \(sha256 ([0-9a-f]{64})\)", stdout)
    assert len(found) == 1, stdout[-2000:]
    return found[0]


def _last(out: Path) -> tuple[str, dict]:
    ck = load_checkpoint(out, prefer="last")
    return state_digest(ck["state_dict"]), torch.load(ck["dir"] / "train_state.pt", weights_only=False)


def test_two_gloo_ranks_agree_save_and_resume(tmp_path):
    out = tmp_path / "run"
    # stops mid-epoch 2 (max_steps): every rank's weights and BatchNorm buffers equal rank 0's checkpoint
    proc = _torchrun("train.max_steps=3", f"train.out_dir={out}")
    digest, state = _last(out)
    assert _rank_digest(proc.stdout) == digest
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["world"]) == (3, 1, 1, 2)

    # both ranks resume from rank 0's checkpoint (weights, optimizer, schedule, RNG); a rank that had
    # not loaded the optimizer state would step differently and fail the end-of-run agreement check
    proc = _torchrun("train.resume=auto", f"train.out_dir={out}")
    assert "resumed from" in proc.stdout and "at epoch 1, step 3" in proc.stdout
    digest, state = _last(out)
    assert _rank_digest(proc.stdout) == digest
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 2, 0)
    assert state["scheduler"]["last_epoch"] == 4
