"""Which torch device to run on: ``auto`` picks CUDA when present; errors name the flag or config key."""

from __future__ import annotations

import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """A device name is malformed or names hardware this machine lacks; the message says what to use."""


def resolve_device(spec: str, flag: str | None = None) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a DeviceError naming ``flag`` (a CLI option) or the config key."""
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
