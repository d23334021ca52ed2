"""Label maps, several datasets in one run (data.sources), their bad inputs, and hiertree-stats."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from hiertree.cli.eval import main as eval_main

from hiertree.cli.stats import main as stats_main

from hiertree.config import ConfigError, load_config
from hiertree.data import DataError, EpochSampler, Mixture, MaskFolder, build_datasets, resolve_sources
from hiertree.training.engine import train
from hiertree.tree.labels import LabelMap, LabelMapError
from hiertree.training.run_state import TrainingError
from hiertree.data.stats import dataset_stats, median_frequency_weights
from hiertree.tree.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[2]
TAX = Taxonomy.builtin("pascal_part")
PERSON = {0: "background", 1: "body"}  # a person-segmentation dataset: 0 background, 1 person
SMALL = ["model.decoder_channels=16", "model.skip_channels=8", "model.encoder_weights=null", "train.progress=false",
         "train.warmup_steps=1", "train.threads=1", "train.batch_size=4", "train.epochs=1", "data.crop=48",
         "eval.batch_size=4", "train.num_workers=0", "data.synthetic.size=48"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _person_folder(root: Path, n_train: int = 6, n_val: int = 3) -> Path:
    """A person-only dataset: masks hold 0 (background) and 1 (person), as such datasets ship."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "masks").mkdir()
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for i in range(n):
            sid = f"{split}{i}"
            image = np.full((40, 50, 3), 60, np.uint8)
            mask = np.zeros((40, 50), np.uint8)
            mask[8:32, 15 + i : 30 + i] = 1
            image[mask == 1] = 210
            Image.fromarray(image).save(root / "JPEGImages" / f"{sid}.jpg")
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{sid}.png")
            ids.append(sid)
        (root / f"{split}_id.txt").write_text("\n".join(ids) + "\n")
    return root


# ---------------------------------------------------------------------- label maps
def test_label_map_by_hand():
    lm = LabelMap(TAX, {0: "background", 1: "body", 2: "upper_body", 3: "head", 4: "head", 9: "ignore"})
    mask = np.array([[0, 1, 2], [3, 4, 9], [255, 1, 0]], np.uint8)
    assert lm.apply(mask).tolist() == [[0, 7, 8], [4, 4, 255], [255, 7, 0]]
    assert lm.node_ids() == [0, 4, 7, 8]
    assert LabelMap(TAX, {"1": "body", "0": "background"}).to_config() == {0: "background", 1: "body"}
    ident = LabelMap(TAX)
    assert ident.is_identity and ident.apply(np.array([[0, 7, 9, 255]], np.uint8)).tolist() == [[0, 7, 9, 255]]


def test_label_map_errors_name_the_node_value_and_pixels():
    with pytest.raises(LabelMapError, match=r"data.labels.2: taxonomy 'pascal_part' has no node 'uper_body' "
                                            r"\(did you mean 'upper_body'\?\)"):
        LabelMap(TAX, {0: "background", 2: "uper_body"})
    with pytest.raises(LabelMapError, match=r"mask value 1 is mapped twice \('body' and 'torso'\)"):
        LabelMap(TAX, {1: "body", "1": "torso"})
    with pytest.raises(LabelMapError, match=r"key 'x' is not a mask value"):
        LabelMap(TAX, {"x": "body"})
    mask = np.zeros((4, 5), np.uint8)
    mask[0, :3] = 7
    with pytest.raises(LabelMapError, match=r"a/7.png: mask values 7 \(3 px\) are not in data.sources\[1\].labels "
                                            r"\(it maps 0, 1\); add them, e.g. '7: ignore'"):
        LabelMap(TAX, PERSON, where="data.sources[1].labels").apply(mask, where="a/7.png")
    with pytest.raises(LabelMapError, match=r"mask values 12 \(3 px\) are no node id.*map the dataset's values"):
        LabelMap(TAX).apply(mask + 5, where="b.png")


