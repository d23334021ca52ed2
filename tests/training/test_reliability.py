"""Checkpoints survive SIGKILL mid-save; SIGINT/SIGTERM save and exit cleanly; non-finite losses stop or skip."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import hiertree.training.engine as engine
from hiertree.checkpoint import load_checkpoint
from hiertree.cli.train import main as train_main
from hiertree.config import load_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
TINY = [
    "data.crop=64", "data.synthetic.size=64", "data.synthetic.num_train=16", "data.synthetic.num_val=4",
    "model.decoder_channels=16", "model.skip_channels=8", "model.encoder_weights=null", "train.batch_size=8", "train.progress=false",
    "train.warmup_steps=1", "train.threads=1", "eval.batch_size=4",
]

# Saves forever, checkpoint i holding weights all equal to i; fsyncs are slowed so a kill lands mid-save.
SAVE_LOOP = textwrap.dedent("""
    import sys, time
    import torch
    import hiertree.checkpoint as C
    from hiertree.tree.taxonomy import Taxonomy

    fsync_dir = C._fsync_dir
    def slow_fsync_dir(path):
        time.sleep(0.01)
        fsync_dir(path)
    C._fsync_dir = slow_fsync_dir
    run, i = sys.argv[1], int(sys.argv[2])
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.BatchNorm1d(256))
    tax = Taxonomy.load("pascal_part")
    while True:
        with torch.no_grad():
            for t in model.state_dict().values():
                t.fill_(i)
        links = ("last", "best") if i % 3 == 0 else ("last",)
        C.save_checkpoint(run, f"ckpt-{i:07d}", model, {"i": i}, tax, metrics={"i": i}, train_state={"i": i}, links=links)
        print(i, flush=True)
        i += 1
""")


def _complete(ck: dict) -> int:
    """The checkpoint's index, after checking every file in it belongs to that same save."""
    i = ck["config"]["i"]
    assert ck["metrics"] == {"i": i}
    assert torch.load(ck["dir"] / "train_state.pt", weights_only=False) == {"i": i}
    assert all(bool((t == i).all()) for t in ck["state_dict"].values())
    assert ck["dir"].name.startswith(f"ckpt-{i:07d}")  # "-r1" when a killed save left that name unpublished
    return i


def test_sigkill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    script, run = tmp_path / "save_loop.py", tmp_path / "run"
    script.write_text(SAVE_LOOP)
    rng = random.Random(0)
    start, interrupted = 0, 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(run), str(start)], stdout=subprocess.PIPE,
                                text=True, env=ENV)
        announced = int(proc.stdout.readline())  # at least one save of this process completed
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        announced = max([announced, *(int(x) for x in proc.stdout.read().split())])
        proc.stdout.close()
        leftovers = [p.name for p in run.iterdir() if p.name.startswith(".") or
                     (p.is_dir() and not p.is_symlink() and p.name not in {os.readlink(run / "last"), os.readlink(run / "best")})]
        interrupted += bool(leftovers)
        last = _complete(load_checkpoint(run, prefer="last"))
        assert last >= announced  # the newest announced save (or one after it) is what `last` holds
        best = _complete(load_checkpoint(run, prefer="best"))
        assert best % 3 == 0 and best <= last
        start = last + 1
    assert interrupted >= 1, "no kill landed inside a save; the test did not exercise anything"
    # the next save removes what the killed ones left behind
    from hiertree.checkpoint import save_checkpoint
    from hiertree.tree.taxonomy import Taxonomy

    save_checkpoint(run, f"ckpt-{start:07d}", torch.nn.Linear(2, 2), {"i": start}, Taxonomy.load("pascal_part"))
    names = sorted(p.name for p in run.iterdir())
    assert not [n for n in names if n.startswith(".")], names
    assert len([n for n in names if n.startswith("ckpt-")]) <= 2  # what `last` and `best` point at


@pytest.mark.parametrize("sig, group, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)])
def test_signal_saves_a_checkpoint_that_resumes(tmp_path, sig, group, code):
    """Ctrl-C (SIGINT to the whole process group, data-loader worker included) or a scheduler's SIGTERM."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config", "configs/demo.yaml", *TINY, "train.epochs=50",
           "train.num_workers=1", f"train.out_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    for line in proc.stdout:
        if "M parameters" in line:  # the banner: signal handlers are in place, training starts
            break
    time.sleep(0.5)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"got signal {int(sig)}; saving a checkpoint" in stderr and "Traceback" not in stderr
    ck = load_checkpoint(out, prefer="last")
    state = torch.load(ck["dir"] / "train_state.pt", weights_only=False)
    assert 1 <= state["step"] < 100
    resumed = engine.train(load_config(ROOT / "configs/demo.yaml", [
        *TINY, "train.epochs=50", "train.num_workers=0", f"train.out_dir={out}", "train.resume=auto",
        f"train.max_steps={state['step'] + 1}"]))
    assert resumed["steps"] == state["step"] + 1


class _NaNAt(engine.HierarchicalLoss):
    """The real loss, but non-finite at the given (1-based) calls."""

    calls = 0
    bad_calls: set[int] = set()

    def forward(self, logits, target, partial=None):
        _NaNAt.calls += 1
        loss, parts = super().forward(logits, target)
        return (loss * float("nan") if _NaNAt.calls in self.bad_calls else loss), parts


@pytest.fixture
def nan_at(monkeypatch):
    def arm(*calls: int) -> None:
        _NaNAt.calls, _NaNAt.bad_calls = 0, set(calls)
        monkeypatch.setattr(engine, "HierarchicalLoss", _NaNAt)
    return arm


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, nan_at, capsys):
    out = tmp_path / "run"
    nan_at(3)  # 2 steps per epoch: the first batch of epoch 2
    code = train_main(["--config", str(ROOT / "configs/demo.yaml"), *TINY, "train.epochs=2", "train.num_workers=0",
                       f"train.out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "non-finite loss (nan) at step 3 (epoch 2, batch 1)" in err[0]
    assert "train.max_bad_steps=0" in err[0] and "ckpt-0000002" in err[0]
    ck = load_checkpoint(out, prefer="last")
    assert ck["dir"].name == "ckpt-0000002"
    assert all(bool(torch.isfinite(t).all()) for t in ck["state_dict"].values() if t.is_floating_point())


def test_max_bad_steps_skips_that_many_then_gives_up(tmp_path, nan_at):
    nan_at(2, 3)
    result = engine.train(load_config(ROOT / "configs/demo.yaml", [
        *TINY, "train.epochs=2", "train.num_workers=0", "train.max_bad_steps=2", f"train.out_dir={tmp_path / 'ok'}"]))
    assert result["steps"] == 2  # 4 batches, 2 skipped
    state = torch.load(load_checkpoint(tmp_path / "ok", prefer="last")["dir"] / "train_state.pt", weights_only=False)
    assert state["bad_steps"] == 2 and state["epoch"] == 2

    nan_at(2, 3)
    with pytest.raises(engine.TrainingError, match=r"at step 2 \(epoch 2, batch 1\); 2 bad step\(s\) > train.max_bad_steps=1"):
        engine.train(load_config(ROOT / "configs/demo.yaml", [
            *TINY, "train.epochs=2", "train.num_workers=0", "train.max_bad_steps=1", f"train.out_dir={tmp_path / 'no'}"]))
