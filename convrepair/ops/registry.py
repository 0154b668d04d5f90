"""Op knowledge keyed by (domain, op type, opset), as onnx2torch keys its converters.

One `OpSpec` per registration says what localization and repair need to know about an op: its
layer kind (for alignment), which constant input is weights / biases / scale, which inputs are
hyperparameters in disguise (Clip's bounds since opset 11), which attributes do not change
inference, and which fault types a restore may fix on it. Attribute defaults are never written
here: they are read from `onnx.defs.get_schema(op, opset, domain)`. A family module registers by
decorating the function that reads its input-held attributes; a second registration of the same
(domain, op type, version) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

# Roles of a constant input. Each maps to the fault type a difference in it is (FetaFix's taxonomy).
WEIGHTS, BIASES, SCALE, MEAN, VARIANCE, ZERO_POINT = "weights", "biases", "scale", "mean", "variance", "zero_point"
_FAULT_TYPE = {BIASES: "biases"}

# What a restore can fix on an op, by fault type.
PARAMETERS = frozenset({"weights", "biases"})
ATTRIBUTES = frozenset({"hyperparameter"})
STRUCTURE = frozenset({"graph_structure"})

# Reads the attributes a node holds as inputs or implies (Clip's bounds, Conv's kernel shape):
# (node, constant) -> {attribute: value}; `constant(name)` is the value of a constant tensor or None.
InputReader = Callable[[Any, Callable[[str], "np.ndarray | None"]], dict[str, Any]]


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    domain: str = ""
    since: int = 1
    kind: str | None = None  # the layer kind alignment pairs by (conv, dense, norm, act, pool, …)
    roles: Mapping[int, str] = field(default_factory=dict)  # input index → role of a constant there
    attribute_inputs: Mapping[int, str] = field(default_factory=dict)  # input index → attribute it stands for
    inert: frozenset[str] = frozenset()  # attributes that do not change what inference computes
    restores: frozenset[str] = frozenset()  # fault types a restore may fix on this op
    elementwise: bool = False  # a scalar constant operand is a parameter too (a bias Add, a scaling Mul)
    precision: bool = False  # only moves precision around (Cast, Quantize/Dequantize)
    integer: bool = False  # its output is integers; the real value lies a rescale later
    optional_bias: int | None = None  # the bias input an exporter may drop (it reads as zero)
    read_inputs: InputReader | None = None

    def role(self, position: int) -> str:
        return self.roles.get(position, WEIGHTS)

    def fault_type(self, position: int) -> str:
        return _FAULT_TYPE.get(self.role(position), "weights")


_REGISTRY: dict[tuple[str, str, int], OpSpec] = {}
_VERSIONS: dict[tuple[str, str], list[int]] = {}  # (domain, op) → registered versions, ascending


def op(op_type: str, *, domain: str = "", since: int = 1, **knowledge: Any):
    """Register what is known of `op_type` from opset `since` on; decorates the family's input
    reader (or None-returning function). Refuses a second registration of the same key."""

    def register(reader: InputReader | None):
        key = (_domain(domain), op_type, since)
        if key in _REGISTRY:
            raise ValueError(f"op {op_type!r} (domain {domain or 'ai.onnx'!r}, opset {since}) is already registered")
        _REGISTRY[key] = OpSpec(op_type, _domain(domain), since, read_inputs=reader, **knowledge)
        _VERSIONS[key[:2]] = sorted([*_VERSIONS.get(key[:2], []), since])
        return reader

    return register


def spec(op_type: str, domain: str = "", opset: int | None = None) -> OpSpec | None:
    """The registration in force at `opset` (the newest one not newer than it); None if unknown."""
    domain = _domain(domain)
    versions = _VERSIONS.get((domain, op_type), [])
    usable = [v for v in versions if opset is None or v <= opset] or versions[:1]
    return _REGISTRY[(domain, op_type, usable[-1])] if usable else None


def kind_of(op_type: str, domain: str = "") -> str | None:
    found = spec(op_type, domain)
    return found.kind if found else None


def ops_where(**flags: Any) -> frozenset[str]:
    """Op types whose registration has every flag given (e.g. precision=True)."""
    return frozenset(s.op_type for s in _REGISTRY.values() if all(getattr(s, k) == v for k, v in flags.items()))


def registered() -> list[OpSpec]:
    return [_REGISTRY[key] for key in sorted(_REGISTRY)]


@dataclass(frozen=True)
class PerAxis:
    """A default the schema states per spatial axis ("defaults to 0 along each spatial axis")."""

    value: float


@lru_cache(maxsize=None)
def attribute_defaults(op_type: str, domain: str = "", opset: int | None = None) -> dict[str, Any] | None:
    """Every attribute of the op's schema at `opset` with its default (None: none stated);
    None when ONNX knows no schema for the op (a custom domain)."""
    from onnx import defs, helper

    try:
        schema = defs.get_schema(op_type, opset if opset is not None else defs.onnx_opset_version(), _domain(domain))
    except Exception:  # noqa: BLE001 - SchemaError: an op of a domain ONNX does not define
        return None
    out: dict[str, Any] = {}
    for name, attribute in schema.attributes.items():
        if attribute.default_value.type:
            out[name] = normalise(helper.get_attribute_value(attribute.default_value))
        else:
            out[name] = _stated_per_axis(attribute.description)
    return out


_PER_AXIS = re.compile(r"defaults? (?:is |to |of )?(-?\d+(?:\.\d+)?) (?:along|for) (?:start and end of )?each (?:spatial )?axis")


def _stated_per_axis(description: str) -> PerAxis | None:
    match = _PER_AXIS.search(description or "")
    return PerAxis(float(match.group(1))) if match else None


def effective_attributes(node: Any, opset: int | None, constant: Callable[[str], np.ndarray | None]) -> dict[str, Any]:
    """What a node computes with: every attribute that changes inference, spelled or defaulted
    (an attribute written at its default and one omitted are the same), plus those it holds as
    inputs. `node` has .op, .domain, .attributes, .inputs."""
    domain = getattr(node, "domain", "")
    found = spec(node.op, domain, opset)
    defaults = attribute_defaults(node.op, domain, opset) or {}
    inert = found.inert if found else frozenset()
    attrs = {k: v for k, v in defaults.items() if k not in inert}
    attrs |= {k: normalise(v) for k, v in node.attributes.items() if k not in inert}
    if found and found.read_inputs is not None:
        held = set(found.attribute_inputs.values())  # an omitted input is a value too ("no bound")
        attrs |= {k: v for k, v in found.read_inputs(node, constant).items() if v is not None or k in held}
    return attrs


def normalise(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def same_attribute(a: Any, b: Any) -> bool:
    """Equal up to float rounding; a per-axis default equals any list of that value."""
    if isinstance(a, PerAxis) or isinstance(b, PerAxis):
        axis, other = (a, b) if isinstance(a, PerAxis) else (b, a)
        if isinstance(other, PerAxis):
            return other.value == axis.value
        return other is None or (isinstance(other, list) and all(_close(x, axis.value) for x in other))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return _close(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_attribute(x, y) for x, y in zip(a, b))
    return a == b


def shown(value: Any) -> Any:
    """An attribute value as JSON shows it."""
    if isinstance(value, PerAxis):
        return f"{value.value:g} per axis (default)"
    return value


def _close(a: float, b: float) -> bool:
    # float32 defaults (LeakyRelu's 0.01 is 0.009999999776) equal their decimal spelling
    return abs(float(a) - float(b)) <= 1e-7 + 1e-5 * abs(float(a))


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def scalar(value: np.ndarray | None) -> float | None:
    return float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size == 1 else None
