"""Type a divergent segment from a runtime's own ops, read against the source's ONNX graph.

A runtime IR (OpenVINO) keeps ONNX names where its frontend kept the op: an op is named after its
ONNX node (`/Conv`, or `/Conv/WithoutBiases` for a part split off), weights keep their
initializer's name, a bias becomes an unnamed constant of the node's bias Add. So each ONNX node is
paired with the runtime ops named after it, and compared in FetaFix's order — an op inserted at
the input, parameters, attributes, an activation that changed kind, an op that is gone — with the
numbers that decided it. What the IR does not show is said to be unknown, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convrepair.localize.faults import Fault, match_param, param_tolerance
from convrepair.localize.graph import PRECISION_OPS, GraphView, Layer, Node

# ONNX activation → the op type OpenVINO's ONNX frontend makes of it.
ACTIVATIONS = {"Relu": "Relu", "LeakyRelu": "PRelu", "PRelu": "PRelu", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
               "Elu": "Elu", "Selu": "Selu", "HardSigmoid": "HardSigmoid", "HardSwish": "HSwish", "Softmax": "Softmax",
               "Erf": "Erf", "Softplus": "SoftPlus", "Mish": "Mish", "Clip": "Clamp"}
# ONNX attribute → (runtime op types that carry it, how to read it there).
_SPATIAL = {"Convolution", "GroupConvolution", "MaxPool", "AvgPool"}
_PASSIVE = PRECISION_OPS | {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Shape", "Constant", "Dropout"}


@dataclass
class RuntimeGraph:
    """The runtime's ops (dicts from the runner's `graph_ops`) indexed by name and tensor."""

    ops: list[dict[str, Any]]
    tensors: set[str]
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_tensor: dict[str, dict[str, Any]] = field(default_factory=dict)
    _of: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for op in self.ops:
            self.by_name.setdefault(op["name"], op)
            for tensor in op["outputs"]:
                self.by_tensor.setdefault(tensor, op)

    def producer_name(self, tensor: str) -> str:
        op = self.by_tensor.get(tensor)
        return op["name"] if op else tensor

    def of(self, node: Node) -> list[dict[str, Any]]:
        """The runtime ops computing this ONNX node: named after it, or writing its output."""
        if node.name not in self._of:
            prefix = node.name + "/"
            self._of[node.name] = [op for op in self.ops if op["name"] == node.name or op["name"].startswith(prefix)
                                   or set(op["outputs"]) & set(node.outputs)]
        return self._of[node.name]

    def cone(self, op: dict[str, Any], stops: set[str]) -> list[dict[str, Any]]:
        """The ops `op` depends on, back to tensors in `stops` or the model inputs, `op` included."""
        seen, frontier = {id(op): op}, [op]
        while frontier:
            for name in frontier.pop()["inputs"]:
                producer = self.by_name.get(name)
                if producer is None or set(producer["outputs"]) & stops or id(producer) in seen:
                    continue
                seen[id(producer)] = producer
                frontier.append(producer)
        order = {id(op): i for i, op in enumerate(self.ops)}
        return sorted(seen.values(), key=lambda o: order[id(o)])


def explain_segment(view: GraphView, runtime: RuntimeGraph, layer: Layer, agreeing: set[str], precision: str) -> Fault:
    """The fault of the divergent checkpoint `layer`, whose inputs (the `agreeing` tensors) agree."""
    s_cone = [n for n in view.cone(layer.node, agreeing) if n.op != "Constant"]
    t_op = runtime.by_tensor.get(layer.tensor)
    t_cone = runtime.cone(t_op, agreeing) if t_op is not None else []
    known = {id(op) for node in view.nodes for op in runtime.of(node)}
    added = [op for op in t_cone if id(op) not in known]
    fault = _inserted_at_input(view, added)
    if fault is not None:
        return fault
    findings = [f for node in s_cone for f in node_differences(view, runtime, node, precision)]
    if findings:
        return _fault_of(findings[0], findings)
    dropped = [node for node in s_cone if _bypassed(view, runtime, node)]
    if dropped:
        node = dropped[0]
        return Fault("graph_structure", f"the source's {node.op} '{node.name}' is gone from the target: no op or tensor "
                     f"carries its name, and the op that reads its output in the source reads its input in the target",
                     {"missing_in_target": {node.op: 1}, "source_node": node.name}, node.name)
    fault = _inserted(view, added)
    if fault is not None:
        return fault
    return Fault("unknown", f"the checkpoint '{layer.tensor}' diverges while every checkpoint it reads agrees (type from "
                 "behaviour: the divergence starts in this segment); the target's ops in it keep the source's constants "
                 "and attributes wherever the IR keeps them by name, so what changed is not shown by the IR",
                 {"segment": [n.name for n in s_cone], "target_ops": [op["name"] for op in t_cone]})


def static_differences(view: GraphView, runtime: RuntimeGraph, precision: str) -> list[dict[str, Any]]:
    """Every parameter or attribute difference between the source graph and the runtime's ops, worst
    first (shown beside the walk, and the lead when no checkpoint diverges)."""
    found = [f for node in view.nodes for f in node_differences(view, runtime, node, precision)]
    found.sort(key=lambda f: -f.get("ratio", 0.0))
    return [{"type": f["type"], "detail": f["detail"], "node": f["node"], "source_layer": f["node"],
             "target_layer": f.get("target_op", f["node"]), "evidence": {k: v for k, v in f.items() if k != "detail"}}
            for f in found]


def node_differences(view: GraphView, runtime: RuntimeGraph, node: Node, precision: str) -> list[dict[str, Any]]:
    ops = runtime.of(node)
    if not ops:
        return []
    return _parameters(view, node, ops, precision) + _attributes(view, node, ops) + _activation(node, ops)


def _parameters(view: GraphView, node: Node, ops: list[dict], precision: str) -> list[dict[str, Any]]:
    """The node's float initializers against the constants its runtime ops read: by name where the
    runtime kept it, else by size (a bias reshaped for broadcasting). A bias with no constant left
    is a bias the target dropped (a frontend drops an all-zero bias Add). At int8 only names count:
    a per-channel scale has a bias's size."""
    spec = view.spec(node)
    skip = spec.attribute_inputs if spec else {}
    constants = [c for op in ops for c in op["constants"]]
    out = []
    for position, name in enumerate(node.inputs):
        value = view.constant(name) if position not in skip else None
        if value is None or value.size < 2 or not np.issubdtype(np.asarray(value).dtype, np.floating):
            continue
        value = np.asarray(value, dtype=np.float32)
        role = spec.fault_type(position) if spec else "weights"
        named = [c for c in constants if name in c[1]]
        sized = named or ([] if precision == "int8" else [c for c in constants if c[2].size == value.size])
        if not sized:
            if role == "biases" and np.any(value) and ops and precision != "int8":
                out.append({"type": "biases", "node": node.name, "input": position, "tensor": name, "lost": True,
                            "max_abs_diff": float(np.abs(value).max()), "ratio": float("inf"),
                            "detail": f"the source's {node.op} '{node.name}' adds bias '{name}' (up to "
                                      f"{np.abs(value).max():.3g}); the target's ops for it read no such constant: "
                                      "the bias was dropped (as a zero bias is)"})
            continue
        tolerance = param_tolerance(value, precision)
        best = min((_delta(value, c[2]) for c in sized), key=lambda d: d[0])
        if best[0] > tolerance:
            factor = _uniform_factor(value, best[1])
            at_input = not named and role == "weights" and bool(node.inputs) and node.inputs[0] in view.inputs
            order = _channel_order(value, best[1]) if at_input else None
            if at_input and (factor is not None or order is not None):
                out.append(_folded_input_op(node, name, factor, order, best[0], tolerance))
                continue
            out.append({"type": role, "node": node.name, "input": position, "tensor": name, "max_abs_diff": best[0],
                        "tolerance": tolerance, "ratio": best[0] / max(tolerance, 1e-12), "by": "name" if named else "size",
                        "zeroed": bool(not np.any(best[1]) and np.any(value)), "uniform_factor": factor,
                        "detail": f"{role} '{name}' of {node.op} '{node.name}' differ by up to {best[0]:.3g} in the target"
                                  + (f" (uniformly ×{factor:.4g}: an input scale folded into the first layer would "
                                     "look the same)" if factor is not None else "")})
    return out


