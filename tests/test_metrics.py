import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiertree.metrics import HierarchicalMetrics, format_table
from hiertree.tree.taxonomy import Taxonomy

TAX = Taxonomy.builtin("pascal_part")
IGN = TAX.ignore_index
# pascal_part leaves: 0 background, 1 low_hand, 2 torso, 3 low_leg, 4 head, 5 up_leg, 6 up_hand
# L1: 0 background, 1 upper_body (leaves 1, 2, 4, 6), 2 lower_body (leaves 3, 5); L0: 0 background, 1 body

TARGET = torch.tensor([[0, 1, 2], [3, 5, IGN]])
PRED = torch.tensor([[0, 3, 2], [5, 5, 0]])  # the last pixel is ignored by the target


def test_hand_computed_two_by_three():
    m = HierarchicalMetrics(TAX)
    m.update(PRED, TARGET)
    r = m.compute()
    assert r["pixels"] == 5
    assert r["consistency"] == 1.0
    l0, l1, l2 = r["levels"]

    # L2 pairs (target, pred): (0,0) (1,3) (2,2) (3,5) (5,5)
    assert l2["classes"] == TAX.classes(2)
    iou = l2["iou"]
    assert iou["background"] == 1.0  # the pred 0 on the ignored pixel is no false positive
    assert iou["low_hand"] == 0.0  # TP 0, FN 1
    assert iou["torso"] == 1.0
    assert iou["low_leg"] == 0.0  # TP 0, FN 1 (pred up_leg), FP 1 (from target low_hand)
    assert iou["up_leg"] == 0.5  # TP 1, FP 1
    assert iou["head"] is None and iou["up_hand"] is None  # absent everywhere
    assert l2["mIoU"] == pytest.approx((0 + 1 + 0 + 0.5) / 4)
    assert l2["mIoU_with_background"] == pytest.approx((1 + 0 + 1 + 0 + 0.5) / 5)
    assert l2["pixel_accuracy"] == pytest.approx(3 / 5)

    # L1 target [bg, up, up, low, low], pred [bg, low, up, low, low]
    assert l1["iou"] == pytest.approx({"background": 1.0, "upper_body": 0.5, "lower_body": 2 / 3})
    assert l1["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert l1["mIoU_with_background"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert l1["pixel_accuracy"] == pytest.approx(4 / 5)
    assert l1["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]

    # L0 is all correct
    assert l0["iou"] == {"background": 1.0, "body": 1.0}
    assert l0["mIoU"] == 1.0 and l0["pixel_accuracy"] == 1.0
    assert l0["confusion"] == [[1, 0], [0, 4]]


def test_per_level_input_consistency():
    m = HierarchicalMetrics(TAX)
    l0 = torch.tensor([[0, 0, 1], [1, 1, 1]])  # pixel (0,1): L0 background under L1 upper_body -> inconsistent
    l1 = torch.tensor([[0, 1, 1], [1, 2, 0]])  # pixel (1,0): L1 upper_body over L2 low_leg -> inconsistent
    l2 = torch.tensor([[0, 1, 2], [3, 5, 0]])  # pixel (1,2) is inconsistent too but its target is ignore
    m.update([l0, l1, l2], TARGET)
    r = m.compute()
    assert r["consistency"] == pytest.approx(3 / 5)
    assert r["pixels"] == 5
    # per-level maps are scored as given, not re-derived from the leaves
    assert r["levels"][0]["confusion"] == [[1, 0], [1, 3]]
    assert r["levels"][1]["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 1, 1]]


def test_consistent_per_level_input_matches_leaf_input():
    levels = TAX.levels_from_leaves(PRED)
    a, b = HierarchicalMetrics(TAX), HierarchicalMetrics(TAX)
    a.update(levels, TARGET)
    b.update(PRED, TARGET)
    assert a.compute() == b.compute()


def test_absent_class_is_none_and_excluded():
    m = HierarchicalMetrics(TAX)
    target = torch.tensor([[0, 2], [2, 2]])
    pred = torch.tensor([[0, 2], [2, 0]])
    m.update(pred, target)
    lv = m.compute()["levels"][2]
    assert [lv["iou"][c] for c in ("low_hand", "low_leg", "head", "up_leg", "up_hand")] == [None] * 5
    # background: TP1 FP1 -> 1/2; torso: TP2 FN1 -> 2/3; absent classes are not counted as 1.0 or 0.0
    assert lv["mIoU"] == pytest.approx(2 / 3)
    assert lv["mIoU_with_background"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_background_name_missing_means_all_classes():
    tax = Taxonomy.from_yaml_text("tree:\n  void: 0\n  thing:\n    a: 1\n    b: 2\n")
    target = torch.tensor([0, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 2])
    m = HierarchicalMetrics(tax)  # no class called "background": mIoU uses every class
    m.update(pred, target)
    for lv in m.compute()["levels"]:
        assert lv["mIoU"] == lv["mIoU_with_background"]
    m2 = HierarchicalMetrics(tax, background="void")
    m2.update(pred, target)
    lv = m2.compute()["levels"][1]
    assert lv["mIoU"] == pytest.approx((0.5 + 0.5) / 2)  # a: TP1 FP1, b: TP1 FN1
    assert lv["mIoU_with_background"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    m3 = HierarchicalMetrics(TAX, background=None)
    m3.update(PRED, TARGET)
    lv = m3.compute()["levels"][2]
    assert lv["mIoU"] == lv["mIoU_with_background"]


def reference(tax: Taxonomy, preds: list[np.ndarray], targets: list[np.ndarray]) -> list[dict]:
    """Per-class loops over the whole split, straight from the definitions."""
    out = []
    for level in range(tax.num_levels):
        lut = tax.leaf_to_class(level).numpy()
        t_all = np.concatenate([t.ravel() for t in targets])
        p_all = np.concatenate([p.ravel() for p in preds])
        keep = t_all != tax.ignore_index
        t = lut[t_all[keep]]
        p = lut[p_all[keep]]
        ious = {}
        for c, name in enumerate(tax.classes(level)):
            tp = np.sum((t == c) & (p == c))
            fp = np.sum((t != c) & (p == c))
            fn = np.sum((t == c) & (p != c))
            ious[name] = None if tp + fp + fn == 0 else tp / (tp + fp + fn)
        fg = [v for k, v in ious.items() if v is not None and k != "background"]
        every = [v for v in ious.values() if v is not None]
        out.append(
            {
                "iou": ious,
                "mIoU": np.mean(fg) if fg else math.nan,
                "mIoU_bg": np.mean(every) if every else math.nan,
                "acc": np.mean(t == p) if len(t) else math.nan,
            }
        )
    return out


def _random_batches(seed: int, n_batches: int, ignore_share: float):
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n_batches):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        # draw from a random subset of leaves so some classes are absent
        pool = rng.choice(TAX.num_leaves, size=int(rng.integers(1, TAX.num_leaves + 1)), replace=False)
        t = rng.choice(pool, size=shape)
        t[rng.random(shape) < ignore_share] = IGN
        p = rng.choice(pool, size=shape)
        agree = (rng.random(shape) < 0.5) & (t != IGN)  # make about half the pixels right
        p[agree] = t[agree]
        preds.append(p)
        targets.append(t)
    return preds, targets


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_batches=st.integers(1, 4), ignore_share=st.sampled_from([0.0, 0.2, 0.6]))
def test_matches_reference(seed, n_batches, ignore_share):
    preds, targets = _random_batches(seed, n_batches, ignore_share)
    m = HierarchicalMetrics(TAX)
    for p, t in zip(preds, targets):
        m.update(torch.from_numpy(p), torch.from_numpy(t))
    r = m.compute()
    ref = reference(TAX, preds, targets)
    assert r["pixels"] == sum(int((t != IGN).sum()) for t in targets)
    for lv, rf in zip(r["levels"], ref):
        assert lv["iou"].keys() == rf["iou"].keys()
        for name, v in rf["iou"].items():
            if v is None:
                assert lv["iou"][name] is None
            else:
                assert lv["iou"][name] == pytest.approx(v)
        for key, rkey in (("mIoU", "mIoU"), ("mIoU_with_background", "mIoU_bg"), ("pixel_accuracy", "acc")):
            if math.isnan(rf[rkey]):
                assert math.isnan(lv[key])
            else:
                assert lv[key] == pytest.approx(rf[rkey])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_accumulation_equals_one_big_batch(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, TAX.num_leaves, size=(4, 5, 6))
    t[rng.random(t.shape) < 0.2] = IGN
    p = rng.integers(0, TAX.num_leaves, size=(4, 5, 6))
    big, split = HierarchicalMetrics(TAX), HierarchicalMetrics(TAX)
    big.update(torch.from_numpy(p), torch.from_numpy(t))
    for i in range(4):
        split.update(torch.from_numpy(p[i]), torch.from_numpy(t[i]))  # [H, W] inputs too
    assert big.compute() == split.compute()


def test_reset_and_empty():
    m = HierarchicalMetrics(TAX)
    m.update(PRED, TARGET)
    m.reset()
    r = m.compute()
    assert r["pixels"] == 0 and math.isnan(r["consistency"])
    assert all(v is None for v in r["levels"][2]["iou"].values())
    assert math.isnan(r["levels"][2]["mIoU"])
    m.update(PRED, TARGET)
    assert m.compute()["pixels"] == 5


def test_confusion_is_int64_on_input_device():
    m = HierarchicalMetrics(TAX)
    m.update(PRED, TARGET)
    assert m._confusion[2].dtype == torch.int64
    assert m._confusion[2].device == TARGET.device
    assert m.confusion(2).sum().item() == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_confusion_accumulates_on_cuda():
    # no public accessor exposes the accumulator's device (confusion() returns a CPU copy), so read _confusion
    m = HierarchicalMetrics(TAX)
    m.update(PRED.cuda(), TARGET.cuda())
    m.update(PRED.cuda(), TARGET.cuda())
    assert all(c.device.type == "cuda" and c.dtype == torch.int64 for c in m._confusion)
    assert m.confusion(1).device.type == "cpu"
    assert m.confusion(1).tolist() == [[2, 0, 0], [0, 2, 2], [0, 0, 4]]  # twice the hand-computed L1 matrix
    cpu = HierarchicalMetrics(TAX)
    cpu.update(PRED, TARGET)
    assert m.compute()["levels"][2]["mIoU"] == cpu.compute()["levels"][2]["mIoU"]
    with pytest.raises(ValueError, match="put both on one device"):
        m.update(PRED, TARGET.cuda())


def test_bad_inputs_raise_with_guidance():
    m = HierarchicalMetrics(TAX)
    with pytest.raises(ValueError, match="shape"):
        m.update(PRED[:, :2], TARGET)
    with pytest.raises(ValueError, match="0..6"):
        m.update(torch.full_like(TARGET, IGN), TARGET)
    with pytest.raises(ValueError, match="3 levels"):
        m.update([PRED, PRED], TARGET)
    with pytest.raises(ValueError, match="0..1"):
        m.update([PRED, PRED, PRED], TARGET)  # leaf ids are out of range for L0
    with pytest.raises(TypeError, match="argmax"):
        m.update(PRED.float(), TARGET)
    with pytest.raises(ValueError, match="not in taxonomy"):
        m.update(PRED, torch.full_like(TARGET, 10))  # 0..6 leaves, 7..9 inner nodes


def test_format_table():
    m = HierarchicalMetrics(TAX)
    m.update(PRED, TARGET)
    text = format_table(m.compute())
    lines = text.splitlines()
    assert lines[0].split() == ["level", "mIoU", "mIoU_bg", "pix_acc"]
    assert lines[1].split() == ["L0", "100.00", "100.00", "100.00"]
    assert lines[2].split() == ["L1", "58.33", "72.22", "80.00"]
    assert lines[3].split() == ["L2", "37.50", "50.00", "60.00"]
    assert "  head" in text and "n/a" in text
    assert text.splitlines()[-1].split() == ["consistency", "100.00", "pixels", "5"]


# ---------------------------------------------------------------------- the taxonomy's exclude_from_miou
GARDEN = Taxonomy.from_yaml_text(
    "tree:\n  void: 0\n  animal: {cat: 1, dog: 2}\n  plant: 3\nexclude_from_miou: [animal, void]\n"
)
# L0: 0 void, 1 animal, 2 plant; L1 (leaf ids): 0 void, 1 cat, 2 dog, 3 plant
G_TARGET = torch.tensor([0, 1, 2, 2, 3, 3])
G_PRED = torch.tensor([1, 1, 2, 3, 3, 0])


def test_headline_miou_leaves_out_the_taxonomys_classes():
    m = HierarchicalMetrics(GARDEN)
    m.update(G_PRED, G_TARGET)
    l0, l1 = m.compute()["levels"]
    # L1 pairs (t, p): (0,1) (1,1) (2,2) (2,3) (3,3) (3,0)
    #   void TP0 FP1 FN1 -> 0; cat TP1 FP1 -> 1/2; dog TP1 FN1 -> 1/2; plant TP1 FP1 FN1 -> 1/3
    assert l1["iou"] == pytest.approx({"void": 0.0, "cat": 0.5, "dog": 0.5, "plant": 1 / 3})
    assert l1["mIoU_excludes"] == ["void"]  # animal is not a class at L1
    assert l1["mIoU"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert l1["mIoU_with_background"] == pytest.approx((0 + 0.5 + 0.5 + 1 / 3) / 4)
    # L0 pairs: (0,1) (1,1) (1,1) (1,2) (2,2) (2,0)
    #   void TP0 FP1 FN1 -> 0; animal TP2 FP1 FN1 -> 1/2; plant TP1 FP1 FN1 -> 1/3
    assert l0["iou"] == pytest.approx({"void": 0.0, "animal": 0.5, "plant": 1 / 3})
    assert l0["mIoU_excludes"] == ["void", "animal"]
    assert l0["mIoU"] == pytest.approx(1 / 3)
    assert l0["mIoU_with_background"] == pytest.approx((0 + 0.5 + 1 / 3) / 3)


def test_background_argument_still_overrides_the_taxonomy():
    none = HierarchicalMetrics(GARDEN, background=None)
    none.update(G_PRED, G_TARGET)
    for lv in none.compute()["levels"]:
        assert lv["mIoU"] == lv["mIoU_with_background"] and lv["mIoU_excludes"] == []
    plant = HierarchicalMetrics(GARDEN, background="plant")
    plant.update(G_PRED, G_TARGET)
    lv = plant.compute()["levels"][1]
    assert lv["mIoU_excludes"] == ["plant"] and lv["mIoU"] == pytest.approx((0 + 0.5 + 0.5) / 3)


def test_default_exclusion_and_empty_list():
    m = HierarchicalMetrics(TAX)  # the bundled tree has a top-level background leaf: left out by default
    m.update(PRED, TARGET)
    assert [lv["mIoU_excludes"] for lv in m.compute()["levels"]] == [["background"]] * 3
    every = Taxonomy.from_dict({**TAX.to_dict(), "exclude_from_miou": []})
    m2 = HierarchicalMetrics(every)
    m2.update(PRED, TARGET)
    l2 = m2.compute()["levels"][2]
    assert l2["mIoU_excludes"] == [] and l2["mIoU"] == l2["mIoU_with_background"] == pytest.approx(0.5)
