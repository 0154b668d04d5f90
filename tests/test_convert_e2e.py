"""Every converter path, through the real CLI, agrees with its source on the digits test split."""

from __future__ import annotations

import json

import pytest

from convrepair.fsutil import combined_digest, file_digests
from convrepair.model import model_ref
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar

pytestmark = pytest.mark.slow

LOSSLESS_MAX_ABS = 1e-4


def _convert(cli, work, source, targets, data, *extra):
    args = ["convert", work / source, "--out-dir", work / "out", "--data", work / data, "--json", work / "report.json"]
    for target in targets:
        args += ["--to", target]
    result = cli(*args, *extra)
    assert result.code == 0, result.stderr + result.stdout
    return json.loads((work / "report.json").read_text())["conversions"], result


def _check_fp32(conversion):
    validation = conversion["validation"]
    assert validation["n"] == 400
    assert validation["label_agreement"] == 1.0, validation
    assert validation["max_abs"] < LOSSLESS_MAX_ABS, validation


def _check_provenance(conversion, source_path):
    output = model_ref(conversion["output"]["path"], default_registry())
    assert output.format == conversion["output"]["format"]
    sidecar = read_sidecar(output.path)
    assert sidecar is not None
    assert sidecar.source["sha256"] == combined_digest(file_digests(source_path))
    assert sidecar.output["sha256"] == output.sha256
    assert [step.converter for step in sidecar.steps][-len(conversion["route"]):] == conversion["route"]
    assert all(step.tool_versions for step in sidecar.steps)
    assert sidecar.input_layout  # carried forward for later stages


def test_keras_to_onnx_torch_tflite(cli, work):
    conversions, result = _convert(cli, work, "keras_cnn.keras", ["onnx", "torch", "tflite", "tflite-int8"], "digits_test_nhwc.npz")
    by_target = {c["target"]: c for c in conversions}
    for target in ("onnx", "torch", "tflite"):
        _check_fp32(by_target[target])
        _check_provenance(by_target[target], work / "keras_cnn.keras")
    assert by_target["torch"]["route"] == ["keras-to-onnx", "onnx-to-torch"]
    assert by_target["torch"]["output"]["format"] == "pt2"
    quantized = by_target["tflite-int8"]["validation"]
    assert quantized["label_agreement"] >= 0.97 and quantized["max_abs"] > 0
    assert read_sidecar(work / "out" / "keras_cnn.tflite-int8.tflite").precision == "int8"
    assert "label agreement" in result.stdout and "keras-to-onnx → onnx-to-torch" in result.stdout


def test_savedmodel_to_onnx(cli, work):
    conversions, _ = _convert(cli, work, "keras_cnn.savedmodel", ["onnx"], "digits_test_nhwc.npz")
    _check_fp32(conversions[0])
    _check_provenance(conversions[0], work / "keras_cnn.savedmodel")


def test_torch_to_onnx_fp16_int8_and_back(cli, work):
    conversions, _ = _convert(cli, work, "torch_cnn.pt2", ["onnx", "onnx-fp16", "onnx-int8"], "digits_test_nchw.npz")
    by_target = {c["target"]: c for c in conversions}
    _check_fp32(by_target["onnx"])
    _check_provenance(by_target["onnx"], work / "torch_cnn.pt2")
    assert by_target["onnx"]["steps"][0]["details"]["exporter"] == "torchscript"
    for lossy in ("onnx-fp16", "onnx-int8"):
        assert by_target[lossy]["validation"]["label_agreement"] >= 0.97
    assert read_sidecar(work / "out" / "torch_cnn.onnx-fp16.onnx").precision == "fp16"

    onnx_model = work / "out" / "torch_cnn.onnx"
    back, _ = _convert(cli, work, "out/torch_cnn.onnx", ["torch"], "digits_test_nchw.npz", "--out", work / "back.pt2")
    _check_fp32(back[0])
    sidecar = read_sidecar(work / "back.pt2")
    assert sidecar.source["sha256"] == combined_digest(file_digests(work / "torch_cnn.pt2")), "keeps the original source"
    assert [s.converter for s in sidecar.steps] == ["torch-to-onnx", "onnx-to-torch"]
    assert onnx_model.exists()


def test_torchscript_to_onnx(cli, work):
    conversions, _ = _convert(cli, work, "torch_cnn.pt", ["onnx"], "digits_test_nchw.npz")
    _check_fp32(conversions[0])


def test_static_int8_with_calibration(cli, work):
    conversions, _ = _convert(
        cli, work, "torch_cnn.pt2", ["onnx-int8"], "digits_test_nchw.npz", "--calibration", work / "digits_repair_nchw.npz"
    )
    steps = conversions[0]["steps"]
    assert steps[-1]["details"]["mode"] == "static"
    assert steps[-1]["details"]["calibration_samples"] == 397
    assert conversions[0]["validation"]["label_agreement"] >= 0.97


def test_dynamo_exporter_can_be_chosen(cli, work):
    conversions, _ = _convert(cli, work, "torch_cnn.pt2", ["onnx"], "digits_test_nchw.npz", "--option", "exporter=dynamo")
    assert conversions[0]["steps"][0]["details"]["exporter"] == "dynamo"
    _check_fp32(conversions[0])
