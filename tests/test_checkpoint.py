"""Checkpoint folders as users meet them: eval outputs that must survive later saves, runs copied with
``cp -rL``, and foreign or partial folders that must give one error line (exit 2), not a traceback."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiertree.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hiertree.cli.eval import main as eval_main
from hiertree.cli.train import main as train_main
from hiertree.config import load_config
from hiertree.models import HierSegModel, load_model
from hiertree.tree.taxonomy import Taxonomy
from tiny import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]
SMALL = [*TINY_RUN, "data.synthetic.num_train=8", "data.synthetic.num_val=2", "eval.batch_size=2", "train.epochs=3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(run folder template, model, cfg, taxonomy): an untrained model saved the way train.py saves it."""
    tax = Taxonomy.load("pascal_part")
    cfg = load_config(ROOT / "configs/demo.yaml", SMALL)
    torch.manual_seed(0)
    model = HierSegModel.from_config(tax, cfg["model"])
    run = tmp_path_factory.mktemp("template") / "run"
    save_checkpoint(run, "ckpt-0000001", model, cfg, tax, links=("last", "best"))
    return run, model, cfg, tax


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------- eval outputs
def test_eval_outputs_go_next_to_the_checkpoint_and_survive_the_next_save(saved, tmp_path, capsys):
    template, model, cfg, tax = saved
    run = tmp_path / "run"
    shutil.copytree(template, run, symlinks=True)
    ckpt = (run / "best").resolve()
    before = _tree(ckpt)
    report = importlib.util.find_spec("matplotlib") is not None
    extra = ["--device", "cpu", "--report-samples", "0", *([] if report else ["--no-report"])]
    assert eval_main(["--checkpoint", str(run), *extra]) == 0
    assert eval_main(["--checkpoint", str(run / "last"), *extra, "--no-report"]) == 0
    assert eval_main(["--checkpoint", str(ckpt), *extra, "--no-report"]) == 0
    assert "wrote " + str(run / "eval-val-best.json") in capsys.readouterr().out
    assert _tree(ckpt) == before  # a published checkpoint folder is never written to
    outputs = [run / "eval-val-best.json", run / "eval-val-last.json", run / f"eval-val-{ckpt.name}.json"]
    if report:
        outputs.append(run / "report-val-best" / "report.md")
    assert all(p.is_file() for p in outputs)
    assert json.loads(outputs[0].read_text())["checkpoint"] == str(ckpt)

    # training goes on: last and best move to a new folder and the old one is pruned
    save_checkpoint(run, "ckpt-0000002", model, cfg, tax, links=("last", "best"))
    assert not ckpt.exists()
    assert all(p.is_file() for p in outputs)


def test_eval_of_a_standalone_checkpoint_writes_beside_it(saved, tmp_path):
    template = saved[0]
    mine = tmp_path / "models" / "mine"
    shutil.copytree(template / "best", mine)
    before = _tree(mine)
    assert eval_main(["--checkpoint", str(mine), "--device", "cpu", "--no-report"]) == 0
    assert (tmp_path / "models" / "eval-val-mine.json").is_file() and _tree(mine) == before


def test_eval_ignores_training_only_values_that_todays_rules_refuse(saved, tmp_path):
    import yaml

    mine = tmp_path / "old"
    shutil.copytree(saved[0] / "best", mine)
    cfg = yaml.safe_load((mine / "config.yaml").read_text())
    cfg["train"].update(grad_clip=0, max_steps=0, log_every=0)  # "off" in older configs, refused for training now
    (mine / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert eval_main(["--checkpoint", str(mine), "--device", "cpu", "--no-report"]) == 0
    assert (tmp_path / "eval-val-old.json").is_file()


# ---------------------------------------------------------------------- runs copied with cp -rL
def test_run_copied_with_links_dereferenced_resumes_and_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", str(ROOT / "configs/demo.yaml"), *SMALL, f"train.out_dir={run}"]
    assert train_main([*args, "train.epochs=2", "train.max_steps=1"]) == 0  # stopped after its first epoch
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=False)  # what `cp -rL run copy` makes: last/best are real folders
    assert (copy / "last").is_dir() and not (copy / "last").is_symlink()
    assert load_checkpoint(copy)["name"] == "best"  # loading the copy works as it is

    capsys.readouterr()
    assert train_main(["--config", str(ROOT / "configs/demo.yaml"), *SMALL, f"train.out_dir={copy}",
                       "train.epochs=2", "train.resume=auto"]) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.out and "cp -rL" in captured.err
    assert (copy / "last").is_symlink() and (copy / "best").is_symlink()
    state = torch.load(copy / "last" / "train_state.pt", weights_only=False)
    assert state["step"] == 2 and state["epoch"] == 2  # one more epoch of one step
    assert not [p.name for p in copy.iterdir() if p.name.startswith(".")]  # no .last.tmp, no .partial
    linked = {(copy / "last").resolve(), (copy / "best").resolve()}
    assert {p for p in copy.iterdir() if p.name.startswith("ckpt-")} == linked  # the copies' spares pruned
    assert eval_main(["--checkpoint", str(copy), "--device", "cpu", "--no-report"]) == 0


