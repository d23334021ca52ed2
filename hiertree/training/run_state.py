"""What a training run carries across a stop: counters, optimizer/schedule/RNG state, and the resume checks.

``train_state.pt`` (beside the weights of every checkpoint) holds the optimizer, scheduler and scaler
states, the position in the run (:class:`Progress`), the RNG streams and the batch layout, so that a
resumed run computes exactly what an uninterrupted one would have (bit-identical on CPU).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiertree.checkpoint import CheckpointError
from hiertree.data import resolve_sources
from hiertree.config.options import defaults, iter_options, resume_safe
from hiertree.tree.taxonomy import Taxonomy
from hiertree.version import source_revision

__all__ = ["TrainingError", "Progress", "Layout", "rng_state", "set_rng_state", "check_resumable", "load_train_state",
           "train_state", "restore"]

log = logging.getLogger(__name__)

_REQUIRED = ("optimizer", "scheduler", "scaler", "step", "epoch", "batch_in_epoch", "best", "rng")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite losses, mismatched resume); the message says what to do."""


@dataclass
class Progress:
    """Where a run stands: optimizer steps that updated the weights, the epoch and batch to run next."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float = -float("inf")
    bad_steps: int = 0
    carried: float = 0.0  # seconds already spent in a mid-epoch resume's epoch


@dataclass(frozen=True)
class Layout:
    """How batches were cut: a resume under another layout goes on, but not as the original run would."""

    batch_size: int
    world: int
    steps_per_epoch: int
    epochs: int


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # this process's device only: touching every GPU would open a context on each
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # written by an older version: one state per visible GPU
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        cuda = cuda[current] if torch.cuda.is_available() and len(cuda) > current else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def check_resumable(ck: dict, cfg: dict, taxonomy: Taxonomy) -> None:
    """The checkpoint must hold training state for this very model and taxonomy."""
    where = ck["dir"]
    if ck["taxonomy"] != taxonomy:
        theirs, ours = ck["taxonomy"], taxonomy
        raise TrainingError(
            f"cannot resume from {where}: its taxonomy {theirs.name!r} (levels {theirs.level_sizes}) differs from "
            f"this config's {cfg['taxonomy']!r} ({ours.name!r}, levels {ours.level_sizes}); resume with the run's own "
            f"taxonomy ({where}/taxonomy.yaml) or start a new run in another train.out_dir"
        )
    if not (where / "train_state.pt").is_file():
        raise CheckpointError(
            f"{where} holds weights but no train_state.pt (optimizer, schedule, RNG), so training cannot resume "
            "from it; point train.resume at a run folder written by train.py, or drop train.resume"
        )
    load_train_state(where / "train_state.pt")  # unreadable state is the first thing to say
    _check_sources(ck, cfg, taxonomy)
    changed = config_changes(ck["config"], cfg)
    allowed = set(cfg["train"]["resume_allow"])
    refused = [(k, old, new) for k, old, new in changed if not resume_safe(k) and k not in allowed]
    if refused:
        diff = "; ".join(f"{k}: checkpoint {old!r}, config {new!r}" for k, old, new in refused)
        raise TrainingError(
            f"cannot resume from {where}: the config differs ({diff}); a resume continues the same run, so set "
            f"these keys as in {where}/config.yaml, start a new run in another train.out_dir, or list them in "
            "train.resume_allow to go on anyway"
        )
    for k, old, new in changed:
        log.info("resuming with %s changed: %r -> %r (%s)", k, old, new,
                 "allowed by train.resume_allow" if k in allowed else "does not change what the run computes")


def _lookup(cfg: dict, key: str, default: Any) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def config_changes(saved: dict, cfg: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, value now)`` for every declared option that differs; a key the saved config
    lacks (written before it was declared) counts as its default. ``data.sources`` is compared whole."""
    base = defaults()
    changes = []
    for key, _, _, _ in iter_options():
        if "[]" in key:
            continue
        old, new = _lookup(saved, key, _lookup(base, key, None)), _lookup(cfg, key, _lookup(base, key, None))
        if old != new:
            changes.append((key, old, new))
    return changes


