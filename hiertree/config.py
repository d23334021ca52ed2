"""Run configuration: defaults, YAML files and ``key=value`` overrides, with checked keys and types.

A config is a plain nested dict. Every key must exist in :data:`DEFAULTS`; a value must have the
default's type (ints are accepted where floats are expected; a default of ``None`` accepts anything).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

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
        "full_resolution": True,  # False: loss at the decoder stride (targets nearest-downsampled), faster
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


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def merge(base: dict, update: dict, schema: dict, where: str = "", source: str = "config") -> dict:
    """Recursively merge ``update`` into a copy of ``base``, checking keys and types against ``schema``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in schema:
            raise ConfigError(f"{source}: unknown key {path!r}{_suggest(str(key), schema)} (allowed here: {', '.join(schema)})")
        default = schema[key]
        if isinstance(default, dict) and default and isinstance(value, dict):
            out[key] = merge(out.get(key) or {}, value, default, f"{path}.", source)
            continue
        if not _type_ok(value, default):
            raise ConfigError(
                f"{source}: key {path!r} must be {type(default).__name__} (like {default!r}), got {type(value).__name__} {value!r}"
            )
        out[key] = float(value) if isinstance(default, float) and value is not None else value
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
    return yaml.safe_dump(cfg, sort_keys=False)
