"""Which network runs a checkpoint's predictions, and the ONNX graph cached beside the checkpoint.

``auto`` picks ONNX Runtime on a CPU when ``onnxruntime`` and ``onnx`` are installed (the same network, about
1.5-2x faster on a small CPU) and eager PyTorch otherwise or on a GPU; ``torch`` and ``onnx`` force one. The log
says which ran and why. The ONNX graph is exported once per checkpoint and cached under
``<checkpoint>/.hiertree-cache/``, named by a key of everything it depends on (the SHA-256 of the checkpoint's
weights, taxonomy and config -- the tree-consistent decoding is baked in from the taxonomy -- the hiertree, torch
and onnx versions, the input layout, the opset). The key is also written into the file and checked when it is
opened, so a file from another checkpoint, taxonomy or version is rebuilt, never used; the newest
:data:`KEEP_GRAPHS` files of a folder are kept, older ones removed. Processes that find the same graph missing
export it once: the first holds a lock file in the cache folder, the others wait for it and then open its file.
When the checkpoint folder is read-only the cache goes to ``$HIERTREE_CACHE`` (default ``~/.cache/hiertree``),
and the log says so.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from hiertree import version
from hiertree.checkpoint import file_sha256
from hiertree.device import device_type
from hiertree.inference.onnx_format import OPSET
from hiertree.inference.quantization import (CALIBRATION_FILE, RECIPE, QuantizationError, calibration_problem,
                                             quantize_graph, shipped_ranges_supported)
from hiertree.inference.runners import OnnxRunner, TorchRunner, missing_onnx_packages, onnx_missing

if TYPE_CHECKING:  # PyTorch loads only to run the network in it or to export the graph on a cache miss
    import torch
    from torch import nn

__all__ = ["BACKENDS", "QUANTIZE", "BackendError", "backend_choice", "choose_backend", "onnx_cache_meta", "onnx_cache_path", "cached_onnx_runner",
           "make_runner", "quantize_choice", "user_cache_dir"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
#: ``--quantize``: auto (the default: int8 for a model that ships its int8 calibration file and runs in ONNX Runtime,
#: else float32), none (float32) or int8 (ONNX Runtime static quantization; docs/outputs.md says what it costs).
QUANTIZE = (None, "none", "auto", "int8")
#: What the cached graph takes and returns; part of the cache key, so a change of layout never reuses a file.
INPUT_LAYOUT = "images float32 Nx3xHxW 0..255 -> logits_L* float32 NxCxHxW, leaf int64 NxHxW"
#: Files of the checkpoint's folder the graph depends on: weights, the tree decoded in it, the architecture.
GRAPH_INPUTS = ("model.safetensors", "taxonomy.yaml", "config.yaml")
#: Graph files kept per cache folder (the newest); older ones are removed when a new one is written.
KEEP_GRAPHS = 4
_CACHE_FOLDER = ".hiertree-cache"


class BackendError(RuntimeError):
    """A backend that cannot be had (unknown name, ONNX Runtime missing, ONNX on a GPU)."""


def backend_choice(backend: str, device: str | torch.device) -> tuple[str, str]:
    """``(torch or onnx, why)`` for ``backend`` (``auto``/``torch``/``onnx``) on ``device``; BackendError where
    ``onnx`` cannot run (a package missing, not a CPU) or the name is unknown."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    missing = missing_onnx_packages()
    if backend == "onnx":
        if missing:
            raise BackendError(onnx_missing(missing))
        if device_type(device) != "cpu":
            raise BackendError(f"the onnx backend runs on the CPU; use --device cpu or --backend torch (got {device})")
        return "onnx", "ONNX Runtime on the CPU (backend onnx)"
    if backend == "torch":
        return "torch", f"PyTorch on {device} (backend torch)"
    if device_type(device) != "cpu":
        return "torch", f"PyTorch on {device} (backend auto: ONNX Runtime is used on a CPU only)"
    if missing:
        return "torch", f"PyTorch, not the faster ONNX Runtime (backend auto): {onnx_missing(missing)}"
    return "onnx", "ONNX Runtime on the CPU (backend auto: faster than PyTorch there)"


