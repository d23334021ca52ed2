"""The pascal_panoptic_parts layout: a tiny folder in PASCAL-Panoptic-Parts' own layout (uid TIFFs written as PPP
writes them, uids encoded by the package's encode_ids), its node counts through hiertree-stats against answers by
hand, one training step, the built-in map against the package's dataset spec, and the error without the package."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiertree.cli.stats import main as stats_main
from hiertree.data import DataError, build_datasets, pad_collate
from hiertree.data.layouts import pascal_panoptic_parts as ppp_layout
from hiertree.data.layouts.pairs import builtin_label_map
from hiertree.losses import HierarchicalLoss
from hiertree.models import HierSegModel
from hiertree.tree.taxonomy import Taxonomy

TAX = Taxonomy.builtin("pascal_part")
H, W, STRIPE = 24, 32, 4  # eight 24x4 column stripes per image, one uid each
PX = H * STRIPE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pp():
    """The panoptic_parts package's tools, or a skip saying why."""
    try:
        return ppp_layout.panoptic_parts_tools()
    except DataError as err:
        pytest.skip(f"panoptic_parts not installed (the test extra installs it): {err}")


def _uids(pp, stripes) -> np.ndarray:
    """A label: stripe k holds uid encode_ids(scene class, instance, part) of ``stripes[k]`` (names from PPP's spec,
    a part as an int: the part id as a file holds it; instance or part None: -1, a semantic-only or semantic-instance
    uid)."""
    spec = pp.spec
    sids, iids, pids = (np.zeros((H, W), np.int32) for _ in range(3))
    for k, (scene, iid, part) in enumerate(stripes):
        cols = slice(STRIPE * k, STRIPE * (k + 1))
        sids[:, cols] = spec.sid_from_scene_class(scene) if scene else 0
        iids[:, cols] = -1 if iid is None else iid
        pids[:, cols] = -1 if part is None else part if isinstance(part, int) else \
            spec.part_classes_from_scene_class(scene).index(part)
    return pp.encode_ids(sids, iids, pids)


#: split -> id -> stripes (scene class, instance id, part) and the node each stripe lands at (by hand)
PERSON = "person"
SAMPLES = {
    "training": {
        "2008_000001": [(PERSON, 1, "head"), (PERSON, 1, "lhand"), (PERSON, 1, "llarm"), (PERSON, 1, "neck"),
                        (PERSON, 1, None), (PERSON, 1, "UNLABELED"), ("dog", 1, "head"), (None, None, None)],
        "2008_000002": [(PERSON, None, None), (PERSON, 2, "luarm"), (PERSON, 2, "lfoot"), (PERSON, 2, "luleg"),
                        (PERSON, 2, "torso"), (PERSON, 2, "hair"), ("aeroplane", 1, 7), ("sky", None, None)],
    },
    "validation": {"2009_000003": [(PERSON, 1, "rhand")] + [("sky", None, None)] * 7},
}
#: train pixels per node: head (head, hair), low_hand (lhand, llarm), torso (neck, torso), body (a person's instance
#: without part, a part-void uid, a semantic-only person), one stripe each of up_hand, low_leg, up_leg; background:
#: a dog's head, an aeroplane's second engine (file part id 7, which PPP's spec folds into engine, 6), sky; ignored:
#: unlabeled
TRAIN_NODES = {"head": 2 * PX, "low_hand": 2 * PX, "torso": 2 * PX, "body": 3 * PX, "up_hand": PX, "low_leg": PX,
               "up_leg": PX, "background": 3 * PX}


