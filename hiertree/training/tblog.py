"""Training logs: ``metrics.csv`` (columns grow as new keys appear), TensorBoard scalars and sample
grids when TensorBoard is installed, and ``curves.png`` at the end.

Keys are free-form; the curves group them by prefix: ``loss/...`` (e.g. ``loss/ce/L0``,
``loss/total``), ``mIoU/...`` (e.g. ``mIoU/L2``) and ``lr``, the names the engine already uses.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from hiertree.tree.colors import colorize
from hiertree.tree.taxonomy import Taxonomy

__all__ = ["TrainLogger", "sample_grid"]

_FIXED = ("epoch", "step")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"TrainLogger: scalar values must be numbers or 0-d tensors, got {type(value).__name__} {value!r}") from None


def sample_grid(images: Any, targets: Any, preds: Sequence[Any], taxonomy: Taxonomy, max_items: int = 4, gap: int = 2) -> np.ndarray:
    """HxWx3 uint8 grid: one row per sample, columns image | truth L0 | pred L0 | truth L1 | ...

    ``images`` uint8 [N,3,H,W], ``targets`` leaf-id masks [N,H,W] (ignore shown grey), ``preds`` one
    [N,H,W] class-index map per level. White ``gap``-pixel lines separate the tiles.
    """
    images = torch.as_tensor(images).detach().cpu()
    targets = torch.as_tensor(targets).detach().cpu().long()
    preds = [torch.as_tensor(p).detach().cpu() for p in preds]
    if len(preds) != taxonomy.num_levels:
        raise ValueError(f"sample_grid: got {len(preds)} prediction maps, taxonomy {taxonomy.name!r} has {taxonomy.num_levels} levels")
    n = min(max_items, images.shape[0])
    rows = []
    for i in range(n):
        image = images[i].permute(1, 2, 0).numpy().astype(np.uint8)
        truths = taxonomy.to_levels(targets[i])
        tiles = [image]
        for l in range(taxonomy.num_levels):
            pal = taxonomy.colors(l)
            tiles += [colorize(truths[l].numpy(), pal), colorize(preds[l][i].numpy(), pal)]
        sep = np.full((image.shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1))
    width = rows[0].shape[1]
    hsep = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, hsep)][:-1], axis=0)


class TrainLogger:
    """Collects scalars per step and per epoch; writes ``run_dir/metrics.csv``, ``run_dir/tb/`` and ``curves.png``.

    ``tensorboard``: ``"auto"`` uses TensorBoard when it is installed, ``True`` requires it,
    ``False`` never uses it. Use as a context manager or call :meth:`close` at the end.
    ``resume=True`` (a resumed run) reads an existing ``metrics.csv`` back and continues it, dropping the
    rows of epochs that are logged again; ``resume=False`` starts it afresh.
    """

    def __init__(self, run_dir: str | Path, taxonomy: Taxonomy, tensorboard: bool | Literal["auto"] = "auto",
                 resume: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.taxonomy = taxonomy
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(_FIXED)
        self.steps: dict[str, list[tuple[int, float]]] = {}
        if self.csv_path.is_file():
            if resume:
                self._read_back()
            else:
                self.csv_path.unlink()
        self.writer = self._open_tensorboard(tensorboard)
        self._closed = False

    def _open_tensorboard(self, mode: bool | str) -> Any:
        if mode not in (True, False, "auto"):
            raise ValueError(f"TrainLogger: tensorboard must be True, False or 'auto', got {mode!r}")
        if mode is False:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if mode is True:
                raise ImportError(
                    "TrainLogger(tensorboard=True) needs the tensorboard package; install it with "
                    "`pip install hiertree[logging]`, or pass tensorboard='auto' to go on without it"
                ) from None
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def _read_back(self) -> None:
        with open(self.csv_path, newline="") as f:
            reader = csv.DictReader(f)
            for name in reader.fieldnames or []:
                if name not in self.columns:
                    self.columns.append(name)
            for raw in reader:
                self.rows.append({k: (float(v) if v not in ("", None) else None) for k, v in raw.items()})

    # ------------------------------------------------------------------ logging
    def log_step(self, step: int, scalars: dict[str, Any]) -> None:
        """Per-step scalars (e.g. ``loss/total``, ``lr``): TensorBoard, and kept for the lr curve."""
        for key, value in scalars.items():
            v = _number(value)
            if v is None:
                continue
            self.steps.setdefault(key, []).append((int(step), v))
            if self.writer is not None:
                self.writer.add_scalar(f"step/{key}", v, int(step))

    def log_epoch(self, epoch: int, step: int, scalars: dict[str, Any]) -> None:
        """One row of ``metrics.csv`` (header rewritten when new keys appear) and epoch scalars in TensorBoard."""
        row: dict[str, Any] = {"epoch": int(epoch), "step": int(step)}
        row.update({k: _number(v) for k, v in scalars.items() if k not in _FIXED})
        kept = [r for r in self.rows if r.get("epoch") is None or int(r["epoch"]) < row["epoch"]]
        dropped = len(kept) < len(self.rows)  # epochs logged again after a resume: the file must lose them too
        self.rows = kept + [row]
        new_keys = [k for k in row if k not in self.columns]
        if new_keys or dropped or len(self.rows) == 1 or not self.csv_path.is_file():
            self.columns += new_keys
            self._rewrite()
        else:
            self._append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in _FIXED and value is not None:
                    self.writer.add_scalar(key, value, int(step))
            self.writer.flush()

    def _cell(self, value: Any) -> str:
        if value is None:
            return ""
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in self.rows:
                w.writerow([self._cell(r.get(c)) for c in self.columns])
        os.replace(tmp, self.csv_path)

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow([self._cell(row.get(c)) for c in self.columns])

    def log_images(self, epoch: int, images: Any, targets: Any, preds: Sequence[Any], max_items: int = 4) -> np.ndarray:
        """A sample grid (see :func:`sample_grid`) as TensorBoard image ``samples`` at ``epoch``; returns the grid."""
        grid = sample_grid(images, targets, preds, self.taxonomy, max_items)
        if self.writer is not None:
            self.writer.add_image("samples", grid, int(epoch), dataformats="HWC")
            self.writer.flush()
        return grid

    # ------------------------------------------------------------------ the end
    def close(self) -> Path | None:
        """Flush TensorBoard and draw ``curves.png``; returns its path (None when matplotlib is missing)."""
        if self._closed:
            return self.run_dir / "curves.png" if (self.run_dir / "curves.png").is_file() else None
        self._closed = True
        if self.writer is not None:
            self.writer.close()
        try:
            return self._curves(self.run_dir / "curves.png")
        except ImportError:
            warnings.warn("TrainLogger: matplotlib is not installed, so no curves.png; `pip install hiertree[report]`", stacklevel=2)
            return None

    def __enter__(self) -> "TrainLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _series(self, key: str) -> tuple[list[float], list[float]]:
        pts = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None and not math.isnan(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    def _curves(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        losses = [c for c in self.columns if c.startswith("loss")]
        mious = [c for c in self.columns if c.startswith("mIoU")]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, keys, title in ((axes[0], losses, "loss per level"), (axes[1], mious, "mIoU per level (val)")):
            for key in keys:
                x, y = self._series(key)
                if x:
                    ax.plot(x, y, marker="o", markersize=3, label=key, linewidth=2 if key.endswith("total") else 1.3)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        axes[1].set_ylim(bottom=0)
        ax = axes[2]
        if len(self.steps.get("lr", [])) > 1:
            x, y = zip(*self.steps["lr"])
            ax.plot(x, y, color="tab:purple")
            ax.set_xlabel("step")
        else:
            x, y = self._series("lr")
            ax.plot(x, y, marker="o", markersize=3, color="tab:purple")
            ax.set_xlabel("epoch")
        ax.set_title("learning rate", fontsize=10)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path
