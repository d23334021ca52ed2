"""Model shapes, padding to the stride, tree-consistent decoding, the flat variant, encoder weights."""

import pytest
import torch

from hiertree.inference import leaf_path_scores, tree_consistent_levels
from hiertree.models import EncoderError, HierSegModel

TINY = dict(encoder="tf_efficientnet_lite0", decoder_channels=16, skip_channels=8)


@pytest.mark.parametrize("skip,os_", [(True, 16), (False, 8)])
def test_heads_sized_from_taxonomy_any_input_size(pascal, skip, os_):
    torch.manual_seed(0)
    model = HierSegModel(pascal, output_stride=os_, skip=skip, **TINY).eval()
    # literal strides: the encoder honours output_stride, the decoder outputs at 4 (skip) or at the stride
    assert model.encoder.reductions[-1] == os_
    reduction = 4 if skip else os_
    assert model.output_reduction == reduction
    x = torch.randint(0, 256, (2, 3, 45, 71), dtype=torch.uint8)
    logits = model(x)
    assert [tuple(z.shape) for z in logits] == [(2, 2, 45, 71), (2, 3, 45, 71), (2, 7, 45, 71)]
    low = model(x, upsample=False)
    expect = {(True, 16): (12, 18), (False, 8): (6, 9)}[(skip, os_)]  # ceil(45 / r), ceil(71 / r)
    assert [tuple(z.shape) for z in low] == [(2, n, *expect) for n in (2, 3, 7)]


@torch.no_grad()
def test_padding_does_not_change_the_valid_region_result(pascal):
    """The model pads at the bottom/right with the mean colour: a 33x33 image gives, cell for cell, the
    top-left of the result for the same image pasted top-left into a 64x64 canvas of the mean colour."""
    torch.manual_seed(0)
    model = HierSegModel(pascal, **TINY).eval()
    assert model.encoder.input_multiple == 32 and model.output_reduction == 4
    x = torch.randint(0, 256, (1, 3, 33, 33), generator=torch.Generator().manual_seed(0)).float()
    xp = model.encoder.mean.expand(1, 3, 64, 64).clone()  # 0..255 scale: normalises to exactly 0
    xp[..., :33, :33] = x
    low, padded, full = model(x, upsample=False), model(xp, upsample=False), model(x)
    hc = wc = 9  # ceil(33 / 4): the stride-level cells that touch the 33x33 image
    assert [tuple(z.shape) for z in padded] == [(1, n, 16, 16) for n in (2, 3, 7)]
    for level, n in enumerate((2, 3, 7)):
        assert low[level].shape == (1, n, hc, wc)
        torch.testing.assert_close(low[level], padded[level][..., :hc, :wc], atol=1e-5, rtol=0)
        assert full[level].shape == (1, n, 33, 33)
    # the pad is not a no-op: padding with another colour changes the result inside the valid region
    other = xp.clone()
    other[..., 33:, :] = 255.0
    other[..., :, 33:] = 255.0
    assert (model(other, upsample=False)[2][..., :hc, :wc] - low[2]).abs().max() > 1e-3


def test_path_scores_hand_computed(pascal):
    # one pixel; level logits chosen so log-probs are easy: uniform at L0, sharp at L1, uniform at L2
    l0 = torch.zeros(1, 2, 1, 1)
    l1 = torch.tensor([0.0, 10.0, 0.0]).view(1, 3, 1, 1)
    l2 = torch.zeros(1, 7, 1, 1)
    s = leaf_path_scores([l0, l1, l2], pascal)[0, :, 0, 0]
    lp1 = torch.log_softmax(l1.flatten(), 0)
    for leaf in range(7):
        expect = torch.log(torch.tensor(0.5)) + lp1[pascal.leaf_to_class(1)[leaf]] + torch.log(torch.tensor(1 / 7))
        assert torch.isclose(s[leaf], expect, atol=1e-6)
    leaf, levels = tree_consistent_levels([l0, l1, l2], pascal)
    # upper_body wins at L1; all its leaves tie at L2, argmax takes the first upper_body leaf (id 1)
    assert leaf.item() == 1 and [lv.item() for lv in levels] == [1, 1, 1]


def test_path_decoding_can_overrule_a_confident_fine_head(pascal):
    l0 = torch.tensor([8.0, 0.0]).view(1, 2, 1, 1)  # background, confidently
    l1 = torch.tensor([4.0, 0.0, 0.0]).view(1, 3, 1, 1)
    l2 = torch.tensor([0.0, 1.0, 0, 0, 0, 0, 0]).view(1, 7, 1, 1)  # fine head mildly prefers low_hand
    leaf, levels = tree_consistent_levels([l0, l1, l2], pascal)
    assert leaf.item() == 0 and [lv.item() for lv in levels] == [0, 0, 0]


def test_predictions_are_always_tree_consistent(pascal):
    torch.manual_seed(1)
    logits = [torch.randn(2, n, 8, 8) for n in pascal.level_sizes]
    leaf, levels = tree_consistent_levels(logits, pascal)
    for level in range(2):
        parent = pascal.parent_index(level)
        assert torch.equal(parent[levels[level + 1]], levels[level])


