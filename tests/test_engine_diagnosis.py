"""Diagnosis on reduced-precision and hand-built graphs (issue 11 item 3): fp16 and int8 rounding is
typed `precision`, int8 layers are compared as real numbers, and an op after the last aligned
layer is localized to that op rather than `unknown`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import synthetic
from convrepair.check import CheckConfig, run_check
from convrepair.convert import convert
from convrepair.plugins import default_registry


def _check(source, target, **kwargs):
    return run_check(default_registry(), source, target, CheckConfig(rounds=2, samples=50, **kwargs))


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """The RGB model (a Pad before its first Conv) and its fp16 and dynamic-int8 conversions."""
    out = tmp_path_factory.mktemp("rgb")
    source = synthetic.build_rgb_model(out / "rgb.onnx")
    registry = default_registry()
    return {"source": source,
            "fp16": convert(registry, source, "onnx-fp16", out_dir=out / "fp16").output.path,
            "int8": convert(registry, source, "onnx-int8", out_dir=out / "int8").output.path}


def test_fp16_rounding_of_a_padded_input_is_precision_not_preprocessing(rgb):
    """The fp16 graph pads its input in fp16: ×1 ± rounding at the first layer is the precision."""
    report = _check(rgb["source"], rgb["fp16"], atol=1e-7, rtol=0.0)
    assert report.verdict == "discrepant"
    fault = report.localization["fault"]
    assert fault["type"] == "precision", fault


def test_int8_layers_are_compared_as_real_numbers(rgb):
    onnx_model = onnx.load(str(rgb["int8"]))
    assert any(n.op_type in ("ConvInteger", "MatMulInteger", "QLinearConv") for n in onnx_model.graph.node)
    report = _check(rgb["source"], rgb["int8"], atol=1e-7, rtol=0.0)
    loc = report.localization
    assert loc["fault"]["type"] == "precision", loc["fault"]
    compared = [row for row in loc["layers"] if row["kind"] == "conv" and row["rel_l2"] is not None]
    assert compared and all(row["rel_l2"] < 0.5 for row in compared), compared  # not raw int32 against floats


def _tail_model(path, temperature: float, bias_shift: float = 0.0, standardise=None):
    """Conv → bias Add → Relu → GAP → Gemm → Mul (a temperature) as the graph output. The Gemm
    standardises the pooled features over uniform images (calibrated, as BatchNorm statistics are),
    so the class depends on the input and the check can conclude."""
    if standardise is None:
        import onnxruntime as ort

        probe = onnx.load(str(_tail_model(path, 1.0, 0.0, standardise=False)))  # the source's statistics, for both
        probe.graph.output.append(onnx.ValueInfoProto(name="f"))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(5).uniform(0, 1, (256, 3, 8, 8)).astype(np.float32)
        features = session.run(["f"], {"image": x})[0]
        return _tail_model(path, temperature, bias_shift, standardise=(features.mean(0), features.std(0) + 1e-6))
    rng = np.random.default_rng(0)
    bias = rng.normal(0, 0.1, 4).astype(np.float32).reshape(1, 4, 1, 1)
    bias[0, 1] += bias_shift
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(bias, "bias"),
             *_classifier(rng.normal(0, 0.5, (3, 4)), standardise),
             numpy_helper.from_array(np.array(temperature, np.float32), "t")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Add", ["c", "bias"], ["cb"], name="bias_add"),
             helper.make_node("Relu", ["cb"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
             helper.make_node("Mul", ["logits", "t"], ["scaled"], name="temperature")]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _classifier(weights, standardise):
    bias = np.zeros(3)
    if standardise:
        mean, std = standardise
        weights = weights / std
        bias = -(weights @ mean)
    return [numpy_helper.from_array(weights.astype(np.float32), "fc.w"), numpy_helper.from_array(bias.astype(np.float32), "fc.b")]


def test_an_op_after_the_last_aligned_layer_is_localized_to_that_op(tmp_path):
    source = _tail_model(tmp_path / "source.onnx", 1.0)
    target = _tail_model(tmp_path / "target.onnx", 1.5)  # a scalar Mul after the last Gemm differs
    report = _check(source, target)
    loc = report.localization
    assert report.verdict == "discrepant"
    assert loc["fault"]["type"] != "unknown"
    assert loc["first_divergent"]["target_layer"] == "temperature", loc["first_divergent"]
    assert loc["fault"]["evidence"]["differences"][0]["target_node"] == "temperature"


def test_a_bias_add_between_layers_is_named(tmp_path):
    source = _tail_model(tmp_path / "source.onnx", 1.0)
    target = _tail_model(tmp_path / "target.onnx", 1.0, bias_shift=0.5)
    loc = _check(source, target).localization
    assert loc["fault"]["type"] == "biases", loc["fault"]
    assert loc["fault"]["evidence"]["differences"][0]["target_node"] == "bias_add"


def test_an_ir_far_from_its_model_is_not_walked():
    """An IR further from its model than a layer may diverge cannot be walked layer by layer: the
    localization says ir_unfaithful and names the IR's error (issue 18 item 3)."""
    from convrepair.localize import _unfaithful_ir, ir_threshold

    info = {"source": {"origin": "keras-to-onnx", "fidelity_max_abs": 0.4, "fidelity_rel_l2": 0.05, "threshold_rel_l2": 1e-3},
            "target": {"origin": "as is", "fidelity_max_abs": 0.0, "fidelity_rel_l2": 0.0, "threshold_rel_l2": 2e-2}}
    fault = _unfaithful_ir(info, "fp32", "fp16")
    assert fault.type == "ir_unfaithful" and fault.evidence["model"] == "source"
    assert "keras-to-onnx" in fault.detail and "0.05" in fault.detail
    info["source"]["fidelity_rel_l2"] = 1e-6  # float noise of the export: walked
    assert _unfaithful_ir(info, "fp32", "fp16") is None
    assert ir_threshold("int8") > ir_threshold("fp16") > ir_threshold("fp32")


def test_the_ir_fidelity_is_recorded_relative_to_the_model(fixtures_dir, tmp_path):
    """A pt2 model's IR is exported and measured against it: the relative error is recorded beside
    the absolute one, under the threshold the walk holds it to."""
    registry = default_registry()
    target = convert(registry, fixtures_dir / "torch_cnn.pt2", "onnx", out_dir=tmp_path / "onnx").output.path
    report = _check(fixtures_dir / "torch_cnn.pt2", target, data=fixtures_dir / "digits_test_nchw.npz", localize=True)
    ir = report.localization["ir"]["source"]
    assert ir["origin"] != "as is" and 0.0 <= ir["fidelity_rel_l2"] < ir["threshold_rel_l2"], ir
