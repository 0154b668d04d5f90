"""Fault injection into converted ONNX graphs: the fault classes users report against converters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _node(model, name_part: str, op: str | None = None):
    for node in model.graph.node:
        if name_part in node.name and (op is None or node.op_type == op):
            return node
    raise KeyError(f"no node like {name_part!r} ({op})")


def _init(model, name: str):
    return next(i for i in model.graph.initializer if i.name == name)


def _set_init(model, name: str, value: np.ndarray) -> None:
    _init(model, name).CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _attr(node, key: str, value) -> None:
    for attribute in list(node.attribute):
        if attribute.name == key:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(key, value))


def _rewire_input(model, old: str, new: str, skip=()) -> None:
    for node in model.graph.node:
        if node.name in skip:
            continue
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def perturb_weights(model, conv: str):
    node = _node(model, conv, "Conv")
    weight = numpy_helper.to_array(_init(model, node.input[1])).copy()
    weight[0] += 0.5 * np.abs(weight).max()
    _set_init(model, node.input[1], weight)


def zero_bias(model, conv: str):
    node = _node(model, conv, "Conv")
    bias = numpy_helper.to_array(_init(model, node.input[2]))
    _set_init(model, node.input[2], np.zeros_like(bias))


def asymmetric_pads(model, conv: str):
    _attr(_node(model, conv, "Conv"), "pads", [0, 0, 2, 2])


def swap_activation(model, relu: str):
    node = _node(model, relu, "Relu")
    node.op_type = "LeakyRelu"
    _attr(node, "alpha", 0.3)


def relu6_to_relu(model, clip: str):
    node = _node(model, clip, "Clip")
    node.op_type = "Relu"
    del node.input[1:]


def batchnorm_epsilon(model, epsilon: float):
    _attr(_node(model, "", "BatchNormalization"), "epsilon", float(epsilon))


def gelu_tanh(model):
    """GELU computed with the tanh approximation instead of erf."""
    _attr(_node(model, "", "Gelu"), "approximate", "tanh")


def softmax_axis(model):
    _attr(_node(model, "", "Softmax"), "axis", 0)


def scale_input(model, factor: float = 255.0):
    name = model.graph.input[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "injected_scale"))
    _rewire_input(model, name, "injected_scaled_input")
    model.graph.node.insert(0, helper.make_node("Mul", [name, "injected_scale"], ["injected_scaled_input"], name="injected_mul"))


def transpose_input(model, perm=(0, 2, 1, 3)):
    name = model.graph.input[0].name
    _rewire_input(model, name, "injected_transposed_input")
    model.graph.node.insert(0, helper.make_node("Transpose", [name], ["injected_transposed_input"], perm=list(perm), name="injected_transpose"))


def drop_activation(model, relu: str):
    node = _node(model, relu, "Relu")
    _rewire_input(model, node.output[0], node.input[0])
    model.graph.node.remove(node)


def extra_output(model):
    hidden = _node(model, "", "Relu").output[0]
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output.append(next(v for v in inferred.graph.value_info if v.name == hidden))


def inject(source: Path, out: Path, fault, *args) -> Path:
    model = onnx.load(str(source))
    fault(model, *args)
    onnx.save(model, str(out))
    return out


def reverse_channels(model):
    """RGB ↔ BGR at the input: a Gather of channels [2, 1, 0]."""
    name = model.graph.input[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "injected_bgr"))
    _rewire_input(model, name, "injected_bgr_input")
    model.graph.node.insert(0, helper.make_node("Gather", [name, "injected_bgr"], ["injected_bgr_input"], axis=1, name="injected_gather"))


def drop_pad(model):
    """The explicit Pad in front of a Conv disappears (the conv still has pads=0)."""
    node = _node(model, "", "Pad")
    _rewire_input(model, node.output[0], node.input[0])
    model.graph.node.remove(node)


def resize_mode(model, mode: str = "asymmetric"):
    _attr(_node(model, "", "Resize"), "coordinate_transformation_mode", mode)


def flatten_without_transpose(model):
    """The NCHW → NHWC Transpose before Flatten loses its permutation after a layout change."""
    _attr(_node(model, "Transpose", "Transpose"), "perm", [0, 1, 2, 3])
