"""Sliding-window inference: exact where it must be (one window; a per-pixel model), sane on the real model."""

import pytest
import torch
from torch import nn

from hiertree.models import HierSegModel
from hiertree.inference.predictor import Views, as_runner, log_probs, predict_batch
from hiertree.inference.sliding import sliding_window_logits, window_starts
from hiertree.tree.taxonomy import Taxonomy


def predict_large(model, images, max_side, window=512, overlap=0.25, probabilities=False):
    """The predictor with tiles above ``max_side`` (what evaluation runs on large images)."""
    views = Views(max_side=max_side, large="tile", window=window, overlap=overlap)
    return predict_batch(as_runner(model), images, views, probabilities)


def logits_any_size(model, images, max_side, window, overlap):
    return log_probs(as_runner(model), images, Views(max_side=max_side, large="tile", window=window, overlap=overlap))


pytestmark = pytest.mark.usefixtures("one_thread")


class PerPixel(nn.Module):
    """Same interface as HierSegModel, but each output pixel depends on that input pixel only (1x1 convs)."""

    def __init__(self, taxonomy: Taxonomy, hidden: int = 6) -> None:
        super().__init__()
        self.taxonomy, self.flat = taxonomy, False
        self.body = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.Tanh())
        self.heads = nn.ModuleList(nn.Conv2d(hidden, n, 1) for n in taxonomy.level_sizes)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        f = self.body(images.float() / 64.0)
        return [h(f) for h in self.heads]


def test_window_starts_cover_the_side_and_end_flush():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(12, 4, 4) == [0, 4, 8]
    assert window_starts(13, 4, 4) == [0, 4, 8, 9]
    assert window_starts(3, 4, 3) == [0]  # smaller than one window: one (shorter) tile


@pytest.mark.parametrize("size, window, overlap", [((37, 53), 16, 0.25), ((37, 53), 16, 0.0), ((64, 40), 24, 0.5),
                                                   ((5, 300), 64, 0.25), ((3, 2), 8, 0.9)])
def test_per_pixel_model_tiles_equal_whole_image(pascal, size, window, overlap):
    torch.manual_seed(0)
    model = PerPixel(pascal).eval()
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    whole = model(images)
    tiled = sliding_window_logits(model, images, window, overlap)
    for a, b in zip(whole, tiled):
        assert b.shape == a.shape and b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    out = predict_large(model, images, max_side=min(size) - 1 if min(size) > 1 else 1, window=window, overlap=overlap)
    ref = predict_large(model, images, max_side=max(size))  # one pass
    assert torch.equal(out["leaf"], ref["leaf"]) and all(torch.equal(a, b) for a, b in zip(out["levels"], ref["levels"]))


def test_large_image_through_tiles():
    tax = Taxonomy.from_yaml_text("name: tiny\ntree:\n  background: 0\n  thing: {a: 1, b: 2}\n")
    torch.manual_seed(1)
    model = PerPixel(tax, hidden=3).eval()
    images = torch.randint(0, 256, (1, 3, 1200, 1600), dtype=torch.uint8)
    out = predict_large(model, images, max_side=1024, window=512, overlap=0.25)
    assert [lv.shape for lv in out["levels"]] == [torch.Size([1, 1200, 1600])] * 2
    ref = predict_large(model, images, max_side=1600)
    assert (out["leaf"] == ref["leaf"]).float().mean() > 0.9999  # float ties aside, the same labels


def test_real_model_full_window_is_identical_and_tiles_are_sane(pascal):
    torch.manual_seed(0)
    model = HierSegModel(pascal, decoder_channels=16, skip_channels=8).eval()
    images = torch.randint(0, 256, (1, 3, 75, 101), dtype=torch.uint8)
    with torch.no_grad():
        whole = model(images)
        reference = model.predict(images, probabilities=True)
    for a, b in zip(whole, sliding_window_logits(model, images, window=128)):
        assert torch.equal(a, b)
    small = predict_large(model, images, max_side=101, window=32, probabilities=True)  # fits: one pass
    assert all(torch.equal(a, b) for a, b in zip(small["probs"], reference["probs"]))
    tiled = predict_large(model, images, max_side=64, window=32, overlap=0.5)
    assert [lv.shape[-2:] for lv in tiled["levels"]] == [torch.Size([75, 101])] * 3
    assert all(torch.isfinite(z).all() for z in logits_any_size(model, images, 64, 32, 0.5))
    # tiles are tree-consistent like whole-image predictions
    for level, labels in enumerate(tiled["levels"]):
        assert torch.equal(labels, pascal.levels_from_leaves(tiled["leaf"])[level])


def test_bad_arguments_say_what_to_pass(pascal):
    model, images = PerPixel(pascal), torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="'window' must be a positive integer"):
        sliding_window_logits(model, images, 0)
    with pytest.raises(ValueError, match=r"'overlap' must be in \[0, 1\)"):
        sliding_window_logits(model, images, 4, overlap=1.0)
    with pytest.raises(ValueError, match="'max_side' must be a positive integer"):
        predict_large(model, images, max_side=0)
    with pytest.raises(ValueError, match="must be \\[B, C, H, W\\]"):
        sliding_window_logits(model, images[0], 4)
    with pytest.raises(ValueError, match="at the input size"):
        sliding_window_logits(lambda x: [x[..., ::2, ::2]], images, 4)
