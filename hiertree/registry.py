"""Named registries: the seams where a user adds a kind of thing (a decoder, a prediction writer, a dataset layout)
by registering it under a name that a config key or a flag then chooses, without editing the code that uses it.

A registry maps names to objects; an entry may also be registered *lazily* as ``"module:attribute"`` text, imported
on first use, which lets the package root wire a higher layer into a lower one's door without the lower layer
importing it (``HierSegModel.predict`` reaches the predictor of :mod:`hiertree.inference` this way).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

__all__ = ["Registry", "RegistryError", "PREDICTORS"]

T = TypeVar("T")


class RegistryError(ValueError):
    """A name no entry was registered under; the message names the key and the choices."""


class Registry(Generic[T]):
    """Names -> objects of one kind. ``key``: the config key or flag that picks an entry, for error messages."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._order: list[str] = []

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@DECODERS.register("fpn")`` over a class or function. A name registered twice is refused."""
        def add(obj: T) -> T:
            if name in self._entries or name in self._lazy:
                raise RegistryError(f"{self.kind} {name!r} is registered already; choose another name")
            self._entries[name] = obj
            self._order.append(name)
            return obj

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attribute"``, imported when :meth:`get` first asks for ``name``."""
        if ":" not in target:
            raise RegistryError(f"lazy {self.kind} {name!r}: expected 'module:attribute', got {target!r}")
        if name in self._entries or name in self._lazy:
            raise RegistryError(f"{self.kind} {name!r} is registered already; choose another name")
        self._lazy[name] = target
        self._order.append(name)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name raises :class:`RegistryError` with the choices."""
        if name not in self._entries and name in self._lazy:
            module, attribute = self._lazy.pop(name).split(":")
            self._entries[name] = getattr(importlib.import_module(module), attribute)
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"{self.key}: unknown {self.kind} {name!r}{hint}; choose from {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, in the order they were registered."""
        return list(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


#: What :meth:`hiertree.models.HierSegModel.predict` calls: ``"default"`` is wired by the package root to
#: :func:`hiertree.inference.predictor.predict_with_model` (models/ sits below inference/ and never imports it).
PREDICTORS: Registry[Callable] = Registry("predictor", "HierSegModel.predict")
