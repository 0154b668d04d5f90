"""The OpenVINO route: the digits fixture (torch_cnn.pt2) → ONNX → OpenVINO IR at fp32, fp16 and
int8 (NNCF with calibration data), run by the OpenVINO runtime on CPU in the contained worker; a
weight scaled inside the IR's .bin, and a fault injected into the ONNX an IR is converted from, are
localized layer-wise through OpenVINO's own intermediates (fetched by their ONNX names)."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from convrepair.check import CheckConfig, run_check
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar

pytestmark = pytest.mark.slow

if os.environ.get("CI") != "true":  # in CI a missing OpenVINO fails the test, it never skips it
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def routes(fixtures_dir, tmp_path_factory):
    """One `convert` through the real CLI: three targets, validated on the test split."""
    from conftest import run_cli

    work = tmp_path_factory.mktemp("openvino")
    for name in ("torch_cnn.pt2", "torch_cnn.pt2.convrepair.json"):
        shutil.copy2(fixtures_dir / name, work / name)
    result = run_cli("convert", work / "torch_cnn.pt2", "--to", "openvino", "--to", "openvino-fp16", "--to", "openvino-int8",
                     "--calibration", fixtures_dir / "digits_train_nchw.npz", "--data", fixtures_dir / "digits_test_nchw.npz",
                     "--json", work / "convert.json")
    assert result.code in (0, 1), result.stderr  # 1: an output disagrees, reported, not a failure to convert
    conversions = json.loads((work / "convert.json").read_text())["conversions"]
    return work, {c["target"]: c for c in conversions}


def test_plugins_list_shows_the_openvino_targets(cli):
    result = cli("plugins", "--quick", "--json", "-")
    assert result.code == 0
    (row,) = [row for row in json.loads(result.stdout) if row["plugin"] == "openvino"]
    assert row["status"] == "available" and row["formats"] == ["openvino"]
    assert {c["to"] for c in row["converters"]} == {"openvino", "openvino-fp16", "openvino-int8"}


def test_fp32_ir_is_equivalent_and_recorded(routes, cli, fixtures_dir):
    work, by_target = routes
    fp32 = by_target["openvino"]
    assert fp32["route"] == ["torch-to-onnx", "onnx-to-openvino"]
    assert fp32["validation"]["verdict"] == "equivalent"
    ir = Path(fp32["output"]["path"])
    assert sorted(fp32["output"]["files"]) == ["model.bin", "model.xml"]  # both halves hashed
    sidecar = read_sidecar(ir)
    assert sidecar.input_layout == ["NCHW"] and sidecar.precision in (None, "fp32")
    assert sidecar.steps[-1].details["compress_to_fp16"] is False
    assert sidecar.steps[-1].tool_versions["openvino"]
    check = cli("check", work / "torch_cnn.pt2", ir, "--data", fixtures_dir / "digits_test_nchw.npz", "--json", "-")
    assert check.code == 0, check.stderr
    assert json.loads(check.stdout)["verdict"] == "equivalent"


def test_fp16_and_int8_carry_their_precision_and_an_honest_verdict(routes, fixtures_dir):
    work, by_target = routes
    for target, precision in (("openvino-fp16", "fp16"), ("openvino-int8", "int8")):
        conversion = by_target[target]
        ir = Path(conversion["output"]["path"])
        assert read_sidecar(ir).precision == precision
        report = run_check(default_registry(), work / "torch_cnn.pt2", ir, CheckConfig(data=fixtures_dir / "digits_test_nchw.npz"))
        # judged in its own precision; whatever the verdict, it agrees with the labels it reports
        assert report.verdict in ("equivalent", "discrepant")
        assert (report.verdict == "discrepant") == bool(report.reasons)
    int8 = by_target["openvino-int8"]
    details = read_sidecar(Path(int8["output"]["path"])).steps[-1].details
    assert details["calibration_samples"] > 0 and details["calibration_file"]
    assert int8["validation"]["label_agreement"] >= 0.97  # NNCF on matched calibration data keeps the labels


def test_int8_without_calibration_is_refused_with_what_to_pass(routes, tmp_path):
    from convrepair.convert import convert
    from convrepair.errors import BadInput

    work, _ = routes
    onnx_path = tmp_path / "cnn.onnx"
    convert(default_registry(), work / "torch_cnn.pt2", "onnx", out=onnx_path)
    with pytest.raises(BadInput, match="--calibration") as caught:
        convert(default_registry(), onnx_path, "openvino-int8", out=tmp_path / "cnn.openvino")
    assert caught.value.exit_code == 2 and not (tmp_path / "cnn.openvino").exists()


def scale_first_conv_weight(ir: Path, out: Path, factor: float) -> str:
    """Copy an IR and multiply its first 4-D f32 constant (a conv kernel) by `factor` in the .bin."""
    shutil.copytree(ir, out)
    root = ET.parse(out / "model.xml").getroot()
    layer = next(layer for layer in root.iter("layer") if layer.get("type") == "Const"
                 and layer.find("data").get("element_type") == "f32" and len(layer.find("data").get("shape").split(",")) == 4)
    offset, size = int(layer.find("data").get("offset")), int(layer.find("data").get("size"))
    raw = bytearray((out / "model.bin").read_bytes())
    weights = np.frombuffer(bytes(raw[offset:offset + size]), dtype=np.float32) * factor
    raw[offset:offset + size] = weights.astype(np.float32).tobytes()
    (out / "model.bin").write_bytes(bytes(raw))
    return layer.get("name")


def test_a_scaled_weight_in_the_ir_is_localized_through_openvino_intermediates(routes, fixtures_dir, tmp_path):
    work, by_target = routes
    clean = Path(by_target["openvino"]["output"]["path"])
    faulty = tmp_path / "faulty.openvino"
    scale_first_conv_weight(clean, faulty, 1.5)
    report = run_check(default_registry(), work / "torch_cnn.pt2", faulty, CheckConfig(data=fixtures_dir / "digits_test_nchw.npz"))
    assert report.verdict == "discrepant"
    located = report.localization
    assert located["ir"]["method"].startswith("layer-wise via OpenVINO intermediates")
    assert located["first_divergent"]["node"] == "/Conv"
    fault = located["fault"]
    assert fault["type"] == "weights" and fault["evidence"]["differences"][0]["uniform_factor"] == pytest.approx(1.5)


@pytest.fixture(scope="module")
def cnn_onnx(routes, tmp_path_factory):
    """The digits CNN as ONNX, through the real CLI (the IR's own first step)."""
    from conftest import run_cli

    work, _ = routes
    out = tmp_path_factory.mktemp("openvino-onnx")
    result = run_cli("convert", work / "torch_cnn.pt2", "--to", "onnx", "--out-dir", out, "-q")
    assert result.code == 0, result.stderr
    return out / "torch_cnn.onnx"


def test_a_fault_in_the_onnx_an_ir_is_converted_from_is_localized_to_the_injected_op(routes, cnn_onnx, fixtures_dir, tmp_path):
    """The realistic shape: the Relu after the first Conv is dropped from the ONNX, that ONNX goes to
    OpenVINO, and the IR is checked against the clean source (its clean ONNX: no export to wait for)."""
    from faults import inject_zoo_fault

    from convrepair.convert import convert

    node, expected = inject_zoo_fault(cnn_onnx, tmp_path / "dropped.onnx", "dropped_op")
    convert(default_registry(), tmp_path / "dropped.onnx", "openvino", out=tmp_path / "dropped.openvino")
    report = run_check(default_registry(), cnn_onnx, tmp_path / "dropped.openvino",
                       CheckConfig(data=fixtures_dir / "digits_test_nchw.npz"))
    assert report.verdict == "discrepant"
    located = report.localization
    assert located["ir"]["method"].startswith("layer-wise via OpenVINO intermediates")
    assert (node, expected) == ("/Relu", "graph_structure")
    assert located["first_divergent"]["node"] == node and located["fault"]["type"] == expected


def test_a_lone_xml_is_refused_naming_the_folder_to_pass(routes, fixtures_dir):
    """A bare model.xml is half an IR (its hash and the worker's read grant would miss the .bin)."""
    from convrepair.errors import BadInput

    work, by_target = routes
    xml = Path(by_target["openvino"]["output"]["path"]) / "model.xml"
    with pytest.raises(BadInput, match="pass the folder that holds the .xml and its .bin") as caught:
        run_check(default_registry(), work / "torch_cnn.pt2", xml, CheckConfig(data=fixtures_dir / "digits_test_nchw.npz"))
    assert caught.value.path == xml


def _rel_l2(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def test_openvino_intermediates_pair_with_the_onnx_tensors_by_name(routes, cnn_onnx, fixtures_dir, tmp_path):
    """The ground of OpenVINO layer-wise localization: the IR keeps the ONNX tensor names of its
    layers, its own intermediate outputs (`add_outputs`) match ONNX Runtime's values of the same
    tensors on the clean IR, and the first one that diverges on a faulty IR is the faulted layer."""
    import onnx
    import onnxruntime as ort

    from convrepair.model import model_ref

    work, by_target = routes
    proto = onnx.load(str(cnn_onnx))
    onnx_names = [out for node in proto.graph.node for out in node.output]
    x = np.load(fixtures_dir / "digits_test_nchw.npz")["x"][:16].astype(np.float32)
    registry = default_registry()
    clean = Path(by_target["openvino"]["output"]["path"])
    with registry.load(model_ref(clean, registry)) as runner:
        shared = [name for name in onnx_names if name in set(runner.tensor_names())]
        assert {"/Conv_output_0", "/Relu_output_0", "/Conv_1_output_0", "/Gemm_output_0"} <= set(shared)
        feeds = {runner.inputs[0].name: x}
        values = runner.intermediates(shared, feeds)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in shared)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip(shared, session.run(shared, {session.get_inputs()[0].name: x})))
    assert set(values) == set(shared)
    assert max(_rel_l2(expected[n], values[n]) for n in shared) < 1e-5

    faulty = tmp_path / "faulty.openvino"
    scale_first_conv_weight(clean, faulty, 1.5)
    with registry.load(model_ref(faulty, registry)) as runner:
        values = runner.intermediates(shared, {runner.inputs[0].name: x})
    first = next(n for n in shared if _rel_l2(expected[n], values[n]) > 1e-3)
    assert first == "/Conv_output_0"
