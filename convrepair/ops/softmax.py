"""Softmax: its axis default moved from 1 to -1 at opset 13 (read from the schema in force)."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, STRUCTURE, op


@op("Softmax", kind="softmax", restores=ATTRIBUTES | STRUCTURE)
@op("LogSoftmax", kind="softmax", restores=ATTRIBUTES | STRUCTURE)
def softmax(node, constant) -> dict:
    return {}
