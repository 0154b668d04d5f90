"""Pooling."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, op


@op("MaxPool", kind="pool", restores=ATTRIBUTES)
@op("AveragePool", kind="pool", restores=ATTRIBUTES)
@op("GlobalAveragePool", kind="pool")
@op("GlobalMaxPool", kind="pool")
def pool(node, constant) -> dict:
    return {}
