import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hiertree.losses import HierarchicalLoss, consistency_kl, tree_min_loss
from hiertree.tree.taxonomy import Taxonomy

TAX = Taxonomy.builtin("pascal_part")
IGN = TAX.ignore_index
LN3, LN9 = math.log(3.0), math.log(9.0)
# pascal_part leaves: 0 background, 1 low_hand, 2 torso, 3 low_leg, 4 head, 5 up_leg, 6 up_hand
# L1: 0 background, 1 upper_body, 2 lower_body; L0: 0 background, 1 body


def pixel(values):
    """A [1, C, 1, 1] logit map from a list of C numbers."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def one_pixel_logits():
    # L0 softmax [1/4, 3/4]; L1 and L2 uniform
    return [pixel([0.0, LN3]), pixel([0.0] * 3), pixel([0.0] * 7)]


TORSO = torch.tensor([[[2]]])


def test_ce_one_pixel_by_hand():
    total, parts = HierarchicalLoss(TAX, consistency_weight=0.0)(one_pixel_logits(), TORSO)
    # torso -> L0 body (p = 3/4), L1 upper_body (p = 1/3), L2 torso (p = 1/7)
    assert parts["ce/L0"].item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert parts["ce/L1"].item() == pytest.approx(math.log(3), abs=1e-6)
    assert parts["ce/L2"].item() == pytest.approx(math.log(7), abs=1e-6)
    assert total.item() == pytest.approx(math.log(28), abs=1e-5)  # (4/3) * 3 * 7
    assert set(parts) == {"ce/L0", "ce/L1", "ce/L2", "total"}
    assert parts["total"] is total


def test_level_weights_and_ce_weight_scale_parts():
    total, parts = HierarchicalLoss(TAX, consistency_weight=0.0, level_weights=[1.0, 2.0, 0.5], ce_weight=3.0)(one_pixel_logits(), TORSO)
    assert parts["ce/L0"].item() == pytest.approx(3 * math.log(4 / 3), abs=1e-5)
    assert parts["ce/L1"].item() == pytest.approx(3 * 2 * math.log(3), abs=1e-5)
    assert parts["ce/L2"].item() == pytest.approx(3 * 0.5 * math.log(7), abs=1e-5)
    assert total.item() == pytest.approx(3 * (math.log(4 / 3) + 2 * math.log(3) + 0.5 * math.log(7)), abs=1e-5)


def test_switched_off_levels_are_not_computed():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, c, 4, 4, generator=g, requires_grad=True) for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 4, 4), generator=g)
    total, parts = HierarchicalLoss(TAX, level_weights=[0, 0, 1], consistency_weight=0.0)(logits, mask)
    assert parts["ce/L0"].item() == parts["ce/L1"].item() == 0.0
    assert total.item() == pytest.approx(F.cross_entropy(logits[2], mask).item(), rel=1e-6)
    total.backward()
    # still in the graph with a zero gradient (DDP needs every head to take part), no cross-entropy computed
    assert torch.count_nonzero(logits[0].grad) == 0 and torch.count_nonzero(logits[1].grad) == 0
    assert torch.count_nonzero(logits[2].grad) > 0


def test_label_smoothing_matches_torch():
    logits = one_pixel_logits()
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0, label_smoothing=0.1)(logits, TORSO)
    # L0: smoothing eps=0.1 over 2 classes: 0.95 * -log(3/4) + 0.05 * -log(1/4)
    assert parts["ce/L0"].item() == pytest.approx(0.95 * math.log(4 / 3) + 0.05 * math.log(4), abs=1e-6)


def test_ignore_pixels_contribute_nothing():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, c, 3, 4, generator=g) for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 3, 4), generator=g)
    mask[0, :, :2] = IGN
    mask[1, 2, :] = IGN
    loss = HierarchicalLoss(TAX, consistency_weight=0.0, tree_min_weight=1.0)
    total, parts = loss(logits, mask)
    # scramble the logits at ignored pixels: nothing changes
    ign = (mask == IGN)[:, None]
    other = [torch.where(ign, torch.randn(x.shape, generator=g) * 10, x) for x in logits]
    total2, parts2 = loss(other, mask)
    for k in parts:
        assert parts2[k].item() == pytest.approx(parts[k].item(), abs=1e-6)
    # and the per-level CE is the mean over valid pixels only
    valid = mask != IGN
    for l, x in enumerate(logits):
        t = TAX.to_levels(mask)[l]
        manual = -F.log_softmax(x, 1).gather(1, t.clamp(max=TAX.num_classes(l) - 1)[:, None])[:, 0][valid].mean()
        assert parts[f"ce/L{l}"].item() == pytest.approx(manual.item(), abs=1e-6)


def test_all_ignore_gives_zero_not_nan():
    logits = [torch.randn(1, c, 2, 2, requires_grad=True) for c in TAX.level_sizes]
    mask = torch.full((1, 2, 2), IGN)
    total, parts = HierarchicalLoss(TAX, consistency_weight=0.0, tree_min_weight=1.0)(logits, mask)
    assert total.item() == 0.0 and parts["tree_min"].item() == 0.0
    total.backward()
    assert all(torch.isfinite(x.grad).all() for x in logits)


def agreeing_heads(fine_logits: torch.Tensor) -> list[torch.Tensor]:
    """Coarser logits = log of the finest head's probabilities summed into each ancestor."""
    p = fine_logits.softmax(1)
    out = [fine_logits]
    for level in range(TAX.num_levels - 2, -1, -1):
        p = torch.einsum("bfhw,fc->bchw", p, TAX.parent_matrix(level))
        out.insert(0, p.log())
    return out


