"""Each registered decoder (``model.decoder``): shapes at any input size, training, one-image batches, saving and
loading, the ONNX graph agreeing with PyTorch; an unknown name refused with the choices."""

import numpy as np
import pytest
import torch

from hiertree.inference.predictor import Predictor
from hiertree.models import HierSegModel, load_model
from hiertree.models.decoders import DECODERS

TINY = dict(encoder="tf_efficientnet_lite0", decoder_channels=16, skip_channels=8)


def test_both_decoders_are_registered():
    assert DECODERS.names()[:2] == ["deeplabv3plus", "fpn"]


@pytest.mark.parametrize("name", DECODERS.names())
@pytest.mark.parametrize("os_", [16, 32])
def test_every_decoder_gives_one_map_per_level_at_any_size(pascal, name, os_):
    torch.manual_seed(0)
    model = HierSegModel(pascal, decoder=name, output_stride=os_, **TINY).eval()
    assert model.config["decoder"] == name and model.output_reduction == 4  # both read the stride-4 map
    x = torch.randint(0, 256, (2, 3, 45, 71), dtype=torch.uint8)
    assert [tuple(z.shape) for z in model(x)] == [(2, n, 45, 71) for n in (2, 3, 7)]
    assert [tuple(z.shape) for z in model(x, upsample=False)] == [(2, n, 12, 18) for n in (2, 3, 7)]  # ceil(45/4)..


@pytest.mark.parametrize("name", DECODERS.names())
def test_every_decoder_trains_on_one_image_batches(pascal, name):
    torch.manual_seed(0)
    model = HierSegModel(pascal, decoder=name, **TINY).train()
    x = torch.randint(0, 256, (1, 3, 64, 64)).float()
    target = torch.randint(0, 7, (1, 64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x)[-1], target)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.decoder.parameters())  # every decoder weight is used
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_fpn_reads_every_map_from_stride_4(pascal):
    model = HierSegModel(pascal, decoder="fpn", **TINY)
    assert model.encoder.reductions == [2, 4, 8, 16, 16]  # lite0 at output stride 16: the last stage dilated
    assert model.decoder.first == 1 and len(model.decoder.laterals) == 4
    assert model.decoder.out_channels == 8 and model.heads[0].in_channels == 8  # branches are half the pyramid


def test_an_unknown_decoder_names_the_key_and_the_choices(pascal):
    with pytest.raises(ValueError, match=r"model.decoder: unknown decoder 'fnp' \(did you mean 'fpn'\?\); choose from "
                                         r"deeplabv3plus, fpn"):
        HierSegModel(pascal, decoder="fnp", **TINY)


def test_an_fpn_model_saves_loads_and_runs_in_onnx_runtime(pascal, tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = HierSegModel(pascal, decoder="fpn", **TINY).eval()
    model.save_pretrained(tmp_path / "fpn")
    loaded = load_model(tmp_path / "fpn")[0]
    x = torch.randint(0, 256, (1, 3, 40, 52)).float()
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(model(x), loaded(x)))
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    onnx, plain = (Predictor(loaded, backend=b)(image)["levels"] for b in ("onnx", "torch"))
    assert all((a == b).mean() >= 0.999 for a, b in zip(onnx, plain))
