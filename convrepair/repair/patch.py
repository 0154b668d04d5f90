"""A weight patch on the last dense layer of an ONNX model: find it, cache what enters it, apply.

Works on float weights, on fp16 graphs (the Softmax wrapped in Casts that fp16 converters keep
in fp32), and on int8 weights: behind a DequantizeLinear (QDQ models), in a MatMulInteger
(dynamic quantization: the float input enters a DynamicQuantizeLinear, the product is rescaled by
a Mul) or a QLinearMatMul (static QOperator: the input is dequantized from its own scale and zero
point). The search then sees the values int8 can hold, and the patch is written back as int8 with
the layer's own scale and zero point, so the model stays quantized (and fast).

A static QDQ model quantizes the logits themselves (QuantizeLinear → DequantizeLinear after the
layer): the swarm then starts from the float logits before that pair and rounds and clamps every
candidate's logits to the pair's grid, because a logit saturated at the top of a range calibrated
on other data does not move when a weight does (issue 18: a patch modelled on the clamped logits
fixed 68% of the flips over its cache and none in the real model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from convrepair.localize.graph import GraphView, Node
from convrepair.repair.pso import on_grid
from convrepair.repair.restore import RestoreUnavailable

_LINEAR_AFTER = {"Add", "QuantizeLinear", "DequantizeLinear", "Identity", "Cast", "QLinearAdd"}
_PASS_THROUGH = ("Cast", "Identity")


@dataclass
class DenseLayer:
    node: Node
    weight_name: str  # the initializer holding the (possibly quantized) weight
    weight: np.ndarray  # float weight as (C, F)
    transposed: bool  # stored as (F, C)
    logits_tensor: str  # pre-softmax output the patch feeds linearly
    input_tensor: str
    quantization: tuple[np.ndarray, np.ndarray, int, int] | None  # scale, zero (C, F), qmin, qmax
    input_dequant: tuple[np.ndarray, np.ndarray] | None = None  # QLinearMatMul: (scale, zero) of its quantized input
    logits_dequant: tuple[np.ndarray, np.ndarray] | None = None  # QLinearSoftmax: (scale, zero) of its quantized logits
    logits_quant: tuple[float, float, int, int] | None = None  # QDQ logits: (scale, zero, qmin, qmax) after the layer

    def output_logits(self, logits: np.ndarray) -> np.ndarray:
        """What the model outputs for float logits at `logits_tensor`: rounded and clamped to the
        QDQ pair's grid when the logits are quantized, else unchanged."""
        if self.logits_quant is None:
            return logits
        return on_grid(logits, self.logits_quant).astype(np.float32)

    def float_inputs(self, captured: np.ndarray) -> np.ndarray:
        """The float values entering the layer from what was captured at `input_tensor`."""
        return _dequantized(captured, self.input_dequant)

    def float_logits(self, captured: np.ndarray) -> np.ndarray:
        """The float logits from what was captured at `logits_tensor`."""
        return _dequantized(captured, self.logits_dequant)


