"""Fold the shape computations that exporters emit in front of `Reshape` into constants.

tf2onnx writes Keras' Flatten as Shape -> Slice -> Concat -> Reshape, so the target shape is
computed at run time from the batch size. Importers that trace (onnx2torch + torch.export) cannot
follow that data-dependent shape. We run the graph at two batch sizes; where the shape differs
only in the batch entry, it becomes a constant with -1 there, and the dead shape nodes go.
"""

from __future__ import annotations

import numpy as np

_ONNX_NP = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_, 2: np.uint8, 3: np.int8}


def fold_reshape_shapes(model):
    """Return (model, number of Reshapes folded). The input model is not modified."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    dynamic = [node for node in graph.node if node.op_type == "Reshape" and node.input[1] not in constants]
    if not dynamic:
        return model, 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known_outputs = {o.name for o in probe.graph.output}
    for node in dynamic:
        if node.input[1] not in known_outputs:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(node.input[1], onnx.TensorProto.INT64, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.input[1] for node in dynamic]
    runs = []
    for batch in (2, 3):
        feeds = {}
        for value in session.get_inputs():
            shape = [batch if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1) for i, d in enumerate(value.shape)]
            dtype = np.float16 if "float16" in value.type else np.int64 if "int64" in value.type else np.float32
            feeds[value.name] = np.zeros(shape, dtype=dtype)
        runs.append(dict(zip(names, session.run(names, feeds))))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folded = 0
    for index, node in enumerate(dynamic):
        at2, at3 = runs[0][node.input[1]], runs[1][node.input[1]]
        differs = np.nonzero(at2 != at3)[0]
        if len(differs) != 1 or at2[differs[0]] != 2 or at3[differs[0]] != 3 or (at2 == -1).any():
            continue
        fixed = at2.astype(np.int64).copy()
        fixed[differs[0]] = -1
        name = f"{node.name or 'reshape'}_folded_shape_{index}"
        out.graph.initializer.append(numpy_helper.from_array(fixed, name))
        target = next(n for n in out.graph.node if n.name == node.name and list(n.output) == list(node.output))
        target.input[1] = name
        folded += 1
    if folded:
        _remove_dead_nodes(out.graph)
    return out, folded


def _remove_dead_nodes(graph) -> None:
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
