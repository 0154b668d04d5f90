"""A TFLite model's quantized inputs and outputs as float in its ONNX form.

tf2onnx keeps a full-integer model's int8 I/O: the ONNX graph takes and gives raw codes. The TFLite
runner presents those tensors as real numbers (quantize in, dequantize out); the ONNX form must do
the same, or the localization IR would be fed floats cast to int8 and never match the model it
stands for. Each quantized input gets a QuantizeLinear in front, each output a DequantizeLinear
behind, with the tensor's own scale and zero point; names stay those of the TFLite model.
"""

from __future__ import annotations

from pathlib import Path


def float_io(onnx_path: Path, tflite_path: Path) -> dict[str, dict]:
    """Rewrite `onnx_path` in place; the quantized I/O it wrapped, by name (empty: nothing to do)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convrepair_plugins.tensorflow.quiet import import_tensorflow, quiet
    from convrepair_plugins.tensorflow.runners import io_quantization

    tf = import_tensorflow()
    with quiet():
        interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
    wanted = {d["name"]: q for d in [*interpreter.get_input_details(), *interpreter.get_output_details()]
              if (q := io_quantization(d, tflite_path)) is not None}
    if not wanted:
        return {}
    model = onnx.load(str(onnx_path))
    graph = model.graph
    front, back, done = [], [], {}
    for value in graph.input:
        q = wanted.get(value.name)
        if q is None:
            continue
        inner = f"{value.name}__codes"
        _rename_uses(graph, value.name, inner)
        front.append(helper.make_node("QuantizeLinear", [value.name, *_params(graph, value.name, q, np, numpy_helper)],
                                      [inner], name=f"{value.name}__quantize"))
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        done[value.name] = q.to_json()
    for value in graph.output:
        q = wanted.get(value.name)
        if q is None:
            continue
        inner = f"{value.name}__codes"
        _rename_producer(graph, value.name, inner)
        back.append(helper.make_node("DequantizeLinear", [inner, *_params(graph, value.name, q, np, numpy_helper)],
                                     [value.name], name=f"{value.name}__dequantize"))
        value.type.tensor_type.elem_type = TensorProto.FLOAT
        done[value.name] = q.to_json()
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return done


def _params(graph, name: str, q, np, numpy_helper) -> list[str]:
    scale, zero = f"{name}__scale", f"{name}__zero_point"
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(q.scale, dtype=np.float32), scale),
        numpy_helper.from_array(np.asarray(q.zero_point, dtype=q.dtype), zero),
    ])
    return [scale, zero]


def _rename_uses(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _rename_producer(graph, old: str, new: str) -> None:
    """The node that wrote output `old` writes `new`; its other readers read `new`."""
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    _rename_uses(graph, old, new)