def _folded_input_op(node: Node, name: str, factor: float | None, order: list[int] | None, delta: float,
                     tolerance: float) -> dict[str, Any]:
    """The first layer's kernel in a constant that is no longer the initializer (its name is gone: the
    frontend computed it, folding an op into it), equal to the source's kernel ×k everywhere or with
    its input channels reordered: the model input is scaled or its channels reordered before this
    layer, and OpenVINO folded that op into the kernel."""
    what = f"scaled ×{factor:.4g}" if factor is not None else f"has its channels reordered {order}"
    how = f"×{factor:.4g} everywhere" if factor is not None else f"with its input channels in the order {order}"
    return {"type": "preprocessing", "node": node.inputs[0], "input": 1, "tensor": name, "max_abs_diff": delta,
            "tolerance": tolerance, "ratio": delta / max(tolerance, 1e-12), "by": "size", "uniform_factor": factor,
            "channel_order": order,
            "detail": f"the model input '{node.inputs[0]}' {what} before {node.op} '{node.name}': the target's kernel is "
                      f"the source's '{name}' {how}, in a constant that no longer carries the initializer's name (the "
                      "frontend folded an op on the input into it)"}


def _channel_order(source: np.ndarray, target: np.ndarray) -> list[int] | None:
    """The order of input channels (axis 1 of a kernel, at most 4) that makes `target` the source
    kernel exactly (within float rounding), when it is not the identity; else None."""
    import itertools

    if target.shape != source.shape or source.ndim < 2 or not 1 < source.shape[1] <= 4:
        return None
    for order in itertools.permutations(range(source.shape[1])):
        if list(order) != sorted(order) and np.allclose(target, source[:, list(order)], rtol=1e-5, atol=1e-7):
            return list(order)
    return None


