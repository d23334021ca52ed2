"""Shipped models: a checkpoint published as fp16 weights loads by name and predicts as the float32 one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from hiertree import checkpoint as ckpt
from hiertree.checkpoint import CheckpointError, save_checkpoint
from hiertree.config import load_config
from hiertree.models import HierSegModel, load_model
from hiertree.cli.publish import main, publish
from hiertree.tree.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.decoder_channels=16", "model.skip_channels=8", "model.encoder_weights=null"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tax = Taxonomy.load("pascal_part")
    cfg = load_config(ROOT / "configs/demo.yaml", SMALL)
    torch.manual_seed(0)
    model = HierSegModel.from_config(tax, cfg["model"]).eval()
    with torch.no_grad():  # BatchNorm statistics as a trained model has them, not the init's 0/1
        model(torch.randint(0, 256, (2, 3, 64, 64)).float())
    run = tmp_path_factory.mktemp("run") / "run"
    save_checkpoint(run, "ckpt-0000001", model, cfg, tax, links=("last", "best"), model_card="# card\n")
    return run


def test_published_weights_are_fp16_and_predict_like_fp32(run, tmp_path):
    out = publish(run, tmp_path / "shipped")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors", "taxonomy.yaml"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    full, _ = load_model(run)
    half, ck = load_model(out)
    assert ck["config"]["model"]["encoder_weights"] is None
    card = ModelCard.load(out / "README.md")  # the checkpoint's card under the front matter the Hub reads
    assert card.text.strip() == "# card" and card.data.library_name == "hiertree"
    assert card.data.pipeline_tag == "image-segmentation" and card.data.model_name == "shipped"
    assert next(half.parameters()).dtype == torch.float32  # loaded into a float32 model
    x = torch.randint(0, 256, (1, 3, 96, 80)).float()
    with torch.no_grad():
        a, b = full.predict(x), half.predict(x)
    same = [float((p == q).float().mean()) for p, q in zip(a["levels"], b["levels"])]
    assert min(same) > 0.99, same


def test_a_shipped_model_loads_by_name(run, tmp_path, monkeypatch):
    publish(run, tmp_path / "models" / "tiny_people")
    monkeypatch.setattr(ckpt, "_shipped_root", lambda: tmp_path / "models")
    assert ckpt.shipped_models() == ["tiny_people"]
    model = HierSegModel.from_pretrained("tiny_people")
    assert [h.out_channels for h in model.heads] == [2, 3, 7]
    with pytest.raises(CheckpointError, match=r"'tiny_peple' does not exist \(nor is it a shipped model: tiny_people\)"):
        load_model("tiny_peple")


def test_publish_refuses_a_non_empty_folder_in_one_line(run, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    assert main(["--checkpoint", str(run), "--out", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertree-publish: error:") and "not empty" in err and "\n" not in err
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
