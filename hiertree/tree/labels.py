"""Label maps: how a dataset's mask values name nodes of the tree (``data.labels``).

A map ``{value: node name}`` turns the values a dataset's masks hold into node ids (see
:class:`~hiertree.tree.taxonomy.Taxonomy`): several values may name one node, and a value may name ``ignore``.
Masks of a person-only dataset (``{0: background, 1: body}``) then train the coarse levels of a parts
model, with no preprocessing script. Without a map (``None``) a mask holds node ids already: leaf ids,
inner node ids and the taxonomy's ``ignore_index``. With a map, every value a mask holds must be in
it; the taxonomy's ``ignore_index`` stays ignore unless the map names it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hiertree.config.options import suggest
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["IGNORE", "LabelMap", "LabelMapError"]

#: The node name that makes a mask value ignored.
IGNORE = "ignore"
_UNMAPPED = -1
_MAX_VALUE = 65535  # masks are uint8 (or uint16 .npy); a map past this is a typo


class LabelMapError(ValueError):
    """A label map names an unknown node, repeats a value, or meets a mask value it lacks."""


def _value(key: Any, where: str) -> int:
    """A mask value from a map key: an int, or a string of digits (JSON keys are strings)."""
    if isinstance(key, bool) or not isinstance(key, (int, str)) or (isinstance(key, str) and not key.strip().isdigit()):
        raise LabelMapError(f"{where}: key {key!r} is not a mask value; keys are integers 0..{_MAX_VALUE}")
    value = int(key)
    if not 0 <= value <= _MAX_VALUE:
        raise LabelMapError(f"{where}: mask value {value} is outside 0..{_MAX_VALUE}")
    return value


class LabelMap:
    """Mask value -> node id of ``taxonomy`` (``ignore_index`` for ``ignore``), checked on construction.

    ``where`` names the map in errors (a config key such as ``data.sources[1].labels``).
    """

    def __init__(self, taxonomy: Taxonomy, mapping: Mapping[Any, str] | None = None, where: str = "data.labels") -> None:
        self.taxonomy = taxonomy
        self.where = where
        self.mapping: dict[int, str] | None = None if mapping is None else self._parse(mapping)
        self._table = self._build_table()

    def _parse(self, mapping: Mapping[Any, str]) -> dict[int, str]:
        if not isinstance(mapping, Mapping) or not mapping:
            raise LabelMapError(f"{self.where}: expected a non-empty mapping of mask value to node name "
                                f"(like {{0: background, 1: body}}), got {mapping!r}")
        names = self.taxonomy.node_names
        out: dict[int, str] = {}
        for key, name in mapping.items():
            value = _value(key, self.where)
            if value in out:
                raise LabelMapError(f"{self.where}: mask value {value} is mapped twice ({out[value]!r} and {name!r}); "
                                    "map each value once")
            if name != IGNORE and name not in names:
                hint = suggest(name, names + [IGNORE])
                raise LabelMapError(f"{self.where}.{value}: taxonomy {self.taxonomy.name!r} has no node {name!r}{hint}; "
                                    f"name one of {', '.join(names)} or {IGNORE!r}")
            out[value] = name
        return out

    def _build_table(self) -> np.ndarray:
        t = self.taxonomy
        if self.mapping is None:
            size = max(t.num_nodes, t.ignore_index + 1)
            table = np.full(size, _UNMAPPED, dtype=np.int32)
            table[: t.num_nodes] = np.arange(t.num_nodes)
            table[t.ignore_index] = t.ignore_index
            return table
        size = max(max(self.mapping) + 1, t.ignore_index + 1)
        table = np.full(size, _UNMAPPED, dtype=np.int32)
        table[t.ignore_index] = t.ignore_index
        for value, name in self.mapping.items():
            table[value] = t.ignore_index if name == IGNORE else t.node_id(name)
        return table

    @property
    def is_identity(self) -> bool:
        """True when masks already hold node ids (no map given)."""
        return self.mapping is None

    def node_ids(self) -> list[int]:
        """The node ids this map can produce (all of them without a map)."""
        if self.mapping is None:
            return list(range(self.taxonomy.num_nodes))
        return sorted({self.taxonomy.node_id(n) for n in self.mapping.values() if n != IGNORE})

    def apply(self, mask: np.ndarray, where: str = "mask") -> np.ndarray:
        """The node-id mask (uint8 when ids fit, else uint16) of a raw mask; raises naming ``where``, the value
        and its pixel count for a value the map lacks."""
        mask = np.asarray(mask)
        if mask.dtype.kind not in "ui":
            raise LabelMapError(f"{where}: mask dtype {mask.dtype} holds no integer labels")
        top = int(mask.max()) if mask.size else 0
        if mask.size and (int(mask.min()) < 0 or top >= len(self._table)):
            self._fail(mask, where)
        out = self._table[mask]
        if mask.size and int(out.min()) == _UNMAPPED:
            self._fail(mask, where)
        dtype = np.uint8 if max(self.taxonomy.num_nodes, self.taxonomy.ignore_index) < 256 else np.uint16
        return out.astype(dtype)

    def _fail(self, mask: np.ndarray, where: str) -> None:
        values, counts = np.unique(mask, return_counts=True)
        bad = [(int(v), int(c)) for v, c in zip(values, counts)
               if v < 0 or v >= len(self._table) or self._table[v] == _UNMAPPED]
        shown = ", ".join(f"{v} ({c} px)" for v, c in bad[:10])
        if self.mapping is None:
            raise LabelMapError(
                f"{where}: mask values {shown} are no node id of taxonomy {self.taxonomy.name!r} (leaves "
                f"0..{self.taxonomy.num_leaves - 1}, inner nodes {self.taxonomy.num_leaves}..{self.taxonomy.num_nodes - 1}, "
                f"ignore {self.taxonomy.ignore_index}); map the dataset's values with {self.where}")
        raise LabelMapError(f"{where}: mask values {shown} are not in {self.where} (it maps "
                            f"{', '.join(map(str, sorted(self.mapping)))}); add them, e.g. '{bad[0][0]}: {IGNORE}'")

    def to_config(self) -> dict[int, str] | None:
        """The map as a config holds it (None without a map)."""
        return None if self.mapping is None else dict(sorted(self.mapping.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.mapping == other.mapping and self.taxonomy == other.taxonomy

    def __repr__(self) -> str:
        return f"LabelMap({self.to_config()!r}, taxonomy={self.taxonomy.name!r})"
