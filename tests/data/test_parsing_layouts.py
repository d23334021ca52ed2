"""Human-parsing layouts (lip, cihp, atr, pascal_person_part, mhp_v2): tiny folders written in each dataset's own
layout, their node counts through hiertree-stats against answers by hand, one training step per layout, and a
Pascal-folder + LIP-layout run scored per source."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiertree.cli.stats import main as stats_main
from hiertree.config import load_config
from hiertree.data import DataError, build_datasets, drop_bad_samples, pad_collate
from hiertree.data.layouts.atr import atr_is_val
from hiertree.data.layouts.pairs import builtin_label_map
from hiertree.data.stats import dataset_stats
from hiertree.losses import HierarchicalLoss
from hiertree.models import HierSegModel
from hiertree.training.engine import train
from hiertree.tree.taxonomy import Taxonomy

TAX = Taxonomy.builtin("pascal_part")
H, W, STRIPE = 24, 32, 4  # each listed value fills a 24x4 column stripe (96 px); the rest of the mask is 0
PX = H * STRIPE
SMALL = ["model.decoder_channels=16", "model.skip_channels=8", "model.encoder_weights=null", "train.progress=false",
         "train.warmup_steps=1", "train.threads=1", "train.batch_size=4", "train.epochs=1", "data.crop=32",
         "eval.batch_size=4", "train.num_workers=0", "train.device=cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _mask(values) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    for k, v in enumerate(values):
        mask[:, STRIPE * k: STRIPE * (k + 1)] = v
    return mask


def _write(image_path: Path, mask_path: Path, values, color: bool = False) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    mask = _mask(values)
    Image.fromarray(np.dstack([mask * 10] * 3)).save(image_path)
    Image.fromarray(np.dstack([mask] * 3) if color else mask).save(mask_path)


def _lip(root: Path) -> Path:
    """Train: 2 images (hair, face, left-arm, right-arm, dress; pants, right-shoe); val: 1 (hat, glove, left-arm)."""
    for split, samples in {"train": {"a1": [2, 13, 14, 15, 6], "a2": [9, 19]}, "val": {"b1": [1, 3, 14]}}.items():
        for sid, values in samples.items():
            _write(root / f"{split}_images/{sid}.jpg", root / f"{split}_segmentations/{sid}.png", values)
        (root / f"{split}_id.txt").write_text("\n".join(samples) + "\n")
    return root


def _cihp(root: Path) -> Path:
    """Train: 1 image (torso-skin: CIHP's value 10, LIP's jumpsuits; upper-clothes); val: 1 (socks)."""
    for split, top, samples in (("train", "Training", {"c1": [10, 5]}), ("val", "Validation", {"c2": [8]})):
        for sid, values in samples.items():
            _write(root / top / "Images" / f"{sid}.jpg", root / top / "Category_ids" / f"{sid}.png", values)
        (root / top / f"{split}_id.txt").write_text("\n".join(samples) + "\n")
    return root


def _atr_ids() -> tuple[list[str], list[str]]:
    ids = [f"img{i}" for i in range(30)]
    return [s for s in ids if not atr_is_val(s)], [s for s in ids if atr_is_val(s)]


def _atr(root: Path) -> Path:
    """30 images, each belt, bag (ignored), left-arm: the split cut by the MD5 of the id."""
    for sid in [*_atr_ids()[0], *_atr_ids()[1]]:
        _write(root / "JPEGImages" / f"{sid}.jpg", root / "SegmentationClassAug" / f"{sid}.png", [8, 16, 14])
    return root


def _ppp(root: Path) -> Path:
    """Train listed as the original archive's path pairs: 2 images (head, lower arms, upper legs); val by id: 1."""
    lists = root / "pascal_person_part_trainval_list"
    lists.mkdir(parents=True)
    for sid in ("2008_000001", "2008_000002", "2008_000003"):
        _write(root / "JPEGImages" / f"{sid}.jpg", root / "SegmentationPart" / f"{sid}.png", [1, 4, 5])
    (lists / "train.txt").write_text("".join(f"/JPEGImages/{s}.jpg /SegmentationPart/{s}.png\n"
                                             for s in ("2008_000001", "2008_000002")))
    (lists / "val_id.txt").write_text("2008_000003\n")
    return root