def test_flat_coarse_logits_sum_probabilities(pascal):
    torch.manual_seed(2)
    z = torch.randn(1, 7, 3, 3)
    coarse = pascal.coarse_logits(z)
    p = z.softmax(1)
    expect = torch.einsum("bnhw,nc->bchw", p, pascal.mapping_matrix(1))
    assert torch.allclose(coarse[1].softmax(1), expect, atol=1e-6)
    half = z.bfloat16()  # under autocast: the coarse levels are still summed in float32
    coarse16 = pascal.coarse_logits(half)
    assert coarse16[0].dtype == coarse16[1].dtype == torch.float32 and coarse16[2] is half
    assert torch.equal(coarse16[1], pascal.coarse_logits(half.float())[1])
    model = HierSegModel(pascal, flat=True, **TINY).eval()
    assert len(model.heads) == 1
    out = model.predict(torch.zeros(1, 3, 32, 32))
    assert len(out["levels"]) == 3 and out["leaf"].shape == (1, 32, 32)


def test_predict_returns_probabilities_on_request(pascal):
    model = HierSegModel(pascal, **TINY).eval()
    out = model.predict(torch.zeros(1, 3, 32, 32), probabilities=True)
    assert [p.shape[1] for p in out["probs"]] == [2, 3, 7]
    assert torch.allclose(out["probs"][2].sum(1), torch.ones(1, 32, 32), atol=1e-5)


def test_from_config_rejects_unknown_option(pascal):
    with pytest.raises(ValueError, match="decoder_chanels"):
        HierSegModel.from_config(pascal, {"decoder_chanels": 8})


def test_encoder_weight_errors(pascal, monkeypatch, tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        HierSegModel(pascal, encoder_weights=str(tmp_path / "nope.safetensors"), **TINY)
    with pytest.raises(EncoderError, match="unknown timm encoder"):
        HierSegModel(pascal, encoder="not_a_model_xyz")
    # offline: the hub fails fast and the error says what to do instead
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read at import time; make it take effect now
    with pytest.raises(EncoderError, match="could not fetch ImageNet weights.*local"):
        HierSegModel(pascal, encoder_weights="imagenet", **TINY)


def test_local_weights_file_loads_through_timm(pascal, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ref = timm.create_model("tf_efficientnet_lite0")
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = HierSegModel(pascal, encoder_weights=str(path), **TINY)
    got = model.encoder.backbone.conv_stem.weight
    assert torch.equal(got, ref.conv_stem.weight)


@pytest.mark.parametrize("fuse_convs", [1, 2])
def test_decoder_depth_is_configurable(pascal, fuse_convs):
    model = HierSegModel(pascal, fuse_convs=fuse_convs, **TINY)
    assert len(model.decoder.fuse) == fuse_convs
    assert model(torch.zeros(1, 3, 32, 32))[2].shape == (1, 7, 32, 32)
    with pytest.raises(ValueError, match="fuse_convs"):
        HierSegModel(pascal, fuse_convs=0, **TINY)


def test_predict_takes_numpy_images_of_any_size(pascal):
    import numpy as np

    model = HierSegModel(pascal, **TINY).eval()
    rng = np.random.default_rng(0)
    one = model.predict(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    assert [lv.shape for lv in one["levels"]] == [(37, 53)] * 3
    many = model.predict([rng.integers(0, 256, (20, 30), dtype=np.uint8), rng.integers(0, 256, (41, 17, 4), dtype=np.uint8)])
    assert [m["levels"][2].shape for m in many] == [(20, 30), (41, 17)]
    parent = pascal.parent_index(1).numpy()
    assert (parent[many[1]["levels"][2]] == many[1]["levels"][1]).all()



def test_freeze_stages_and_bn_statistics(pascal):
    """frozen_stages fixes the weights up to a feature map (no gradient, BN in eval); freeze_encoder_bn fixes every
    encoder BN's statistics while its scale/shift and the decoder train on; model.train() keeps both."""
    torch.manual_seed(0)
    model = HierSegModel(pascal, **TINY)
    model.encoder.freeze(stages=2)
    bb = model.encoder.backbone
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    # lite0's first two feature maps end at blocks.0 and blocks.1: the stem and those two blocks are fixed
    assert frozen == {n for n, _ in bb.named_parameters() if n.split(".")[0] in ("conv_stem", "bn1")
                      or n.startswith(("blocks.0.", "blocks.1."))}
    assert all(p.requires_grad for n, p in bb.named_parameters() if n.startswith("blocks.2."))
    model.train()
    assert not bb.bn1.training and bb.blocks[2][0].bn1.training and model.decoder.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    sum(z.mean() for z in model(x)).backward()
    assert all(p.grad is None for n, p in bb.named_parameters() if n in frozen)
    opt.step()
    after = model.state_dict()
    for name in ("encoder.backbone.conv_stem.weight", "encoder.backbone.bn1.running_mean",
                 "encoder.backbone.blocks.1.0.bn1.running_var"):
        assert torch.equal(before[name], after[name]), name
    for name in ("encoder.backbone.blocks.2.0.bn1.running_mean", "encoder.backbone.blocks.2.0.conv_pw.weight"):
        assert not torch.equal(before[name], after[name]), name

    model.encoder.freeze(stages=0, bn_stats=True)
    model.train()
    norms = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert any(m.training for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(EncoderError, match="this encoder has 5 stages; give 0..5"):
        model.encoder.freeze(stages=6)