def test_consistency_zero_for_agreeing_heads():
    logits = agreeing_heads(torch.randn(2, 7, 5, 5, generator=torch.Generator().manual_seed(1)) * 4)
    for l in range(TAX.num_levels - 1):
        assert abs(consistency_kl(logits[l], logits[l + 1], TAX.parent_matrix(l)).item()) <= 1e-6
    _, parts = HierarchicalLoss(TAX, consistency_weight=1.0)(logits, torch.zeros(2, 5, 5, dtype=torch.long))
    assert abs(parts["consistency"].item()) <= 1e-6
    # shifting a coarse head by a constant keeps it in agreement (softmax is shift-invariant)
    assert abs(consistency_kl(logits[0] + 5.0, logits[1], TAX.parent_matrix(0)).item()) <= 1e-6


def test_consistency_hand_computed_two_vs_three_classes():
    # fine L1 probs [0.2, 0.3, 0.5]: background -> background, upper and lower -> body, so q = [0.2, 0.8]
    # coarse p = [0.5, 0.5]: KL = 0.5 ln(0.5/0.2) + 0.5 ln(0.5/0.8) = 0.5 ln(2.5 * 0.625) = ln(1.25)
    coarse = pixel([0.0, 0.0])
    fine = pixel([math.log(0.2), math.log(0.3), math.log(0.5)])
    kl = consistency_kl(coarse, fine, TAX.parent_matrix(0))
    assert kl.item() == pytest.approx(math.log(1.25), abs=1e-6)
    # the module averages over the two level pairs; L1/L2 agree here, so the mean is ln(1.25)/2
    fine2 = pixel([math.log(0.2)] + [-30.0] * 6)
    fine2[0, [1, 2, 4, 6]] = math.log(0.3 / 4)  # upper_body's children share 0.3
    fine2[0, [3, 5]] = math.log(0.5 / 2)  # lower_body's children share 0.5
    _, parts = HierarchicalLoss(TAX, consistency_weight=2.0)([coarse, fine, fine2], TORSO)
    assert parts["consistency"].item() == pytest.approx(2.0 * math.log(1.25) / 2, abs=1e-5)


def test_consistency_extreme_logits_finite():
    coarse = pixel([200.0, -200.0])
    fine = pixel([-200.0, 200.0, 0.0])
    kl = consistency_kl(coarse, fine, TAX.parent_matrix(0))
    assert torch.isfinite(kl) and kl.item() == pytest.approx(400.0, rel=1e-4)