def test_config_refuses_a_value_given_twice(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  labels:\n    1: body\n    1: torso\n")
    with pytest.raises(ConfigError, match=r"duplicate key 1 at line 4 \(first at line 3\); give each key once"):
        load_config(cfg)


def test_folder_masks_pass_through_the_label_map(tmp_path):
    root = _person_folder(tmp_path / "people")
    train_ds, _ = build_datasets({"kind": "folder", "root": str(root), "labels": PERSON, "crop": 32}, TAX)
    item = train_ds.source[0]
    assert set(np.unique(item[1]).tolist()) == {0, 7}
    assert train_ds[0]["partial"]  # body: an inner node
    with pytest.raises(DataError, match=r"train0.png: mask values 1 \(360 px\) are not in data.labels"):
        build_datasets({"kind": "folder", "root": str(root), "labels": {0: "background"}}, TAX)[0].source[0]


def test_a_split_may_be_a_path_to_an_id_list(tmp_path):
    root = _person_folder(tmp_path / "people")
    lst = tmp_path / "lists" / "few.txt"
    lst.parent.mkdir()
    lst.write_text("train1\r\ntrain3\r\n")
    folder = MaskFolder(root, str(lst), TAX, labels=LabelMap(TAX, PERSON))
    assert folder.ids == ["train1", "train3"]
    with pytest.raises(DataError, match=r"missing.txt: id list not found"):
        MaskFolder(root, str(tmp_path / "missing.txt"), TAX)


# ---------------------------------------------------------------------- sources
def _sources_cfg(root: Path, **coarse) -> dict:
    cfg = load_config(ROOT / "configs/demo.yaml", SMALL)
    cfg["data"]["sources"] = load_config(None, [
        "data.sources=[{name: parts, synthetic: {num_train: 8, num_val: 4, seed: 0}}, "
        f"{{name: people, kind: folder, root: '{root}', labels: {{0: background, 1: body}}, weight: 3}}]"
    ])["data"]["sources"]
    cfg["data"]["sources"][1].update(coarse)
    return cfg


def test_sources_resolve_inherit_and_mix_by_weight(tmp_path):
    cfg = _sources_cfg(_person_folder(tmp_path / "people"))
    parts, people = resolve_sources(cfg["data"], TAX)
    assert (parts.kind, parts.weight, parts.labels.is_identity, parts.synthetic["num_train"]) == ("synthetic", 1.0, True, 8)
    assert parts.synthetic["roles"]["head"] == "head"  # inherited from data.synthetic
    assert (people.kind, people.train_split, people.weight, people.labels.to_config()) == ("folder", "train", 3.0, PERSON)
    train_ds, val_ds = build_datasets(cfg["data"], TAX)
    mix = train_ds.source
    assert isinstance(mix, Mixture) and len(mix) == 14 and mix.names == ["parts", "people"]
    assert mix[8][2] == "people/train0" and mix[0][2] == "parts/0"
    w = mix.sample_weights()
    assert w[:8] == [pytest.approx(0.25 / 8)] * 8 and w[8:] == [pytest.approx(0.75 / 6)] * 6
    drawn = list(EpochSampler(len(mix), 2, seed=0, weights=w))
    from_people = sum(1 for i in drawn if i % len(mix) >= 8)
    assert 0.5 < from_people / len(drawn) < 1.0  # 3 of every 4 draws on average; 14 draws
    assert drawn == list(EpochSampler(len(mix), 2, seed=0, weights=w))  # seeded: a resume draws the same
    assert len(val_ds) == 4 + 3


def test_sources_bad_inputs(tmp_path):
    root = _person_folder(tmp_path / "people")
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].weight' must be float > 0.*got float 0.0"):
        load_config(None, ["data.sources=[{weight: 0}]"])
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].weight' must be float > 0.*got str 'heavy'"):
        load_config(None, ["data.sources=[{weight: heavy}]"])
    with pytest.raises(ConfigError, match=r"unknown key 'data.sources\[1\].lables' \(did you mean 'labels'\?\)"):
        load_config(None, ["data.sources=[{name: a}, {lables: {0: background}}]"])
    with pytest.raises(DataError, match=r"data.sources\[1\].labels.1: taxonomy 'pascal_part' has no node 'bdy' "
                                        r"\(did you mean 'body'\?\)"):
        build_datasets(_sources_cfg(root, labels={0: "background", 1: "bdy"})["data"], TAX)
    (root / "empty_id.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty_id.txt: split list is empty"):
        build_datasets(_sources_cfg(root, train_split="empty")["data"], TAX)
    cfg = _sources_cfg(root)
    cfg["data"]["sources"][1].update(kind="synthetic", synthetic={"seed": 1})
    with pytest.raises(DataError, match=r"source 'people' \(train, seed 1\) would draw the same synthetic images as "
                                        r"source 'parts' \(val\)"):
        build_datasets(cfg["data"], TAX)


