"""Batch-norm folding: the same outputs with fewer layers, and no fold where it would change them."""

import copy

import pytest
import torch
from torch import nn

from hiertree.inference.folding import fold_batchnorm


def _trained_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.weight.data.copy_(torch.randn(channels, generator=g))
    bn.bias.data.copy_(torch.randn(channels, generator=g))
    return bn


class BNAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: batch norm, then dropout and activation kept as attributes."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), nn.ReLU()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


def test_conv_bn_pairs_fold_to_the_same_outputs():
    torch.manual_seed(0)
    act = BNAct(6)
    act.load_state_dict(_trained_bn(6, 2).state_dict())
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), _trained_bn(4, 1), nn.ReLU(),
                          nn.Conv2d(4, 6, 1), act).eval()
    x = torch.randn(2, 3, 9, 7)
    before, original = model(x), copy.deepcopy(model)
    assert fold_batchnorm(model, x) == 2
    assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.Sequential)  # the activation stays
    assert model[0].bias is not None
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    other = torch.randn(1, 3, 5, 11)  # not the input the pairs were found with
    torch.testing.assert_close(model(other), original(other), atol=1e-5, rtol=1e-5)


class Reuses(nn.Module):
    """The convolution's output feeds the batch norm and, unnormalised, the sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), _trained_bn(3, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_would_change_outputs_is_undone():
    model = Reuses().eval()
    x = torch.randn(1, 3, 4, 4)
    before = model(x)
    weight = model.conv.weight.detach().clone()
    assert fold_batchnorm(model, x) == 0
    assert isinstance(model.bn, nn.BatchNorm2d)
    torch.testing.assert_close(model.conv.weight, weight)
    torch.testing.assert_close(model(x), before)


def test_folding_refuses_a_training_model():
    with pytest.raises(ValueError, match="inference"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)), torch.zeros(1, 1, 2, 2))
