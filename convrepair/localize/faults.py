"""Fault explanation in FetaFix's order: input pipeline → parameters → hyperparameters → structure → precision.

Each check is one function registered with `@fault_check(order)`; adding a fault class is adding
one function. A check returns a `Fault` with the numbers that decided it, or None.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convrepair import ops
from convrepair.localize.graph import INTEGER_OPS, PRECISION_OPS, GraphView, Layer, Node

FAULT_TYPES = ("preprocessing", "input_layout", "weights", "biases", "hyperparameter", "graph_structure", "precision",
               "ir_unfaithful", "unknown")


@dataclass
class Fault:
    type: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # The op at fault, finer than the checkpoint layer (a bias Add between two layers): the target's
    # node, or for an op the target lost, the source's. None when no single op is to blame.
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "detail": self.detail, "node": self.node, "evidence": _jsonable(self.evidence)}


@dataclass
class FaultContext:
    source: GraphView
    target: GraphView
    pair: tuple[Layer, Layer]
    input_evidence: dict[str, Any]
    precision: str
    unaligned: dict[str, list[str]]
    # The two models' recorded input layouts differ (NHWC source, NCHW target): only then may a
    # parameter of the same shape be compared through an axis order.
    layout_changed: bool = False


_CHECKS: list[tuple[int, str, Callable[[FaultContext], Fault | None]]] = []


def fault_check(order: int):
    def register(check: Callable[[FaultContext], Fault | None]):
        if any(existing == order for existing, _, _ in _CHECKS):
            raise ValueError(f"a fault check is already registered at order {order}")
        _CHECKS.append((order, check.__name__, check))
        _CHECKS.sort(key=lambda item: item[0])
        return check

    return register


def explain(ctx: FaultContext) -> Fault:
    for _, _, check in _CHECKS:
        fault = check(ctx)
        if fault is not None:
            return fault
    return Fault("unknown", "the layer diverges but neither inputs, parameters, attributes nor structure differ")


# --- helpers ----------------------------------------------------------------------------------


def param_tolerance(reference: np.ndarray, precision: str) -> float:
    scale = float(np.abs(reference).max(initial=0.0))
    if precision == "int8":
        return 0.6 * (float(reference.max(initial=0.0) - reference.min(initial=0.0)) / 255.0) + 1e-6
    if precision == "fp16":
        return 1e-3 * scale + 1e-6
    return 1e-4 * scale + 1e-6


def match_param(source: np.ndarray, target: np.ndarray, layout_changed: bool = False) -> tuple[float, tuple[int, ...] | None] | None:
    """Max |Δ| of two parameters, through an axis order (or reshape) only where their shapes differ
    or a layout change is recorded: a square kernel transposed in H/W has the same shape, and the
    best of all axis orders would call it identical."""
    if source.size != target.size:
        return None
    if source.shape == target.shape:
        best = (float(np.abs(source - target).max(initial=0.0)), None)
        if not layout_changed:
            return best
    else:
        best = None
    if source.ndim == target.ndim and source.ndim <= 4:
        for perm in itertools.permutations(range(source.ndim)):
            moved = np.transpose(source, perm)
            if moved.shape == target.shape:
                delta = float(np.abs(moved - target).max(initial=0.0))
                if best is None or delta < best[0]:
                    best = (delta, perm)
    if best is None:
        best = (float(np.abs(source.reshape(-1) - target.reshape(-1)).max(initial=0.0)), None)
    return best


def _pair_nodes(source: list[Node], target: list[Node], by_kind: bool = False) -> list[tuple[Node, Node]]:
    """Nodes of two segments paired by name where both have the op under one name (a quantizer may
    reorder a segment's nodes), then by op type in order; with `by_kind`, those left over are then
    paired by layer kind (an int8 graph's ConvInteger computes its source's Conv, with its pads)."""
    named = {(node.op, node.name): node for node in source}
    pairs = [(named[(node.op, node.name)], node) for node in target if (node.op, node.name) in named]
    taken = {id(node) for pair in pairs for node in pair}  # a namesake of the same op pairs first
    source, target = [n for n in source if id(n) not in taken], [n for n in target if id(n) not in taken]
    by_op: dict[str, list[Node]] = {}
    for node in source:
        by_op.setdefault(node.op, []).append(node)
    left = []
    for node in target:
        if by_op.get(node.op):
            pairs.append((by_op[node.op].pop(0), node))
        else:
            left.append(node)
    if by_kind:
        by_kind_left: dict[str, list[Node]] = {}
        for node in (n for nodes in by_op.values() for n in nodes):
            if node.kind:
                by_kind_left.setdefault(node.kind, []).append(node)
        for node in left:
            if node.kind and by_kind_left.get(node.kind):
                pairs.append((by_kind_left[node.kind].pop(0), node))
    return pairs


def _constants(view: GraphView, node: Node) -> list[tuple[int, np.ndarray]]:
    """A node's parameters; for elementwise ops (a bias Add, a scaling Mul) scalars count too."""
    found = view.spec(node)
    if found is None or not found.elementwise:
        return view.params(node)
    out = []
    for position, name in enumerate(node.inputs):
        value = view.constant(name)
        if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
            out.append((position, np.asarray(value)))
    return out


def _fault_type(view: GraphView, node: Node, position: int) -> str:
    """The fault type a difference in this input is, from the op registry (weights by default)."""
    found = view.spec(node)
    return found.fault_type(position) if found else "weights"


_QUANTIZERS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})