def test_two_sources_train_and_are_scored_each_at_their_own_depth(tmp_path, capsys):
    root = _person_folder(tmp_path / "people")
    cfg = _sources_cfg(root)
    cfg["train"]["out_dir"] = str(tmp_path / "run")
    cfg["loss"]["tree_min_weight"] = 0.1
    result = train(cfg)
    assert result["steps"] == 3  # 14 samples, batch 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    people, parts = metrics["sources"]["people"]["tree"], metrics["sources"]["parts"]["tree"]
    assert [lv["pixels"] for lv in people["levels"]][0] == 3 * 40 * 50
    assert people["levels"][1]["pixels"] < 3 * 40 * 50  # the person pixels stop at L0
    assert people["levels"][2]["unlabelled_classes"] == ["low_hand", "torso", "low_leg", "head", "up_leg", "up_hand"]
    assert people["levels"][2]["iou"]["torso"] is None and parts["levels"][2]["unlabelled_classes"] == []
    combined = metrics["tree"]["levels"]
    assert combined[0]["pixels"] == people["levels"][0]["pixels"] + parts["levels"][0]["pixels"]
    # eval.py on the same checkpoint scores every source on its own too, as training did (it used to print only
    # the combined table), and writes them
    out = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", str(tmp_path / "run" / "last"), "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "source people (pixels scored: L0 6000" in printed and "source parts (" in printed and "all sources:" in printed
    evaluated = json.loads(out.read_text())
    assert evaluated["sources"]["people"]["tree"] == metrics["sources"]["people"]["tree"]
    assert evaluated["tree"] == metrics["tree"]
    saved = yaml.safe_load((tmp_path / "run" / "last" / "config.yaml").read_text())
    assert [s["name"] for s in saved["data"]["sources"]] == ["parts", "people"]  # the checkpoint records its sources
    assert saved["data"]["sources"][1]["labels"] == PERSON
    # resuming under another label map is refused, naming the source
    cfg["train"]["resume"] = "auto"
    cfg["data"]["sources"][1]["labels"] = {0: "background", 1: "upper_body"}
    with pytest.raises(TrainingError, match=r"source 'people': checkpoint labels \{0: 'background', 1: 'body'\}, "
                                            r"config \{0: 'background', 1: 'upper_body'\}"):
        train(cfg)


# ---------------------------------------------------------------------- statistics
def test_stats_by_hand(tmp_path):
    root = _person_folder(tmp_path / "people", n_train=2, n_val=1)
    train_ds, _ = build_datasets({"kind": "folder", "root": str(root), "labels": PERSON}, TAX)
    stats = dataset_stats(train_ds, TAX)
    # each image 40x50 = 2000 px with a 24x15 = 360 px person
    assert stats["images"] == 2 and stats["pixels"] == 4000 and stats["ignored_share"] == 0.0
    assert stats["nodes"]["body"] == {"pixels": 720, "images": 2} and stats["nodes"]["torso"]["pixels"] == 0
    assert stats["labelled_to_level_share"] == {"L0": 0.18, "L1": 0.0, "L2": 0.82}  # background is a leaf
    l0, l1 = stats["levels"][0], stats["levels"][1]
    assert l0["classes"]["body"]["pixels"] == 720 and l0["pixels_scored"] == 4000
    assert l1["pixels_scored"] == 3280 and l1["pixels_partial"] == 720
    # median frequency at L0: freq background .82, body .18, median .5 -> .5/.82, .5/.18
    w = median_frequency_weights(stats)
    assert w[0] == [pytest.approx(0.5 / 0.82, abs=1e-5), pytest.approx(0.5 / 0.18, abs=1e-5)]
    assert w[1] == [1.0, 1.0, 1.0]  # only background is present at L1: its own median


