"""Checkpoints that survive crashes: each save is a complete folder, published by an atomic link swap.

A run folder looks like::

    runs/demo/config.yaml        resolved config of the run
    runs/demo/ckpt-000120/       model.safetensors, config.yaml, taxonomy.yaml, metrics.json, train_state.pt
    runs/demo/last -> ckpt-000120
    runs/demo/best -> ckpt-000080

A checkpoint folder is written under a temporary name, fsynced, renamed, and only then does the
``last``/``best`` symlink move (``os.replace`` of a fresh link: atomic on POSIX). A folder that a link
points at is never modified or replaced (saving an existing tag again writes ``<tag>-r1``, ...), so a
process killed at any point -- even by SIGKILL -- leaves the previous checkpoint loadable; leftovers
(``.<tag>.partial``, unlinked folders) are removed by the next save.

A run copied with links dereferenced (``cp -rL``) holds ``last``/``best`` as real folders; the next
save first renames each into a ``ckpt-<name>`` folder and links it, so such a copy resumes normally.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from hiertree.tree.taxonomy import Taxonomy

if TYPE_CHECKING:  # PyTorch loads where weights are read or written: a checkpoint's config, taxonomy and
    import torch  # calibration (all hiertree-predict needs beside a cached ONNX graph) are read without it

__all__ = [
    "save_checkpoint", "file_sha256", "calibrated_threshold", "load_checkpoint", "read_checkpoint", "CheckpointError", "unwrap", "state_digest", "model_card",
    "shipped_models", "shipped_model", "CONFIG_JSON",
]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or does not match; the message says which and why."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    import torch

    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes: equal digests mean identical weights."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: Path, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _point(link: Path, target_name: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _adopt_real_dirs(run_dir: Path, names: set[str]) -> None:
    """Turn each ``run_dir/<name>`` that is a real folder (a ``cp -rL`` copy) into a link to ``ckpt-<name>``.

    The folder is renamed (atomic, nothing is copied) to a new ``ckpt-<name>[-r<k>]`` name, then linked
    under its old name, so loading it keeps working and the next link swap can replace the link.
    """
    for link in sorted(names):
        path = run_dir / link
        if path.is_symlink() or not path.is_dir():
            continue
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(f"{path} is a folder that holds no checkpoint, but the run links its {link!r} "
                                  f"checkpoint under that name; move it out of {run_dir} and train again")
        name, k = f"ckpt-{link}", 0
        while (run_dir / name).exists() or (run_dir / name).is_symlink():
            k += 1
            name = f"ckpt-{link}-r{k}"
        os.replace(path, run_dir / name)
        _point(path, name)
        log.warning("%s was a folder, not a link (a run copied with cp -rL?); moved it to %s and linked it; "
                    "copy runs with cp -a to keep the links", path, run_dir / name)


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    model: torch.nn.Module,
    cfg: dict,
    taxonomy: Taxonomy,
    *,
    metrics: dict | None = None,
    train_state: dict | None = None,
    links: tuple[str, ...] = ("last",),
    model_card: str | None = None,
) -> Path:
    """Write ``run_dir/<tag>/`` completely, then point each name in ``links`` at it; prune unlinked ones.

    Returns the folder written: ``run_dir/<tag>``, or ``<tag>-r<k>`` if ``<tag>`` already exists
    (a live checkpoint is never overwritten in place).
    """
    import torch
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _adopt_real_dirs(run_dir, {"last", "best", *links})
    name, k = tag, 0
    while (run_dir / name).exists() or (run_dir / name).is_symlink():
        k += 1
        name = f"{tag}-r{k}"
    final = run_dir / name
    tmp = run_dir / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    with open(tmp / "model.safetensors", "rb+") as f:
        os.fsync(f.fileno())
    _write(tmp / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    _write(tmp / "taxonomy.yaml", taxonomy.to_yaml())
    if metrics is not None:
        _write(tmp / "metrics.json", json.dumps(metrics, indent=2))
    if model_card is not None:
        _write(tmp / "README.md", model_card)
    if train_state is not None:
        with open(tmp / "train_state.pt", "wb") as f:
            torch.save(train_state, f)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)  # a new name: nothing points at it yet
    _fsync_dir(run_dir)
    for link in links:
        _point(run_dir / link, name)
    _prune(run_dir, keep=name)
    return final


def _prune(run_dir: Path, keep: str) -> None:
    """Remove checkpoint folders no link points at (but ``keep``) and leftovers of interrupted saves."""
    linked = {os.readlink(p) for p in run_dir.iterdir() if p.is_symlink()} | {keep}
    for p in run_dir.iterdir():
        if p.is_dir() and not p.is_symlink() and p.name.startswith("ckpt-") and p.name not in linked:
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".") and p.name.endswith((".partial", ".old")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


#: the Hub-layout config (model section + taxonomy) that ``save_pretrained`` writes instead of config.yaml/taxonomy.yaml
CONFIG_JSON = "config.json"


def _resolve(path: str | Path, prefer: str) -> tuple[Path, str]:
    """The checkpoint folder and the name it was reached by (``best``/``last`` for a run folder)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path, Path(os.path.abspath(path)).name
    for name in (prefer, "last", "best"):
        cand = path / name
        if (cand / "model.safetensors").is_file():
            return cand.resolve(), name
    if not path.exists():
        shipped = shipped_model(str(path))
        if shipped is not None:
            return shipped, shipped.name
        names = ", ".join(shipped_models()) or "none installed"
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (nor is it a shipped model: {names})")
    raise CheckpointError(
        f"{path} holds no checkpoint: expected model.safetensors there or in {path}/best or {path}/last"
    )


