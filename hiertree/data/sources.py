"""Several datasets in one run (``data.sources``): resolve each source's settings, mix their samples by weight.

Each source names its own root, splits, label map and sampling weight; a key it leaves null takes the
``data`` key of the same name, so a single-dataset config is the one-source case. :class:`Mixture`
concatenates the sources' samples (ids become ``<source>/<id>``) and knows each sample's sampling
probability: a source of weight ``w`` fills a share ``w / sum(weights)`` of the batches, whatever its size.
With ``weight_start`` that share moves linearly, over the run, from ``weight_start / sum(weight_start)``.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hiertree.tree.labels import LabelMap, LabelMapError
from hiertree.config.options import SyntheticOptions, defaults, validate_options
from hiertree.data.errors import DataError

if TYPE_CHECKING:
    from hiertree.tree.taxonomy import Taxonomy

__all__ = ["Source", "resolve_sources", "Mixture", "Relabelled", "Subset", "load_mask", "sample_ids", "exclude_ids",
           "read_exclusions", "without_exclusions"]

log = logging.getLogger(__name__)

_INHERITED = ("kind", "root", "train_split", "val_split", "labels", "skip_bad")


@dataclass
class Source:
    """One dataset of a run, every setting resolved (nothing left to inherit)."""

    name: str
    kind: str
    root: str | None
    train_split: str
    val_split: str
    evaluate: bool
    labels: LabelMap
    weight: float
    skip_bad: bool
    synthetic: dict = field(default_factory=dict)
    weight_start: float | None = None  # None: the share stays weight's throughout
    exclude: str | None = None  # a file of training sample ids to leave out (data.exclude)


def _synthetic(data_cfg: Mapping[str, Any], own: Mapping[str, Any] | None, where: str) -> dict:
    merged = {**defaults(SyntheticOptions), **(data_cfg.get("synthetic") or {}), **(own or {})}
    checked = validate_options(SyntheticOptions, merged, where, error=DataError)
    return checked.model_dump()


def _one(data_cfg: Mapping[str, Any], entry: Mapping[str, Any], index: int, taxonomy: "Taxonomy") -> Source:
    name = entry.get("name") or f"source{index}"
    where = f"data.sources[{index}] ({name})"
    settings = {k: (entry.get(k) if entry.get(k) is not None else data_cfg.get(k)) for k in _INHERITED}
    key = f"data.sources[{index}].labels" if entry.get("labels") is not None else "data.labels"
    try:
        labels = LabelMap(taxonomy, settings["labels"], where=key)
    except LabelMapError as err:
        raise DataError(str(err)) from None
    kind = settings["kind"] or "synthetic"
    if kind == "folder" and not settings["root"]:
        raise DataError(f"{where}: kind folder needs a root; set data.sources[{index}].root or data.root")
    synthetic = _synthetic(data_cfg, entry.get("synthetic"), f"{where}.synthetic") if kind == "synthetic" else {}
    return Source(name, kind, settings["root"], settings["train_split"] or "train", settings["val_split"] or "val",
                  bool(entry.get("evaluate", True)), labels, float(entry.get("weight", 1.0)),
                  bool(settings["skip_bad"]), synthetic,
                  None if entry.get("weight_start") is None else float(entry["weight_start"]), entry.get("exclude"))


def resolve_sources(data_cfg: Mapping[str, Any], taxonomy: "Taxonomy") -> list[Source]:
    """The run's sources: ``data.sources`` resolved against ``data``, or the one source ``data`` describes."""
    entries = data_cfg.get("sources")
    if not entries:
        return [_one(data_cfg, {"name": "data", "exclude": data_cfg.get("exclude")}, 0, taxonomy)]
    if data_cfg.get("exclude"):
        raise DataError("data.exclude applies to the one dataset of data.root; with data.sources set "
                        "data.sources[i].exclude on the source whose ids the file lists")
    sources = [_one(data_cfg, entry, i, taxonomy) for i, entry in enumerate(entries)]
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"data.sources: names {twice} are given to several sources; name each source once")
    _check_synthetic_seeds(sources)
    starts = start_weights(sources)
    if starts is not None and not sum(starts) > 0:
        raise DataError("data.sources: every source's weight_start is 0, so the first step has nothing to draw; "
                        "give at least one source a weight_start > 0 (a source without one starts at its weight)")
    return sources


def start_weights(sources: Sequence[Source]) -> list[float] | None:
    """Each source's weight at the first step (``weight_start`` where given, else ``weight``); None when no
    source gives one, so the shares stay constant."""
    if all(s.weight_start is None for s in sources):
        return None
    return [s.weight if s.weight_start is None else s.weight_start for s in sources]


def _check_synthetic_seeds(sources: list[Source]) -> None:
    """Synthetic train images use ``seed``, val images ``seed + 1``: two sources must not draw the same ones."""
    drawn: dict[int, str] = {}
    for s in (s for s in sources if s.kind == "synthetic"):
        for seed, split in ((s.synthetic["seed"], "train"), (s.synthetic["seed"] + 1, "val")):
            if seed in drawn:
                raise DataError(
                    f"data.sources: source {s.name!r} ({split}, seed {seed}) would draw the same synthetic images as "
                    f"{drawn[seed]}; give synthetic sources seeds at least 2 apart")
            drawn[seed] = f"source {s.name!r} ({split})"