def _dequantized(values: np.ndarray, quantization: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if quantization is None:
        return values.astype(np.float32)
    scale, zero = quantization
    return ((values.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def last_dense_layer(view: GraphView) -> DenseLayer:
    dense = [layer for layer in view.layers() if layer.kind == "dense"]
    if not dense:
        raise RestoreUnavailable("the model has no dense layer to patch")
    node = dense[-1].node
    logits, logits_dequant = _logits(view)
    if node.op == "MatMulInteger":
        return _matmul_integer(view, node, logits)
    if node.op == "QLinearMatMul":
        return replace(_qlinear_matmul(view, node, logits), logits_dequant=logits_dequant)
    weight_input = node.inputs[1]
    weight = view.constant(weight_input)
    if weight is None or weight.ndim != 2:
        raise RestoreUnavailable(f"the weight of {node.name} is not a constant matrix")
    transposed = not (node.op == "Gemm" and node.attributes.get("transB", 0) == 1)
    matrix = weight.T if transposed else weight
    quantization, weight_name = None, weight_input
    producer = view.producer.get(weight_input)
    if producer is not None and producer.op == "DequantizeLinear":
        weight_name = producer.inputs[0]
        quantized = view.initializers[weight_name]
        scale = np.asarray(view.initializers[producer.inputs[1]], np.float32)
        zero = np.asarray(view.initializers.get(producer.inputs[2], np.zeros_like(scale)) if len(producer.inputs) > 2 else np.zeros_like(scale))
        quantization = _quantization(quantized, scale, zero, producer.attributes.get("axis", 1), transposed)
    elif weight_input not in view.initializers:
        raise RestoreUnavailable(f"the weight of {node.name} is computed, not stored")
    logits, logits_quant = _before_output_quantization(view, logits)
    _check_linear_path(view, node.outputs[0], logits)
    return DenseLayer(node, weight_name, matrix.astype(np.float32), transposed, logits, node.inputs[0], quantization,
                      logits_quant=logits_quant)


def _before_output_quantization(view: GraphView, logits: str) -> tuple[str, tuple[float, float, int, int] | None]:
    """The float tensor before a QuantizeLinear → DequantizeLinear pair that writes `logits` (with
    the pair's per-tensor scale, zero point and integer range), or `logits` itself when none does."""
    dequant = view.producer.get(logits)
    if dequant is None or dequant.op != "DequantizeLinear":
        return logits, None
    quant = view.producer.get(dequant.inputs[0])
    if quant is None or quant.op != "QuantizeLinear" or len(quant.inputs) < 3 or len(dequant.inputs) < 3:
        return logits, None
    names = (quant.inputs[1], quant.inputs[2], dequant.inputs[1], dequant.inputs[2])
    if any(n not in view.initializers for n in names):
        return logits, None
    scale, zero, d_scale, d_zero = (np.asarray(view.initializers[n]) for n in names)
    if scale.size != 1 or zero.size != 1 or not (np.array_equal(scale, d_scale) and np.array_equal(zero, d_zero)):
        return logits, None  # per-channel or mismatched pair: not modelled
    info = np.iinfo(zero.dtype)
    return quant.inputs[0], (float(scale.reshape(())), float(zero.reshape(())), int(info.min), int(info.max))


def _logits(view: GraphView) -> tuple[str, tuple[np.ndarray, np.ndarray] | None]:
    """The pre-softmax tensor: the model's output, or what its Softmax reads, through the Casts
    an fp16 graph wraps around a Softmax it keeps in fp32 or the QDQ pair around a quantized one,
    or the DequantizeLinear after a QLinearSoftmax (then with the logits' scale and zero point)."""
    tensor = view.outputs[0]
    for _ in range(4):
        producer = view.producer.get(tensor)
        if producer is None:
            break
        if producer.op in ("Softmax", "LogSoftmax"):
            return producer.inputs[0], None
        if producer.op == "QLinearSoftmax" and all(i in view.initializers for i in producer.inputs[1:3]):
            return producer.inputs[0], (np.asarray(view.initializers[producer.inputs[1]], np.float32),
                                        np.asarray(view.initializers[producer.inputs[2]]))
        if producer.op not in (*_PASS_THROUGH, "DequantizeLinear", "QuantizeLinear"):
            break
        tensor = producer.inputs[0]
    return view.outputs[0], None


def _quantization(quantized: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, transposed: bool):
    scale_full = np.broadcast_to(_expand(scale, quantized.shape, axis), quantized.shape)
    zero_full = np.broadcast_to(_expand(zero.astype(np.float32), quantized.shape, axis), quantized.shape)
    info = np.iinfo(quantized.dtype)
    if transposed:
        scale_full, zero_full = scale_full.T, zero_full.T
    return np.ascontiguousarray(scale_full), np.ascontiguousarray(zero_full), info.min, info.max


def _matmul_integer(view: GraphView, node: Node, logits: str) -> DenseLayer:
    """Dynamic int8: y = Cast(MatMulInteger(q(x), W_q, zp_x, zp_W)) · (scale_x · scale_W). The
    float input is what enters the DynamicQuantizeLinear; W = (W_q − zp_W) · scale_W."""
    weight_name = node.inputs[1]
    quantized = view.initializers.get(weight_name)
    quantize = view.producer.get(node.inputs[0])
    if quantized is None or quantized.ndim != 2 or quantize is None or quantize.op != "DynamicQuantizeLinear":
        raise RestoreUnavailable(f"{node.name}: an integer matmul whose weight or input quantization is not the usual one")
    zero = np.asarray(view.initializers.get(node.inputs[3], np.zeros(())) if len(node.inputs) > 3 and node.inputs[3] else np.zeros(()))
    scale = _weight_scale(view, node)
    if scale is None:
        raise RestoreUnavailable(f"{node.name}: the weight's scale is not found after the integer matmul")
    quantization = _quantization(quantized, scale, zero, 1, True)
    matrix = ((quantized.astype(np.float32) - _expand(zero.astype(np.float32), quantized.shape, 1))
              * _expand(scale, quantized.shape, 1)).T
    _check_linear_path(view, node.outputs[0], logits, scales=True)
    return DenseLayer(node, weight_name, np.ascontiguousarray(matrix, np.float32), True, logits, quantize.inputs[0], quantization)


def _weight_scale(view: GraphView, node: Node) -> np.ndarray | None:
    """scale_W of a MatMulInteger: the constant factor of the Mul that rescales its (cast) output."""
    tensor = node.outputs[0]
    for _ in range(3):
        consumers = [n for n in view.nodes if tensor in n.inputs]
        if len(consumers) != 1:
            return None
        consumer = consumers[0]
        if consumer.op == "Mul":
            other = next(i for i in consumer.inputs if i != tensor)
            factor = view.producer.get(other)
            names = factor.inputs if factor is not None and factor.op == "Mul" else [other]
            found = [np.asarray(view.initializers[n], np.float32) for n in names if n in view.initializers]
            return found[0] if found else None
        tensor = consumer.outputs[0]
    return None


def _qlinear_matmul(view: GraphView, node: Node, logits: str) -> DenseLayer:
    """Static int8 (QOperator): QLinearMatMul(a_q, a_scale, a_zp, W_q, W_scale, W_zp, y_scale, y_zp)."""
    names = node.inputs
    quantized = view.initializers.get(names[3])
    if quantized is None or quantized.ndim != 2 or any(n not in view.initializers for n in (names[1], names[2], names[4], names[5])):
        raise RestoreUnavailable(f"{node.name}: a QLinearMatMul whose weight or scales are not stored")
    scale = np.asarray(view.initializers[names[4]], np.float32)
    zero = np.asarray(view.initializers[names[5]])
    quantization = _quantization(quantized, scale, zero, 1, True)
    matrix = ((quantized.astype(np.float32) - _expand(zero.astype(np.float32), quantized.shape, 1))
              * _expand(scale, quantized.shape, 1)).T
    _check_linear_path(view, node.outputs[0], logits)
    dequant = (np.asarray(view.initializers[names[1]], np.float32), np.asarray(view.initializers[names[2]]))
    return DenseLayer(node, names[3], np.ascontiguousarray(matrix, np.float32), True, logits, names[0], quantization, dequant)


def _expand(values: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    target = [1] * len(shape)
    target[axis] = -1
    return values.reshape(target)


def _check_linear_path(view: GraphView, start: str, end: str, scales: bool = False) -> None:
    """From the dense layer's output to the logits only ops linear in its weights: bias adds,
    casts, (de)quantization, and (`scales`) a Mul by the quantization scales."""
    tensor = start
    for _ in range(8):
        if tensor == end:
            return
        consumers = [n for n in view.nodes if tensor in n.inputs]
        if len(consumers) != 1:
            break
        consumer = consumers[0]
        linear = consumer.op in _LINEAR_AFTER or (scales and consumer.op == "Mul" and _is_scale(view, next(
            (i for i in consumer.inputs if i != tensor), "")))
        if not linear:
            break
        tensor = consumer.outputs[0]
    if tensor != end:
        raise RestoreUnavailable("the last dense layer does not feed the logits linearly; no patch is searched")


def _is_scale(view: GraphView, name: str, depth: int = 0) -> bool:
    """A constant scalar, a DynamicQuantizeLinear's scale, or a product of such: one number a sample."""
    if name in view.initializers:
        return np.asarray(view.initializers[name]).size == 1
    producer = view.producer.get(name)
    if producer is None or depth > 3:
        return False
    if producer.op == "DynamicQuantizeLinear":
        return name == producer.outputs[1]
    return producer.op == "Mul" and all(_is_scale(view, i, depth + 1) for i in producer.inputs)


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