def choose_backend(backend: str, device: str | torch.device) -> str:
    """``torch`` or ``onnx`` (:func:`backend_choice`); the log says which and why once per process, as a warning
    where ``auto`` falls back to PyTorch for a missing package."""
    chosen, why = backend_choice(backend, device)
    fallback = backend == "auto" and device_type(device) == "cpu" and chosen == "torch"
    _say(logging.WARNING if fallback else logging.INFO, f"network runs in {why}")
    return chosen


@functools.lru_cache(maxsize=None)
def _say(level: int, text: str) -> None:
    """Log ``text`` once per process: a model's predict calls choose their backend again each time."""
    log.log(level, "%s", text)


def onnx_cache_meta(ck_dir: str | Path) -> dict[str, str]:
    """Everything the cached graph of checkpoint ``ck_dir`` depends on; ``key`` hashes the rest."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    def installed(package: str) -> str:  # read from the package's metadata: importing torch to ask costs a second
        try:
            return dist_version(package)
        except PackageNotFoundError:
            return "absent"

    digests = {f"{Path(name).stem}_sha256": file_sha256(Path(ck_dir) / name) for name in GRAPH_INPUTS
               if (Path(ck_dir) / name).is_file()}
    digests["weights_sha256"] = digests.pop("model_sha256")
    return _keyed({"hiertree_version": version.__version__, "torch_version": installed("torch"),
                   "onnx_version": installed("onnx"), "opset": str(OPSET), "layout": INPUT_LAYOUT, **digests})


def _keyed(meta: dict[str, str]) -> dict[str, str]:
    """``meta`` plus ``hiertree_cache_key``, a hash of everything else in it."""
    body = {k: v for k, v in meta.items() if k != "hiertree_cache_key"}
    return {**body, "hiertree_cache_key": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]}


def user_cache_dir() -> Path:
    """``$HIERTREE_CACHE``, else ``$XDG_CACHE_HOME/hiertree``, else ``~/.cache/hiertree``."""
    if os.environ.get("HIERTREE_CACHE"):
        return Path(os.environ["HIERTREE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hiertree"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            return True
    except OSError:
        return False


def onnx_cache_path(ck_dir: str | Path, meta: dict[str, str]) -> Path:
    """Where the graph of ``ck_dir`` is cached: beside it, or in the user cache when the folder is read-only
    (a folder per checkpoint there, so keeping the newest files of one never removes another's)."""
    ck_dir = Path(ck_dir)
    name = f"predict-{meta['hiertree_cache_key']}.onnx"
    here = ck_dir / _CACHE_FOLDER
    if _writable(here):
        return here / name
    where = hashlib.sha256(str(ck_dir.resolve()).encode()).hexdigest()[:16]
    elsewhere = user_cache_dir() / "onnx" / where
    log.warning("checkpoint folder %s is read-only; caching its ONNX graph in %s instead", ck_dir, elsewhere)
    if not _writable(elsewhere):
        raise BackendError(f"cannot cache the ONNX graph: neither {here} nor {elsewhere} is writable; "
                           "set HIERTREE_CACHE to a writable folder or use --backend torch")
    return elsewhere / name


@contextlib.contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.export.lock``: one process exports, the others wait here (no lock where fcntl is absent)."""
    try:
        import fcntl
    except ImportError:  # Windows: two cold processes may both export; the atomic replace keeps files whole
        yield
        return
    with open(folder / ".export.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prune(folder: Path, keep: Path) -> None:
    """Remove all but the newest :data:`KEEP_GRAPHS` graph files of ``folder`` (never ``keep``)."""
    graphs = sorted(folder.glob("predict-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [g for g in graphs if g != keep][KEEP_GRAPHS - 1:]:
        with contextlib.suppress(OSError):
            old.unlink()
            log.info("removed an old cached ONNX graph: %s", old)


def _export(build_model: Callable[[], nn.Module], path: Path, meta: dict[str, str]) -> None:
    """Export to a temporary file beside ``path`` and move it in place (a killed export leaves no half file)."""
    log.info("exporting the ONNX graph once for this checkpoint: %s", path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    import torch

    from hiertree.inference.onnx_graph import export_onnx

    try:
        model = copy.deepcopy(build_model()).cpu().float().to(memory_format=torch.contiguous_format)
        export_onnx(model, tmp, opset=OPSET, output="predict", metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _quantize(src: Path, path: Path, meta: dict[str, str], calibration_file: Path,
              calibration: Callable[[], Sequence[np.ndarray]] | None) -> None:
    """The int8 graph of float graph ``src`` at ``path`` (the recipe of :mod:`hiertree.inference.quantization`), its
    ranges from the model's ``calibration_file`` or else measured on ``calibration()`` (RGB uint8 images)."""
    from hiertree.inference.onnx_graph import stamp_metadata

    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".quantize-") as tmp:
            out = Path(tmp) / "int8.onnx"
            source = quantize_graph(src, out, calibration_file, calibration)
            stamp_metadata(out, meta)
            os.replace(out, path)
    except QuantizationError as err:
        raise BackendError(str(err)) from None
    log.info("quantized the ONNX graph to int8 (ranges from %s): %s",
             calibration_file if source == "file" else "the first input images", path)