def load_mask(source: Sequence, index: int) -> Any:
    """The node-id mask of sample ``index``, without decoding its image where the source can (folders)."""
    reader = getattr(source, "load_mask", None)
    return reader(index) if reader is not None else source[index][1]


def sample_ids(source: Sequence) -> list[str]:
    """The ids of a source's samples without loading them: a folder's id list, else the indices as text (the ids a
    synthetic source gives its samples)."""
    ids = getattr(source, "ids", None)
    return [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(source))]


def read_exclusions(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, id)`` of each sample id in an exclusion file: one per line, blanks and ``#`` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"data.exclude: cannot read {path}: {err.strerror or err}; give an existing file of sample "
                        "ids (one per line), e.g. the exclude.txt hiertree-review writes, or set it to null") from None
    rows = [(n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1)]
    return [(n, sid) for n, sid in rows if sid]


def exclude_ids(source: Sequence, path: str | Path, where: str) -> Sequence:
    """``source`` without the samples whose ids ``path`` lists (``data.exclude``); an id the split does not hold is
    an error naming the file and line."""
    ids = sample_ids(source)
    index = {sid: i for i, sid in enumerate(ids)}
    drop: set[int] = set()
    for line, sid in read_exclusions(path):
        if sid not in index:
            raise DataError(f"{path}:{line}: sample id {sid!r} is not in the training split of {where} "
                            f"({len(ids)} samples); fix or delete that line (ids as in the split list, without suffix)")
        drop.add(index[sid])
    if len(drop) == len(ids):
        raise DataError(f"{path}: excludes every one of the {len(ids)} training samples of {where}; keep some")
    log.info("data.exclude: dropped %d of %d training samples of %s listed in %s", len(drop), len(ids), where, path)
    return Subset(source, [i for i in range(len(ids)) if i not in drop]) if drop else source


def without_exclusions(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``data`` section with no exclusion file, itself or in a source: for scoring a split, never trained on."""
    out = {**data_cfg, "exclude": None}
    if out.get("sources"):
        out["sources"] = [{**entry, "exclude": None} for entry in out["sources"]]
    return out


class Subset:
    """Some samples of a source (``keep``: their indices), re-indexed 0..n-1; sizes and masks read as the source's."""

    def __init__(self, source: Sequence, keep: Sequence[int]) -> None:
        self.source, self.keep = source, list(keep)
        ids = getattr(source, "ids", None)
        if ids is not None:
            self.ids = [ids[i] for i in self.keep]

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> Any:
        return self.source[self.keep[index]]

    def mask_size(self, index: int) -> tuple[int, int] | None:
        probe = getattr(self.source, "mask_size", None)
        return probe(self.keep[index]) if probe is not None else None

    def load_mask(self, index: int) -> Any:
        return load_mask(self.source, self.keep[index])


class Relabelled:
    """A source whose masks pass through a :class:`LabelMap` (the synthetic figures, whose values are leaf ids)."""

    def __init__(self, source: Sequence, labels: LabelMap, name: str) -> None:
        self.source, self.labels, self.name = source, labels, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple:
        item = self.source[index]
        image, mask, sid = item if len(item) == 3 else (*item, str(index))
        try:
            return image, self.labels.apply(mask, where=f"source {self.name!r} sample {sid!r}"), sid
        except LabelMapError as err:
            raise DataError(str(err)) from None


class Mixture:
    """The samples of several sources end to end, ids prefixed ``<source>/``, with per-sample sampling weights."""

    def __init__(self, parts: Sequence[tuple[str, Sequence, float]], weights_start: Sequence[float] | None = None) -> None:
        if not parts:
            raise DataError("Mixture: no sources")
        self.names = [name for name, _, _ in parts]
        self.parts = [src for _, src, _ in parts]
        self.weights = [float(w) for _, _, w in parts]
        #: the weights at the first step when the shares move over the run (``weight_start``), else None
        self.weights_start = None if weights_start is None else [float(w) for w in weights_start]
        for name, src in zip(self.names, self.parts):
            if len(src) == 0:
                raise DataError(f"source {name!r} has no samples; check its split list or remove it from data.sources")
        self.reindex()

    def reindex(self) -> None:
        """Recount where each source starts (after a part was replaced, e.g. by its good samples)."""
        self.starts = [0]
        for src in self.parts:
            self.starts.append(self.starts[-1] + len(src))

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"mixture of {len(self)} samples, asked for {index}")
        k = bisect.bisect_right(self.starts, index) - 1
        return k, index - self.starts[k]

    def __getitem__(self, index: int) -> tuple:
        k, i = self._locate(index)
        item = self.parts[k][i]
        image, mask, sid = item if len(item) == 3 else (*item, str(i))
        return image, mask, f"{self.names[k]}/{sid}"

    def load_mask(self, index: int) -> Any:
        k, i = self._locate(index)
        return load_mask(self.parts[k], i)

    def mask_size(self, index: int) -> tuple[int, int] | None:
        k, i = self._locate(index)
        probe = getattr(self.parts[k], "mask_size", None)
        return probe(i) if probe is not None else None

    def sample_weights(self, start: bool = False) -> list[float]:
        """Per sample, the probability of drawing it: its source's weight share, spread evenly over its samples
        (``start``: the shares of the first step, where ``weights_start`` is set)."""
        weights = self.weights_start if start and self.weights_start is not None else self.weights
        total = sum(weights)
        return [w / total / len(src) for w, src in zip(weights, self.parts) for _ in range(len(src))]