def _label_maps(data_cfg: dict, taxonomy: Taxonomy) -> dict[str, dict | None]:
    return {s.name: s.labels.to_config() for s in resolve_sources(data_cfg, taxonomy)}


def _check_sources(ck: dict, cfg: dict, taxonomy: Taxonomy) -> None:
    """The sources and their label maps must be the checkpoint's: the weights learnt what those labels said."""
    where = ck["dir"]
    saved = ck["config"].get("data") if isinstance(ck["config"].get("data"), dict) else {}
    theirs, ours = _label_maps(saved, taxonomy), _label_maps(cfg["data"], taxonomy)
    diff = [f"source {name!r}: checkpoint labels {theirs.get(name, 'absent')}, config {ours.get(name, 'absent')}"
            for name in list(dict.fromkeys([*theirs, *ours])) if theirs.get(name, "absent") != ours.get(name, "absent")]
    if diff:
        raise TrainingError(
            f"cannot resume from {where}: the data sources or their label maps differ ({'; '.join(diff)}); set "
            f"data.sources and data.labels as in {where}/config.yaml or start a new run in another train.out_dir"
        )


def load_train_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read training state ({type(err).__name__}: {err}); "
                              "resume from an older checkpoint folder of the run instead") from None
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {missing}; was it written by another hiertree version?")
    return state


def train_state(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                scaler: torch.amp.GradScaler, *, progress: Progress, layout: Layout, epoch: int, batch_in_epoch: int,
                epoch_seconds: float) -> dict:
    """The ``train_state.pt`` content for a save at (``epoch``, ``batch_in_epoch``)."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "step": progress.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best": progress.best,
            "bad_steps": progress.bad_steps, "rng": rng_state(), "batch_size": layout.batch_size, "world": layout.world,
            "steps_per_epoch": layout.steps_per_epoch, "epochs": layout.epochs, "revision": source_revision(),
            "epoch_seconds": round(epoch_seconds, 2) if batch_in_epoch else 0.0}


def restore(ck_dir: Path, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
            scaler: torch.amp.GradScaler, layout: Layout, speak: bool) -> Progress:
    """Load ``ck_dir/train_state.pt`` into the optimizer, schedule, scaler and RNGs; returns where to go on.

    ``speak``: this process warns about a changed layout (rank 0 under DDP).
    """
    path = ck_dir / "train_state.pt"
    state = load_train_state(path)
    optimizer.load_state_dict(state["optimizer"])
    if "lr_lambdas" not in state["scheduler"]:  # torch's OneCycleLR, written before the schedule was one function
        raise TrainingError(
            f"{path}: its learning-rate schedule was saved by an older hiertree (torch OneCycleLR) and cannot be "
            "continued; start a new run (another train.out_dir) -- its weights still load with eval.py and load_model"
        )
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    progress = Progress(state["step"], state["epoch"], state["batch_in_epoch"], state["best"], state.get("bad_steps", 0))
    saved = (state.get("batch_size", layout.batch_size), state.get("world", layout.world),
             state.get("steps_per_epoch", layout.steps_per_epoch))
    now = (layout.batch_size, layout.world, layout.steps_per_epoch)
    if saved != now and speak:
        log.warning("%s was written with batch size, ranks, steps per epoch %s, now %s; training goes on but not "
                    "as the original run would", ck_dir, saved, now)
    revision, now_revision = state.get("revision"), source_revision()
    if revision != now_revision and speak:
        log.warning("%s was written by hiertree %s; this is %s: the run goes on with this code", ck_dir,
                    revision or "of unknown revision", now_revision)
    saved_epochs = state.get("epochs", layout.epochs)
    if saved_epochs != layout.epochs and speak:
        log.warning("%s was written by a %d-epoch run, now train.epochs=%d; the learning-rate schedule now spans %d "
                    "epochs and goes on from step %d on that curve", ck_dir, saved_epochs, layout.epochs,
                    layout.epochs, progress.step)
    if progress.batch_in_epoch >= layout.steps_per_epoch:
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
    progress.carried = float(state.get("epoch_seconds", 0.0)) if progress.batch_in_epoch else 0.0
    set_rng_state(state["rng"])
    return progress