def _delta(source: np.ndarray, candidate: np.ndarray) -> tuple[float, np.ndarray]:
    """Max |Δ| of a source parameter and a runtime constant of the same size, through the axis
    order that fits best (a Gemm's transposed weight), and the constant in the source's shape."""
    matched = match_param(source, candidate.reshape(source.shape) if candidate.ndim != source.ndim else candidate)
    if matched is None:
        return float("inf"), candidate
    delta, perm = matched
    moved = candidate
    if perm is not None:
        moved = np.transpose(candidate, np.argsort(perm))
    return delta, moved.reshape(source.shape) if moved.size == source.size else moved


def _uniform_factor(source: np.ndarray, target: np.ndarray) -> float | None:
    """k where target = k·source everywhere (within float rounding), else None."""
    if target.shape != source.shape or not np.any(source):
        return None
    mask = np.abs(source) > 1e-6 * np.abs(source).max()
    ratios = target[mask] / source[mask]
    k = float(np.median(ratios))
    return k if np.allclose(target, k * source, rtol=1e-4, atol=1e-7) and abs(k - 1) > 1e-4 else None


def _attributes(view: GraphView, node: Node, ops: list[dict]) -> list[dict[str, Any]]:
    """Strides, dilations, pads and kernel of a Conv or pooling against the runtime op's."""
    spatial = [op for op in ops if op["type"] in _SPATIAL]
    if not spatial:
        return []
    op, attrs = spatial[0], view.attributes(node)
    theirs = op["attributes"]
    rank = len(theirs.get("strides", [])) or 2
    pairs = [("strides", attrs.get("strides"), theirs.get("strides")),
             ("dilations", attrs.get("dilations"), theirs.get("dilations")),
             ("pads", attrs.get("pads"), (theirs.get("pads_begin") or []) + (theirs.get("pads_end") or []))]
    if "kernel" in theirs:
        pairs.append(("kernel_shape", attrs.get("kernel_shape"), theirs.get("kernel")))
    out = []
    for key, ours, target in pairs:
        if ours is None or not target or str(theirs.get("auto_pad", "explicit")).lower() not in ("explicit", "notset"):
            continue
        ours = list(ours) if isinstance(ours, (list, tuple)) else [ours] * rank
        if [int(v) for v in ours] != [int(v) for v in target]:
            out.append({"type": "hyperparameter", "node": node.name, "target_op": op["name"], "attribute": key,
                        "source": ours, "target": list(target), "ratio": 1e6,
                        "detail": f"{node.op} '{node.name}' attribute {key}: source {ours} vs target {list(target)}"})
    return out