def _rescales_quantized(view: GraphView, node: Node) -> bool:
    """An elementwise op the quantizer wrote: it multiplies a dynamic quantizer's scale, or rescales
    an integer op's output (through its Cast) back to real numbers."""
    found = view.spec(node)
    if found is None or not found.elementwise:
        return False
    for name in node.inputs:
        producer = view.producer.get(name) if view.constant(name) is None else None
        while producer is not None and producer.op == "Cast":
            producer = view.producer.get(producer.inputs[0])
        if producer is not None and (producer.op in _QUANTIZERS or producer.op in INTEGER_OPS):
            return True
    return False


def _core(segment: list[Node]) -> list[Node]:
    return [n for n in segment if n.op not in PRECISION_OPS and n.op != "Identity"]


# --- the checks, in FetaFix's order -----------------------------------------------------------


@fault_check(10)
def input_pipeline(ctx: FaultContext) -> Fault | None:
    evidence = ctx.input_evidence
    if not evidence or evidence.get("agree", True):
        return None
    node = _input_op(ctx.source, ctx.target, evidence.get("target_tensor"))
    if evidence.get("permutation"):
        return Fault(
            "input_layout",
            f"the target's input reaches the first layer with its axes permuted {evidence['permutation']} "
            "(transposed or reshaped dimensions)",
            evidence, node,
        )
    if evidence.get("channel_reversed"):
        return Fault("preprocessing", "the target's input channels are in reverse order (RGB ↔ BGR)", evidence, node)
    if evidence.get("affine_fit", {}).get("residual", 1.0) < 1e-3:
        fit = evidence["affine_fit"]
        return Fault(
            "preprocessing",
            f"the target's input is the source's × {fit['scale']:.6g} + {fit['offset']:.6g} "
            "(scale/offset of the input pipeline differs)",
            evidence, node,
        )
    if evidence.get("same_shape"):
        return Fault("preprocessing", "the inputs already differ before the first layer", evidence, node)
    return None  # shapes differ with no axis order explaining it: structure checks decide


def _input_op(source: GraphView, target: GraphView, tensor: str | None) -> str | None:
    """The op on the target's path from its input to the first layer that the source does not have
    (a Mul that rescales, a Transpose, a Gather of channels); None when every op there has a
    namesake in the source or the path branches."""
    chain, seen = [], set()
    producer = target.producer.get(tensor) if tensor else None
    while producer is not None and producer.index not in seen:
        seen.add(producer.index)
        chain.append(producer)
        live = [name for name in producer.inputs if name and target.constant(name) is None]
        if len(live) != 1:
            break
        producer = target.producer.get(live[0])
    names = {node.name for node in source.nodes}
    foreign = [node for node in chain if node.name not in names]
    return foreign[-1].name if foreign else None  # nearest the input: where the difference enters


