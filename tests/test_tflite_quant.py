"""Quantized TFLite as people make it: full-integer models from TFLiteConverter, checked as real numbers.

The digits Keras fixture is converted with real calibration data (the training split) both ways
TensorFlow's guide shows: int8 inputs/outputs, and float I/O around int8 internals. The files are
made with TFLiteConverter directly, with no sidecar, as a user brings them. Before the runner
applied each I/O tensor's scale and zero point, the int8 variant agreed on 11% of labels (floats
cast to int8 in, raw codes compared with probabilities out), the float one was held to fp32
tolerances, and both were typed `preprocessing`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from convrepair.check import CheckConfig, run_check
from convrepair.convert import convert, load_calibration
from convrepair.errors import BadInput
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar

pytestmark = pytest.mark.slow

VARIANTS = ("int8", "float")


@pytest.fixture(scope="module")
def quantized(fixtures_dir, tmp_path_factory):
    """{io: path} of full-integer .tflite files made the way TensorFlow's guide makes them."""
    import keras
    import tensorflow as tf

    from convrepair_plugins.tensorflow.quiet import quiet, stderr_fd_silenced

    out = tmp_path_factory.mktemp("tflite_quant")
    model = keras.saving.load_model(str(fixtures_dir / "keras_cnn.keras"), safe_mode=True, compile=False)
    calibration = np.load(fixtures_dir / "digits_train_nhwc.npz")["x"][:64]
    paths = {}
    for io in VARIANTS:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io == "int8":
            converter.inference_input_type = converter.inference_output_type = tf.int8
        with quiet(), stderr_fd_silenced():
            data = converter.convert()
        paths[io] = out / f"digits_{io}_io.tflite"
        paths[io].write_bytes(data)
    return paths


def _check(fixtures_dir, target, **kwargs):
    config = CheckConfig(data=fixtures_dir / "digits_test_nhwc.npz", rounds=2, samples=200, **kwargs)
    return run_check(default_registry(), fixtures_dir / "keras_cnn.keras", target, config)


def test_runner_quantizes_inputs_and_dequantizes_outputs(quantized, fixtures_dir):
    from convrepair.model import ModelRef
    from convrepair.plugins import LoadRequest
    from convrepair_plugins.tensorflow.runners import load_tflite

    runner = load_tflite(LoadRequest(ModelRef(quantized["int8"], "tflite", "")))
    assert [s.dtype for s in runner.inputs] == ["float32"] and [s.dtype for s in runner.outputs] == ["float32"]
    io = runner.quantized_io
    assert {q["dtype"] for q in io.values()} == {"int8"} and len(io) == 2 and all(q["scale"] > 0 for q in io.values())
    x = np.load(fixtures_dir / "digits_test_nhwc.npz")["x"][:16]
    (scores,) = runner.run({runner.inputs[0].name: x}).values()
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=0.05)  # probabilities, not int8 codes


def _agrees_as_int8_does(report) -> None:
    """Scaled I/O makes an int8 model agree with its source as int8 can (the raw codes agreed on
    12.4%): within tolerance, or a rare label flip at a decision boundary, which the judge reports
    as it is (`discrepant`) — never anything but flips, never on more than 1% of the samples."""
    assert report.pooled.label_agreement >= 0.97, report.reasons
    if report.verdict != "equivalent":
        assert report.verdict == "discrepant" and all("change their top-1 label" in r for r in report.reasons), report.reasons
        assert len(report.flipped_samples) <= 0.01 * report.distinct, report.reasons


@pytest.mark.parametrize("io", VARIANTS)
def test_full_integer_tflite_agrees_with_its_source(quantized, fixtures_dir, io):
    report = _check(fixtures_dir, quantized[io])
    _agrees_as_int8_does(report)
    assert report.tolerance.enforced is False  # judged as int8 (from the file itself: no sidecar)


def test_cli_check_judges_a_sidecarless_int8_model_at_int8(quantized, fixtures_dir, tmp_path, cli):
    """The parent decides the precision before the worker runs: it parses the flatbuffer (no model runs)."""
    result = cli("check", fixtures_dir / "keras_cnn.keras", quantized["int8"], "--data", fixtures_dir / "digits_test_nhwc.npz",
                 "--rounds", "1", "--samples", "100", "--json", tmp_path / "check.json")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["verdict"] == "equivalent" and report["tolerance"]["origin"] == "default for int8"


