"""A read-only view of an ONNX graph for localization: layers, their segments, params, attributes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convrepair import lean_onnx, ops

# Ops that only move precision around, and ops whose output is integers (scaled) whose real value
# lies a Cast/Mul/Add (or Dequantize) later: both read from the op registry (convrepair/ops).
PRECISION_OPS = ops.ops_where(precision=True)
INTEGER_OPS = ops.ops_where(integer=True)
_SHAPE_ONLY_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten"})


@dataclass
class Node:
    index: int
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Any]
    domain: str = ""

    @property
    def kind(self) -> str | None:
        return ops.kind_of(self.op, self.domain)


@dataclass
class Layer:
    """A checkpoint (a layer's output tensor) and the segment of nodes computing it from the last one."""

    position: int
    node: Node
    tensor: str
    segment: list[Node] = field(default_factory=list)
    kind: str = ""


class GraphView:
    def __init__(self, model):
        from onnx import helper, numpy_helper

        self.model = model
        graph = model.graph
        self.initializers = Initializers(graph.initializer, lean_onnx.home_of(model))
        for node in graph.node:  # Constant nodes are parameters too
            if node.op_type == "Constant" and node.attribute:
                try:
                    self.initializers.add(node.output[0], numpy_helper.to_array(node.attribute[0].t))
                except Exception:  # noqa: BLE001 - non-tensor constants are not parameters
                    pass
        self.nodes = [
            Node(i, n.name or f"{n.op_type}_{i}", n.op_type, list(n.input), list(n.output),
                 {a.name: _attr_value(helper.get_attribute_value(a)) for a in n.attribute}, n.domain or "")
            for i, n in enumerate(graph.node)
            if n.op_type != "Constant"
        ]
        self.opsets = {(entry.domain if entry.domain != "ai.onnx" else ""): entry.version for entry in model.opset_import}
        self.inputs = [v.name for v in graph.input if v.name not in self.initializers]
        self.outputs = [v.name for v in graph.output]
        self.producer = {out: node for node in self.nodes for out in node.outputs}
        self.consumers: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                self.consumers.setdefault(name, []).append(node)

    def real_tensor(self, tensor: str) -> str:
        """The tensor holding the real value of an integer op's output: ConvInteger's int32 is
        followed down its chain of Cast, rescaling Mul, bias Add or DequantizeLinear."""
        producer = self.producer.get(tensor)
        if producer is None or producer.op not in INTEGER_OPS:
            return tensor
        current, seen = tensor, set()
        while len(self.consumers.get(current, [])) == 1:
            node = self.consumers[current][0]
            constant_operand = any(self.constant(i) is not None for i in node.inputs if i != current)
            wanted = node.op in ("Cast", "DequantizeLinear", "Mul") or (node.op == "Add" and constant_operand)
            if not wanted or node.op in seen or "Add" in seen:
                break
            seen.add(node.op)
            current = node.outputs[0]
        return current

    def layers(self) -> list[Layer]:
        """Layer checkpoints in topological order, each with the nodes since the previous one."""
        layers: list[Layer] = []
        pending: list[Node] = []
        for node in self.nodes:
            pending.append(node)
            if node.kind is None or node.op == "Erf":
                continue
            if node.kind == "dense" and node.op == "MatMul" and not any(i in self.initializers for i in node.inputs):
                continue  # a MatMul of two activations is not a dense layer
            layers.append(Layer(len(layers), node, node.outputs[0], pending, node.kind))
            pending = []
        if pending and layers:  # trailing ops (bias Add, Cast …) belong to the last layer's segment
            last = layers[-1]
            final = next((n for n in reversed(pending) if n.op not in PRECISION_OPS and n.outputs[0] not in self.outputs), None)
            last.segment = last.segment + pending
            if final is not None and final.op in ("Add", "Mul"):
                last.tensor = final.outputs[0]
        return layers

    def cone(self, node: Node, stops: set[str]) -> list[Node]:
        """The nodes `node` depends on, back to the `stops` tensors (checkpoints that agree) or the
        graph's inputs and constants, in graph order, `node` included."""
        seen, frontier = {node.index: node}, [node]
        while frontier:
            for name in frontier.pop().inputs:
                producer = self.producer.get(name) if name and name not in stops else None
                if producer is not None and producer.index not in seen:
                    seen[producer.index] = producer
                    frontier.append(producer)
        return [seen[i] for i in sorted(seen)]

    def reaches(self, tensor: str, node: Node) -> bool:
        """Does `node` depend on `tensor`? (Walks consumers forward, never past `node` in graph order.)"""
        frontier, seen = [tensor], {tensor}
        while frontier:
            for consumer in self.consumers.get(frontier.pop(), []):
                if consumer is node:
                    return True
                if consumer.index < node.index:
                    for out in consumer.outputs:
                        if out not in seen:
                            seen.add(out)
                            frontier.append(out)
        return False

    def float_origin(self, tensor: str) -> str:
        """The float tensor behind a chain of Cast/Quantize/Dequantize ops. Where the chain runs
        into quantized codes moved by a shape-only op (tf2onnx puts a Reshape between a TFLite
        model's input Quantize and its Dequantize), the codes are no real input: `tensor` itself,
        the dequantized value, is what the layer sees."""
        given, producer = tensor, self.producer.get(tensor)
        while producer is not None and producer.op in PRECISION_OPS:
            tensor = producer.inputs[0]
            producer = self.producer.get(tensor)
        return given if producer is not None and self._moves_codes(producer) else tensor

    def _moves_codes(self, node: Node) -> bool:
        """A Reshape/Squeeze/Unsqueeze/Flatten whose data input a Quantize/Cast chain produced."""
        if node.op not in _SHAPE_ONLY_OPS:
            return False
        while node.op in _SHAPE_ONLY_OPS and node.inputs:
            node = self.producer.get(node.inputs[0])
            if node is None:
                return False
        return node.op in PRECISION_OPS

    def spec(self, node: Node) -> ops.OpSpec | None:
        """What the op registry knows of this node at the opset this graph imports."""
        return ops.spec(node.op, node.domain, self.opsets.get(node.domain))

    def attributes(self, node: Node) -> dict[str, Any]:
        """Every attribute that changes what the node computes, defaults from the ONNX schema
        filled in and those it holds as inputs (Clip's bounds) read."""
        return ops.effective_attributes(node, self.opsets.get(node.domain), self.constant)

    def params(self, node: Node) -> list[tuple[int, np.ndarray]]:
        """(input position, value) of every parameter a node reads, through Dequantize/Cast.
        Inputs that are hyperparameters (Clip's bounds, Pad's pads, Reshape's shape) are not."""
        found = self.spec(node)
        skip = found.attribute_inputs if found else {}
        out = []
        for position, name in enumerate(node.inputs):
            if position in skip:
                continue
            value = self.constant(name)
            if value is not None and value.size > 1:
                out.append((position, value))
        return out

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return self.initializers[name]
        producer = self.producer.get(name)
        if producer is not None and producer.op in ("DequantizeLinear", "Cast"):
            base = self.constant(producer.inputs[0])
            if base is None:
                return None
            if producer.op == "Cast":
                return base.astype(np.float32)
            scale = self.constant(producer.inputs[1]) if len(producer.inputs) > 1 else None
            zero = self.constant(producer.inputs[2]) if len(producer.inputs) > 2 else None
            scale = self.initializers.get(producer.inputs[1]) if scale is None else scale
            zero = self.initializers.get(producer.inputs[2]) if (zero is None and len(producer.inputs) > 2) else zero
            return _dequantize(base, scale, zero, producer.attributes.get("axis", 1))
        return None


class Initializers(Mapping):
    """A graph's parameters by name, read when asked (issue 21: the whole of a large model's weights
    as numpy arrays was a second copy of it): embedded ones parsed once and kept, those of a lean
    model memory-mapped from its data file on every read, so nothing holds them all at once."""

    def __init__(self, tensors, home) -> None:
        self._tensors = {tensor.name: tensor for tensor in tensors}
        self._home = home
        self._kept: dict[str, np.ndarray] = {}

    def add(self, name: str, value: np.ndarray) -> None:
        self._kept[name] = value

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._kept:
            return self._kept[name]
        tensor = self._tensors[name]
        value = lean_onnx.weights(tensor, self._home)
        if not lean_onnx.mapped(tensor, self._home):
            self._kept[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._kept or name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._tensors, *self._kept]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._tensors, *self._kept]))


def _dequantize(q: np.ndarray, scale, zero, axis: int) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros_like(scale) if zero is None else np.asarray(zero).astype(np.float32)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q.astype(np.float32) - zero) * scale


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_attr_value(v) for v in value]
    if hasattr(value, "dims"):  # a TensorProto attribute
        from onnx import numpy_helper

        return numpy_helper.to_array(value).tolist()
    return value
