"""YAML that refuses duplicate keys: PyYAML silently keeps the last of two equal keys, which hides typos
such as a class or a mask value listed twice."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "load_unique"]


class DuplicateKeyError(ValueError):
    """A mapping holds one key twice; the message names the key and both lines."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key they already hold."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise DuplicateKeyError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                    f"(first at line {seen[key] + 1})")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_unique(text: str) -> Any:
    """``yaml.safe_load(text)``, but a repeated key in any mapping raises :class:`DuplicateKeyError`."""
    return yaml.load(text, Loader=_UniqueKeyLoader)