def _mhp(root: Path) -> Path:
    """Train: image m1 with two people, merged: face and left-hand; a backpack (ignored) saved as a 3-channel PNG;
    val: m2, one person (dress)."""
    (root / "list").mkdir(parents=True)
    for split, samples in {"train": {"m1": [[3, 7], [0, 0, 40]]}, "val": {"m2": [[35]]}}.items():
        for sid, people in samples.items():
            for m, values in enumerate(people, start=1):
                _write(root / split / "images" / f"{sid}.jpg",
                       root / split / "parsing_annos" / f"{sid}_{len(people):02d}_{m:02d}.png", values, color=m == 2)
        (root / "list" / f"{split}.txt").write_text("\n".join(samples) + "\n")
    return root


#: layout -> (writer, train images, val images, train pixels per node by hand)
CASES = {
    "lip": (_lip, 2, 1, {"head": 2 * PX, "upper_body": 2 * PX, "body": PX, "lower_body": PX, "low_leg": PX}),
    "cihp": (_cihp, 1, 1, {"torso": PX, "upper_body": PX}),
    "atr": (_atr, len(_atr_ids()[0]), len(_atr_ids()[1]), {"torso": len(_atr_ids()[0]) * PX,
                                                           "upper_body": len(_atr_ids()[0]) * PX}),
    "pascal_person_part": (_ppp, 2, 1, {"head": 2 * PX, "low_hand": 2 * PX, "up_leg": 2 * PX}),
    "mhp_v2": (_mhp, 1, 1, {"head": PX, "low_hand": PX}),
}
IGNORED = {"atr": len(_atr_ids()[0]) * PX, "mhp_v2": PX}  # ATR's bag; MHP's backpack


def test_atr_split_is_the_md5_cut_by_hand():
    assert atr_is_val("img0") == (int(hashlib.md5(b"img0").hexdigest()[:8], 16) % 10 == 0)
    train_ids, val_ids = _atr_ids()
    assert 0 < len(val_ids) < len(train_ids)


def test_mhp_v2_map_covers_its_58_values():
    _, MHP_V2_VALUES, MHP_V2_LABELS = builtin_label_map("mhp_v2")
    assert len(MHP_V2_VALUES) == 59 and set(MHP_V2_LABELS) == set(MHP_V2_VALUES)
    assert MHP_V2_LABELS[40] == "ignore" and MHP_V2_LABELS[35] == "body" and MHP_V2_LABELS[16] == "torso"


@pytest.mark.parametrize("kind", sorted(CASES))
def test_layout_node_counts_by_hand(kind, tmp_path):
    writer, n_train, n_val, nodes = CASES[kind]
    root = writer(tmp_path / kind)
    train_ds, val_ds = build_datasets({"kind": kind, "root": str(root)}, TAX)
    assert (len(train_ds), len(val_ds)) == (n_train, n_val)
    stats = dataset_stats(train_ds, TAX)
    counted = {name: v["pixels"] for name, v in stats["nodes"].items() if v["pixels"] and name != "background"}
    assert counted == nodes
    ignored = IGNORED.get(kind, 0)
    assert stats["nodes"]["background"]["pixels"] == n_train * H * W - sum(nodes.values()) - ignored
    sample = val_ds[0]  # eval transform: native size
    assert tuple(sample["image"].shape) == (3, H, W) and tuple(sample["mask"].shape) == (H, W)


def test_stats_command_on_a_preset(tmp_path, capsys):
    root = _lip(tmp_path / "lip")
    out = tmp_path / "s.json"
    assert stats_main(["--config", "lip", f"data.root={root}", "--json", str(out)]) == 0
    assert "2 images, 1536 pixels" in capsys.readouterr().out
    nodes = json.loads(out.read_text())["nodes"]
    assert nodes["upper_body"] == {"pixels": 2 * PX, "images": 1} and nodes["low_leg"] == {"pixels": PX, "images": 1}


