"""Ops that move data around: their shape, pads and axes inputs are hyperparameters, not weights."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, op


def _inputs_as_attributes(node, constant, names) -> dict:
    out = {}
    for position, name in names.items():
        if len(node.inputs) > position and node.inputs[position]:
            value = constant(node.inputs[position])
            if value is not None:
                out[name] = [v.item() for v in value.reshape(-1)]
    return out


@op("Pad", since=11, attribute_inputs={1: "pads", 2: "constant_value", 3: "axes"}, restores=ATTRIBUTES)
def pad(node, constant) -> dict:
    return _inputs_as_attributes(node, constant, {1: "pads", 2: "constant_value", 3: "axes"})


@op("Pad", since=1, restores=ATTRIBUTES)
@op("Transpose", restores=ATTRIBUTES)
@op("Flatten", restores=ATTRIBUTES)
@op("Concat", restores=ATTRIBUTES)
def layout(node, constant) -> dict:
    return {}


@op("Reshape", since=5, attribute_inputs={1: "shape"}, restores=ATTRIBUTES)
def reshape(node, constant) -> dict:
    return _inputs_as_attributes(node, constant, {1: "shape"})
