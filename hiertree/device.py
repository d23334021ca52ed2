"""Which torch device to run on (``auto`` picks CUDA when present; errors name the flag or config key), and which
mixed precision it trains and evaluates in."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["DeviceError", "resolve_device", "resolve_amp", "autocast_for"]


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


def resolve_amp(setting: str, device: torch.device) -> str:
    """``train.amp``'s value for ``device``; ``auto`` is the one rule: bf16 on a CUDA device that computes it
    natively, fp16 (with a gradient scaler) on one that does not (bf16 would be emulated, slowly), none (fp32)
    elsewhere, the CPU included."""
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on ``device`` when ``amp`` asks for it (``auto`` never does on a CPU, which trains
    in fp32; an explicit ``train.amp=bf16`` does, as the tests run the CUDA step's precision there); a no-op for
    ``none`` and ``fp32``."""
    if amp in ("none", "fp32", None):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
