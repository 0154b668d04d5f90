"""Activations: their kind and parameters (LeakyRelu's alpha, GELU's approximation) are
hyperparameters; a lost one is structure. Clip holds its bounds as attributes up to opset 10 and
as inputs from opset 11 (omitted: unbounded)."""

from __future__ import annotations

from convrepair.ops.registry import ATTRIBUTES, STRUCTURE, WEIGHTS, attribute_defaults, op, scalar

_ACT = dict(kind="act", restores=ATTRIBUTES | STRUCTURE)


@op("Relu", **_ACT)
@op("LeakyRelu", **_ACT)
@op("Sigmoid", **_ACT)
@op("Tanh", **_ACT)
@op("Gelu", **_ACT)
@op("HardSigmoid", **_ACT)
@op("HardSwish", **_ACT)
@op("Elu", **_ACT)
@op("Selu", **_ACT)
@op("Erf", **_ACT)
@op("Clip", since=6, **_ACT)
def activation(node, constant) -> dict:
    return {}


@op("PRelu", roles={1: WEIGHTS}, restores=ATTRIBUTES | STRUCTURE)
def prelu(node, constant) -> dict:
    return {}


@op("Clip", since=11, attribute_inputs={1: "min", 2: "max"}, **_ACT)
def clip_bounds(node, constant) -> dict:
    """The bounds as inputs; an omitted bound is no bound: the numeric limits that opset 6's
    schema states as the attributes' defaults."""
    unbounded = attribute_defaults("Clip", "", 6) or {}
    bounds: dict = {"min": unbounded.get("min"), "max": unbounded.get("max")}
    for key, position in (("min", 1), ("max", 2)):
        if len(node.inputs) > position and node.inputs[position]:
            bounds[key] = scalar(constant(node.inputs[position]))
    return bounds
