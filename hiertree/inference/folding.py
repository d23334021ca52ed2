"""Fold inference batch norms into the convolutions before them: one memory pass less per layer on a CPU.

In eval mode a batch norm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with scaled
weights and a bias. Which batch norm follows which convolution is read off one forward pass (a forward hook
on every ``Conv2d`` remembers its output; a batch norm whose input *is* such an output follows that
convolution), so no architecture has to be known by name. A timm ``BatchNormAct2d`` keeps its dropout and
activation. The folded model is checked against the original on the example input and the fold is undone
if the outputs differ beyond float rounding (a convolution output used elsewhere as well, say).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

__all__ = ["fold_batchnorm"]

log = logging.getLogger(__name__)


def _pairs(model: nn.Module, example: Any) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, batch norm) pairs where the batch norm's input is the convolution's output."""
    produced: dict[int, nn.Conv2d] = {}
    kept: list[torch.Tensor] = []  # holds the outputs so that their ids are not reused during the pass
    found: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        produced[id(output)] = module
        kept.append(output)

    def before_bn(module: nn.Module, inputs: tuple) -> None:
        conv = produced.get(id(inputs[0]))
        if conv is not None:
            found.append((conv, module))

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules() if type(m) is nn.BatchNorm2d
              or (isinstance(m, nn.BatchNorm2d) and hasattr(m, "act") and hasattr(m, "drop"))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    uses: dict[int, int] = {}
    for conv, _ in found:
        uses[id(conv)] = uses.get(id(conv), 0) + 1
    return [(c, b) for c, b in found if uses[id(c)] == 1 and b.track_running_stats and b.running_var is not None]


def _fold_one(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.data.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter((bias * scale + shift).detach().to(conv.weight.dtype))


def _replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a batch norm once its affine map is in the convolution: nothing, or timm's dropout + act."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(bn.drop, bn.act)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-3) -> int:
    """Fold every eval-mode batch norm into the convolution that feeds it, in place; returns how many were folded
    (0 when the check against the original fails and the model is left as it was). For inference only."""
    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first (training updates batch norms)")
    pairs = _pairs(model, example)
    if not pairs:
        return 0
    reference = [t.clone() for t in _flat(model(example))]
    backup = copy.deepcopy(model.state_dict())
    names = {id(m): name for name, m in model.named_modules()}
    replaced = []
    for conv, bn in pairs:
        _fold_one(conv, bn)
        parent_name, _, attr = names[id(bn)].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replaced.append((parent, attr, bn))
        setattr(parent, attr, _replacement(bn))
    got = _flat(model(example))
    scale = max(float(r.abs().max()) for r in reference) or 1.0
    worst = max(float((a - b).abs().max()) for a, b in zip(got, reference)) / scale
    if worst > atol:
        for parent, attr, bn in replaced:
            setattr(parent, attr, bn)
        for conv, _ in pairs:
            conv.bias = None if f"{names[id(conv)]}.bias" not in backup else conv.bias
        model.load_state_dict(backup, strict=False)
        log.warning("batch-norm folding changed outputs by %.2g (relative); left the model unfolded", worst)
        return 0
    return len(pairs)


def _flat(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]
