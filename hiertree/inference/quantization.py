"""Static int8 quantization of a checkpoint's ONNX graph for ONNX Runtime on a CPU: the one recipe, and the
calibration file a model ships so that its users never calibrate.

The recipe was chosen on Pascal-Part val among the variants of ``benchmarks/int8_variants.py`` (results
``benchmarks/results/int8-variants-20261206-*``) and checked on held-out images. It uses the QDQ format, per-channel
int8 weights and uint8 activations with min/max ranges. Only convolutions and their activations (``Clip`` = ReLU6,
``Relu``) are quantized; residual sums, resizes, concatenations and pooling stay float. Quantizing those cost
4-9x more mIoU. The first convolution (it sees the raw image) and every node outside the encoder and decoder
(heads, upsampling, the tree decoding) stay float as well.

A model folder may hold :data:`CALIBRATION_FILE`, written by :func:`write_calibration` from training images. It
holds the activation ranges of the tensors the recipe quantizes, plus whatever check of int8 against float its
author records. With it, the int8 graph is built without any image, and ``quantize="auto"`` (the default of
``hiertree-predict`` and ``model.predict``) runs int8. Without it, ``quantize="int8"`` calibrates on the first
input images and ``auto`` stays float.
"""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hiertree.checkpoint import file_sha256

__all__ = ["CALIBRATION_FILE", "OPS", "QuantizationError", "float_nodes", "quantized_tensors", "read_calibration",
           "write_calibration", "quantize_graph", "shipped_ranges_supported", "calibration_problem"]

log = logging.getLogger(__name__)

#: Op types whose inputs and outputs are quantized: convolutions and their activations, nothing else.
OPS = ("Conv", "Clip", "Relu")
#: Name prefixes of the nodes that may be quantized (the graph's encoder and decoder); everything else stays float.
BODY = ("/model/encoder/", "/model/decoder/")
#: The calibration file of a model folder.
CALIBRATION_FILE = "int8_calibration.json"
FORMAT = "hiertree-int8-calibration/1"
#: The weights file a calibration file is tied to (by its SHA-256): ranges of other weights are never used.
WEIGHTS = "model.safetensors"
#: Changes whenever the recipe does, so that cached int8 graphs of an older recipe are rebuilt.
RECIPE = "qdq-perchannel-s8w-u8a-minmax-" + "+".join(OPS) + "-first-conv-and-tail-float"


class QuantizationError(RuntimeError):
    """int8 quantization cannot be done: no ranges and no images, or ONNX Runtime's tools are missing."""


def _tools() -> tuple[Any, Any]:
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as err:
        raise QuantizationError(f"int8 quantization needs onnx and onnxruntime's quantization tools ({err}); "
                                "pip install --upgrade onnx onnxruntime") from None
    return onnx, quantization


def shipped_ranges_supported() -> bool:
    """Whether this ONNX Runtime quantizes from stored ranges (``quantize_static(calibration_cache_path=...)``, in
    releases since mid-2026); older ones must calibrate on images."""
    try:
        from onnxruntime.quantization import quantize_static
    except ImportError:
        return False
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def float_nodes(graph: Any) -> list[str]:
    """The nodes of ONNX ``graph`` the recipe leaves float: the first convolution and all outside the encoder and
    decoder."""
    first_conv = next((n.name for n in graph.node if n.op_type == "Conv"), None)
    return [n.name for n in graph.node if not n.name.startswith(BODY) or n.name == first_conv]


def quantized_tensors(graph: Any, exclude: Iterable[str]) -> set[str]:
    """The activations the recipe needs ranges for: the data input and the output of every quantized node."""
    skip, constants = set(exclude), {i.name for i in graph.initializer}
    tensors: set[str] = set()
    for node in graph.node:
        if node.op_type in OPS and node.name not in skip:
            tensors.update(t for t in (node.input[0], node.output[0]) if t and t not in constants)
    return tensors


def _calibrate(pre: Path, images: Iterable[np.ndarray], tmp: Path) -> dict[str, list[float]]:
    """Min/max ranges of the inputs and outputs of every :data:`OPS` node of graph ``pre`` over RGB uint8
    ``images``, one image per pass (images differ in size, and a pass keeps all its activations in memory)."""
    _, q = _tools()
    calibrator = q.create_calibrator(pre, list(OPS), augmented_model_path=str(tmp / "augmented.onnx"),
                                     calibrate_method=q.CalibrationMethod.MinMax)

    count = 0
    for image in images:
        calibrator.collect_data(_Images([image]))
        count += 1
    if not count:
        raise QuantizationError("int8 quantization needs calibration images; give at least one readable image")
    data = calibrator.compute_data()
    items = data.data.items() if hasattr(data, "data") else data.items()
    return {name: [float(np.min(_range(v)[0])), float(np.max(_range(v)[1]))] for name, v in items}


def _range(value: Any) -> tuple[Any, Any]:
    return value.range_value if hasattr(value, "range_value") else value


