"""Ops that only move precision around: not part of what a layer computes."""

from __future__ import annotations

from convrepair.ops.registry import SCALE, ZERO_POINT, op


@op("Cast", precision=True)
@op("QuantizeLinear", precision=True, roles={1: SCALE, 2: ZERO_POINT})
@op("DequantizeLinear", precision=True, roles={1: SCALE, 2: ZERO_POINT})
@op("DynamicQuantizeLinear", precision=True)
def precision(node, constant) -> dict:
    return {}
