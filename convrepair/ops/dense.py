"""Dense layers: Gemm, MatMul (a constant operand is the weight) and their integer forms."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, BIASES, PARAMETERS, SCALE, WEIGHTS, ZERO_POINT, op


@op("Gemm", kind="dense", roles={0: WEIGHTS, 1: WEIGHTS, 2: BIASES}, optional_bias=2, restores=PARAMETERS | ATTRIBUTES)
@op("MatMul", kind="dense", roles={0: WEIGHTS, 1: WEIGHTS}, restores=PARAMETERS)
def dense(node, constant) -> dict:
    return {}


@op("MatMulInteger", kind="dense", integer=True, roles={0: WEIGHTS, 1: WEIGHTS, 2: ZERO_POINT, 3: ZERO_POINT})
@op("QLinearMatMul", kind="dense", integer=True,
    roles={0: WEIGHTS, 1: SCALE, 2: ZERO_POINT, 3: WEIGHTS, 4: SCALE, 5: ZERO_POINT, 6: SCALE, 7: ZERO_POINT})
def integer_dense(node, constant) -> dict:
    return {}