def test_bad_layouts_say_what_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"data.root' is missing: set it to the lip folder"):
        build_datasets({"kind": "lip"}, TAX)
    root = _lip(tmp_path / "lip")
    (root / "train_segmentations" / "a2.png").unlink()
    with pytest.raises(DataError, match=r"a2.png: mask for id 'a2' not found; listed in .*train_id.txt"):
        build_datasets({"kind": "lip", "root": str(root)}, TAX)
    train_ds, _ = build_datasets({"kind": "lip", "root": str(root), "skip_bad": True}, TAX)
    assert len(train_ds) == 1
    Image.fromarray(_mask([9])).save(root / "train_segmentations" / "a2.png")
    Image.fromarray(np.full((H, W), 42, np.uint8)).save(root / "train_segmentations" / "a1.png")
    with pytest.raises(DataError, match=r"a1.png: mask values 42 \(768 px\) are not in layout lip's built-in label map"):
        build_datasets({"kind": "lip", "root": str(root)}, TAX)[0][0]
    train_ds, _ = build_datasets({"kind": "lip", "root": str(root), "skip_bad": True}, TAX)
    bad = drop_bad_samples(train_ds)
    assert [b["id"] for b in bad] == ["a1"] and len(train_ds) == 1 and train_ds[0]["id"] == "a2"
    with pytest.raises(DataError, match=r"lip/JPEGImages: folder not found; layout pascal_person_part expects it"):
        build_datasets({"kind": "pascal_person_part", "root": str(root)}, TAX)
    ppp = _ppp(tmp_path / "ppp")
    (ppp / "pascal_person_part_trainval_list" / "train.txt").unlink()
    with pytest.raises(DataError, match=r"no list of Pascal-Person-Part split 'train'; looked for "
                                        r"pascal_person_part_trainval_list/train_id.txt"):
        build_datasets({"kind": "pascal_person_part", "root": str(ppp)}, TAX)
    with pytest.raises(DataError, match=r"ATR split 'test': no test_id.txt"):
        build_datasets({"kind": "atr", "root": str(_atr(tmp_path / "atr")), "train_split": "test"}, TAX)


def test_one_training_step_per_layout(tmp_path):
    torch.manual_seed(0)
    model = HierSegModel(TAX, encoder_weights=None, decoder_channels=16, skip_channels=8)
    loss_fn = HierarchicalLoss(TAX)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for kind, (writer, *_rest) in sorted(CASES.items()):
        train_ds, _ = build_datasets({"kind": kind, "root": str(writer(tmp_path / kind)), "crop": 32}, TAX, seed=0)
        batch = pad_collate([train_ds[0], train_ds[len(train_ds) - 1]], TAX.ignore_index, 32)
        loss, _ = loss_fn(model(batch["image"]), batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss), kind


def test_pascal_folder_and_lip_layout_train_together_and_are_scored_per_source(tmp_path):
    lip = _lip(tmp_path / "lip")
    parts = _ppp(tmp_path / "parts")  # as a Pascal-Part folder: JPEGImages/, masks/ (values 1, 4, 5: node ids), lists
    (parts / "masks").mkdir()
    for png in (parts / "SegmentationPart").iterdir():
        (parts / "masks" / png.name).write_bytes(png.read_bytes())
    (parts / "train_id.txt").write_text("2008_000001\n2008_000002\n")
    (parts / "val_id.txt").write_text("2008_000003\n")
    cfg = load_config("pascal_part_lip", [*SMALL, f"train.out_dir={tmp_path / 'run'}"])
    cfg["data"]["sources"][0]["root"], cfg["data"]["sources"][1]["root"] = str(parts), str(lip)
    result = train(cfg)
    assert result["steps"] == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert sorted(metrics["sources"]) == ["lip", "pascal_part"]
    lip_levels = metrics["sources"]["lip"]["tree"]["levels"]
    assert lip_levels[1]["pixels"] == H * W and lip_levels[2]["pixels"] == H * W - PX  # its arm stops at upper_body
    assert metrics["sources"]["pascal_part"]["tree"]["levels"][2]["pixels"] == H * W