@fault_check(20)
def parameters(ctx: FaultContext) -> Fault | None:
    source_layer, target_layer = ctx.pair
    findings = []
    # a quantizer's scale arithmetic has no counterpart among the source's parameters
    t_core = [n for n in _core(target_layer.segment) if ctx.precision == "fp32" or not _rescales_quantized(ctx.target, n)]
    for s_node, t_node in _pair_nodes(_core(source_layer.segment), t_core):
        s_params = dict(_constants(ctx.source, s_node))
        for position, t_value in _constants(ctx.target, t_node):
            s_value = s_params.get(position)
            if s_value is None or (np.issubdtype(t_value.dtype, np.integer) and np.issubdtype(s_value.dtype, np.floating)):
                continue  # integer codes of a quantized tensor are no float parameter (its scale decides)
            matched = match_param(s_value.astype(np.float32), t_value.astype(np.float32), ctx.layout_changed)
            if matched is None:
                continue
            delta, perm = matched
            tolerance = param_tolerance(s_value.astype(np.float32), ctx.precision)
            # a tensor zeroed in an fp32 target is a difference however small the source's values
            # (rounding never zeroes a whole tensor in fp32; it can in int8)
            zeroed = ctx.precision == "fp32" and delta > 0 and not np.any(t_value) and bool(np.any(s_value))
            if delta > tolerance or zeroed:
                findings.append(
                    {
                        "role": _fault_type(ctx.target, t_node, position),
                        "source_node": s_node.name,
                        "target_node": t_node.name,
                        "input": position,
                        "tensor": t_node.inputs[position],
                        "shape": list(t_value.shape),
                        "max_abs_diff": delta,
                        "tolerance": tolerance,
                        "permutation": list(perm) if perm else None,
                        "zeroed": bool(np.all(t_value == 0) and np.any(s_value != 0)),
                    }
                )
        findings += _lost_biases(ctx.target.spec(t_node), s_node, t_node, s_params, ctx.precision)
    if not findings:
        return None
    worst = max(findings, key=lambda f: f["max_abs_diff"] / max(f["tolerance"], 1e-12))
    if worst.get("lost"):
        return Fault("biases", f"the target's {worst['target_node']} has no bias where the source's {worst['source_node']} "
                               f"adds one (up to {worst['max_abs_diff']:.3g}): the bias was lost", {"differences": findings},
                     worst["target_node"])
    what = "zeroed" if worst["zeroed"] else f"differ by up to {worst['max_abs_diff']:.3g}"
    return Fault(
        worst["role"],
        f"{worst['role']} '{worst['tensor']}' of {worst['target_node']} {what} from the source's {worst['source_node']}",
        {"differences": findings},
        worst["target_node"],
    )


def _lost_biases(spec: ops.OpSpec | None, s_node: Node, t_node: Node, s_params: dict[int, np.ndarray],
                 precision: str) -> list[dict[str, Any]]:
    """A bias the source adds and the target's node does not read at all (exporters drop an input
    they think is zero, or lose it in a fusion)."""
    position = spec.optional_bias if spec is not None and s_node.op == t_node.op else None
    s_value = s_params.get(position) if position is not None else None
    if s_value is None or (position < len(t_node.inputs) and t_node.inputs[position]) or not np.any(s_value != 0):
        return []
    s_value = s_value.astype(np.float32)
    return [{"role": "biases", "source_node": s_node.name, "target_node": t_node.name, "input": position, "tensor": None,
             "shape": list(s_value.shape), "max_abs_diff": float(np.abs(s_value).max()),
             "tolerance": param_tolerance(s_value, precision), "permutation": None, "zeroed": True, "lost": True}]


@fault_check(30)
def hyperparameters(ctx: FaultContext) -> Fault | None:
    source_layer, target_layer = ctx.pair
    # Activations paired in order within the segment (GELU's Erf sits inside the next layer's segment)
    s_acts = [n for n in _core(source_layer.segment) if n.kind == "act"]
    t_acts = [n for n in _core(target_layer.segment) if n.kind == "act"]
    if len(s_acts) == len(t_acts):
        for s_act, t_act in zip(s_acts, t_acts):
            if s_act.op != t_act.op:
                return Fault(
                    "hyperparameter",
                    f"activation kind differs: source {s_act.op} ({s_act.name}) vs target {t_act.op} ({t_act.name})",
                    {"attribute": "activation", "source": s_act.op, "target": t_act.op,
                     "source_node": s_act.name, "target_node": t_act.name},
                    t_act.name,
                )
    diffs = []
    for s_node, t_node in _pair_nodes(_core(source_layer.segment), _core(target_layer.segment), by_kind=True):
        diffs += attribute_differences(ctx.source, ctx.target, s_node, t_node)
    if not diffs:
        return None
    first = diffs[0]
    return Fault(
        "hyperparameter",
        f"{first['op']} '{first['node']}' attribute {first['attribute']}: source {first['source']} vs target {first['target']}"
        + (" (the ONNX default)" if first.get("source_default") else ""),
        {"differences": diffs},
        first["node"],
    )