# ---------------------------------------------------------------------- tree-min
def test_tree_min_one_pixel_by_hand():
    # scores s = sigmoid(logit): ln3 -> .75, -ln3 -> .25, ln9 -> .9, -ln9 -> .1, 0 -> .5
    logits = [
        pixel([-LN3, LN3]),  # L0: background .25, body .75
        pixel([0.0, LN9, -LN9]),  # L1: background .5, upper .9, lower .1
        # L2: background .5, low_hand .25, torso .75, low_leg .1, head .25, up_leg .1, up_hand .25
        pixel([0.0, -LN3, LN3, -LN9, -LN3, -LN9, -LN3]),
    ]
    targets = TAX.to_levels(TORSO)  # body, upper_body, torso
    # m (min over self and ancestors) of the positive nodes: body .75, upper min(.9, .75) = .75,
    #   torso min(.75, .75, .75) = .75                                  -> 3 x ln(4/3)
    # M (max over self and descendants) of the negative nodes:
    #   L0 background max(.25, .5, .5) = .5                              -> ln 2
    #   L1 background max(.5, .5) = .5, lower max(.1, .1, .1) = .1       -> ln 2 + ln(10/9)
    #   L2 (leaves, M = s): background .5, low_hand .25, low_leg .1, head .25, up_leg .1, up_hand .25
    #                                                                    -> ln 2 + 3 ln(4/3) + 2 ln(10/9)
    # sum = 6 ln(4/3) + 3 ln 2 + 3 ln(10/9), over 12 nodes
    expected = (6 * math.log(4 / 3) + 3 * math.log(2) + 3 * math.log(10 / 9)) / 12
    assert expected == pytest.approx(0.343468, abs=1e-6)
    assert tree_min_loss(logits, targets, TAX, IGN).item() == pytest.approx(expected, abs=1e-6)
    _, parts = HierarchicalLoss(TAX, consistency_weight=0.0, tree_min_weight=0.5, ce_weight=0.0)(logits, TORSO)
    assert parts["tree_min"].item() == pytest.approx(0.5 * expected, abs=1e-6)
    assert parts["total"].item() == pytest.approx(0.5 * expected, abs=1e-6)


def _ancestors_and_descendants(tax):
    """Node -> list of (level, class) over itself and its ancestors / descendants, by brute force."""
    luts = [tax.leaf_to_class(l).tolist() for l in range(tax.num_levels)]
    anc, desc = {}, {}
    for l in range(tax.num_levels):
        for c in range(tax.num_classes(l)):
            leaves = [i for i in range(tax.num_leaves) if luts[l][i] == c]
            anc[l, c] = sorted({(k, luts[k][leaves[0]]) for k in range(l + 1)})
            desc[l, c] = sorted({(k, luts[k][i]) for k in range(l, tax.num_levels) for i in leaves})
    return anc, desc


def reference_tree_min(logits, leaf_mask, tax):
    anc, desc = _ancestors_and_descendants(tax)
    targets = tax.to_levels(leaf_mask)
    B, H, W = leaf_mask.shape
    total, count = 0.0, 0
    n_nodes = sum(tax.level_sizes)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                if int(leaf_mask[b, i, j]) == tax.ignore_index:
                    continue
                count += 1
                for (l, c), a in anc.items():
                    s = lambda k, cc: torch.sigmoid(logits[k][b, cc, i, j].double()).item()
                    y = int(targets[l][b, i, j]) == c
                    m = min(s(k, cc) for k, cc in a)
                    M = max(s(k, cc) for k, cc in desc[l, c])
                    total += -math.log(m) if y else -math.log(1 - M)
    return total / max(count, 1) / n_nodes


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.5, 2.0, 5.0]))
def test_tree_min_matches_brute_force(seed, scale):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(2, c, 2, 3, generator=g) * scale for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 2, 3), generator=g)
    mask[torch.rand(mask.shape, generator=g) < 0.25] = IGN
    got = tree_min_loss(logits, TAX.to_levels(mask), TAX, IGN).item()
    assert got == pytest.approx(reference_tree_min(logits, mask, TAX), rel=1e-5, abs=1e-6)


def test_tree_min_on_other_taxonomy_shape():
    # a deeper chain and an unbalanced tree: leaf 'x' carried from L0 to L2
    tax = Taxonomy.from_yaml_text("tree:\n  x: 0\n  y:\n    z: {p: 1, q: 2}\n    w: 3\n")
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(1, c, 2, 2, generator=g) * 3 for c in tax.level_sizes]
    mask = torch.tensor([[[0, 1], [2, 3]]])
    got = tree_min_loss(logits, tax.to_levels(mask), tax).item()
    assert got == pytest.approx(reference_tree_min(logits, mask, tax), rel=1e-5)


