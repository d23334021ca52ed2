"""int8: the recipe (what is quantized, what stays float), the calibration file a model ships (built from it with no
image, tied to its weights), ``quantize="auto"`` and the bad files it must survive."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import hiertree.inference.backends as backends
from hiertree.inference.backends import BackendError, cached_onnx_runner, make_runner
from hiertree.inference.predictor import Predictor, predict_images
from hiertree.inference.quantization import (CALIBRATION_FILE, calibration_problem, float_nodes,
                                             quantized_tensors, shipped_ranges_supported, write_calibration)
from hiertree.inference.runners import OnnxRunner, TorchRunner
from hiertree.models import load_model

needs_stored_ranges = pytest.mark.skipif(not shipped_ranges_supported(),
                                         reason="this onnxruntime cannot quantize from stored ranges")


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint, pascal, tmp_path_factory):
    """A copy of the tiny checkpoint with its float graph cached and its calibration file written from 3 images."""
    folder = tmp_path_factory.mktemp("calibrated") / "ck"
    shutil.copytree(tiny_checkpoint / "ckpt-0000001", folder, ignore=shutil.ignore_patterns(".hiertree-cache"))
    fp32 = cached_onnx_runner(folder, pascal, False, lambda: load_model(folder)[0], quantize="none")
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(3)]
    write_calibration(fp32.path, folder, images, record={"calibrated_on": "3 random images"})
    return folder, fp32


def _graph(path: Path):
    return onnx.load(str(path)).graph


def test_the_recipe_quantizes_convolutions_and_activations_only(calibrated):
    folder, fp32 = calibrated
    graph = _graph(fp32.path)
    kept = set(float_nodes(graph))
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    heads = [n.name for n in graph.node if n.name.startswith("/model/heads")]
    assert first_conv.name in kept and heads and set(heads) <= kept
    assert not any(n.name.startswith(("/model/encoder/", "/model/decoder/")) for n in graph.node
                   if n.name in kept and n is not first_conv)
    wanted = quantized_tensors(graph, kept)
    assert wanted and not wanted & {i.name for i in graph.initializer}
    ranges = json.loads((folder / CALIBRATION_FILE).read_text())["ranges"]
    assert set(ranges) == wanted and all(lo <= hi for lo, hi in ranges.values())


@needs_stored_ranges
def test_a_shipped_calibration_file_builds_int8_without_images(calibrated, pascal):
    folder, fp32 = calibrated
    build = lambda: pytest.fail("the float graph is cached")  # noqa: E731
    int8 = cached_onnx_runner(folder, pascal, False, build, quantize="int8",
                              calibration=lambda: pytest.fail("the model ships its ranges"))
    float_graph = _graph(fp32.path)
    wanted = quantized_tensors(float_graph, float_nodes(float_graph))
    nodes = _graph(int8.path).node
    quantized = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    assert quantized and quantized <= wanted  # only convolutions' and activations' tensors: sums, resizes stay float
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    first_conv = next(n for n in nodes if n.op_type == "Conv")
    assert first_conv.input[0] not in dequantized and first_conv.input[1] not in dequantized  # the stem stays float
    heads = [n for n in nodes if n.name.startswith("/model/heads")]
    assert heads and not any(i in dequantized for n in heads for i in n.input[1:])
    assert int8.metadata["calibration"] != "input images"
    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a, b = (predict_images(r, [image])[0]["levels"] for r in (int8, fp32))
    assert [x.shape for x in a] == [(48, 64)] * 3
    assert np.mean([(x == y).mean() for x, y in zip(a, b)]) > 0.5  # the same network, 8-bit


@needs_stored_ranges
def test_auto_is_int8_with_the_file_and_float_without(calibrated, pascal, tmp_path, tiny_checkpoint):
    folder, fp32 = calibrated
    auto = make_runner("onnx", "cpu", folder, pascal, False, lambda: load_model(folder)[0], quantize="auto")
    assert isinstance(auto, OnnxRunner) and auto.path.name.startswith("predict-int8-")
    torch_run = make_runner("torch", "cpu", folder, pascal, False, lambda: load_model(folder)[0], quantize="auto")
    assert isinstance(torch_run, TorchRunner)  # auto never insists on ONNX
    plain = tmp_path / "plain"
    shutil.copytree(tiny_checkpoint / "ckpt-0000001", plain, ignore=shutil.ignore_patterns(".hiertree-cache"))
    predictor = Predictor(plain, backend="onnx", device="cpu")
    assert not predictor.runner.path.name.startswith("predict-int8-")
    assert calibration_problem(plain) == f"the model has no {CALIBRATION_FILE}"


@needs_stored_ranges
def test_ranges_of_other_weights_are_never_used(calibrated, pascal, tmp_path, caplog):
    folder, _ = calibrated
    other = tmp_path / "other"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns(".hiertree-cache"))
    content = json.loads((other / CALIBRATION_FILE).read_text())
    (other / CALIBRATION_FILE).write_text(json.dumps({**content, "weights_sha256": "0" * 64}))
    assert "other weights" in calibration_problem(other)
    with caplog.at_level(logging.WARNING, logger="hiertree"):
        runner = make_runner("onnx", "cpu", other, pascal, False, lambda: load_model(other)[0], quantize="auto")
    assert not runner.path.name.startswith("predict-int8-") and "other weights" in caplog.text
    images = [np.full((32, 40, 3), 90, np.uint8)]
    calls = []
    int8 = cached_onnx_runner(other, pascal, False, lambda: load_model(other)[0], quantize="int8",
                              calibration=lambda: calls.append(1) or images)
    assert calls == [1] and int8.path.name.startswith("predict-int8-")  # explicit int8 calibrates on the inputs


def test_a_broken_calibration_file_is_named_and_auto_stays_float(calibrated, pascal, tmp_path, caplog):
    folder, _ = calibrated
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns(".hiertree-cache"))
    (broken / CALIBRATION_FILE).write_text("{not json")
    problem = calibration_problem(broken)
    assert str(broken / CALIBRATION_FILE) in problem and "not a readable int8 calibration file" in problem
    with caplog.at_level(logging.WARNING, logger="hiertree"):
        runner = make_runner("onnx", "cpu", broken, pascal, False, lambda: load_model(broken)[0], quantize="auto")
    assert not runner.path.name.startswith("predict-int8-") and CALIBRATION_FILE in caplog.text
    (broken / CALIBRATION_FILE).write_text(json.dumps({"format": "something else", "ranges": {}}))
    assert "not an int8 calibration file" in calibration_problem(broken)
    with pytest.raises(BackendError, match="needs calibration images"):
        cached_onnx_runner(broken, pascal, False, lambda: load_model(broken)[0], quantize="int8", calibration=None)


@needs_stored_ranges
def test_a_changed_calibration_file_rebuilds_the_int8_graph(calibrated, pascal, tmp_path, monkeypatch):
    folder, _ = calibrated
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".hiertree-cache"))
    calls = []
    real = backends._quantize
    monkeypatch.setattr(backends, "_quantize", lambda *a: calls.append(1) or real(*a))
    build = lambda: load_model(copy)[0]  # noqa: E731
    first = cached_onnx_runner(copy, pascal, False, build, quantize="int8")
    assert cached_onnx_runner(copy, pascal, False, build, quantize="int8").path == first.path and len(calls) == 1
    content = json.loads((copy / CALIBRATION_FILE).read_text())
    content["ranges"] = {k: [lo * 2, hi * 2] for k, (lo, hi) in content["ranges"].items()}
    (copy / CALIBRATION_FILE).write_text(json.dumps(content))
    again = cached_onnx_runner(copy, pascal, False, build, quantize="int8")
    assert again.path != first.path and len(calls) == 2


def test_unknown_quantize_values_are_refused(calibrated, pascal):
    folder, _ = calibrated
    with pytest.raises(BackendError, match="unknown quantization 'int4'"):
        make_runner("onnx", "cpu", folder, pascal, False, lambda: load_model(folder)[0], quantize="int4")
