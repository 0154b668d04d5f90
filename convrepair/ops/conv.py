"""Convolutions: float, integer (ConvInteger) and quantized-linear (QLinearConv)."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, BIASES, PARAMETERS, SCALE, WEIGHTS, ZERO_POINT, op

_FLOAT = dict(kind="conv", roles={1: WEIGHTS, 2: BIASES}, optional_bias=2, restores=PARAMETERS | ATTRIBUTES)


@op("Conv", **_FLOAT)
@op("ConvTranspose", **_FLOAT)
def float_conv(node, constant) -> dict:
    """An omitted kernel_shape is the weight's spatial shape."""
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    return {"kernel_shape": list(weight.shape[2:])} if weight is not None and "kernel_shape" not in node.attributes else {}


@op("ConvInteger", kind="conv", integer=True, roles={1: WEIGHTS, 2: ZERO_POINT, 3: ZERO_POINT}, restores=ATTRIBUTES)
def integer_conv(node, constant) -> dict:
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    return {"kernel_shape": list(weight.shape[2:])} if weight is not None and "kernel_shape" not in node.attributes else {}


@op("QLinearConv", kind="conv", integer=True, optional_bias=8, restores=ATTRIBUTES,
    roles={1: SCALE, 2: ZERO_POINT, 3: WEIGHTS, 4: SCALE, 5: ZERO_POINT, 6: SCALE, 7: ZERO_POINT, 8: BIASES})
def qlinear_conv(node, constant) -> dict:
    weight = constant(node.inputs[3]) if len(node.inputs) > 3 else None
    return {"kernel_shape": list(weight.shape[2:])} if weight is not None and "kernel_shape" not in node.attributes else {}
