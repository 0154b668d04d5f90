"""A small RGB ONNX model built in code, for fault classes the digits CNNs cannot show
(channel order, a Pad before a Conv, Resize modes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_rgb_model(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv.bias"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3, 4)).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (3,)).astype(np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Pad", ["image", "pads"], ["padded"], name="pad", mode="constant"),
        helper.make_node("Conv", ["padded", "conv.weight", "conv.bias"], ["conv_out"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("Resize", ["relu_out", "", "scales"], ["resized"], name="resize", mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Conv", ["resized", "conv2.weight"], ["conv2_out"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["conv2_out"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), "conv2.weight"))
    graph = helper.make_graph(
        nodes,
        "rgb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