def quantize_choice(quantize: str | None, backend: str, ck_dir: str | Path | None) -> str | None:
    """What ``quantize`` means for a checkpoint run by ``backend`` (``torch`` or ``onnx``): ``auto`` is int8 when
    the network runs in ONNX Runtime and the model folder ships an int8 calibration file that fits it, else float
    (None). Whether this ONNX Runtime can build from the stored ranges is asked only when building the graph."""
    if quantize not in QUANTIZE:
        raise BackendError(f"unknown quantization {quantize!r}; choose one of {', '.join(map(str, QUANTIZE))}")
    if quantize != "auto":
        return None if quantize in (None, "none") else quantize
    if backend != "onnx" or ck_dir is None:
        log.info("quantize auto: float32 (the network runs in PyTorch)")
        return None
    problem = calibration_problem(Path(ck_dir))
    if problem is None:
        log.info("quantize auto: int8, from the ranges in %s", Path(ck_dir) / CALIBRATION_FILE)
        return "int8"
    shipped = (Path(ck_dir) / CALIBRATION_FILE).is_file()  # a model without the file is normal; a bad file is not
    (log.warning if shipped else log.info)("quantize auto: float32 (%s)", problem)
    return None


def _open_cached(path: Path, meta: dict[str, str], taxonomy: Any, flat: bool, threads: int | None,
                 quiet: bool = False) -> OnnxRunner | None:
    """The runner of a cached file whose embedded key is ``meta``'s, else None (the file is then rebuilt);
    ``quiet``: a second look (under the export lock) says nothing the first one has not said."""
    if not path.is_file():
        return None
    try:
        runner = OnnxRunner(path, taxonomy, flat, threads)
        if runner.metadata.get("hiertree_cache_key") == meta["hiertree_cache_key"]:
            return runner
        if not quiet:
            log.warning("cached ONNX graph %s belongs to another checkpoint or version; rebuilding it", path)
    except Exception as err:  # a truncated or foreign file: ONNX Runtime's errors have no common base class
        if not quiet:
            log.warning("cached ONNX graph %s cannot be opened (%s); rebuilding it", path, str(err).splitlines()[0][:200])
    return None


