"""Config loading: defaults, files, overrides, and clear errors for unknown keys and wrong types."""

import pytest

from hiertree.config import DEFAULTS, ConfigError, apply_overrides, load_config


def test_defaults_and_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 3, lr: 0.01}\nmodel: {decoder_channels: 32}\n")
    cfg = load_config(f, ["train.epochs=5", "data.scale=[0.75, 1.5]", "model.encoder=resnet18"])
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["lr"] == 0.01
    assert cfg["model"]["decoder_channels"] == 32 and cfg["model"]["encoder"] == "resnet18"
    assert cfg["data"]["scale"] == [0.75, 1.5]
    assert cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]


def test_int_is_accepted_for_float_and_stored_as_float():
    cfg = apply_overrides(load_config(), ["train.lr=1"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epoch=3", r"unknown key 'train.epoch'; did you mean 'epochs'"),
        ("trian.epochs=3", r"unknown key 'trian'; did you mean 'train'"),
        ("train.epochs=three", r"'train.epochs' must be int.*'three'"),
        ("train.epochs=2.5", r"'train.epochs' must be int"),
        ("data.hflip=3", r"'data.hflip' must be bool"),
        ("model.decoder_channels", r"not key=value"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_files(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: {encoder_weight: x}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.encoder_weight'; did you mean 'encoder_weights'"):
        load_config(f)
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