def test_precision_is_read_from_the_flatbuffer_without_loading_it(quantized, tmp_path):
    from convrepair_plugins.tensorflow.runners import tflite_precision

    assert {tflite_precision(path) for path in quantized.values()} == {"int8"}
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(quantized["int8"].read_bytes()[:64])
    with pytest.raises(BadInput, match="not a readable TFLite flatbuffer"):
        tflite_precision(broken)


@pytest.mark.parametrize("io", VARIANTS)
def test_full_integer_rounding_is_typed_precision(quantized, fixtures_dir, io):
    report = _check(fixtures_dir, quantized[io], atol=1e-6, localize=True)
    assert report.verdict == "discrepant"
    fault = report.localization["fault"]
    assert fault["type"] == "precision", fault
    assert report.localization["ir"]["target"]["fidelity_rel_l2"] < 1e-3  # the ONNX IR takes floats too


def test_converter_writes_int8_io_with_calibration(fixtures_dir, tmp_path):
    calibration = load_calibration(fixtures_dir / "digits_train_nhwc.npz")
    result = convert(default_registry(), fixtures_dir / "keras_cnn.keras", "tflite-int8", out=tmp_path / "m.tflite",
                     options={"io": "int8"}, calibration={"x": calibration["x"][:50]})
    sidecar = read_sidecar(result.output.path)
    assert sidecar.precision == "int8"
    details = sidecar.steps[-1].details
    assert details["io"] == "int8" and details["quantization"] == "full integer" and details["calibration_samples"] == 50
    with default_registry().load(result.output) as runner:
        assert {q["dtype"] for q in runner.quantized_io.values()} == {"int8"}
    with pytest.raises(BadInput, match="needs --calibration"):
        convert(default_registry(), fixtures_dir / "keras_cnn.keras", "tflite-int8", out=tmp_path / "n.tflite",
                options={"io": "int8"})


def test_a_user_int8_tflite_converted_to_onnx_stays_int8_with_float_io(quantized, fixtures_dir, tmp_path):
    import onnx

    result = convert(default_registry(), quantized["int8"], "onnx", out=tmp_path / "digits.onnx")
    assert read_sidecar(result.output.path).precision == "int8"  # judged at int8, not at fp32 noise
    model = onnx.load(str(result.output.path))
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [onnx.TensorProto.FLOAT] * 2
    report = _check(fixtures_dir, result.output.path)
    _agrees_as_int8_does(report)


def test_quantization_rounds_and_saturates():
    from convrepair_plugins.tensorflow.runners import Quantization, io_quantization

    q = Quantization(scale=0.5, zero_point=-10, dtype="int8")
    codes = q.quantize(np.array([0.0, 1.24, 1.26, 1000.0, -1000.0], dtype=np.float32))
    assert codes.tolist() == [-10, -8, -7, 127, -128]
    np.testing.assert_allclose(q.dequantize(codes), [0.0, 1.0, 1.5, 68.5, -59.0])
    assert io_quantization({"name": "ids", "dtype": np.int32, "quantization": (0.0, 0)}) is None  # token ids
    assert io_quantization({"name": "x", "dtype": np.float32, "quantization": (0.0, 0)}) is None


def test_reading_the_precision_is_bounded_by_the_file_size(tmp_path):
    """The parent parses untrusted files: 20 000 subgraph entries sharing one subgraph of 20 000
    entries sharing one tensor would be 4e8 visits; the walk stops at the file's size instead."""
    import time

    import flatbuffers

    from convrepair_plugins.tensorflow.flatbuffer import tensor_kinds

    b, n = flatbuffers.Builder(0), 20_000
    b.StartObject(2)
    b.PrependInt8Slot(1, 0, 0)
    tensor = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, tensors, 0)
    subgraph = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(2, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    crafted = tmp_path / "crafted.tflite"
    crafted.write_bytes(bytes(b.Output()))
    started = time.perf_counter()
    with pytest.raises(BadInput, match="more tensors than the file can hold"):
        tensor_kinds(crafted)
    assert time.perf_counter() - started < 5
