"""The class tree: YAML in, index-mapping matrices out.

A taxonomy file is a nested mapping. Inner nodes map names to children; a leaf maps its name to the
integer id its pixels carry in the masks (or to ``{id: N, color: [r, g, b]}``)::

    name: street
    ignore_index: 255
    tree:
      background: 0
      vehicle:
        wheeled: {car: 1, bike: 2}
        rail: {tram: 3}
      person: 4
    colors: {vehicle: [200, 80, 80]}
    exclude_from_miou: [background]

``exclude_from_miou`` (optional) lists the classes left out of the headline ``mIoU`` at every level
where they are a class (``mIoU_with_background`` and the per-class IoU keep them); any node of the
tree may be named, ``[]`` means none. Without the key, a top-level leaf named ``background`` is left
out when the tree has one, and nothing otherwise.

Level ``l`` holds the nodes at depth ``l + 1`` (children of the root are depth 1). A leaf that is
shallower than the deepest level is carried down unchanged, so every level partitions every pixel.
At the deepest level a class index equals its leaf id; at coarser levels classes follow YAML order.
Everything else in hiertree (models, losses, metrics, data) is sized from this object.

**Node ids.** Every node has an id: a leaf keeps its mask id (``0..num_leaves-1``), inner nodes follow as
``num_leaves, num_leaves+1, ...`` in tree pre-order (YAML order, parents before children). A mask of node
ids is a valid target wherever a leaf mask is: a pixel labelled at an inner node ``n`` has a class at
every level down to ``n``'s own (``node_level(n)``) and is *partial* below it -- there it is known only
to be one of the classes under ``n`` (``label_sets``). ``ignore_index`` may not be a node id.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import networkx as nx
import numpy as np
import yaml

from hiertree.config.options import suggest
from hiertree.config.yaml_unique import DuplicateKeyError, load_unique

if TYPE_CHECKING:  # PyTorch loads on the first tensor a method returns: reading a tree and predicting from an
    import torch  # ONNX graph (hiertree-predict on a CPU) need none of it

__all__ = ["Taxonomy", "TaxonomyError", "list_builtin"]

_ROOT = ("<root>",)
_TOP_KEYS = ("name", "ignore_index", "tree", "colors", "exclude_from_miou")
#: the top-level leaf left out of the headline mIoU when a tree has no ``exclude_from_miou`` key
DEFAULT_EXCLUDED_LEAF = "background"
_LEAF_KEYS = ("id", "color")


class TaxonomyError(ValueError):
    """A taxonomy file or text is invalid; the message names the source, the key and the fix."""


def _default_color(index: int) -> tuple[int, int, int]:
    """PASCAL-VOC style bit-interleaved palette: distinct, deterministic colours for any index."""
    r = g = b = 0
    c = index
    for shift in range(7, -1, -1):
        r |= ((c >> 0) & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return (r, g, b)


@dataclass(frozen=True)
class _Leaf:
    name: str
    id: int
    depth: int


class Taxonomy:
    """A validated class tree with per-level class lists and mapping matrices.

    Build one with :meth:`from_yaml`, :meth:`builtin` or :meth:`load`; do not call the constructor
    with hand-made graphs unless you validated them yourself.
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        name: str,
        ignore_index: int,
        colors: dict[str, tuple[int, int, int]],
        source: str,
        exclude_from_miou: Sequence[str] | None = None,
    ) -> None:
        self.graph = graph
        self.name = name
        self.ignore_index = ignore_index
        self.source = source
        self._explicit_colors = dict(colors)
        self._default_excluded = _default_excluded(graph)
        excluded = self._default_excluded if exclude_from_miou is None else exclude_from_miou
        self._excluded = tuple(sorted(set(excluded), key=lambda n: graph.nodes[n]["order"]))
        self._parent_tables: dict[tuple[int, int], torch.Tensor] = {}
        self._children: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._on_device: dict[tuple[Any, str], Any] = {}  # look-up tables copied to a device once (see _device_table)
        self._build_levels()
        self._build_nodes()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "Taxonomy":
        """Parse a taxonomy from a YAML file path or from YAML text."""
        text, source = _read_source(path_or_text)
        return cls.from_yaml_text(text, source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "Taxonomy":
        """Build from an already-parsed mapping with keys ``name``, ``ignore_index``, ``tree``, ``colors``,
        ``exclude_from_miou``."""
        if not isinstance(data, dict):
            raise TaxonomyError(
                f"{source}: expected a mapping with a 'tree' key at the top, got {type(data).__name__}"
            )
        for key in data:
            if key not in _TOP_KEYS:
                raise TaxonomyError(
                    f"{source}: unknown top-level key {key!r}{suggest(key, _TOP_KEYS)}; "
                    f"allowed: {', '.join(_TOP_KEYS)}"
                )
        if "tree" not in data:
            raise TaxonomyError(f"{source}: missing the 'tree' key that holds the class tree")
        name = data.get("name", Path(source).stem if source.endswith((".yaml", ".yml")) else "taxonomy")
        if not isinstance(name, str) or not name:
            raise TaxonomyError(f"{source}: 'name' must be a non-empty string, got {name!r}")
        ignore_index = data.get("ignore_index", 255)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
            raise TaxonomyError(
                f"{source}: 'ignore_index' must be a non-negative integer (masks hold unsigned values), "
                f"got {ignore_index!r}; 255 is the usual choice"
            )

        graph = nx.DiGraph()
        graph.add_node(_ROOT, depth=0, order=0)
        colors: dict[str, tuple[int, int, int]] = {}
        leaves: list[_Leaf] = []
        _add_children(graph, _ROOT, data["tree"], "tree", source, leaves, colors, active=set())
        if not leaves:
            raise TaxonomyError(f"{source}: key 'tree': the tree has no leaves; give each leaf an integer id")

        _check_ids(leaves, ignore_index, source)

        raw_colors = data.get("colors") or {}
        if not isinstance(raw_colors, dict):
            raise TaxonomyError(f"{source}: 'colors' must map class names to [r, g, b]")
        for cname, value in raw_colors.items():
            if cname not in graph:
                raise TaxonomyError(
                    f"{source}: key 'colors.{cname}': no class of that name{suggest(cname, _names(graph))}"
                )
            colors[cname] = _parse_color(value, f"colors.{cname}", source)
        excluded = _parse_excluded(data["exclude_from_miou"], graph, source) if "exclude_from_miou" in data else None
        return cls(graph, name, ignore_index, colors, source, excluded)

    @classmethod
    def builtin(cls, name: str) -> "Taxonomy":
        """Load a taxonomy bundled with hiertree (see :func:`list_builtin`)."""
        available = list_builtin()
        if name not in available:
            raise TaxonomyError(
                f"no built-in taxonomy {name!r}{suggest(name, available)}; available: {', '.join(available)}"
            )
        res = resources.files("hiertree.tree.taxonomies").joinpath(f"{name}.yaml")
        return cls.from_yaml_text(res.read_text(encoding="utf-8"), source=f"builtin:{name}")

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<text>") -> "Taxonomy":
        try:
            data = load_unique(text)
        except DuplicateKeyError as err:
            raise TaxonomyError(f"{source}: {err}; every class name must appear once") from None
        except yaml.YAMLError as err:
            raise TaxonomyError(f"{source}: {_yaml_problem(err)}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, spec: "str | Path | Taxonomy") -> "Taxonomy":
        """A built-in name, a YAML path, YAML text, or an existing Taxonomy."""
        if isinstance(spec, Taxonomy):
            return spec
        if isinstance(spec, str) and spec in list_builtin():
            return cls.builtin(spec)
        return cls.from_yaml(spec)

    # ------------------------------------------------------------------ levels
    def _build_levels(self) -> None:
        g = self.graph
        order = list(nx.dfs_preorder_nodes(g, _ROOT))  # successors keep insertion (YAML) order
        leaves = [n for n in order if g.nodes[n].get("leaf_id") is not None]
        self._leaf_by_id = sorted(leaves, key=lambda n: g.nodes[n]["leaf_id"])
        self.depth = max(g.nodes[n]["depth"] for n in leaves)
        self._level_classes: list[list[str]] = []
        for level in range(self.depth):
            depth = level + 1
            if depth == self.depth:
                names = list(self._leaf_by_id)
            else:
                names = [
                    n for n in order
                    if n != _ROOT and (g.nodes[n]["depth"] == depth or (g.nodes[n]["depth"] < depth and n in leaves))
                ]
            self._level_classes.append(names)
        # leaf id -> class index at each level, via the leaf's ancestor (or itself when carried down)
        lut = np.zeros((self.depth, len(leaves)), dtype=np.int64)
        for leaf in leaves:
            path = nx.shortest_path(g, _ROOT, leaf)[1:]
            for level in range(self.depth):
                node = path[min(level, len(path) - 1)]
                lut[level, g.nodes[leaf]["leaf_id"]] = self._level_classes[level].index(node)
        self._lut = lut  # numpy; tensor methods wrap it (torch.from_numpy shares the memory)

    def _build_nodes(self) -> None:
        """Node ids (leaves, then inner nodes in pre-order) and, per level, each node's class or class set."""
        g = self.graph
        inner = [n for n in nx.dfs_preorder_nodes(g, _ROOT) if n != _ROOT and g.nodes[n].get("leaf_id") is None]
        self._node_names = list(self._leaf_by_id) + inner
        self._node_index = {n: i for i, n in enumerate(self._node_names)}
        if self.num_leaves <= self.ignore_index < self.num_nodes:
            raise TaxonomyError(
                f"{self.source}: ignore_index {self.ignore_index} is the node id of inner node "
                f"{self._node_names[self.ignore_index]!r} (inner nodes take ids {self.num_leaves}..{self.num_nodes - 1} "
                f"after the leaves); choose an ignore_index of {self.num_nodes} or more (255 is the usual choice)"
            )
        sets = np.zeros((self.depth, self.num_nodes, max(self.level_sizes)), dtype=bool)
        for i, node in enumerate(self._node_names):
            leaves = np.array(self.leaves_under(node))
            for level in range(self.depth):
                sets[level, i, self._lut[level][leaves]] = True
        self._label_sets = [sets[level, :, : self.num_classes(level)].copy() for level in range(self.depth)]
        node_lut = np.full((self.depth, self.num_nodes), self.ignore_index, dtype=np.int64)
        for level in range(self.depth):
            exact = self._label_sets[level].sum(1) == 1
            node_lut[level, exact] = self._label_sets[level][exact].argmax(1)
        self._node_lut = node_lut

    @property
    def num_levels(self) -> int:
        return self.depth

    @property
    def num_leaves(self) -> int:
        return len(self._leaf_by_id)

    def _check_level(self, level: int) -> int:
        if not -self.depth <= level < self.depth:
            raise IndexError(f"taxonomy {self.name!r} has levels 0..{self.depth - 1}, asked for {level}")
        return level % self.depth

    def classes(self, level: int) -> list[str]:
        """Class names of ``level`` in class-index order."""
        return list(self._level_classes[self._check_level(level)])

    def num_classes(self, level: int) -> int:
        return len(self._level_classes[self._check_level(level)])

    @property
    def level_sizes(self) -> list[int]:
        return [len(c) for c in self._level_classes]

    @property
    def leaf_names(self) -> list[str]:
        return list(self._leaf_by_id)

    def _device_table(self, key: Any, device: torch.device | str, build: Any) -> Any:
        """``build()`` (a tensor or a list of tensors, on the CPU) on ``device``, copied there once and kept: a copy
        from host memory in every training step makes the CPU wait for the GPU's queue each time. Shared, not
        copied per call: do not modify it."""
        import torch

        device = torch.device(device)
        cache_key = (key, str(device))
        if cache_key not in self._on_device:
            value = build()
            self._on_device[cache_key] = ([t.to(device) for t in value] if isinstance(value, list)
                                          else value.to(device))
        return self._on_device[cache_key]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_on_device"] = {}  # device copies stay in their process (data-loader workers get none)
        return state

    def leaf_to_class(self, level: int, device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [num_leaves]: leaf id -> class index at ``level`` (no ignore entry); with ``device``, the
        cached copy there (shared: do not modify)."""
        import torch

        level = self._check_level(level)
        if device is not None:
            return self._device_table(("leaf_to_class", level), device, lambda: torch.from_numpy(self._lut[level]))
        return torch.from_numpy(self._lut[level].copy())

    def leaf_lut(self, level: int) -> torch.Tensor:
        """LongTensor indexed by mask value: leaf id -> class index at ``level``.

        Its length covers ``ignore_index`` (when non-negative), which maps to itself; every other
        value that is not a leaf id also maps to ``ignore_index``.
        """
        import torch

        row = self._lut[self._check_level(level)]
        size = max(self.num_leaves, self.ignore_index + 1)
        lut = torch.full((size,), self.ignore_index, dtype=torch.long)
        lut[: self.num_leaves] = torch.from_numpy(row)
        return lut

    def mapping_matrix(self, level: int) -> torch.Tensor:
        """Float [num_leaves, num_classes(level)]: one-hot ancestor of each leaf at ``level``."""
        import torch

        level = self._check_level(level)
        m = torch.zeros(self.num_leaves, self.num_classes(level))
        m[torch.arange(self.num_leaves), torch.from_numpy(self._lut[level])] = 1.0
        return m

    def parent_matrix(self, level: int) -> torch.Tensor:
        """Float [num_classes(level+1), num_classes(level)]: one-hot parent of each finer class."""
        level = self._check_level(level)
        if level + 1 >= self.depth:
            raise IndexError(f"level {level} is the deepest of taxonomy {self.name!r}; it has no finer level")
        import torch

        p = torch.zeros(self.num_classes(level + 1), self.num_classes(level))
        p[torch.from_numpy(self._lut[level + 1]), torch.from_numpy(self._lut[level])] = 1.0
        return p

    def parent_index(self, level: int) -> torch.Tensor:
        """LongTensor [num_classes(level+1)]: the parent class index at ``level`` of each finer class."""
        level = self._check_level(level)
        if level + 1 >= self.depth:
            raise IndexError(f"level {level} is the deepest of taxonomy {self.name!r}; it has no finer level")
        return self._ancestor_table(level, level + 1).clone()

    def _ancestor_table(self, level: int, finer: int) -> torch.Tensor:
        """Cached LongTensor [num_classes(finer)]: the class at ``level`` above each class of ``finer``."""
        key = (level, finer)
        if key not in self._parent_tables:
            import torch

            table = torch.empty(self.num_classes(finer), dtype=torch.long)
            table[torch.from_numpy(self._lut[finer])] = torch.from_numpy(self._lut[level])
            self._parent_tables[key] = table
        return self._parent_tables[key]

    def children(self, level: int, finer: int | None = None, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Per class of ``level``, the sorted LongTensor of class indices at ``finer`` below it.

        ``finer`` defaults to ``level + 1``; ``finer = num_levels - 1`` gives each class's leaf ids. A leaf
        carried down is its own only child. The one place children groups are computed (losses,
        flat-head marginalisation); cached, callers get copies, or with ``device`` the cached copies there (shared).
        """
        level = self._check_level(level)
        finer = level + 1 if finer is None else self._check_level(finer)
        if finer <= level:
            raise IndexError(f"children({level}, {finer}): the finer level must be deeper than {level}")
        key = (level, finer)
        if key not in self._children:
            import torch

            table = self._ancestor_table(level, finer)
            self._children[key] = [torch.nonzero(table == c).flatten() for c in range(self.num_classes(level))]
        if device is not None:
            return self._device_table(("children", key), device, lambda: self._children[key])
        return [g.clone() for g in self._children[key]]

    # ------------------------------------------------------------------ nodes
    @property
    def num_nodes(self) -> int:
        """Leaves plus inner nodes (the root is no node)."""
        return len(self._node_names)

    @property
    def node_names(self) -> list[str]:
        """Every node's name in node-id order: the leaves by id, then the inner nodes in pre-order."""
        return list(self._node_names)

    def _node(self, name: str) -> str:
        if name not in self._node_index:
            raise TaxonomyError(
                f"taxonomy {self.name!r} has no node named {name!r}{suggest(name, self._node_names)}; "
                f"its nodes: {', '.join(self._node_names)}"
            )
        return name

    def node_id(self, name: str) -> int:
        """The id a mask uses for ``name``: its leaf id, or ``num_leaves + k`` for the k-th inner node."""
        return self._node_index[self._node(name)]

    def node_name(self, node_id: int) -> str:
        if isinstance(node_id, bool) or not 0 <= int(node_id) < self.num_nodes:
            raise IndexError(f"taxonomy {self.name!r} has node ids 0..{self.num_nodes - 1}, asked for {node_id!r}")
        return self._node_names[int(node_id)]

    def is_leaf(self, name: str) -> bool:
        return self.graph.nodes[self._node(name)].get("leaf_id") is not None

    def node_depth(self, name: str) -> int:
        """1 for a child of the root, 2 for its children, and so on."""
        return int(self.graph.nodes[self._node(name)]["depth"])

    def node_level(self, name: str) -> int:
        """The deepest level at which a pixel labelled ``name`` has one class (a leaf: the last level; an inner
        node: its own level, or deeper down a chain of only children)."""
        i = self.node_id(name)
        return max(l for l in range(self.depth) if int(self._label_sets[l][i].sum()) == 1)

    def ancestors(self, name: str) -> list[str]:
        """``name``'s ancestors from its parent up to the depth-1 node (the root is no node); ``[]`` at depth 1."""
        path = nx.shortest_path(self.graph, _ROOT, self._node(name))
        return list(reversed(path[1:-1]))

    def leaf_chains(self, device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [depth, num_leaves]: row k holds each leaf's k-th node id going up (row 0 the leaf itself);
        past its depth-1 node a chain repeats that node, so every row is defined. ``device``: a cached copy there."""
        if device is not None:
            return self._device_table("leaf_chains", device, self.leaf_chains)
        import torch

        table = torch.empty(self.depth, self.num_leaves, dtype=torch.long)
        for leaf in range(self.num_leaves):
            name = self._leaf_by_id[leaf]
            chain = [leaf] + [self.node_id(a) for a in self.ancestors(name)]
            table[:, leaf] = torch.tensor(chain + [chain[-1]] * (self.depth - len(chain)))
        return table

    def inner_leaf_sets(self, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Per inner node, in node-id order, the LongTensor of the leaf ids under it (``device``: cached copies)."""
        import torch

        build = lambda: [torch.tensor(self.leaves_under(n)) for n in self._node_names[self.num_leaves:]]  # noqa: E731
        return self._device_table("inner_leaf_sets", device, build) if device is not None else build()

    def leaves_under(self, name: str) -> list[int]:
        """Sorted leaf ids of the leaves at or below ``name``."""
        node = self._node(name)
        below = nx.descendants(self.graph, node) | {node}
        return sorted(self.graph.nodes[n]["leaf_id"] for n in below if self.graph.nodes[n].get("leaf_id") is not None)

    def node_lut(self, level: int) -> torch.Tensor:
        """LongTensor indexed by mask value: node id -> class index at ``level``, or ``ignore_index`` where the
        node is partial there (an inner node above ``level``) and for every value that is no node id."""
        import torch

        size = max(self.num_nodes, self.ignore_index + 1)
        lut = torch.full((size,), self.ignore_index, dtype=torch.long)
        lut[: self.num_nodes] = torch.from_numpy(self._node_lut[self._check_level(level)])
        return lut

    def label_sets(self, level: int) -> torch.Tensor:
        """BoolTensor [num_nodes, num_classes(level)]: the classes of ``level`` a pixel labelled at each node
        may be (one for a node at or below the level, the classes under it for a coarser inner node)."""
        import torch

        return torch.from_numpy(self._label_sets[self._check_level(level)].copy())

    def partial_levels(self) -> list[int]:
        """Levels at which some inner node is partial: below the shallowest inner node with several leaves."""
        return [l for l in range(self.depth) if bool((self._label_sets[l].sum(1) > 1).any())]

    @property
    def exclude_from_miou(self) -> tuple[str, ...]:
        """Names left out of the headline mIoU wherever they are a class (YAML ``exclude_from_miou``), tree order."""
        return self._excluded

    def foreground_nodes(self) -> list[int]:
        """Node ids of the foreground: every node (leaves and inner nodes) that is not in ``exclude_from_miou`` nor
        below a node that is (Pascal-Part people: ``body`` and everything under it; ``background`` is not). The pixels
        back-off's promise is about by default; leaves come first (ids below ``num_leaves``)."""
        excluded = set(self._excluded)
        return [i for i, n in enumerate(self._node_names)
                if n not in excluded and not excluded.intersection(self.ancestors(n))]

    def miou_mask(self, level: int) -> torch.Tensor:
        """BoolTensor [num_classes(level)]: True for the classes the headline mIoU of ``level`` averages."""
        import torch

        excluded = set(self._excluded)
        return torch.tensor([n not in excluded for n in self.classes(level)], dtype=torch.bool)

    def check_mask(self, mask: torch.Tensor | np.ndarray, where: str = "mask") -> None:
        """Raise ValueError naming ``where`` when the mask holds values that are no node id nor ignore."""
        values, counts = np.unique(np.asarray(mask), return_counts=True)
        bad = [(int(v), int(c)) for v, c in zip(values, counts) if not (0 <= v < self.num_nodes or v == self.ignore_index)]
        if bad:
            shown = ", ".join(f"{v} ({c} px)" for v, c in bad[:10])
            raise ValueError(
                f"{where}: label values {shown} are not in taxonomy {self.name!r} "
                f"(leaf ids 0..{self.num_leaves - 1}, inner node ids {self.num_leaves}..{self.num_nodes - 1}, "
                f"ignore_index {self.ignore_index}); map them with data.labels or fix the mask"
            )

    def to_levels(self, mask: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        """Per-level masks (LongTensor, same shape) from a node-id mask (a leaf mask is one).

        Ignore pixels stay ignore, and so does a pixel at a level where its node is partial (an inner node
        above that level). ``check=True`` raises on values that are no node id nor ignore (one host sync);
        with ``check=False`` such pixels become ignore, for masks already checked where they were loaded.
        """
        import torch

        mask = torch.as_tensor(mask).long()
        valid = (mask >= 0) & (mask < self.num_nodes)
        if check and not bool((valid | (mask == self.ignore_index)).all()):
            self.check_mask(mask.cpu())
        safe = torch.where(valid, mask, torch.zeros_like(mask))
        lut = self._device_table("node_lut", mask.device, lambda: torch.from_numpy(self._node_lut))
        return [torch.where(valid, lut[level][safe], torch.full_like(safe, self.ignore_index)) for level in range(self.depth)]

    def levels_from_leaves(self, leaf_pred: "torch.Tensor | np.ndarray") -> "list[torch.Tensor] | list[np.ndarray]":
        """Per-level predictions from a leaf-id prediction (every value a valid leaf id): tensors for a tensor
        (on its device), numpy int64 arrays for a numpy array (no PyTorch needed)."""
        if isinstance(leaf_pred, np.ndarray):
            return [self._lut[level][leaf_pred] for level in range(self.depth)]
        import torch

        lut = self._device_table("lut", leaf_pred.device, lambda: torch.from_numpy(self._lut))
        return [lut[level][leaf_pred] for level in range(self.depth)]

    def coarse_logits(self, leaf_logits: torch.Tensor) -> list[torch.Tensor]:
        """Per-level logits from leaf logits ``[B, num_leaves, ...]`` (a flat leaf head): each class's logit is the
        logsumexp over its leaves (its probability the sum of theirs); the leaf level is ``leaf_logits`` itself.

        The coarse levels are computed in float32 whatever the input dtype (bf16 logsumexp loses ~3 digits).
        """
        import torch

        full = leaf_logits.float()
        leaves = self.num_levels - 1
        out = [torch.stack([full.index_select(1, g).logsumexp(1) for g in self.children(level, leaves, device=full.device)], 1)
               for level in range(leaves)]
        return [*out, leaf_logits]

    # ------------------------------------------------------------------ presentation
    @cached_property
    def _node_colors(self) -> dict[str, tuple[int, int, int]]:
        order = [n for n in nx.dfs_preorder_nodes(self.graph, _ROOT) if n != _ROOT]
        out = {}
        for i, node in enumerate(sorted(order, key=lambda n: self.graph.nodes[n]["order"])):
            out[node] = self._explicit_colors.get(node, _default_color(i))
        return out

    def colors(self, level: int) -> np.ndarray:
        """uint8 [num_classes(level), 3] palette for ``level`` (YAML colours, else a fixed palette)."""
        return np.array([self._node_colors[n] for n in self.classes(level)], dtype=np.uint8)

    def node_colors(self) -> np.ndarray:
        """uint8 [num_nodes, 3] palette in node-id order: inner nodes have colours too (back-off maps)."""
        return np.array([self._node_colors[n] for n in self._node_names], dtype=np.uint8)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` turns back into an equal taxonomy."""

        def subtree(node):
            children = sorted(self.graph.successors(node), key=lambda n: self.graph.nodes[n]["order"])
            return {c: (self.graph.nodes[c]["leaf_id"] if self.graph.nodes[c].get("leaf_id") is not None else subtree(c)) for c in children}

        out: dict[str, Any] = {"name": self.name, "ignore_index": self.ignore_index, "tree": subtree(_ROOT)}
        if self._explicit_colors:
            out["colors"] = {k: list(v) for k, v in self._explicit_colors.items()}
        if self._excluded != tuple(self._default_excluded):  # only when it differs: stored files stay as they were
            out["exclude_from_miou"] = list(self._excluded)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __eq__(self, other: object) -> bool:
        # sibling order sets the class indices of the coarser levels, and dict equality ignores order
        return isinstance(other, Taxonomy) and self.to_yaml() == other.to_yaml()

    def __hash__(self) -> int:
        return hash(self.to_yaml())

    def __repr__(self) -> str:
        return f"Taxonomy({self.name!r}, levels={self.level_sizes}, ignore_index={self.ignore_index})"

    def describe(self) -> str:
        """A human-readable table of the levels and their classes."""
        lines = [f"taxonomy {self.name!r}: {self.num_leaves} leaves, {self.depth} levels"]
        for level in range(self.depth):
            lines.append(f"  L{level} ({self.num_classes(level)}): {', '.join(self.classes(level))}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- parsing helpers
def _read_source(path_or_text: str | Path) -> tuple[str, str]:
    if isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and path_or_text.endswith((".yaml", ".yml"))
    ):
        path = Path(path_or_text)
        if not path.is_file():
            raise TaxonomyError(f"taxonomy file {str(path)!r} does not exist; give a path to a YAML file or a built-in name ({', '.join(list_builtin())})")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise TaxonomyError(f"{path}: cannot read taxonomy file: {err}") from None
    if not isinstance(path_or_text, str):
        raise TaxonomyError(f"expected a YAML path or text, got {type(path_or_text).__name__}")
    if "\n" not in path_or_text and ":" not in path_or_text:
        raise TaxonomyError(
            f"{path_or_text!r} is neither a YAML file, YAML text nor a built-in taxonomy "
            f"({', '.join(list_builtin())})"
        )
    return path_or_text, "<text>"


def _yaml_problem(err: yaml.YAMLError) -> str:
    if "recursive" in str(err):
        return "the tree refers back to itself (a cycle through a YAML alias); every node needs its own entry"
    return f"not valid YAML: {err}"


def _names(graph: nx.DiGraph) -> list[str]:
    return [n for n in graph.nodes if n != _ROOT]


def _check_ids(leaves: list[_Leaf], ignore_index: int, source: str) -> None:
    """Leaf ids must be distinct, contiguous 0..n-1 and apart from ``ignore_index``."""
    ids = sorted(leaf.id for leaf in leaves)
    seen: dict[int, str] = {}
    for leaf in leaves:
        if leaf.id in seen:
            raise TaxonomyError(
                f"{source}: duplicate id {leaf.id} for {seen[leaf.id]!r} and {leaf.name!r}; "
                "every leaf needs its own id"
            )
        seen[leaf.id] = leaf.name
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        raise TaxonomyError(
            f"{source}: leaf ids must be contiguous 0..{len(ids) - 1}; "
            f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"largest is {ids[-1]} ({seen[ids[-1]]!r}); renumber the leaves"
        )
    if 0 <= ignore_index < len(ids):
        raise TaxonomyError(
            f"{source}: ignore_index {ignore_index} collides with the id of leaf {seen[ignore_index]!r}; "
            f"choose an ignore_index outside 0..{len(ids) - 1} (255 is the usual choice)"
        )


def _default_excluded(graph: nx.DiGraph) -> list[str]:
    """A top-level leaf named :data:`DEFAULT_EXCLUDED_LEAF` when the tree has one, else nothing."""
    name = DEFAULT_EXCLUDED_LEAF
    top_leaf = name in graph and graph.has_edge(_ROOT, name) and graph.nodes[name].get("leaf_id") is not None
    return [name] if top_leaf else []


def _parse_excluded(value: Any, graph: nx.DiGraph, source: str) -> list[str]:
    """Validate ``exclude_from_miou``: a list of distinct class names of the tree (``[]`` for none)."""
    key = "exclude_from_miou"
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaxonomyError(f"{source}: key {key!r}: expected a list of class names (or []), got {value!r}")
    for name in value:
        if name not in graph:
            raise TaxonomyError(f"{source}: key {key!r}: no class named {name!r}{suggest(name, _names(graph))}")
    dupes = sorted({n for n in value if value.count(n) > 1})
    if dupes:
        raise TaxonomyError(f"{source}: key {key!r}: {dupes} listed more than once; name each class once")
    return list(value)


def _parse_color(value: Any, key: str, source: str) -> tuple[int, int, int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    )
    if not ok:
        raise TaxonomyError(f"{source}: key {key!r}: a colour is [r, g, b] with integers 0..255, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _add_children(
    graph: nx.DiGraph,
    parent: Any,
    mapping: Any,
    key: str,
    source: str,
    leaves: list[_Leaf],
    colors: dict[str, tuple[int, int, int]],
    active: set[int],
) -> None:
    if not isinstance(mapping, dict):
        raise TaxonomyError(f"{source}: key {key!r}: expected a mapping of class names, got {mapping!r}")
    if not mapping:
        raise TaxonomyError(f"{source}: key {key!r}: empty branch; give it children or make it a leaf with an id")
    if id(mapping) in active:
        raise TaxonomyError(f"{source}: key {key!r}: the tree refers back to itself (a cycle through a YAML alias)")
    active.add(id(mapping))
    depth = graph.nodes[parent]["depth"] + 1
    for name, value in mapping.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not name.strip():
            raise TaxonomyError(f"{source}: key {where!r}: class names must be non-empty strings, got {name!r}")
        if name in graph:
            raise TaxonomyError(f"{source}: key {where!r}: duplicate class name {name!r}; names must be unique in the whole tree")
        graph.add_node(name, depth=depth, order=graph.number_of_nodes())
        graph.add_edge(parent, name)
        if isinstance(value, dict) and value and set(value) <= set(_LEAF_KEYS):
            if "id" not in value:
                raise TaxonomyError(f"{source}: key {where!r}: leaf has no id; write '{name}: {{id: N}}' ('id' and 'color' are reserved keys, not class names)")
            leaf_value = value["id"]
            if "color" in value:
                colors[name] = _parse_color(value["color"], f"{where}.color", source)
        elif isinstance(value, dict):
            if "id" in value:
                raise TaxonomyError(
                    f"{source}: key {where!r}: an inner node cannot have an id (only leaves carry mask ids); "
                    "remove 'id' or move it to a leaf"
                )
            _add_children(graph, name, value, where, source, leaves, colors, active)
            continue
        else:
            leaf_value = value
        if leaf_value is None:
            raise TaxonomyError(f"{source}: key {where!r}: leaf has no id; write '{name}: N' with its mask id")
        if not _is_int(leaf_value):
            raise TaxonomyError(f"{source}: key {where!r}: a leaf id must be an integer, got {leaf_value!r}")
        if leaf_value < 0:
            raise TaxonomyError(f"{source}: key {where!r}: leaf id {leaf_value} is negative; ids are 0..n-1")
        graph.nodes[name]["leaf_id"] = leaf_value
        leaves.append(_Leaf(name, leaf_value, depth))
    active.discard(id(mapping))


def list_builtin() -> list[str]:
    """Names of the taxonomies bundled with hiertree."""
    files = resources.files("hiertree.tree.taxonomies")
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))