@fault_check(40)
def structure(ctx: FaultContext) -> Fault | None:
    """Ops missing, added or rewired in the divergent layer's segment.

    In fp32, op by op. Quantizers and fp16 converters rewrite ops (Conv → ConvInteger, rescaling
    Mul/Add, Reshape of biases, Casts) but never what kind of layer is there: at reduced precision
    layers are counted by kind, so a lost activation is still structure, not rounding.
    """
    source_layer, target_layer = ctx.pair
    s_core, t_core = _core(source_layer.segment), _core(target_layer.segment)
    if ctx.precision == "fp32":
        s_ops, t_ops = Counter(n.op for n in s_core), Counter(n.op for n in t_core)
    else:
        s_kinds, t_kinds = Counter(n.kind for n in s_core if n.kind), Counter(n.kind for n in t_core if n.kind)
        changed = set(s_kinds - t_kinds) | set(t_kinds - s_kinds)
        s_ops = Counter(n.op for n in s_core if n.kind in changed)
        t_ops = Counter(n.op for n in t_core if n.kind in changed)
    missing, added = dict(s_ops - t_ops), dict(t_ops - s_ops)
    if not missing and not added:
        return None
    lost = ctx.unaligned.get("source_only", [])
    lead = f"the source's {', '.join(lost)} has no counterpart in the target; " if lost else ""
    return Fault(
        "graph_structure",
        f"{lead}ops differ in the segment ending at {target_layer.node.name}: missing {missing or '{}'}, added {added or '{}'}",
        {"missing_in_target": missing, "added_in_target": added, **ctx.unaligned},
        lost[-1] if lost else None,
    )


@fault_check(50)
def precision(ctx: FaultContext) -> Fault | None:
    if ctx.precision in ("fp16", "int8", "bf16"):
        return Fault(
            "precision",
            f"the target runs in {ctx.precision}; its parameters, attributes and structure match the source "
            "within that precision, so rounding explains the divergence",
            {"precision": ctx.precision},
        )
    return None


def attribute_differences(source: GraphView, target: GraphView, s_node: Node, t_node: Node) -> list[dict[str, Any]]:
    """Attributes that change what two paired nodes compute, defaults from each graph's ONNX schema
    (LeakyRelu's alpha omitted is 0.01, spelled or not). An attribute the schema of one side's
    opset does not have is no difference; one of an op ONNX has no schema for is compared as spelled."""
    s_attrs, t_attrs = source.attributes(s_node), target.attributes(t_node)
    s_known = ops.attribute_defaults(s_node.op, s_node.domain, source.opsets.get(s_node.domain)) is not None
    t_known = ops.attribute_defaults(t_node.op, t_node.domain, target.opsets.get(t_node.domain)) is not None
    diffs = []
    for key in dict.fromkeys([*s_attrs, *t_attrs]):
        if (key not in s_attrs and s_known) or (key not in t_attrs and t_known):
            continue
        a, b = s_attrs.get(key), t_attrs.get(key)
        if not ops.same_attribute(a, b):
            diffs.append({"node": t_node.name, "op": t_node.op, "attribute": key, "source": ops.shown(a),
                          "target": ops.shown(b), "source_default": key not in s_node.attributes
                          and not _held_as_input(source, s_node, key)})
    return diffs


def _held_as_input(view: GraphView, node: Node, key: str) -> bool:
    found = view.spec(node)
    return bool(found) and key in found.attribute_inputs.values()


def static_diff(source: GraphView, target: GraphView, pairs: list[tuple[Layer, Layer]], precision: str,
                layout_changed: bool = False) -> list[dict[str, Any]]:
    """Parameter and attribute differences over every aligned pair: evidence, not the verdict.

    Compared with the precision's tolerance, so an int8 model's rounded weights are no "fault".
    """
    found = []
    for pair in pairs:
        ctx = FaultContext(source, target, pair, {}, precision, {}, layout_changed)
        for check in (parameters, hyperparameters):
            fault = check(ctx)
            if fault is not None:
                found.append({"source_layer": pair[0].node.name, "target_layer": pair[1].node.name, **fault.to_json()})
    return found


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
