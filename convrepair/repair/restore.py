"""Parameter-restore repair (FetaFix): put the source's value back where localization points.

Each restore reads the localized fault and returns a changed copy of the target ONNX graph plus a
`Patch` saying what changed. Source values come from the source's ONNX IR (the same one
localization compared against). One function per fault type, registered by `@restorer`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convrepair.localize.graph import GraphView


@dataclass
class Patch:
    kind: str
    location: str
    parameters: int
    detail: str
    before: str | None = None  # digest (or value) before
    after: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "location": self.location,
            "parameters": self.parameters,
            "detail": self.detail,
            "before": self.before,
            "after": self.after,
            **self.extra,
        }


class RestoreUnavailable(Exception):
    """This fault cannot be restored automatically; the message says why."""


_RESTORERS: dict[str, Callable] = {}


def restorer(*fault_types: str):
    def register(fn: Callable):
        for fault_type in fault_types:
            if fault_type in _RESTORERS:
                raise ValueError(f"a restorer for '{fault_type}' is already registered")
            _RESTORERS[fault_type] = fn
        return fn

    return register


def restore(target_model, source: GraphView, localization: dict[str, Any]):
    """(repaired model, Patch) for the localized fault; RestoreUnavailable when out of reach."""
    import onnx

    fault = localization.get("fault") or {}
    fn = _RESTORERS.get(fault.get("type"))
    if fn is None:
        raise RestoreUnavailable(f"no restore for fault type '{fault.get('type')}'")
    _restorable_on(target_model, fault)
    model = onnx.ModelProto()
    model.CopyFrom(target_model)
    patch = fn(model, source, localization)
    return model, patch


def _restorable_on(target_model, fault: dict[str, Any]) -> None:
    """The op registry says which fault types a restore may fix on the op at fault (a quantized
    ConvInteger's int8 weights are not copied over from floats)."""
    from convrepair import ops

    name = fault.get("node")
    node = next((n for n in target_model.graph.node if name and n.name == name), None)
    if node is None or fault.get("type") not in ("weights", "biases", "hyperparameter", "graph_structure"):
        return
    opsets = {(entry.domain if entry.domain != "ai.onnx" else ""): entry.version for entry in target_model.opset_import}
    found = ops.spec(node.op_type, node.domain, opsets.get(node.domain or ""))
    if found is not None and found.restores and fault["type"] not in found.restores:
        raise RestoreUnavailable(f"{node.op_type} '{name}': the op registry has no {fault['type']} restore for this op")


def digest(value: np.ndarray) -> str:
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]


def tensor_dtype(model, name: str) -> np.dtype:
    """The element type of a tensor in the target graph, so what a repair inserts matches the
    graph's precision (an fp32 constant in an fp16 graph is a model ONNX Runtime rejects)."""
    import onnx

    graph = model.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.name == name and value.type.tensor_type.elem_type:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    for init in graph.initializer:
        if init.name == name:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
    for node in graph.node:
        if name in node.output and node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            if to:
                return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for value in inferred.graph.value_info:
            if value.name == name and value.type.tensor_type.elem_type:
                return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    except Exception:  # noqa: BLE001 - shape inference is a best effort; fp32 is the default
        pass
    return np.dtype(np.float32)


def _node(model, name: str):
    for node in model.graph.node:
        if node.name == name:
            return node
    raise RestoreUnavailable(f"node '{name}' is not in the target graph")


def _set_initializer(model, name: str, value: np.ndarray) -> np.ndarray:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            old = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(value.astype(old.dtype), name))
            return old
    raise RestoreUnavailable(f"'{name}' is not an initializer of the target (quantized or computed?)")


@restorer("weights", "biases")
def restore_parameter(model, source: GraphView, localization: dict[str, Any]) -> Patch:
    """Copy the source's parameter, through the axis order that matched them."""
    differences = localization["fault"]["evidence"]["differences"]
    worst = max(differences, key=lambda d: d["max_abs_diff"] / max(d["tolerance"], 1e-12))
    source_node = next(n for n in source.nodes if n.name == worst["source_node"])
    value = source.constant(source_node.inputs[worst["input"]])
    if value is None:
        raise RestoreUnavailable(f"the source's {worst['role']} for {worst['source_node']} is not a constant")
    if worst.get("permutation"):
        value = np.transpose(value, worst["permutation"])
    if worst.get("lost"):
        return _add_lost_input(model, worst, value)
    old = _set_initializer(model, worst["tensor"], value.reshape(worst["shape"]))
    return Patch(
        kind=f"restore_{worst['role']}",
        location=f"{worst['target_node']}:{worst['tensor']}",
        parameters=int(value.size),
        detail=f"copied {worst['role']} of the source's {worst['source_node']} into {worst['tensor']}",
        before=digest(old),
        after=digest(value.reshape(worst["shape"]).astype(old.dtype)),
    )