def cached_onnx_runner(ck_dir: str | Path, taxonomy: Any, flat: bool, build_model: Callable[[], nn.Module],
                       threads: int | None = None, quantize: str | None = None,
                       calibration: Callable[[], Sequence[np.ndarray]] | None = None) -> OnnxRunner:
    """An :class:`OnnxRunner` for checkpoint ``ck_dir``, exporting (``build_model()`` -> a CPU model) on a cache miss.

    A cached file whose embedded key differs from this checkpoint's (another checkpoint, another hiertree or
    torch version, or a file that is not readable as ONNX) is rebuilt. ``quantize="int8"`` runs a statically
    quantized copy cached beside the float graph, its ranges from the model's calibration file or else measured once
    on ``calibration()`` (RGB uint8 images); ``auto`` is int8 when the model ships a calibration file this ONNX
    Runtime can build from, else float. A cached int8 graph opens without the float one.
    """
    auto = quantize == "auto"
    quantize = quantize_choice(quantize, "onnx", ck_dir)
    meta = onnx_cache_meta(ck_dir)
    path = onnx_cache_path(ck_dir, meta)
    if quantize is None:
        return _float_runner(path, meta, taxonomy, flat, threads, build_model)
    shipped = Path(ck_dir) / CALIBRATION_FILE
    qmeta = _keyed({**meta, "quantize": quantize, "recipe": RECIPE,
                    "calibration": file_sha256(shipped) if shipped.is_file() else "input images"})
    qpath = path.with_name(f"predict-{quantize}-{qmeta['hiertree_cache_key']}.onnx")
    quantized = _open_cached(qpath, qmeta, taxonomy, flat, threads)
    if quantized is not None:
        return quantized
    if auto and not shipped_ranges_supported():  # building int8 would need images: stay float
        log.warning("quantize auto: float32 (this onnxruntime cannot quantize from the stored ranges of %s; "
                    "pip install --upgrade onnxruntime)", shipped)
        return _float_runner(path, meta, taxonomy, flat, threads, build_model)
    _float_runner(path, meta, taxonomy, flat, threads, build_model)  # the graph int8 is made from
    with _export_lock(path.parent):
        quantized = _open_cached(qpath, qmeta, taxonomy, flat, threads, quiet=True)
        if quantized is None:
            _quantize(path, qpath, qmeta, shipped, calibration)
            _prune(path.parent, keep=qpath)
            quantized = OnnxRunner(qpath, taxonomy, flat, threads)
    return quantized


def _float_runner(path: Path, meta: dict[str, str], taxonomy: Any, flat: bool, threads: int | None,
                  build_model: Callable[[], nn.Module]) -> OnnxRunner:
    """The float graph cached at ``path``, exported first when it is missing or stale."""
    runner = _open_cached(path, meta, taxonomy, flat, threads)
    if runner is None:
        with _export_lock(path.parent):
            runner = _open_cached(path, meta, taxonomy, flat, threads, quiet=True)  # another process may have built it
            if runner is None:
                _export(build_model, path, meta)
                _prune(path.parent, keep=path)
                runner = OnnxRunner(path, taxonomy, flat, threads)
    return runner


def make_runner(backend: str, device: str | torch.device, ck_dir: str | Path | None, taxonomy: Any, flat: bool,
                build_model: Callable[[], nn.Module], quantize: str | None = None,
                calibration: Callable[[], Sequence[np.ndarray]] | None = None) -> TorchRunner | OnnxRunner:
    """The one runner choice of every predict path (``HierSegModel.predict``, ``hiertree-predict``): the runner
    ``backend`` names on ``device`` for checkpoint ``ck_dir``. ``build_model()`` is called only when the network is
    needed in PyTorch (the torch backend, or an ONNX cache miss; never modified: the graph and the folded runner
    are made from copies). ``quantize="int8"`` needs ONNX."""
    chosen = choose_backend(backend, device)
    if chosen != "onnx" and quantize_choice(quantize, chosen, ck_dir) == "int8":
        raise BackendError("--quantize int8 runs in ONNX Runtime on a CPU; use --backend onnx (or auto) on --device cpu")
    if chosen == "onnx":
        if ck_dir is None:
            raise BackendError("the onnx backend caches its graph beside a checkpoint; this model has none")
        return cached_onnx_runner(ck_dir, taxonomy, flat, build_model, quantize=quantize, calibration=calibration)
    return TorchRunner(build_model(), device)