def test_stats_cli_writes_text_json_and_plot(tmp_path, capsys):
    root = _person_folder(tmp_path / "people", n_train=2, n_val=1)
    out = tmp_path / "s.json"
    code = stats_main(["--data", str(root), "data.labels={0: background, 1: body}", "--json", str(out),
                       "--plot", str(tmp_path / "s.png")])
    text = capsys.readouterr().out
    assert code == 0 and "2 images, 4000 pixels" in text and "labelled down to: L0  18.0 %" in text
    assert json.loads(out.read_text())["class_weights"][0][1] == pytest.approx(0.5 / 0.18, abs=1e-5)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "s.png").stat().st_size > 1000
    both = tmp_path / "both.json"
    assert stats_main(["--data", str(root), "data.labels={0: background, 1: body}", "--split", "both", "--json",
                       str(both)]) == 0
    written = json.loads(both.read_text())
    assert written["class_weights"] == written["splits"]["train"]["class_weights"]  # what loss.class_weights: auto uses
    assert written["class_weights"][0][1] == pytest.approx(0.5 / 0.18, abs=1e-5)
    assert len(written["splits"]["val"]["class_weights"]) == 3
    assert stats_main(["--data", str(root), "--max-images", "0"]) == 2
    assert "--max-images must be at least 1" in capsys.readouterr().err


def test_moving_shares_go_from_weight_start_to_weight_by_hand():
    mix = Mixture([("a", list(range(4)), 0.0), ("b", list(range(4)), 1.0)], weights_start=[1.0, 0.0])
    assert mix.sample_weights(start=True) == [0.25] * 4 + [0.0] * 4 and mix.sample_weights() == [0.0] * 4 + [0.25] * 4
    sampler = EpochSampler(8, 2, seed=0, weights=mix.sample_weights(), weights_start=mix.sample_weights(start=True),
                           epochs=2)
    steps = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        drawn = [v % 8 for v in sampler]
        steps += [drawn[i:i + 2] for i in range(0, 8, 2)]
    assert len(steps) == 8
    assert all(i < 4 for i in steps[0]) and all(i >= 4 for i in steps[7])  # step 0: all a; the last step: all b
    from_b = sum(i >= 4 for step in steps for i in step)
    assert 2 <= from_b <= 14  # the blend in between draws from both
    sampler.set_epoch(1, skip_batches=2)  # a mid-epoch resume draws the rest of the same epoch
    assert [v % 8 for v in sampler] == [i for step in steps[6:] for i in step]
    with pytest.raises(DataError, match="weights_start needs weights"):
        EpochSampler(8, 2, seed=0, weights_start=[0.125] * 8)


def test_weight_start_bad_inputs(tmp_path):
    root = _person_folder(tmp_path / "people")
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].weight_start' must be .*>= 0.*got float -1.0"):
        load_config(None, ["data.sources=[{weight_start: -1.0}]"])
    cfg = _sources_cfg(root, weight_start=0.0)
    cfg["data"]["sources"][0]["weight_start"] = 0.0
    with pytest.raises(DataError, match=r"every source's weight_start is 0, so the first step has nothing to draw"):
        build_datasets(cfg["data"], TAX)
    cfg["data"]["sources"][0]["weight_start"] = 2.0  # parts first, people (weight 3) later
    train_ds, _ = build_datasets(cfg["data"], TAX)
    assert train_ds.source.weights_start == [2.0, 0.0] and train_ds.source.weights == [1.0, 3.0]


def test_partial_labels_benchmark_arms_carry_the_share_schedule():
    from benchmarks.partial_labels import _synthetic_arms

    base = load_config(ROOT / "configs/demo.yaml", [])
    arms = _synthetic_arms(base, 0.2, n_leaf=30, leaf_share_start=1.0)
    b = arms["b_leaf10_coarse90"][0]["data"]["sources"]
    assert [(s["name"], s["weight"], s["weight_start"]) for s in b] == [
        ("leaf10", 0.2, 1.0), ("to_L0", pytest.approx(0.4), 0.0), ("to_L1", pytest.approx(0.4), 0.0)]
    assert all(s["weight_start"] is None for s in arms["c_leaf100"][0]["data"]["sources"])
    mix = build_datasets(arms["b_leaf10_coarse90"][0]["data"], TAX)[0].source
    assert mix.sample_weights(start=True)[:30] == [pytest.approx(1 / 30)] * 30 and sum(mix.sample_weights()[:30]) == pytest.approx(0.2)


def test_an_unknown_dataset_layout_names_the_key_and_the_registered_ones(pascal):
    from hiertree.data import LAYOUTS

    assert LAYOUTS.names()[:2] == ["folder", "synthetic"]
    with pytest.raises(DataError, match=r"config key data.kind: unknown dataset layout 'folders' \(did you mean "
                                        r"'folder'\?\); choose from folder, synthetic, atr, lip, cihp, mhp_v2, pascal_person_part, "
                                        r"pascal_panoptic_parts"):
        build_datasets({"kind": "folders", "root": "x"}, pascal)
