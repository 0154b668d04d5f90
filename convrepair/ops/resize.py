"""Resize and Upsample: roi, scales and sizes are inputs that act as hyperparameters."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, op


@op("Resize", kind="resize", attribute_inputs={1: "roi", 2: "scales", 3: "sizes"}, restores=ATTRIBUTES)
@op("Upsample", kind="resize", attribute_inputs={1: "scales"}, restores=ATTRIBUTES)
def resize(node, constant) -> dict:
    out = {}
    for position, name in ((1, "roi"), (2, "scales"), (3, "sizes")) if node.op == "Resize" else ((1, "scales"),):
        if len(node.inputs) > position and node.inputs[position]:
            value = constant(node.inputs[position])
            if value is not None and value.size:
                out[name] = [float(v) for v in value.reshape(-1)]
    return out