def _activation(node: Node, ops: list[dict]) -> list[dict[str, Any]]:
    """An activation whose runtime op (named after it) is of another kind."""
    expected = ACTIVATIONS.get(node.op)
    named = [op for op in ops if op["name"] == node.name]
    if expected is None or not named or named[0]["type"] in (expected, "Clamp", "Minimum", "Maximum"):
        return []
    if node.op == "Clip" and named[0]["type"] in ("Relu", "Clamp"):
        return []
    kind = named[0]["type"]
    return [{"type": "hyperparameter", "node": node.name, "target_op": kind, "attribute": "activation", "source": node.op,
             "target": kind, "ratio": 1e6,
             "detail": f"activation kind differs: source {node.op} ({node.name}) vs target {kind} ({named[0]['name']})"}]


def _fault_of(worst: dict[str, Any], findings: list[dict[str, Any]]) -> Fault:
    evidence = {"differences": [{k: v for k, v in f.items() if k != "detail"} for f in findings]}
    return Fault(worst["type"], worst["detail"], evidence, worst["node"])


def _bypassed(view: GraphView, runtime: RuntimeGraph, node: Node) -> bool:
    """Is this op gone from the target (not fused): no runtime op or tensor carries its name, and an
    op reading its output in the source reads, in the target, the op that produced its input."""
    if node.op in _PASSIVE or runtime.of(node) or not node.inputs:
        return False
    data = node.inputs[0]
    before = view.producer.get(data)
    feeding = {op["name"] for op in runtime.of(before)} if before is not None else {data}
    for consumer in view.consumers.get(node.outputs[0], []):
        for op in runtime.of(consumer):
            if feeding & set(op["inputs"]):
                return True
    return False


def _inserted_at_input(view: GraphView, added: list[dict]) -> Fault | None:
    """An op the source does not have, reading a model input: the input pipeline changed."""
    inputs = set(view.inputs)
    for op in added:
        if inputs & set(op["inputs"]):
            layout = op["type"] in ("Transpose", "Reshape")
            kind = "input_layout" if layout else "preprocessing"
            what = "moves the input's axes" if layout else "changes the input's values"
            return Fault(kind, f"the target has a {op['type']} '{op['name']}' on the model input that the source does not "
                         f"have: it {what} before the first layer", {"added_in_target": {op["type"]: 1},
                                                                     "target_op": op["name"], "reads": op["inputs"]},
                         op["name"])
    return None


def _inserted(view: GraphView, added: list[dict]) -> Fault | None:
    for op in added:
        if op["type"] not in ("Reshape", "Squeeze", "Unsqueeze", "Convert", "ShapeOf", "Concat", "Gather"):
            return Fault("graph_structure", f"the target has a {op['type']} '{op['name']}' the source's graph does not have "
                         "in this segment", {"added_in_target": {op["type"]: 1}, "target_op": op["name"]}, op["name"])
    return None