def _add_lost_input(model, finding: dict[str, Any], value: np.ndarray) -> Patch:
    """Give the target's node back the parameter input it lost, as a new initializer."""
    from onnx import numpy_helper

    node = _node(model, finding["target_node"])
    name = f"{node.name}.restored_{finding['role']}"
    position = finding["input"]
    while len(node.input) < position:
        node.input.append("")
    if len(node.input) > position:
        node.input[position] = name
    else:
        node.input.append(name)
    weight = node.input[1] if len(node.input) > 1 else ""
    value = value.reshape(finding["shape"]).astype(tensor_dtype(model, weight) if weight else np.float32)
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return Patch(
        kind=f"restore_{finding['role']}",
        location=f"{node.name}:{name}",
        parameters=int(value.size),
        detail=f"the target's {node.name} had lost its {finding['role']}: added the source's {finding['source_node']} "
               f"{finding['role']} as input {position}",
        before=digest(np.zeros_like(value)),
        after=digest(value),
    )


@restorer("hyperparameter")
def restore_hyperparameter(model, source: GraphView, localization: dict[str, Any]) -> Patch:
    """Copy the source's attribute (or activation kind) onto the target node."""
    from onnx import helper

    evidence = localization["fault"]["evidence"]
    first = localization["first_divergent"]
    if evidence.get("attribute") == "activation":
        source_node = next(n for n in source.nodes if n.name == evidence.get("source_node", first["source_layer"]))
        target = _node(model, evidence.get("target_node", first["target_layer"]))
        before = target.op_type
        extra = _copied_constants(model, source, source_node, tensor_dtype(model, target.input[0]))
        target.op_type = source_node.op
        del target.input[1:]
        target.input.extend(extra)
        del target.attribute[:]
        target.attribute.extend(helper.make_attribute(k, v) for k, v in source_node.attributes.items())
        return Patch("restore_activation", target.name, 0, f"activation {before} → {source_node.op} as in the source",
                     before=before, after=source_node.op)
    changes = []
    for diff in evidence["differences"]:
        target = _node(model, diff["node"])
        key, value = diff["attribute"], diff["source"]
        held = _held_inputs(model, target)
        if key in held:
            _set_held_input(model, target, held[key], key, value)
        else:
            for attribute in list(target.attribute):
                if attribute.name == key:
                    target.attribute.remove(attribute)
            if value is not None and not diff.get("source_default"):  # the source's default: omit it
                target.attribute.append(helper.make_attribute(key, value))
        changes.append(f"{diff['node']}.{key}: {diff['target']} → {value}")
    return Patch("restore_attribute", ", ".join(d["node"] for d in evidence["differences"]), 0,
                 "; ".join(changes), before=str([d["target"] for d in evidence["differences"]]),
                 after=str([d["source"] for d in evidence["differences"]]))


def _held_inputs(model, node) -> dict[str, int]:
    """Attribute name → input index, for attributes this op holds as inputs (the op registry)."""
    from convrepair import ops

    opsets = {(entry.domain if entry.domain != "ai.onnx" else ""): entry.version for entry in model.opset_import}
    found = ops.spec(node.op_type, node.domain, opsets.get(node.domain or ""))
    return {name: index for index, name in found.attribute_inputs.items()} if found else {}


def _set_held_input(model, node, position: int, key: str, value) -> None:
    """Put the source's value into an input-held attribute (Clip's bound) as a new initializer."""
    from onnx import numpy_helper

    if value is None or isinstance(value, str):
        raise RestoreUnavailable(f"{node.name}.{key}: the source's value ({value}) cannot be written as an input")
    reference = node.input[0] if node.input else ""
    dtype = tensor_dtype(model, reference) if reference else np.dtype(np.float32)
    array = np.asarray(value)
    array = array.astype(dtype) if np.issubdtype(array.dtype, np.floating) else array.astype(np.int64)
    name = f"{node.name}.restored_{key}"
    model.graph.initializer.append(numpy_helper.from_array(array.reshape(np.shape(value)), name))
    while len(node.input) <= position:
        node.input.append("")
    node.input[position] = name


