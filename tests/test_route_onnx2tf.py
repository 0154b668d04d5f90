"""The onnx2tf route: the digits fixture's ONNX export → onnx2tf → `.tflite` (NCHW → NHWC, recorded
in the sidecar), run by the tensorflow plugin's TFLite runner in the contained worker; onnx2tf's
default FlexErf (which stock TFLite cannot run) is refused with what to do, not written."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from convrepair.check import CheckConfig, run_check
from convrepair.convert import convert
from convrepair.errors import BadInput
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar

pytestmark = pytest.mark.slow

if os.environ.get("CI") != "true":  # in CI a missing onnx2tf fails the test, it never skips it
    pytest.importorskip("onnx2tf")
    pytest.importorskip("tf_keras")


@pytest.fixture(scope="module")
def onnx_cnn(fixtures_dir, tmp_path_factory):
    """The torch fixture exported to ONNX once (it has a GELU: an Erf node for onnx2tf)."""
    work = tmp_path_factory.mktemp("onnx2tf")
    for name in ("torch_cnn.pt2", "torch_cnn.pt2.convrepair.json"):
        shutil.copy2(fixtures_dir / name, work / name)
    result = convert(default_registry(), work / "torch_cnn.pt2", "onnx", out=work / "torch_cnn.onnx")
    return work, result.output.path


def test_onnx2tf_tflite_converts_with_nhwc_recorded_and_is_equivalent(onnx_cnn, fixtures_dir, cli):
    work, onnx_path = onnx_cnn
    out = work / "cnn_onnx2tf.tflite"
    result = cli("convert", onnx_path, "--to", "onnx2tf-tflite", "--out", out,
                 "--data", fixtures_dir / "digits_test_nchw.npz", "--json", "-")
    assert result.code == 0, result.stderr
    (conversion,) = json.loads(result.stdout)["conversions"]
    assert conversion["route"] == ["onnx2tf-tflite"] and conversion["output"]["format"] == "tflite"
    assert conversion["validation"]["verdict"] == "equivalent"
    sidecar = read_sidecar(out)
    assert sidecar.input_layout == ["NHWC"]  # onnx2tf transposed the NCHW input; the data follow it
    step = sidecar.steps[-1]
    assert step.details["input_layouts_before"] == ["NCHW"] and step.details["replace_to_pseudo_operators"] == ["erf"]
    assert step.tool_versions["onnx2tf"] and step.tool_versions["tf_keras"]
    report = run_check(default_registry(), work / "torch_cnn.pt2", out, CheckConfig(data=fixtures_dir / "digits_test_nchw.npz"))
    assert report.verdict == "equivalent", report.reasons


def test_onnx2tf_default_flex_erf_is_refused_not_written(onnx_cnn, tmp_path):
    """onnx2tf's own default turns Erf into the TF op FlexErf: a .tflite that the TF Python
    interpreter and LiteRT refuse to run. That is a refusal (exit 2), naming the op and the fix."""
    _, onnx_path = onnx_cnn
    out = tmp_path / "flex.tflite"
    with pytest.raises(BadInput, match=r"FlexErf.*pseudo_ops"):
        convert(default_registry(), onnx_path, "onnx2tf-tflite", out=out, options={"pseudo_ops": "none"})
    assert not out.exists()


def test_an_nhwc_input_is_kept_not_transposed_again(fixtures_dir, tmp_path):
    """A Keras model's ONNX export is already NHWC; onnx2tf, taking every 4-D input for NCHW, would
    make it (N, H, C, W) (measured on MobileNetV2: (-1, 96, 3, 96)). Such inputs keep their shape."""
    for name in ("keras_cnn.keras", "keras_cnn.keras.convrepair.json"):
        shutil.copy2(fixtures_dir / name, tmp_path / name)
    result = convert(default_registry(), tmp_path / "keras_cnn.keras", "onnx2tf-tflite", out=tmp_path / "keras_cnn.tflite")
    assert read_sidecar(result.output.path).input_layout == ["NHWC"]
    report = run_check(default_registry(), tmp_path / "keras_cnn.keras", result.output.path,
                       CheckConfig(data=fixtures_dir / "digits_test_nhwc.npz"))
    assert report.verdict == "equivalent", report.reasons