def _shipped_root() -> Path:
    """Where the trained models that come with hiertree live: ``hiertree/pretrained`` in a wheel, the
    repository's ``pretrained/`` in a source checkout (editable install)."""
    here = Path(__file__).resolve().parent
    inside = here / "pretrained"
    return inside if inside.is_dir() else here.parent / "pretrained"


def shipped_models() -> list[str]:
    """Names of the trained models shipped with hiertree (``HierSegModel.from_pretrained(name)`` loads one)."""
    root = _shipped_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model.safetensors").is_file())


def shipped_model(name: str) -> Path | None:
    """The folder of the shipped model ``name``, or None (a name only: no path separators)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    folder = _shipped_root() / name
    return folder if (folder / "model.safetensors").is_file() else None


def read_checkpoint(path: str | Path, prefer: str = "best", weights: bool = False) -> dict[str, Any]:
    """``{"dir", "name", "config", "taxonomy", "metrics"}`` of a checkpoint folder, plus ``"state_dict"`` with
    ``weights=True`` (what :func:`load_checkpoint` does). Without the weights nothing heavy is read.

    ``name`` is how the folder was chosen: ``best``/``last`` when ``path`` is a run folder, else the
    folder's own name. A config that is not a mapping or an unreadable file is a CheckpointError.
    """
    ckpt, chosen = _resolve(path, prefer)
    hub = not (ckpt / "config.yaml").is_file() and (ckpt / CONFIG_JSON).is_file()  # save_pretrained's layout
    needed = ("model.safetensors", CONFIG_JSON) if hub else ("model.safetensors", "config.yaml", "taxonomy.yaml")
    missing = [n for n in needed if not (ckpt / n).is_file()]
    if missing:
        raise CheckpointError(f"{ckpt} is incomplete: missing {missing}")
    try:
        if hub:
            cfg, taxonomy = _read_config_json(ckpt / CONFIG_JSON)
        else:
            cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
            taxonomy = Taxonomy.from_yaml(ckpt / "taxonomy.yaml")
        state = _load_weights(ckpt / "model.safetensors") if weights else None
        metrics = json.loads((ckpt / "metrics.json").read_text()) if (ckpt / "metrics.json").is_file() else None
    except Exception as err:
        raise CheckpointError(f"{ckpt}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(
            f"{ckpt / 'config.yaml'}: expected a mapping, found a {type(cfg).__name__}; "
            "use a checkpoint folder written by hiertree-train (its config.yaml describes the model)"
        )
    out = {"dir": ckpt, "name": chosen, "config": cfg, "taxonomy": taxonomy, "metrics": metrics}
    if weights:
        out["state_dict"] = state
    return out


def _load_weights(path: Path) -> "dict[str, torch.Tensor]":
    """The tensors of a ``model.safetensors`` (PyTorch is imported here, not for reading a config)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def _read_config_json(path: Path) -> tuple[dict, Taxonomy]:
    """A Hub-layout ``config.json`` (``hiertree.models.hub.save_pretrained``): the run config's model section and
    the taxonomy it holds inline."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not isinstance(data.get("taxonomy"), dict):
        raise ValueError(f"expected a mapping with 'model' and 'taxonomy' mappings (as save_pretrained writes), got "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    taxonomy = Taxonomy.from_dict(data["taxonomy"], source=str(path))
    return {"taxonomy": taxonomy.name, "model": data["model"]}, taxonomy


def load_checkpoint(path: str | Path, prefer: str = "best") -> dict[str, Any]:
    """``{"dir", "name", "config", "taxonomy", "state_dict", "metrics"}`` of a checkpoint folder (see
    :func:`read_checkpoint`)."""
    return read_checkpoint(path, prefer, weights=True)


def model_card(cfg: dict, taxonomy: Taxonomy, metrics: dict | None, command: str) -> str:
    """README.md written into every checkpoint folder."""
    lines = [
        f"# hiertree checkpoint: {taxonomy.name}",
        "",
        f"- encoder: `{cfg['model']['encoder']}` (initial weights: `{cfg['model']['encoder_weights']}`), "
        f"output stride {cfg['model']['output_stride']}, decoder channels {cfg['model']['decoder_channels']}, "
        f"{'flat leaf head' if cfg['model']['flat'] else 'one head per level'}",
        f"- data: `{cfg['data']['kind']}`" + (f" at `{cfg['data']['root']}`" if cfg["data"]["root"] else ""),
        f"- command: `{command}`",
        "",
        "## Taxonomy",
        "",
        "```",
        taxonomy.describe(),
        "```",
    ]
    if metrics:
        lines += ["", f"## Validation (epoch {metrics.get('epoch')})", "", "| level | mIoU | mIoU with bg | pixel acc |", "| --- | --- | --- | --- |"]
        for lv in metrics["tree"]["levels"]:
            lines.append(f"| L{lv['level']} | {lv['mIoU']:.4f} | {lv['mIoU_with_background']:.4f} | {lv['pixel_accuracy']:.4f} |")
    lines += ["", "Load it with `hiertree.checkpoint.load_model(<this folder>)` or `python eval.py --checkpoint <this folder>`.", ""]
    return "\n".join(lines)


BACKOFF_FILE = "backoff.json"


def save_backoff(ck_dir: str | Path, calibration: dict[str, Any]) -> Path:
    """Store a calibrated back-off threshold with a checkpoint (``<ck>/backoff.json``); OSError if read-only."""
    path = Path(ck_dir) / BACKOFF_FILE
    try:
        path.write_text(json.dumps(calibration, indent=2))
    except OSError as err:
        raise OSError(f"{path}: cannot store the back-off calibration ({err.strerror}); copy the checkpoint folder "
                      "somewhere writable and calibrate that copy") from None
    return path


def load_backoff(ck_dir: str | Path) -> dict[str, Any] | None:
    """The calibration stored with a checkpoint, or None."""
    path = Path(ck_dir) / BACKOFF_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file (a checkpoint's weights: what a calibration or a cached graph belongs to), read once
    per process while the file's size and modification time stay the same (the ONNX cache key, the int8 ranges and
    the back-off threshold all ask for the same weights' digest)."""
    stat = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibrated_threshold(ck_dir: str | Path, hflip: bool = False, scales: Sequence[float] = (1.0,),
                         required: bool = False) -> float | None:
    """The back-off threshold calibrated for checkpoint ``ck_dir`` (``backoff.json``), refused in one line when it
    was calibrated for other weights or other test-time augmentation than ``hflip``/``scales``: its promise is
    about those predictions only. None without a calibration (a CheckpointError saying how to make one when
    ``required``)."""
    where = Path(ck_dir) / BACKOFF_FILE
    calibration = load_backoff(ck_dir)
    fix = f"calibrate again: eval.py --checkpoint {ck_dir} --calibrate-backoff 0.9"
    if calibration is None:
        if required:
            raise CheckpointError(f"{ck_dir} has no calibrated back-off threshold; {fix}, or give a threshold in [0, 1]")
        return None
    digest = calibration.get("weights_sha256")
    if digest is None:
        raise CheckpointError(f"{where}: written before calibrations recorded their weights and TTA; {fix}")
    now = file_sha256(Path(ck_dir) / "model.safetensors")
    if digest != now:
        raise CheckpointError(f"{where}: calibrated for other weights (sha256 {digest[:12]}..., these are {now[:12]}...); "
                              f"{fix}")
    tta = calibration.get("tta", {})
    then = (bool(tta.get("hflip", False)), [float(v) for v in tta.get("scales", [1.0])])
    if then != (bool(hflip), [float(v) for v in scales]):
        raise CheckpointError(f"{where}: calibrated with hflip {then[0]}, scales {then[1]}; these predictions use hflip "
                              f"{bool(hflip)}, scales {list(scales)}: use the same test-time augmentation, or {fix} "
                              "with this one")
    return float(calibration["threshold"])
