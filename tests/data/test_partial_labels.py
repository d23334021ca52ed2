"""Labels at any node of the tree: node ids, node-id masks, the partial-label loss and per-level scored pixels."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiertree.losses import HierarchicalLoss, tree_min_loss
from hiertree.metrics import HierarchicalMetrics
from hiertree.tree.taxonomy import Taxonomy, TaxonomyError

from trees import _count, _number, trees

TAX = Taxonomy.builtin("pascal_part")
IGN = TAX.ignore_index
# leaves 0 background, 1 low_hand, 2 torso, 3 low_leg, 4 head, 5 up_leg, 6 up_hand; inner 7 body, 8 upper_body,
# 9 lower_body. L0: background, body; L1: background, upper_body, lower_body; L2: the leaves
BODY, UPPER, LOWER = 7, 8, 9


def pixel(values):
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def uniform_below_l0():
    # L0 softmax [1/4, 3/4]; L1 and L2 uniform
    return [pixel([0.0, math.log(3.0)]), pixel([0.0] * 3), pixel([0.0] * 7)]


# ---------------------------------------------------------------------- node ids
def test_node_ids_by_hand():
    assert TAX.num_nodes == 10
    assert TAX.node_names == ["background", "low_hand", "torso", "low_leg", "head", "up_leg", "up_hand",
                              "body", "upper_body", "lower_body"]
    assert [TAX.node_id(n) for n in ("torso", "body", "upper_body", "lower_body")] == [2, BODY, UPPER, LOWER]
    assert TAX.node_name(UPPER) == "upper_body"
    assert TAX.leaves_under("upper_body") == [1, 2, 4, 6]
    assert TAX.leaves_under("body") == [1, 2, 3, 4, 5, 6]
    assert TAX.leaves_under("head") == [4]
    assert [TAX.node_depth(n) for n in ("background", "body", "lower_body", "up_leg")] == [1, 1, 2, 3]
    assert [TAX.node_level(n) for n in ("background", "body", "lower_body", "up_leg")] == [2, 0, 1, 2]
    assert TAX.is_leaf("head") and not TAX.is_leaf("body")
    assert TAX.partial_levels() == [1, 2]


def test_node_lut_and_label_sets_by_hand():
    assert TAX.node_lut(0)[:10].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert TAX.node_lut(1)[:10].tolist() == [0, 1, 1, 2, 1, 2, 1, IGN, 1, 2]
    assert TAX.node_lut(2)[:10].tolist() == [0, 1, 2, 3, 4, 5, 6, IGN, IGN, IGN]
    assert len(TAX.node_lut(0)) == 256 and TAX.node_lut(0)[10:].eq(IGN).all()
    sets = TAX.label_sets(2)
    assert sets.shape == (10, 7)
    assert sets[UPPER].nonzero().flatten().tolist() == [1, 2, 4, 6]
    assert sets[BODY].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert sets[2].nonzero().flatten().tolist() == [2]
    assert TAX.label_sets(1)[BODY].tolist() == [False, True, True]


def test_node_mask_to_levels():
    l0, l1, l2 = TAX.to_levels(torch.tensor([[BODY, UPPER, LOWER, 2, IGN]]))
    assert l0.tolist() == [[1, 1, 1, 1, IGN]]
    assert l1.tolist() == [[IGN, 1, 2, 1, IGN]]
    assert l2.tolist() == [[IGN, IGN, IGN, 2, IGN]]


def test_node_errors_name_the_node_and_suggest():
    with pytest.raises(TaxonomyError, match=r"no node named 'uper_body' \(did you mean 'upper_body'\?\)"):
        TAX.node_id("uper_body")
    with pytest.raises(IndexError, match=r"node ids 0..9, asked for 10"):
        TAX.node_name(10)
    with pytest.raises(TaxonomyError, match=r"ignore_index 3 is the node id of inner node 'g'.*4 or more"):
        Taxonomy.from_yaml_text("ignore_index: 3\ntree: {a: 0, g: {b: 1, c: 2}}")


def test_chain_of_only_children_is_exact_down_the_chain():
    t = Taxonomy.from_yaml_text("tree: {a: 0, v: {rail: {tram: 1}, road: {car: 2, bus: 3}}}")
    assert t.node_names == ["a", "tram", "car", "bus", "v", "rail", "road"]
    assert t.node_level("v") == 0 and t.node_level("rail") == 2 and t.node_level("road") == 1
    rail, road = t.node_id("rail"), t.node_id("road")
    assert [lvl.tolist() for lvl in t.to_levels(torch.tensor([rail, road]))] == [[1, 1], [1, 2], [1, 255]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.randoms(use_true_random=False))
def test_random_trees_node_sets_follow_the_leaves(shape, rnd):
    ids = list(range(_count(shape)))
    rnd.shuffle(ids)
    t = Taxonomy.from_dict({"tree": _number(shape, ids)})
    assert sorted(t.node_id(n) for n in t.node_names) == list(range(t.num_nodes))
    assert t.node_names[: t.num_leaves] == t.leaf_names
    for level in range(t.num_levels):
        sets, lut, leaf = t.label_sets(level), t.node_lut(level), t.leaf_to_class(level)
        for i, name in enumerate(t.node_names):
            classes = sorted(set(leaf[t.leaves_under(name)].tolist()))
            assert sets[i].nonzero().flatten().tolist() == classes
            assert int(lut[i]) == (classes[0] if len(classes) == 1 else t.ignore_index)
            assert (len(classes) == 1) == (level <= t.node_level(name))
        assert torch.equal(lut[: t.num_leaves], leaf)  # leaf masks map exactly as before


# ---------------------------------------------------------------------- loss
def test_partial_ce_one_pixel_by_hand():
    loss = HierarchicalLoss(TAX, consistency_weight=0.0)
    _, parts = loss(uniform_below_l0(), torch.tensor([[[UPPER]]]))
    assert parts["ce/L0"].item() == pytest.approx(math.log(4 / 3), abs=1e-6)  # body, p = 3/4
    assert parts["ce/L1"].item() == pytest.approx(math.log(3), abs=1e-6)  # upper_body, p = 1/3
    assert parts["ce/L2"].item() == pytest.approx(math.log(7 / 4), abs=1e-6)  # 4 of 7 parts under upper_body
    _, parts = loss(uniform_below_l0(), torch.tensor([[[BODY]]]))
    assert parts["ce/L1"].item() == pytest.approx(math.log(3 / 2), abs=1e-6)  # upper or lower: 2 of 3
    assert parts["ce/L2"].item() == pytest.approx(math.log(7 / 6), abs=1e-6)  # any of the 6 parts


def test_partial_and_exact_pixels_average_per_level():
    logits = [x.expand(1, -1, 1, 3).contiguous() for x in uniform_below_l0()]
    mask = torch.tensor([[[2, BODY, IGN]]])  # torso, body only, ignore
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0)(logits, mask)
    assert parts["ce/L0"].item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert parts["ce/L1"].item() == pytest.approx((math.log(3) + math.log(3 / 2)) / 2, abs=1e-6)
    assert parts["ce/L2"].item() == pytest.approx((math.log(7) + math.log(7 / 6)) / 2, abs=1e-6)
    # partial=False: the trainer's promise that no pixel is partial; the body pixel then counts only where exact
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0)(logits, mask, partial=False)
    assert parts["ce/L1"].item() == pytest.approx(math.log(3), abs=1e-6)
    assert parts["ce/L2"].item() == pytest.approx(math.log(7), abs=1e-6)


def test_leaf_masks_give_the_same_loss_either_way():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, c, 4, 5, generator=g) for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 4, 5), generator=g)
    loss = HierarchicalLoss(TAX, consistency_weight=0.3, tree_min_weight=0.5)
    a, _ = loss(logits, mask, partial=True)
    b, _ = loss(logits, mask, partial=False)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_partial_gradients_finite_for_tiny_probabilities():
    # the set under the label has probability ~exp(-2e4): log of a sum must not underflow to -inf
    logits = [pixel([1e4, -1e4]), pixel([1e4, -1e4, -1e4]), pixel([1e4] + [-1e4] * 6)]
    logits = [x.requires_grad_() for x in logits]
    total, parts = HierarchicalLoss(TAX, consistency_weight=1.0, tree_min_weight=1.0)(logits, torch.tensor([[[UPPER]]]))
    assert math.isfinite(total.item()) and parts["ce/L2"].item() == pytest.approx(2e4, rel=1e-4)
    total.backward()
    assert all(torch.isfinite(x.grad).all() for x in logits)


def test_class_weights_match_torch_weighted_mean():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, c, 3, 3, generator=g) for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 3, 3), generator=g)
    weights = [[0.5, 2.0], [1.0, 3.0, 0.25], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0, class_weights=weights)(logits, mask)
    for l, target in enumerate(TAX.to_levels(mask)):
        want = F.cross_entropy(logits[l], target, weight=torch.tensor(weights[l]), ignore_index=IGN)
        assert parts[f"ce/L{l}"].item() == pytest.approx(want.item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"class_weights\[1\] must be 3 numbers > 0"):
        HierarchicalLoss(TAX, consistency_weight=0.0, class_weights=[[1, 1], [1, 0, 1], [1] * 7])


def reference_tree_min_nodes(logits, mask, tax):
    """Brute force over (level, class) nodes: a class under a partial label is neither positive nor negative."""
    luts = [tax.leaf_to_class(l).tolist() for l in range(tax.num_levels)]
    B, H, W = mask.shape
    total, count = 0.0, 0
    for b in range(B):
        for i in range(H):
            for j in range(W):
                node = int(mask[b, i, j])
                if node == tax.ignore_index:
                    continue
                count += 1
                s = lambda k, c: torch.sigmoid(logits[k][b, c, i, j].double()).item()
                for l in range(tax.num_levels):
                    open_set = tax.label_sets(l)[node].nonzero().flatten().tolist()
                    for c in range(tax.num_classes(l)):
                        leaves = [x for x in range(tax.num_leaves) if luts[l][x] == c]
                        anc = {(k, luts[k][leaves[0]]) for k in range(l + 1)}
                        desc = {(k, luts[k][x]) for k in range(l, tax.num_levels) for x in leaves}
                        if c not in open_set:
                            total += -math.log(1 - max(s(k, cc) for k, cc in desc))
                        elif len(open_set) == 1:
                            total += -math.log(min(s(k, cc) for k, cc in anc))
    return total / max(count, 1) / sum(tax.level_sizes)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_tree_min_with_partial_labels_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(2, c, 2, 3, generator=g) * 2 for c in TAX.level_sizes]
    mask = torch.randint(0, TAX.num_nodes, (2, 2, 3), generator=g)
    mask[torch.rand(mask.shape, generator=g) < 0.2] = IGN
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0, ce_weight=0.0, tree_min_weight=1.0)(logits, mask)
    assert parts["tree_min"].item() == pytest.approx(reference_tree_min_nodes(logits, mask, TAX), rel=1e-5, abs=1e-6)
    # with leaf labels only, the partial path and the exact one agree with the public function
    leaf_mask = mask.clamp_max(6)
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0, ce_weight=0.0, tree_min_weight=1.0)(logits, leaf_mask)
    assert parts["tree_min"].item() == pytest.approx(tree_min_loss(logits, TAX.to_levels(leaf_mask), TAX).item(), abs=1e-6)


# ---------------------------------------------------------------------- metrics
def test_metrics_score_a_partial_label_only_where_it_names_a_class():
    m = HierarchicalMetrics(TAX)
    target = torch.tensor([[2, UPPER, BODY, IGN]])
    pred = torch.tensor([[2, 2, 0, 3]])  # leaf predictions: torso, torso, background, low_leg
    m.update(pred, target)
    out = m.compute()
    assert [lv["pixels"] for lv in out["levels"]] == [3, 2, 1]
    assert out["pixels"] == 3
    assert out["levels"][0]["confusion"] == [[0, 0], [1, 2]]  # body pixel predicted background at L0
    assert out["levels"][1]["confusion"] == [[0, 0, 0], [0, 2, 0], [0, 0, 0]]
    assert out["levels"][2]["iou"]["torso"] == 1.0
