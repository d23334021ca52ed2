"""Hub conventions: save_pretrained / from_pretrained in the Hugging Face Hub layout, a card the Hub parses, repo ids
loaded from the local Hub cache offline, and the earlier checkpoint layout still loading."""

import json
import shutil

import numpy as np
import pytest
import torch
import huggingface_hub
from huggingface_hub import ModelCard

from hiertree import HierSegModel
from hiertree.checkpoint import CheckpointError
from hiertree.models.hub import is_repo_id
from tests.tiny import save_tiny, tiny_model

METRICS = {"split": "val", "tree": {"levels": [
    {"level": 0, "classes": ["background", "body"], "mIoU": 0.81, "mIoU_with_background": 0.88},
    {"level": 1, "classes": ["background", "upper_body", "lower_body"], "mIoU": 0.67, "mIoU_with_background": 0.76},
    {"level": 2, "classes": ["background", "low_hand", "torso", "low_leg", "head", "up_leg", "up_hand"], "mIoU": 0.53,
     "mIoU_with_background": 0.59}]}}


def _image(seed=0, size=(40, 52)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pascal):
    model = tiny_model(pascal)
    folder = model.save_pretrained(tmp_path_factory.mktemp("hub") / "model", metrics=METRICS, datasets=["pascal-part"],
                                   license="apache-2.0", tags=["people"])
    return model, folder


def test_save_pretrained_writes_the_hub_layout(saved):
    _, folder = saved
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md", "metrics.json"}
    config = json.loads((folder / "config.json").read_text())
    assert config["library_name"] == "hiertree"
    assert config["model"]["decoder_channels"] == 16 and config["model"]["encoder_weights"] is None
    assert config["taxonomy"]["name"] == "pascal_part"


def test_round_trip_gives_identical_predictions(saved):
    model, folder = saved
    loaded = HierSegModel.from_pretrained(folder)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    image = _image()
    ours, theirs = model.predict(image, backend="torch"), loaded.predict(image, backend="torch")
    for a, b in zip(ours["levels"], theirs["levels"]):
        np.testing.assert_array_equal(a, b)
    assert loaded.taxonomy == model.taxonomy


def test_card_front_matter_reads_back_with_huggingface_hub(saved):
    _, folder = saved
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "hiertree" and data.pipeline_tag == "image-segmentation"
    assert data.license == "apache-2.0" and data.datasets == ["pascal-part"]
    assert "people" in data.tags and "hiertree" in data.tags and data.metrics == ["mean_iou"]
    values = [r.metric_value for r in data.eval_results]
    assert values == [0.81, 0.67, 0.53]
    assert all(r.task_type == "image-segmentation" and r.dataset_split == "val" for r in data.eval_results)
    assert "model-index" in (folder / "README.md").read_text()


def _fill_hub_cache(cache, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<commit>/<files>}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_repo_id_loads_from_the_local_hub_cache_offline(saved, tmp_path, monkeypatch):
    model, folder = saved
    _fill_hub_cache(tmp_path, "someone/people-parts", folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = HierSegModel.from_pretrained("someone/people-parts", cache_dir=tmp_path)
    image = _image(1)
    np.testing.assert_array_equal(model.predict(image, backend="torch")["leaf"], loaded.predict(image, backend="torch")["leaf"])


def test_repo_id_missing_from_the_cache_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE=1 only repos already in the Hub cache"):
        HierSegModel.from_pretrained("nobody/not-cached", cache_dir=tmp_path)


def test_checkpoints_of_earlier_versions_keep_loading(tmp_path, pascal):
    """A train.py checkpoint (config.yaml + taxonomy.yaml, no config.json) and the shipped model load as before."""
    model = tiny_model(pascal, seed=3)
    save_tiny(tmp_path, model, pascal)
    assert not (tmp_path / "best" / "config.json").exists()
    loaded = HierSegModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert HierSegModel.from_pretrained("pascal_part_lite0_cpu").taxonomy == pascal


def test_repo_ids_and_paths_are_told_apart(tmp_path):
    assert is_repo_id("org/name") and is_repo_id("Org-1/model.v2")
    assert not is_repo_id("runs/demo/best") and not is_repo_id("pascal_part_lite0_cpu") and not is_repo_id("/abs/path")


def test_the_shipped_card_has_the_front_matter(pascal):
    from hiertree.checkpoint import shipped_model

    card = ModelCard.load(shipped_model("pascal_part_lite0_cpu") / "README.md")
    assert card.data.library_name == "hiertree" and card.data.pipeline_tag == "image-segmentation"
    assert len(card.data.eval_results) == pascal.num_levels
