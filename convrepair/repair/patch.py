"""A weight patch on the last dense layer of an ONNX model: find it, cache what enters it, apply.

Works on float weights and on int8 weights behind a DequantizeLinear (QDQ models): the search
then sees the values int8 can hold, and the patch is written back as int8 with the layer's own
scale and zero point, so the model stays quantized (and fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convrepair.localize.graph import GraphView, Node
from convrepair.repair.restore import RestoreUnavailable

_LINEAR_AFTER = {"Add", "QuantizeLinear", "DequantizeLinear", "Identity", "Cast"}


@dataclass
class DenseLayer:
    node: Node
    weight_name: str  # the initializer holding the (possibly quantized) weight
    weight: np.ndarray  # float weight as (C, F)
    transposed: bool  # stored as (F, C)
    logits_tensor: str  # pre-softmax output the patch feeds linearly
    input_tensor: str
    quantization: tuple[np.ndarray, np.ndarray, int, int] | None  # scale, zero (C, F), qmin, qmax


def last_dense_layer(view: GraphView) -> DenseLayer:
    dense = [layer for layer in view.layers() if layer.kind == "dense"]
    if not dense:
        raise RestoreUnavailable("the model has no dense layer to patch")
    node = dense[-1].node
    weight_input = node.inputs[1]
    weight = view.constant(weight_input)
    if weight is None or weight.ndim != 2:
        raise RestoreUnavailable(f"the weight of {node.name} is not a constant matrix")
    transposed = not (node.op == "Gemm" and node.attributes.get("transB", 0) == 1)
    matrix = weight.T if transposed else weight
    output = view.outputs[0]
    producer = view.producer.get(output)
    logits = producer.inputs[0] if producer is not None and producer.op in ("Softmax", "LogSoftmax") else output
    _check_linear_path(view, node.outputs[0], logits)
    quantization, weight_name = None, weight_input
    producer = view.producer.get(weight_input)
    if producer is not None and producer.op == "DequantizeLinear":
        weight_name = producer.inputs[0]
        quantized = view.initializers[weight_name]
        scale = np.asarray(view.initializers[producer.inputs[1]], np.float32)
        zero = np.asarray(view.initializers.get(producer.inputs[2], np.zeros_like(scale)) if len(producer.inputs) > 2 else np.zeros_like(scale))
        axis = producer.attributes.get("axis", 1)
        scale_full = np.broadcast_to(_expand(scale, quantized.shape, axis), quantized.shape)
        zero_full = np.broadcast_to(_expand(zero.astype(np.float32), quantized.shape, axis), quantized.shape)
        info = np.iinfo(quantized.dtype)
        if transposed:
            scale_full, zero_full = scale_full.T, zero_full.T
        quantization = (np.ascontiguousarray(scale_full), np.ascontiguousarray(zero_full), info.min, info.max)
    elif weight_input not in view.initializers:
        raise RestoreUnavailable(f"the weight of {node.name} is computed, not stored")
    return DenseLayer(node, weight_name, matrix.astype(np.float32), transposed, logits, node.inputs[0], quantization)


def _expand(values: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    target = [1] * len(shape)
    target[axis] = -1
    return values.reshape(target)


def _check_linear_path(view: GraphView, start: str, end: str) -> None:
    tensor = start
    for _ in range(8):
        if tensor == end:
            return
        consumers = [n for n in view.nodes if tensor in n.inputs]
        if len(consumers) != 1 or consumers[0].op not in _LINEAR_AFTER:
            break
        tensor = consumers[0].outputs[0]
    if tensor != end:
        raise RestoreUnavailable("the last dense layer does not feed the logits linearly; no patch is searched")


def apply_patch(model, layer: DenseLayer, positions: list[tuple[int, int]], values: np.ndarray):
    """A copy of `model` with the localized weights set to `values` (quantized when the layer is)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    init = next(i for i in out.graph.initializer if i.name == layer.weight_name)
    stored = numpy_helper.to_array(init).copy()
    for (row, col), value in zip(positions, values):
        index = (col, row) if layer.transposed else (row, col)
        if layer.quantization is not None:
            scale, zero, qmin, qmax = layer.quantization
            value = np.clip(np.round(value / scale[row, col]) + zero[row, col], qmin, qmax)
        stored[index] = value
    init.CopyFrom(numpy_helper.from_array(stored.astype(stored.dtype), layer.weight_name))
    return out
