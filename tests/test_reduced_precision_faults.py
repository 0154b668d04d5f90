"""Reduced precision is not an alibi (issue 18 item 5): a real structural fault injected into an
fp16 or dynamic-int8 conversion of the digits CNN is localized and typed by its true type (a
dropped activation: graph_structure; wrong pads: hyperparameter), never `precision`."""

from __future__ import annotations

import pytest

import faults as fi
from convrepair.check import CheckConfig, run_check
from convrepair.convert import convert
from convrepair.plugins import default_registry
from convrepair.sidecar import read_sidecar, write_sidecar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lossy(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lossy")
    registry = default_registry()
    return {route: convert(registry, fixtures_dir / "torch_cnn.pt2", route, out_dir=out / route).output.path
            for route in ("onnx-fp16", "onnx-int8")}


CASES = [
    ("onnx-fp16", fi.drop_activation, ("/Relu_1",), "graph_structure", "/Relu_1"),
    ("onnx-fp16", fi.asymmetric_pads, ("/Conv_1",), "hyperparameter", "/Conv_1"),
    ("onnx-int8", fi.drop_activation, ("/Relu_1",), "graph_structure", "/Relu_1"),
    ("onnx-int8", fi.asymmetric_pads, ("/Conv_1",), "hyperparameter", "/Conv_1_quant"),
]


@pytest.mark.parametrize("route, fault, args, fault_type, node", CASES,
                         ids=[f"{c[0]}-{c[1].__name__}" for c in CASES])
def test_a_structural_fault_in_a_reduced_precision_target_is_typed_by_its_true_type(
        fixtures_dir, lossy, tmp_path, route, fault, args, fault_type, node):
    target = tmp_path / "faulty.onnx"
    fi.inject(lossy[route], target, fault, *args)
    write_sidecar(target, read_sidecar(lossy[route]))
    report = run_check(default_registry(), fixtures_dir / "torch_cnn.pt2", target,
                       CheckConfig(data=fixtures_dir / "digits_test_nchw.npz", rounds=2, samples=100))
    assert report.verdict == "discrepant", report.reasons
    loc = report.localization
    assert loc["fault"]["type"] == fault_type, loc["fault"]
    assert node in (loc["first_divergent"]["node"], loc["first_divergent"]["target_layer"]), loc["first_divergent"]


def test_a_small_weight_fault_below_the_walks_threshold_is_weights_not_precision(fixtures_dir, lossy, tmp_path):
    """No layer of the fp16 target crosses fp16's divergence threshold, but conv2's weights differ
    from the source's by more than fp16 rounding: the static diff names them instead of `precision`."""
    target = tmp_path / "scaled.onnx"
    fi.inject(lossy["onnx-fp16"], target, fi.scale_weights, "/Conv_1", "1.01")
    write_sidecar(target, read_sidecar(lossy["onnx-fp16"]))
    report = run_check(default_registry(), fixtures_dir / "torch_cnn.pt2", target,
                       CheckConfig(data=fixtures_dir / "digits_test_nchw.npz", rounds=2, samples=100, atol=1e-7, rtol=0.0))
    loc = report.localization
    assert report.verdict == "discrepant"
    assert loc["fault"]["type"] == "weights" and loc["first_divergent"]["node"] == "/Conv_1", loc["fault"]
