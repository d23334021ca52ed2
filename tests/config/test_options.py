"""The option declarations (hiertree/config/options.py): one source for defaults, checks, errors and docs/options.md."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from hiertree.config import options
from hiertree.config import DEFAULTS, load_config
from hiertree.config.options import (Config, DataOptions, EvalOptions, LossOptions, ModelOptions, SyntheticOptions,
                              TrainOptions, check_args, expected, options_markdown, plain)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "options.md"
KEYS = {key: field for key, _, _, field in options.iter_options()}


# ---------------------------------------------------------------------- docs/options.md
def test_docs_options_md_is_current():
    assert DOC.read_text(encoding="utf-8") == options_markdown(), (
        "docs/options.md is out of date: run `python -m hiertree.config.options --markdown` and commit it")


def test_markdown_command_writes_the_reference(tmp_path, capsys):
    out = tmp_path / "options.md"
    assert options.main(["--markdown", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == options_markdown()
    assert options.main(["--markdown", "--out", "-"]) == 0
    assert capsys.readouterr().out == options_markdown()


def test_markdown_lists_every_key_with_its_default_and_range():
    text = options_markdown()
    for key in KEYS:
        assert f"| `{key}` |" in text, key
    assert "| `train.lr` | float | `0.001` | `float > 0` | peak AdamW learning rate |" in text
    assert "| `data.longest` | int \\| null | `null` | `null or int >= 1` |" in text
    assert "`one of 'poly', 'onecycle', 'constant'`" in text


# ---------------------------------------------------------------------- the declarations themselves
def test_defaults_are_the_config_defaults():
    assert options.defaults() == DEFAULTS == Config().model_dump()
    assert list(DEFAULTS) == ["taxonomy", "data", "model", "loss", "train", "eval"]
    assert options.defaults(SyntheticOptions) == DEFAULTS["data"]["synthetic"]


@pytest.mark.parametrize(
    "key, default, allowed",
    [
        ("train.epochs", 10, "int >= 1"),
        ("train.lr", 0.001, "float > 0"),
        ("train.grad_clip", None, "null or float > 0"),
        ("train.schedule", "poly", "one of 'poly', 'onecycle', 'constant'"),
        ("model.output_stride", 16, "one of 8, 16, 32"),
        ("model.decoder_channels", 256, "int >= 1"),
        ("model.dropout", 0.1, "float in [0, 1)"),
        ("data.longest", None, "null or int >= 1"),
        ("data.color_jitter", 0.2, "float in [0, 1]"),
        ("data.scale", [0.5, 2.0], "[low, high] with 0 < low <= high"),
        ("eval.overlap", 0.25, "float in [0, 1)"),
        ("loss.level_weights", None, "null or a list of float >= 0"),
        ("taxonomy", "pascal_part", "str"),
    ],
)
def test_known_declarations(key, default, allowed):
    field = KEYS[key]
    assert field.default == default and expected(field) == allowed and field.description


def test_every_option_is_documented_and_null_only_where_the_default_is():
    for key, field in KEYS.items():
        assert field.description and "\n" not in field.description, key
        assert options.nullable(field) == (field.default is None), key
        if field.default is None:
            assert options.example(field) is not None, f"{key}: a null default needs an example for errors"
        expected(field), plain(field)  # every field can word what it accepts


def test_plain_wording_for_python_callers():
    assert plain(KEYS["eval.window"]) == "a positive integer"
    assert plain(KEYS["train.seed"]) == "a non-negative integer"
    assert plain(KEYS["eval.overlap"]) == "in [0, 1)"
    assert plain(KEYS["loss.ce_weight"]) == "a finite number >= 0"
    assert plain(KEYS["data.longest"]) == "None or a positive integer"


def test_models_are_strict_with_the_two_conversions():
    assert TrainOptions(lr="1e-3").lr == pytest.approx(1e-3)  # PyYAML 1.1 reads 1e-3 as a str
    assert TrainOptions(lr=1).lr == 1.0 and isinstance(TrainOptions(lr=1).lr, float)
    assert TrainOptions(out_dir=2024).out_dir == "2024" and DataOptions(root=77).root == "77"
    for bad in [dict(epochs=True), dict(epochs=2.5), dict(epochs="3"), dict(lr=float("nan")), dict(schedule="cosine")]:
        with pytest.raises(ValidationError):
            TrainOptions(**bad)
    for bad in [dict(output_stride=16.0), dict(output_stride=True), dict(decoder_chanels=8), dict(aspp_rates=[])]:
        with pytest.raises(ValidationError):
            ModelOptions(**bad)
    assert ModelOptions(aspp_rates=(6, 12, 18)).aspp_rates == [6, 12, 18]
    assert Config.model_validate(DEFAULTS).model_dump() == DEFAULTS


def test_check_args_words_refusals_for_the_caller():
    assert check_args(LossOptions, "here", label_smoothing=0) == {"label_smoothing": 0.0}
    with pytest.raises(ValueError, match=r"^sliding window: 'window' must be a positive integer, got 0$"):
        check_args(EvalOptions, "sliding window", window=0)
    class Refused(Exception):
        pass

    with pytest.raises(Refused, match=r"^f\(\): 'num_images' must be a positive integer, got 0$"):
        check_args(SyntheticOptions, "f()", error=Refused, names={"num_train": "num_images"}, num_train=0)
    with pytest.raises(ValueError, match=r"unknown option 'crpo' \(did you mean 'crop'\?\)"):
        check_args(DataOptions, "f()", crpo=1)


# ---------------------------------------------------------------------- one default, read everywhere
def test_longest_has_one_default_everywhere(tmp_path):
    from hiertree.data import build_datasets, eval_transform, train_transform
    from hiertree.tree.taxonomy import Taxonomy

    declared = DataOptions.model_fields["longest"].default
    assert declared is None and DEFAULTS["data"]["longest"] is declared
    assert inspect.signature(train_transform).parameters["longest"].default is declared
    assert inspect.signature(eval_transform).parameters["longest"].default is declared
    roles = {"background": "background", "head": "head", "torso": "torso"}
    train, val = build_datasets({"kind": "synthetic", "synthetic": {"num_train": 2, "num_val": 1, "size": 32, "roles": roles}},
                                Taxonomy.builtin("pascal_part"))  # the declaration itself, without the shared fixture
    assert "LongestMaxSize" not in repr(train.transform) and val.transform.is_identity


def test_model_config_is_the_validated_options(pascal):
    from hiertree.models import HierSegModel

    tax = pascal
    model = HierSegModel(tax, decoder_channels=16, skip_channels=8, aspp_rates=(3, 6), dropout=0)
    assert model.config == ModelOptions(decoder_channels=16, skip_channels=8, aspp_rates=[3, 6], dropout=0.0).model_dump()
    assert type(model.config) is dict and model.config["dropout"] == 0.0
    assert HierSegModel.from_config(tax, {"decoder_channels": 16, "skip_channels": 8}).config["encoder"] == "tf_efficientnet_lite0"


# ---------------------------------------------------------------------- layering
def test_options_imports_nothing_from_hiertree_nor_heavy_packages():
    tree = ast.parse((ROOT / "hiertree" / "config" / "options.py").read_text(encoding="utf-8"))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not top & {"hiertree", "torch", "timm", "numpy", "albumentations", "cv2"}, top
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))


def test_config_does_not_load_the_models():
    code = "import sys, hiertree.config; print('timm' in sys.modules, 'hiertree.models' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------- hiertree-train --print-config
def test_print_config_parses_back_to_the_same_config(monkeypatch, capsys, tmp_path):
    from hiertree.cli.train import main as train_main

    monkeypatch.chdir(ROOT)
    assert train_main(["--print-config", "--config", "configs/demo.yaml", "train.epochs=3"]) == 0
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg == load_config("configs/demo.yaml", ["train.epochs=3"]) and cfg["train"]["epochs"] == 3
    assert list(cfg) == list(DEFAULTS) and list(cfg["train"]) == list(DEFAULTS["train"])
    again = tmp_path / "printed.yaml"
    again.write_text(printed, encoding="utf-8")
    assert load_config(again) == cfg
