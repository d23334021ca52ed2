"""Where a benchmark number comes from: versions, code revision and machine, shared by every script."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

import hiertree

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["cpu_model", "device_name", "provenance", "source_digest", "version"]


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_digest() -> str:
    """sha256 over the library, benchmark and config sources: identifies the code where git is absent."""
    h = hashlib.sha256()
    files = sorted([*(ROOT / "hiertree").rglob("*.py"), *(ROOT / "hiertree").rglob("*.yaml"),
                    *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "configs").glob("*.yaml")])
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"


def provenance() -> dict:
    """Versions, code revision and machine: what a reader needs to trust or reproduce the numbers."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    cuda = None
    if torch.cuda.is_available():
        cuda = {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "devices": torch.cuda.device_count()}
    return {
        "versions": {"python": platform.python_version(), "hiertree": hiertree.__version__, "torch": torch.__version__,
                     "timm": version("timm"), "segmentation_models_pytorch": version("segmentation_models_pytorch"),
                     "albumentations": version("albumentations")},
        "hiertree_path": str(Path(hiertree.__file__).resolve().parent),
        "git": {"commit": commit, "dirty": None if status is None else bool(status)},  # null: not a git checkout here
        "source_sha256": source_digest(),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "cuda": cuda},
    }
