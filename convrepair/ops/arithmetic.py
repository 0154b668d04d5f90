"""Elementwise arithmetic with a constant operand: an Add/Sub adds a bias, a Mul/Div scales."""

from __future__ import annotations

from convrepair.ops.registry import BIASES, PARAMETERS, SCALE, WEIGHTS, op


@op("Add", elementwise=True, roles={0: BIASES, 1: BIASES}, restores=PARAMETERS)
@op("Sub", elementwise=True, roles={0: BIASES, 1: BIASES}, restores=PARAMETERS)
@op("Mul", elementwise=True, roles={0: SCALE, 1: SCALE}, restores=PARAMETERS)
@op("Div", elementwise=True, roles={0: SCALE, 1: SCALE}, restores=PARAMETERS)
@op("Pow", elementwise=True, roles={0: WEIGHTS, 1: WEIGHTS}, restores=PARAMETERS)
def arithmetic(node, constant) -> dict:
    return {}
