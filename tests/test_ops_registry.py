"""The op registry (convrepair/ops): defaults come from the ONNX schema in force, an attribute
spelled at its default equals one omitted, roles by input index, duplicates refused; and a square
kernel transposed in H/W is localized to its Conv and restored (issue 18 items 1–2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import faults as fi
from convrepair import ops
from convrepair.localize.faults import match_param
from convrepair.localize.graph import Node


def _node(op, attributes=None, inputs=("x",), domain=""):
    return Node(0, op.lower(), op, list(inputs), ["y"], dict(attributes or {}), domain)


def _attrs(node, opset=17, constants=None):
    return ops.effective_attributes(node, opset, lambda name: (constants or {}).get(name))


def test_an_omitted_attribute_is_its_schema_default():
    spelled, omitted = _attrs(_node("LeakyRelu", {"alpha": 0.01})), _attrs(_node("LeakyRelu"))
    assert ops.same_attribute(spelled["alpha"], omitted["alpha"])
    assert not ops.same_attribute(_attrs(_node("LeakyRelu", {"alpha": 1.0}))["alpha"], omitted["alpha"])


def test_defaults_follow_the_opset_the_graph_imports():
    assert _attrs(_node("Softmax"), opset=11)["axis"] == 1
    assert _attrs(_node("Softmax"), opset=13)["axis"] == -1
    assert ops.attribute_defaults("BatchNormalization", "", 15)["epsilon"] == pytest.approx(1e-5)


def test_per_axis_defaults_are_read_from_the_schema_text():
    conv = ops.attribute_defaults("Conv", "", 17)
    assert conv["pads"] == ops.PerAxis(0.0) and conv["strides"] == ops.PerAxis(1.0) and conv["dilations"] == ops.PerAxis(1.0)
    assert ops.same_attribute(conv["pads"], [0, 0, 0, 0]) and not ops.same_attribute(conv["pads"], [0, 0, 2, 2])


def test_clip_bounds_held_as_inputs_since_opset_11():
    assert ops.spec("Clip", "", 6).attribute_inputs == {}
    assert ops.spec("Clip", "", 13).attribute_inputs == {1: "min", 2: "max"}
    clip = _node("Clip", inputs=("x", "lo", "hi"))
    attrs = _attrs(clip, 13, {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)})
    assert (attrs["min"], attrs["max"]) == (0.0, 6.0)
    unbounded = _attrs(_node("Clip", inputs=("x",)), 13)
    assert unbounded["max"] > 1e38  # omitted: the numeric limit opset 6's schema states


def test_roles_by_input_index():
    assert ops.spec("Conv").fault_type(1) == "weights" and ops.spec("Conv").fault_type(2) == "biases"
    assert ops.spec("QLinearConv").role(3) == "weights" and ops.spec("QLinearConv").role(8) == "biases"
    assert ops.spec("Conv").optional_bias == 2 and ops.spec("Gemm").optional_bias == 2
    assert ops.spec("Add").elementwise and ops.spec("Add").fault_type(1) == "biases"
    assert ops.kind_of("MatMulInteger") == "dense" and ops.spec("ConvInteger").integer


def test_a_second_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        ops.op("Conv", kind="conv")(None)


def test_a_same_shaped_parameter_is_compared_as_it_is():
    """The best of all axis orders would call a kernel transposed in H/W identical."""
    kernel = np.random.default_rng(0).normal(size=(8, 8, 3, 3)).astype(np.float32)
    transposed = np.swapaxes(kernel, -1, -2)
    delta, perm = match_param(kernel, transposed)
    assert delta > 0.1 and perm is None
    assert match_param(kernel, transposed, layout_changed=True)[0] == 0.0  # a recorded layout change may permute
    assert match_param(kernel, np.transpose(kernel, (2, 3, 1, 0)))[0] == 0.0  # different shapes: HWIO ↔ OIHW


def test_a_transposed_square_kernel_is_localized_to_its_conv_and_restored(fixtures_dir, tmp_path, cli):
    """The issue's digits CNN: conv2 (8→8, 3×3) transposed in H/W and LeakyRelu's alpha omitted.
    Through the CLI: localized to conv2, typed weights, not blamed on the LeakyRelu; repair restores it."""
    source, target = fi.build_square_cnn(fixtures_dir / "digits_train_nchw.npz", tmp_path)
    data = fixtures_dir / "digits_all_nchw.npz"
    checked = cli("check", source, target, "--data", fixtures_dir / "digits_test_nchw.npz", "--json", "-", cwd=tmp_path)
    assert checked.code == 1, checked.stderr[-2000:]
    report = json.loads(checked.stdout)
    loc = report["localization"]
    assert report["verdict"] == "discrepant"
    assert loc["fault"]["type"] == "weights" and loc["first_divergent"]["node"] == "conv2", loc["fault"]
    assert [entry["node"] for entry in loc["static_diff"]] == ["conv2"]  # the omitted alpha is no difference
    repaired = cli("repair", source, target, "--out", tmp_path / "repaired.onnx", "--data", data, "--json", "-", cwd=tmp_path)
    result = json.loads(repaired.stdout)
    assert [a["kind"] for a in result["attempts"] if a["applied"]] == ["restore_weights"], result["attempts"]
    assert result["check_after"]["verdict"] == "equivalent" and result["verdict"] == "repaired", result["verdict"]
    assert repaired.code == 0