# ---------------------------------------------------------------------- module behaviour
def test_gradients_finite_with_all_terms_and_extreme_logits():
    g = torch.Generator().manual_seed(2)
    logits = [(torch.randn(2, c, 4, 4, generator=g) * 60).requires_grad_() for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 4, 4), generator=g)
    mask[0, 0] = IGN
    loss = HierarchicalLoss(TAX, consistency_weight=1.0, tree_min_weight=1.0, label_smoothing=0.1)
    total, parts = loss(logits, mask)
    assert set(parts) == {"ce/L0", "ce/L1", "ce/L2", "consistency", "tree_min", "total"}
    assert torch.isfinite(total)
    assert total.item() == pytest.approx(sum(v.item() for k, v in parts.items() if k != "total"), rel=1e-6)
    total.backward()
    for x in logits:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lower_resolution_logits_downsample_targets():
    g = torch.Generator().manual_seed(4)
    mask = torch.randint(0, 7, (2, 8, 8), generator=g)
    mask[:, 3, :] = IGN
    logits = [torch.randn(2, c, 4, 4, generator=g) for c in TAX.level_sizes]
    loss = HierarchicalLoss(TAX, consistency_weight=1.0, tree_min_weight=1.0)
    _, low = loss(logits, mask)
    # each logit cell is painted back centred on its block (bilinear, align_corners=False), so its target is
    # the label at the block's centre (nearest-exact), not at its top-left corner (plain nearest: a half-stride shift)
    _, ref = loss(logits, mask[:, 1::2, 1::2].contiguous())
    for k in ref:
        assert low[k].item() == pytest.approx(ref[k].item(), abs=1e-6)
    big = torch.randint(0, 7, (2, 16, 16), generator=g)  # stride 4: the centre pixel 4i + 2
    _, low = loss(logits, big)
    _, ref = loss(logits, big[:, 2::4, 2::4].contiguous())
    for k in ref:
        assert low[k].item() == pytest.approx(ref[k].item(), abs=1e-6)
    # per-level resolutions may differ for CE alone
    mixed = [torch.randn(2, 2, 2, 2), torch.randn(2, 3, 4, 4), torch.randn(2, 7, 8, 8)]
    total, _ = HierarchicalLoss(TAX, consistency_weight=0.0)(mixed, mask)
    assert torch.isfinite(total)
    with pytest.raises(ValueError, match="one resolution"):
        HierarchicalLoss(TAX, consistency_weight=0.0, tree_min_weight=1.0)(mixed, mask)


