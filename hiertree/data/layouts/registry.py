"""The dataset layout registry: ``data.kind`` (or ``data.sources[].kind``) names an entry."""

from __future__ import annotations

from typing import Callable

from hiertree.registry import Registry

__all__ = ["LAYOUTS"]

#: kind -> ``open(source, taxonomy) -> (train samples, val samples or None)`` (the layout files register themselves)
LAYOUTS: Registry[Callable] = Registry("dataset layout", "data.kind")
