"""Run configuration: defaults, YAML files and ``key=value`` overrides, checked against :mod:`hiertree.config.options`.

A config is a plain nested dict shaped like :data:`DEFAULTS`, the declared defaults. Every key must be
declared in :mod:`hiertree.config.options`, and each value passes its declaration (type, range or choice; see
``docs/options.md``) or is refused in one line naming the source, the key, the expected form, an example
and the value. ``None`` is accepted only where the default is ``None``. Ints, and numeric strings such as
``1e-3`` (which PyYAML reads as str), are accepted where floats are expected and stored as floats. An
empty section (``train:``) changes nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from hiertree.config import options
from hiertree.config.options import OptionError, describe_value, suggest
from hiertree.config.yaml_unique import DuplicateKeyError, load_unique

__all__ = ["DEFAULTS", "PRESETS", "ConfigError", "presets", "resolve_config", "load_config", "apply_overrides", "merge", "dump_config"]


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and suggests a fix."""


#: The declared defaults (:mod:`hiertree.config.options`) as a nested dict, in declaration order.
DEFAULTS: dict[str, Any] = options.defaults()

#: Dotted key -> what it accepts, worded as errors word it; derived from the declarations, for introspection.
_RULES: dict[str, str] = {key: options.expected(field) for key, _, _, field in options.iter_options()}


def _checked(path: str, value: Any, source: str) -> Any:
    """``value`` for key ``path`` after its declaration accepts it (converted); else a :class:`ConfigError`."""
    try:
        return options.check_option(path, value)
    except OptionError as err:
        raise ConfigError(f"{source}: {err}") from None


def merge(base: dict, update: dict, schema: dict, where: str = "", source: str = "config") -> dict:
    """Recursively merge ``update`` into a copy of ``base``, checking keys and values against ``schema``.

    An empty section (``train:`` with nothing under it) changes nothing.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in schema:
            raise ConfigError(f"{source}: unknown key {path!r}{suggest(str(key), schema)} (allowed here: {', '.join(schema)})")
        default = schema[key]
        if isinstance(default, dict) and default:  # a section
            if value is None:
                continue
            if not isinstance(value, dict):
                first = next(iter(default.items()))
                raise ConfigError(f"{source}: key {path!r} must be a mapping of its keys (like {first[0]}: {first[1]}), "
                                  f"got {describe_value(value)}")
            out[key] = merge(out.get(key) or {}, value, default, f"{path}.", source)
            continue
        field = options.field_of(path)
        items = options.item_section(field) if field is not None else None
        out[key] = _merge_items(path, value, items, source) if items is not None and value is not None else \
            _checked(path, value, source)
    return out


def _merge_items(path: str, value: Any, items: Any, source: str) -> list[dict]:
    """A list of sections (``data.sources``): each entry checked key by key, as ``data.sources[1].weight``."""
    _checked(path, value, source)  # the list itself: a non-empty list of mappings
    base = options.defaults(items)
    return [merge(base, entry, base, f"{path}[{i}].", source) for i, entry in enumerate(value)]


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


#: the configs that ship inside the package (``hiertree-train --config demo``); the repository's ``configs/`` is this folder
PRESETS = Path(__file__).resolve().parent / "presets"


def presets() -> list[str]:
    """Names of the bundled configs: ``load_config(name)`` and ``hiertree-train --config name`` find them anywhere."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A config file: ``path`` itself, or the bundled preset of that name (``demo``, ``pascal_part_cpu``, ...)."""
    given = Path(path)
    if given.is_file():
        return given
    preset = PRESETS / f"{given.name}.yaml"
    if given.name == str(path) and given.suffix == "" and preset.is_file():
        return preset
    raise ConfigError(f"config file {str(path)!r} does not exist (nor is it a bundled preset: {', '.join(presets())})")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults ← YAML file (or bundled preset, by name) ← overrides (CLI overrides win)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = resolve_config(path)
        try:
            data = load_unique(path.read_text(encoding="utf-8")) or {}
        except DuplicateKeyError as err:
            raise ConfigError(f"{path}: {err}; give each key once") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config is a mapping of sections (data, model, loss, train, eval)")
        cfg = merge(cfg, data, DEFAULTS, source=str(path))
    return apply_overrides(cfg, overrides)


def dump_config(cfg: dict) -> str:
    """The config as YAML, in :data:`DEFAULTS` order."""
    return yaml.safe_dump(cfg, sort_keys=False)