def test_a_foreign_folder_named_last_is_refused_before_anything_is_written(saved, tmp_path):
    template, model, cfg, tax = saved
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "last" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"last is a folder that holds no checkpoint.*move it out"):
        save_checkpoint(run, "ckpt-0000001", model, cfg, tax)
    assert _tree(run) == ["last", "last/notes.txt"]


# ---------------------------------------------------------------------- foreign or partial folders
def _damage(folder: Path, how: str) -> str:
    """Break a copied checkpoint folder; returns the file the error must name."""
    config = folder / "config.yaml"
    if how == "no_model_key":
        config.write_text("train: {epochs: 1}\n")
    elif how == "config_is_a_list":
        config.write_text("- 1\n- 2\n")
    elif how == "other_shapes":
        config.write_text(config.read_text().replace("decoder_channels: 16", "decoder_channels: 32"))
        return "model.safetensors"
    elif how == "corrupt_metrics":
        (folder / "metrics.json").write_text("{not json")
        return str(folder)
    elif how == "unknown_encoder":
        config.write_text(config.read_text().replace("encoder: tf_efficientnet_lite0", "encoder: no_such_net"))
    elif how == "unknown_model_key":
        config.write_text(config.read_text().replace("model:\n", "model:\n  bogus_option: 1\n", 1))
    return "config.yaml"


CASES = ["no_model_key", "config_is_a_list", "other_shapes", "corrupt_metrics", "unknown_encoder", "unknown_model_key"]


@pytest.mark.parametrize("how", CASES)
def test_foreign_checkpoint_is_a_checkpoint_error(saved, tmp_path, how):
    folder = tmp_path / "foreign"
    shutil.copytree(saved[0] / "best", folder)
    assert "encoder: tf_efficientnet_lite0" in (folder / "config.yaml").read_text()
    needle = _damage(folder, how)
    with pytest.raises(CheckpointError, match=r"foreign") as info:
        load_model(folder)
    assert needle in str(info.value)


@pytest.mark.parametrize("how", CASES)
def test_foreign_checkpoint_is_one_line_in_eval_predict_export(saved, tmp_path, capsys, how):
    import cv2
    import numpy as np

    from hiertree.cli import export, predict

    folder = tmp_path / "foreign"
    shutil.copytree(saved[0] / "best", folder)
    needle = _damage(folder, how)
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    commands = {
        "hiertree-eval: error: ": lambda: eval_main(["--checkpoint", str(folder), "--device", "cpu"]),
        "hiertree-predict: error: ": lambda: predict.main(["--checkpoint", str(folder), str(image), "--out",
                                                           str(tmp_path / "p"), "--device", "cpu"]),
        "hiertree-export: error: ": lambda: export.main(["--checkpoint", str(folder), "--onnx", str(tmp_path / "m.onnx")]),
    }
    for prefix, run in commands.items():
        assert run() == 2, prefix
        err = capsys.readouterr().err.strip()
        assert err.startswith(prefix) and "\n" not in err and needle in err, err


def test_foreign_checkpoint_through_eval_py_has_no_traceback(saved, tmp_path):
    folder = tmp_path / "foreign"
    shutil.copytree(saved[0] / "best", folder)
    _damage(folder, "no_model_key")
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (f"hiertree-eval: error: {folder / 'config.yaml'}: expected a mapping with a 'model:' "
                                   "section, found keys ['train']; use a checkpoint folder written by hiertree-train "
                                   "(its config.yaml describes the model)")


def test_load_model_channels_last_for_inference_same_outputs_and_default_stays_savable(saved, tmp_path):
    from safetensors.torch import save_file

    run, model, _, _ = saved
    fast, _ = load_model(run, channels_last=True)
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # depthwise [C, 1, k, k] weights are both layouts at once
    plain, _ = load_model(run)
    assert all(p.is_contiguous() for p in plain.state_dict().values())
    save_file(plain.state_dict(), str(tmp_path / "mine.safetensors"))  # a user's own save works on the default
    x = torch.randint(0, 256, (1, 3, 45, 70), dtype=torch.uint8)
    with torch.no_grad():
        for a, b, c in zip(fast(x), plain(x), model.eval()(x)):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
            assert torch.equal(b, c)
