"""evaluate(): a split's scores do not depend on the batch size or on which images share a padded batch."""

import json

import torch
from torch.utils.data import DataLoader

from hiertree.data import pad_collate
from hiertree.evaluation.evaluate import _unpadded, evaluate
from hiertree.models import HierSegModel
from hiertree.tree.taxonomy import Taxonomy

TAX = Taxonomy.builtin("pascal_part")


def _samples() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    sizes = [(37, 50), (64, 41), (29, 29), (64, 64), (50, 33)]
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "mask": torch.randint(0, 7, (h, w), generator=g), "id": str(k)} for k, (h, w) in enumerate(sizes)]


def _scores(model: torch.nn.Module, batch_size: int) -> str:
    loader = DataLoader(_samples(), batch_size=batch_size, collate_fn=lambda b: pad_collate(b, TAX.ignore_index))
    return json.dumps(evaluate(model, loader, TAX, torch.device("cpu")))


def test_scores_do_not_depend_on_batching():
    torch.manual_seed(0)
    model = HierSegModel(TAX, decoder_channels=16, skip_channels=8).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(50.0)  # an untrained model whose labels react to every input change
    one = _scores(model, 1)
    assert _scores(model, 3) == one and _scores(model, 5) == one


def test_unpadded_keeps_a_full_batch_whole_and_crops_padded_samples():
    samples = _samples()
    same = pad_collate([samples[3], samples[3]], TAX.ignore_index)
    (images, masks, ids), = list(_unpadded(same))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64) and len(ids) == 2
    pieces = list(_unpadded(pad_collate(samples[:2], TAX.ignore_index)))
    assert [tuple(x.shape) for x, _, _ in pieces] == [(1, 3, 37, 50), (1, 3, 64, 41)]
    assert torch.equal(pieces[0][0][0], samples[0]["image"]) and torch.equal(pieces[1][1][0], samples[1]["mask"])
    # samples of one size still run together, unpadded
    pieces = list(_unpadded(pad_collate([samples[0], samples[1], samples[0]], TAX.ignore_index)))
    assert [tuple(x.shape) for x, _, _ in pieces] == [(2, 3, 37, 50), (1, 3, 64, 41)]
    assert [ids for _, _, ids in pieces] == [[samples[0]["id"], samples[0]["id"]], [samples[1]["id"]]]  # their own ids
    assert torch.equal(pieces[0][0][1], samples[0]["image"]) and torch.equal(pieces[0][1][0], samples[0]["mask"])