@restorer("preprocessing", "input_layout")
def restore_input_pipeline(model, source: GraphView, localization: dict[str, Any]) -> Patch:
    """Undo the input difference right where localization measured it: the first layer's input.

    (The sidecar's preprocessing is left alone: the graph itself now expects what the source did.)
    """
    from onnx import helper, numpy_helper

    evidence = localization["fault"]["evidence"]
    graph = model.graph
    name = evidence["target_tensor"]
    fixed = f"{name}__convrepair_fixed"
    nodes = []
    if evidence.get("permutation"):
        perm = evidence["permutation"]  # applied to the source's tensor, it gives the target's
        nodes.append(helper.make_node("Transpose", [name], [fixed], perm=[int(i) for i in np.argsort(perm)],
                                      name="convrepair_fix_layout"))
        detail = f"transposed the first layer's input back (perm {list(np.argsort(perm))})"
    elif evidence.get("channel_reversed"):
        axis = int(evidence.get("channel_axis", 1))  # the channel axis of the layout in force (3 for NHWC)
        channels = int(evidence.get("channels", 3))
        graph.initializer.append(numpy_helper.from_array(np.arange(channels - 1, -1, -1, dtype=np.int64), "convrepair_channel_order"))
        nodes.append(helper.make_node("Gather", [name, "convrepair_channel_order"], [fixed], axis=axis, name="convrepair_fix_channels"))
        detail = f"reversed the channels back (BGR → RGB, axis {axis}) before the first layer"
    elif "affine_fit" in evidence and evidence["affine_fit"]["residual"] < 1e-3:
        scale, offset = evidence["affine_fit"]["scale"], evidence["affine_fit"]["offset"]
        dtype = tensor_dtype(model, name)  # typed like the tensor it fixes: fp16 graphs stay valid
        graph.initializer.append(numpy_helper.from_array(np.array(1.0 / scale, dtype), "convrepair_input_scale"))
        graph.initializer.append(numpy_helper.from_array(np.array(-offset / scale, dtype), "convrepair_input_offset"))
        nodes += [
            helper.make_node("Mul", [name, "convrepair_input_scale"], [f"{fixed}_scaled"], name="convrepair_fix_scale"),
            helper.make_node("Add", [f"{fixed}_scaled", "convrepair_input_offset"], [fixed], name="convrepair_fix_offset"),
        ]
        detail = f"x ← (x − {offset:.6g}) / {scale:.6g} before the first layer, undoing the target's input scaling"
    else:
        raise RestoreUnavailable("the input difference is neither affine, a permutation nor a channel reversal")
    consumers = [node for node in graph.node if name in node.input]
    for node in consumers:
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = fixed
    position = min(list(graph.node).index(node) for node in consumers)
    for new in reversed(nodes):
        graph.node.insert(position, new)
    return Patch("insert_input_fix", name, 0, detail)


def _copied_constants(model, source: GraphView, node, dtype) -> list[str]:
    """The source node's parameter inputs after its first (a Clip's bounds), copied into the target
    as initializers typed like the tensor they act on; an empty name (an omitted input) stays."""
    from onnx import numpy_helper

    names = []
    for value_name in node.inputs[1:]:
        if not value_name:
            names.append("")
            continue
        value = source.constant(value_name)
        if value is None:
            raise RestoreUnavailable(f"{node.name} reads a non-constant input")
        copy_name = f"convrepair_{value_name}"
        if np.issubdtype(value.dtype, np.floating):
            value = value.astype(dtype)
        if copy_name not in {i.name for i in model.graph.initializer}:
            model.graph.initializer.append(numpy_helper.from_array(value, copy_name))
        names.append(copy_name)
    return names


@restorer("graph_structure")
def restore_missing_node(model, source: GraphView, localization: dict[str, Any]) -> Patch:
    """Re-insert one single-input op (an activation, a Pad …) that the target's segment lost."""
    from onnx import helper

    evidence = localization["fault"]["evidence"]
    missing = evidence.get("missing_in_target") or {}
    first = localization["first_divergent"]
    source_names = [n.name for n in source.nodes]
    if first.get("source_layer") not in source_names:
        raise RestoreUnavailable("the ops the target adds are not restored by removing them")
    end = source_names.index(first["source_layer"])
    # A whole layer the target lacks (left unaligned) is the likeliest loss; else the segment's missing op.
    unaligned = [n for n in source.nodes[: end + 1] if n.name in set(evidence.get("source_only", []))]
    if unaligned:
        lost = unaligned[-1]
    elif sum(missing.values()) == 1 and not evidence.get("added_in_target"):
        op = next(iter(missing))
        candidates = [n for n in source.nodes[: end + 1] if n.op == op]
        if not candidates:
            raise RestoreUnavailable(f"the source's {op} is not in the segment")
        lost = candidates[-1]
    else:
        raise RestoreUnavailable(f"only one lost op is restored; found missing {missing}, added {evidence.get('added_in_target')}")
    op = lost.op
    feeding = source.producer.get(lost.inputs[0])
    target_names = {n.name for n in model.graph.node}
    if feeding is None:  # fed by the model input
        upstream = lost.inputs[0]
    elif feeding.name in target_names:
        upstream = next(n for n in model.graph.node if n.name == feeding.name).output[0]
    else:
        raise RestoreUnavailable(f"cannot find where {lost.name} was fed from in the target")
    new_output = f"{upstream}__convrepair_{op.lower()}"
    extra_inputs = _copied_constants(model, source, lost, tensor_dtype(model, upstream))
    for node in model.graph.node:
        for i, value in enumerate(node.input):
            if value == upstream:
                node.input[i] = new_output
    node = helper.make_node(op, [upstream, *extra_inputs], [new_output], name=f"convrepair_restored_{lost.name}",
                            **lost.attributes)
    position = next((i for i, n in enumerate(model.graph.node) if new_output in n.input), len(model.graph.node))
    model.graph.node.insert(position, node)
    return Patch("insert_missing_node", node.name, sum(int(source.constant(v).size) for v in lost.inputs[1:] if v),
                 f"re-inserted the source's {op} ({lost.name}) after {upstream}")