def test_bad_arguments_raise_with_guidance():
    with pytest.raises(ValueError, match="one weight per level"):
        HierarchicalLoss(TAX, consistency_weight=0.0, level_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="consistency_weight"):
        HierarchicalLoss(TAX, consistency_weight=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        HierarchicalLoss(TAX, consistency_weight=0.0, label_smoothing=1.0)
    loss = HierarchicalLoss(TAX, consistency_weight=0.0)
    with pytest.raises(ValueError, match="3 levels"):
        loss(one_pixel_logits()[:2], TORSO)
    with pytest.raises(ValueError, match=r"logits\[1\]"):
        loss([pixel([0.0, 0.0]), pixel([0.0] * 4), pixel([0.0] * 7)], TORSO)
    with pytest.raises(ValueError, match="one-hot"):
        consistency_kl(pixel([0.0, 0.0]), pixel([0.0] * 3), torch.ones(3, 2))


def test_module_moves_with_to_and_has_no_state():
    loss = HierarchicalLoss(TAX, consistency_weight=0.0, tree_min_weight=1.0)
    assert loss.state_dict() == {}
    loss = loss.to(torch.float64)  # buffers are index tensors and must stay integer
    total, _ = loss(one_pixel_logits(), TORSO)
    assert torch.isfinite(total)


def test_partial_pseudo_label_known_answer():
    """upper_body pixel, L2 logits 0 except torso = log 3: exps sum to 9, the four upper-body parts to 6, torso 3."""
    z = torch.zeros(1, 7, 1, 1)
    z[0, TAX.classes(2).index("torso")] = math.log(3.0)
    logits = [torch.zeros(1, TAX.num_classes(l), 1, 1) for l in range(2)] + [z]
    mask = torch.tensor([[[TAX.node_id("upper_body")]]])
    off = HierarchicalLoss(TAX, consistency_weight=0)(logits, mask)[1]["ce/L2"]
    on = HierarchicalLoss(TAX, consistency_weight=0, partial_pseudo_weight=1.0, partial_pseudo_threshold=0.5)
    below = HierarchicalLoss(TAX, consistency_weight=0, partial_pseudo_weight=1.0, partial_pseudo_threshold=0.6)
    assert float(off) == pytest.approx(math.log(1.5), abs=1e-6)  # -log(6/9)
    assert float(on(logits, mask)[1]["ce/L2"]) == pytest.approx(math.log(1.5) + math.log(3.0), abs=1e-6)  # + -log(3/9)
    assert float(below(logits, mask)[1]["ce/L2"]) == pytest.approx(math.log(1.5), abs=1e-6)  # torso holds 3/6 < 0.6


# ---------------------------------------------------------------------- hard-pixel mining, self-distillation
def _two_pixels():
    """Two torso pixels at L2: one certain (logit 10 on torso), one uniform (loss ln 7); L0/L1 uniform."""
    l2 = torch.zeros(1, 7, 1, 2)
    l2[0, 2, 0, 0] = 10.0
    return [torch.zeros(1, 2, 1, 2), torch.zeros(1, 3, 1, 2), l2], torch.tensor([[[2, 2]]])


def test_ohem_keeps_the_hardest_share_of_the_level():
    logits, mask = _two_pixels()
    easy = math.log(1 + 6 * math.exp(-10.0))
    _, plain = HierarchicalLoss(TAX, consistency_weight=0.0)(logits, mask)
    _, mined = HierarchicalLoss(TAX, consistency_weight=0.0, ohem_keep=0.5, ohem_levels=[2])(logits, mask)
    assert plain["ce/L2"].item() == pytest.approx((easy + math.log(7)) / 2, abs=1e-6)
    assert mined["ce/L2"].item() == pytest.approx(math.log(7), abs=1e-6)  # the uniform pixel alone
    assert mined["ce/L0"].item() == pytest.approx(plain["ce/L0"].item())  # levels not listed are not mined
    _, every = HierarchicalLoss(TAX, consistency_weight=0.0, ohem_keep=0.5)(logits, mask)  # null: every level
    assert every["ce/L0"].item() == pytest.approx(math.log(2), abs=1e-6)


def test_ohem_keep_one_equals_the_plain_mean_and_mined_pixels_get_no_gradient():
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(2, c, 5, 5, generator=g) for c in TAX.level_sizes]
    mask = torch.randint(0, 7, (2, 5, 5), generator=g)
    mask[0, 0, :] = IGN
    _, plain = HierarchicalLoss(TAX)(logits, mask)
    _, all_kept = HierarchicalLoss(TAX, ohem_keep=1.0, ohem_levels=[2])(logits, mask)
    assert all_kept["ce/L2"].item() == pytest.approx(plain["ce/L2"].item(), rel=1e-6)
    leaf = logits[2].clone().requires_grad_(True)
    HierarchicalLoss(TAX, consistency_weight=0.0, level_weights=[0, 0, 1], ohem_keep=0.2, ohem_levels=[2])(
        [logits[0], logits[1], leaf], mask)[0].backward()
    touched = leaf.grad.abs().sum(1) > 0
    assert touched.sum().item() == math.ceil(0.2 * (mask != IGN).sum().item())  # 20 % of the labelled pixels
    assert not touched[0, 0].any()  # ignored pixels are never mined


def test_ohem_levels_out_of_range_are_refused():
    with pytest.raises(ValueError, match="ohem_levels \\[3\\]: taxonomy 'pascal_part' has levels 0..2"):
        HierarchicalLoss(TAX, ohem_keep=0.5, ohem_levels=[3])


def test_distillation_known_answer_and_zero_for_the_same_predictions():
    logits = one_pixel_logits()  # L0 [1/4, 3/4], L1 and L2 uniform
    loss = HierarchicalLoss(TAX, consistency_weight=0.0, ce_weight=0.0, distill_weight=2.0)
    _, same = loss(logits, TORSO, teacher=[z.clone() for z in logits])
    assert same["distill"].item() == pytest.approx(0.0, abs=1e-7)
    teacher = [pixel([LN3, 0.0]), pixel([0.0] * 3), pixel([0.0] * 7)]  # L0 [3/4, 1/4]: KL = 1/2 ln 3 at L0 only
    total, parts = loss(logits, TORSO, teacher=teacher)
    assert parts["distill"].item() == pytest.approx(2.0 * (0.5 * LN3) / 3, abs=1e-6)  # mean over the 3 levels
    assert total.item() == pytest.approx(parts["distill"].item())


def test_distillation_without_a_teacher_is_refused():
    with pytest.raises(ValueError, match="needs the teacher's logits"):
        HierarchicalLoss(TAX, distill_weight=1.0)(one_pixel_logits(), TORSO)