def read_calibration(path: Path) -> dict | None:
    """The calibration file at ``path``, or None when there is none; a file that is not one is an error that names
    it."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise QuantizationError(f"{path}: not a readable int8 calibration file ({err}); delete it or write it again "
                                "with hiertree.inference.quantization.write_calibration") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT or not isinstance(content.get("ranges"), dict):
        raise QuantizationError(f"{path}: not an int8 calibration file of format {FORMAT!r}; delete it or write it "
                                "again with hiertree.inference.quantization.write_calibration")
    return content


def write_calibration(graph_path: Path, folder: Path, images: Iterable[np.ndarray], record: dict | None = None) -> Path:
    """Measure the recipe's activation ranges of float graph ``graph_path`` on ``images`` (RGB uint8, training
    images, never the ones the model is judged on) and write them into model ``folder``'s :data:`CALIBRATION_FILE`,
    tied to its weights, with ``record`` (for example the int8 vs float check) kept beside them. The file makes int8
    the model's default: check the int8 graph against the float one before shipping it."""
    onnx, _ = _tools()
    with tempfile.TemporaryDirectory(prefix="hiertree-calibrate-") as tmp:
        pre = _preprocess(graph_path, Path(tmp))
        graph = onnx.load(str(pre)).graph
        wanted = quantized_tensors(graph, float_nodes(graph))
        ranges = _calibrate(pre, images, Path(tmp))
    missing = sorted(wanted - set(ranges))
    if missing:
        raise QuantizationError(f"calibration measured no range for {len(missing)} tensor(s) of {graph_path}, "
                                f"e.g. {missing[0]}")
    path = folder / CALIBRATION_FILE
    weights = file_sha256(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else None
    path.write_text(json.dumps({"format": FORMAT, "recipe": RECIPE, "weights_sha256": weights, **(record or {}),
                                "ranges": {k: ranges[k] for k in sorted(wanted)}}, indent=1) + "\n")
    log.info("wrote the int8 ranges of %d tensors to %s", len(wanted), path)
    return path


def _preprocess(src: Path, tmp: Path) -> Path:
    """ONNX Runtime's pre-quantization pass (shape inference, graph optimisation) of ``src``, in ``tmp``."""
    _, q = _tools()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def quantize_graph(src: Path, dst: Path, calibration_file: Path | None,
                   images: Callable[[], Sequence[np.ndarray]] | None) -> str:
    """Write the int8 graph of float graph ``src`` to ``dst`` by the recipe. Its ranges come from
    ``calibration_file`` when that covers every quantized tensor and this ONNX Runtime can use it, else from
    ``images()``. Returns where they came from: ``"file"`` or ``"images"``."""
    onnx, q = _tools()
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        pre = _preprocess(src, Path(tmp))
        graph = onnx.load(str(pre)).graph
        exclude = float_nodes(graph)
        ranges = _stored_ranges(calibration_file, quantized_tensors(graph, exclude))
        if ranges is None and images is None:
            raise QuantizationError("int8 quantization needs calibration images the first time (the graph is cached "
                                    "after), or a model folder with its " + CALIBRATION_FILE)
        out = Path(tmp) / "int8.onnx"
        options = dict(quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QUInt8,
                       weight_type=q.QuantType.QInt8, op_types_to_quantize=list(OPS), nodes_to_exclude=exclude)
        source = "file" if ranges is not None else "images"
        if shipped_ranges_supported():
            ranges = ranges if ranges is not None else _calibrate(pre, images(), Path(tmp))
            cache = Path(tmp) / "ranges.json"
            q.save_tensors_data(q.TensorsData(q.CalibrationMethod.MinMax, {
                k: (np.array(lo, np.float32), np.array(hi, np.float32)) for k, (lo, hi) in ranges.items()}), cache)
            q.quantize_static(str(pre), str(out), None, calibration_cache_path=str(cache), **options)
        else:  # an ONNX Runtime without stored ranges calibrates inside quantize_static
            q.quantize_static(str(pre), str(out), _Images(images()), **options)
        out.replace(dst)
    return source


def calibration_problem(folder: Path) -> str | None:
    """None when model ``folder``'s calibration file fits it (and so makes int8 its default), else why not: no file,
    an unreadable one, ranges of other weights or another recipe. Cheap: it loads no quantization tool (whether this
    ONNX Runtime can build from stored ranges is :func:`shipped_ranges_supported`, asked only when building)."""
    path = folder / CALIBRATION_FILE
    try:
        content = read_calibration(path)
    except QuantizationError as err:
        return str(err)
    if content is None:
        return f"the model has no {CALIBRATION_FILE}"
    weights = folder / WEIGHTS
    if weights.is_file() and content.get("weights_sha256") != file_sha256(weights):
        return (f"{path} was measured for other weights than {weights}; measure it again "
                "(hiertree.inference.quantization.write_calibration)")
    if content.get("recipe") != RECIPE:
        return f"{path} was measured for int8 recipe {content.get('recipe')!r}, not {RECIPE!r}; measure it again"
    return None


def _stored_ranges(calibration_file: Path | None, wanted: set[str]) -> dict[str, list[float]] | None:
    """The ranges of ``calibration_file`` when they can be used for the tensors ``wanted``, else None (logged)."""
    if calibration_file is None or not calibration_file.is_file():
        return None
    problem = calibration_problem(calibration_file.parent)
    if problem is None and not shipped_ranges_supported():
        problem = "this onnxruntime cannot quantize from stored ranges (pip install --upgrade onnxruntime)"
    ranges = read_calibration(calibration_file)["ranges"] if problem is None else {}
    missing = sorted(wanted - set(ranges))
    if problem is None and missing:
        problem = f"{calibration_file} has no range for {len(missing)} tensor(s) of this graph, e.g. {missing[0]}"
    if problem is not None:
        log.warning("%s; calibrating on the input images instead", problem)
        return None
    return {k: ranges[k] for k in wanted}


class _Images:
    """ONNX Runtime's calibration reader (any object with ``get_next``) over RGB uint8 images, as the graph's
    ``images`` input."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.feeds = iter([{"images": np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32)}
                           for a in images])

    def get_next(self) -> dict | None:
        return next(self.feeds, None)