def _ppp(pp, root: Path) -> Path:
    """The PPP folder (labels/<split>/<id>.tif, 32-bit TIFFs with LZW as PPP saves them) with VOC's JPEGImages/."""
    for split, samples in SAMPLES.items():
        for sid, stripes in samples.items():
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "JPEGImages").mkdir(exist_ok=True)
            Image.fromarray(_uids(pp, stripes)).save(root / "labels" / split / f"{sid}.tif", format="TIFF",
                                                     compression="tiff_lzw")
            Image.fromarray(np.full((H, W, 3), 40 * len(sid) % 255, np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
    return root


def test_tiff_round_trip_and_the_packages_decoder(pp, tmp_path):
    root = _ppp(pp, tmp_path / "ppp")
    uids = ppp_layout.read_uids(root / "labels" / "training" / "2008_000001.tif")
    assert uids.dtype == np.int32 and uids[0, 0] == 15_001_01 and uids[0, 4 * STRIPE] == 15_001  # person 15, head 1
    sid_pid = ppp_layout.decode_sid_pid(uids, Path("x.tif"))
    assert [int(v) for v in sid_pid[0, ::STRIPE]] == [1501, 1515, 1513, 1512, 15, 15, 1201, 0]
    engine = ppp_layout.decode_sid_pid(ppp_layout.read_uids(root / "labels/training/2008_000002.tif"), Path("y"))
    assert int(engine[0, 6 * STRIPE]) == 106  # aeroplane engine: file pid 7 (a countable instance) folds to pid 6
    with pytest.raises(DataError, match=r"bad.tif: not a PASCAL-Panoptic-Parts label \(Some uids have length of 3"):
        ppp_layout.decode_sid_pid(np.full((2, 2), 123, np.int32), Path("bad.tif"))


def test_node_counts_by_hand_and_the_stats_command(pp, tmp_path, capsys):
    root = _ppp(pp, tmp_path / "ppp")
    train_ds, val_ds = build_datasets({"kind": "pascal_panoptic_parts", "root": str(root)}, TAX)
    assert (len(train_ds), len(val_ds)) == (2, 1)
    out = tmp_path / "s.json"
    assert stats_main(["--config", "pascal_panoptic_parts", f"data.root={root}", "--json", str(out)]) == 0
    assert "2 images, 1536 pixels" in capsys.readouterr().out
    nodes = json.loads(out.read_text())["nodes"]
    assert {name: v["pixels"] for name, v in nodes.items() if v["pixels"]} == TRAIN_NODES  # the unlabeled stripe: ignored
    assert nodes["body"]["images"] == 2 and nodes["up_leg"]["images"] == 1
    sample = val_ds[0]
    assert tuple(sample["image"].shape) == (3, H, W) and int(sample["mask"][0, 0]) == TAX.node_id("low_hand")


def test_one_training_step(pp, tmp_path):
    torch.manual_seed(0)
    model = HierSegModel(TAX, encoder_weights=None, decoder_channels=16, skip_channels=8)
    loss_fn = HierarchicalLoss(TAX)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_ds, _ = build_datasets({"kind": "pascal_panoptic_parts", "root": str(_ppp(pp, tmp_path / "ppp")),
                                  "crop": 32}, TAX, seed=0)
    batch = pad_collate([train_ds[0], train_ds[1]], TAX.ignore_index, 32)
    loss, _ = loss_fn(model(batch["image"]), batch["mask"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_builtin_map_covers_the_packages_spec(pp):
    spec = pp.spec
    _, names, nodes = builtin_label_map("pascal_panoptic_parts")
    assert sorted(names) == sorted(spec.sid_pid2scene_class_part_class)  # every sid_pid PPP defines, no other
    for value, (scene, part) in spec.sid_pid2scene_class_part_class.items():
        assert names[value] == (scene if part == "UNLABELED" else f"{scene}-{part}")
    person = spec.sid_from_scene_class(PERSON)
    assert nodes[0] == "ignore" and nodes[person] == "body"
    assert {v: n for v, n in nodes.items() if v // 100 == person} == {
        person * 100 + spec.part_classes_from_scene_class(PERSON).index(part): node
        for node, parts in {"head": "head leye reye lear rear lebrow rebrow nose mouth hair", "torso": "torso neck",
                            "low_hand": "llarm lhand rlarm rhand", "up_hand": "luarm ruarm",
                            "low_leg": "llleg lfoot rlleg rfoot", "up_leg": "luleg ruleg"}.items()
        for part in parts.split()}
    others = {n for v, n in nodes.items() if v not in (0, person) and v // 100 != person}
    assert others == {"background"}


def test_missing_layout_folders_are_named(pp, tmp_path):
    root = _ppp(pp, tmp_path / "ppp")
    (root / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(DataError, match=r"2008_000002.jpg: image for id '2008_000002' not found"):
        build_datasets({"kind": "pascal_panoptic_parts", "root": str(root)}, TAX)
    with pytest.raises(DataError, match=r"split 'test': its splits are train and val"):
        build_datasets({"kind": "pascal_panoptic_parts", "root": str(root), "train_split": "test"}, TAX)
    (root / "JPEGImages").rename(root / "images")
    with pytest.raises(DataError, match=r"no PASCAL VOC 2010 images; layout pascal_panoptic_parts looks for JPEGImages"):
        build_datasets({"kind": "pascal_panoptic_parts", "root": str(root)}, TAX)


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    """Needs no package: its import is made to fail as it does where it is not installed."""
    ppp_layout.panoptic_parts_tools.cache_clear()
    for name in [m for m in sys.modules if m == "panoptic_parts" or m.startswith("panoptic_parts.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "panoptic_parts", None)  # import panoptic_parts -> ImportError
    try:
        (tmp_path / "labels").mkdir()
        with pytest.raises(DataError, match=r"decodes the PASCAL-Panoptic-Parts labels with the panoptic_parts "
                                            r"package, which is not installed .*pip install \"hiertree\[panoptic\]\""):
            build_datasets({"kind": "pascal_panoptic_parts", "root": str(tmp_path)}, TAX)
    finally:
        ppp_layout.panoptic_parts_tools.cache_clear()
