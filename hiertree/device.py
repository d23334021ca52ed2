"""Which torch device to run on (``auto`` picks CUDA when present; errors name the flag or config key), and which
mixed precision it trains and evaluates in. :func:`device_name` answers without PyTorch where it can (a CPU-only
machine), so that predicting from an ONNX graph never loads it."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "resolve_device", "device_name", "device_type", "resolve_amp", "autocast_for"]


class DeviceError(ValueError):
    """A device name is malformed or names hardware this machine lacks; the message says what to use."""


def resolve_device(spec: str, flag: str | None = None) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a DeviceError naming ``flag`` (a CLI option) or the config key."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:  # a malformed name
        where = f"{flag} {spec!r}" if flag else f"train.device={spec!r}"
        raise DeviceError(f"{where} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        where, fix = (f"{flag} {spec}", f"{flag} auto") if flag else (f"train.device={spec!r}", "device=auto")
        raise DeviceError(f"{where} but CUDA is not available here; use {fix} or cpu")
    return device


def _no_nvidia_driver() -> bool:
    """True where CUDA cannot be available: a Linux machine with no NVIDIA kernel driver loaded (PyTorch's CUDA needs
    it). Elsewhere (other systems, a driver present) only PyTorch can tell."""
    return sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version")


def device_name(spec: str, flag: str | None = None) -> str:
    """:func:`resolve_device`'s answer as text (``cpu``, ``cuda``, ``cuda:1``); ``cpu``, and ``auto`` on a machine
    without an NVIDIA driver, are answered without importing PyTorch (about a second of a short command's life)."""
    if spec == "cpu" or (spec == "auto" and "torch" not in sys.modules and _no_nvidia_driver()):
        return "cpu"
    return str(resolve_device(spec, flag))


def device_type(device: "str | torch.device") -> str:
    """``cpu``/``cuda``/... of a device or its name (``cuda:1`` -> ``cuda``)."""
    return str(device).split(":")[0]


def resolve_amp(setting: str, device: torch.device) -> str:
    """``train.amp``'s value for ``device``; ``auto`` is the one rule: bf16 on a CUDA device that computes it
    natively, fp16 (with a gradient scaler) on one that does not (bf16 would be emulated, slowly), none (fp32)
    elsewhere, the CPU included."""
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "none"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on ``device`` when ``amp`` asks for it (``auto`` never does on a CPU, which trains
    in fp32; an explicit ``train.amp=bf16`` does, as the tests run the CUDA step's precision there); a no-op for
    ``none`` and ``fp32``."""
    if amp in ("none", "fp32", None):
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
