"""ONNX fp32 -> fp16 with onnxconverter-common; inputs and outputs stay fp32 (keep_io_types).

Two things onnxconverter-common leaves to its caller, done here:
- ops that fp16 breaks stay fp32 (its default block list, plus the normalizations and reductions
  whose sums or epsilons fp16 cannot hold: a LayerNorm's eps of 1e-12 is 0 in fp16);
- a `Cast(to=float32)` inside the graph (a torch `mask.to(x.dtype)`) keeps its float32 target while
  its output is retyped float16 — an invalid model ONNX Runtime refuses ("Type (tensor(float16)) of
  output arg ... does not match expected type"). Such casts are retargeted to float16.
The result must load in ONNX Runtime before it is written.
"""

from __future__ import annotations

from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.onnx import PLUGIN
from convrepair_plugins.onnx.runner import load_onnx_model
from convrepair_plugins.onnx.verify import assert_loads

# Beyond onnxconverter-common's DEFAULT_OP_BLOCK_LIST: ops whose fp16 result is wrong, not just rounded.
FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt",
            "Erf", "Exp", "Softmax", "LpNormalization", "InstanceNormalization", "GroupNormalization")


@PLUGIN.converter(
    "onnx-fp16",
    sources=["onnx"],
    target="onnx-fp16",
    output_format="onnx",
    description="float16 weights and compute (onnxconverter-common); normalizations and reductions kept fp32",
    options={"keep_io_types": "keep fp32 inputs/outputs (default true)",
             "keep_fp32": "comma-separated node names left in fp32 (precision fallback)",
             "fp32_ops": f"comma-separated op types left in fp32 (default {','.join(FP32_OPS)}; 'none' for none)"},
    lossy=True,
)
def to_fp16(request: ConvertRequest) -> ConvertNotes:
    import onnx
    from onnxconverter_common import float16

    keep_io = str(request.options.get("keep_io_types", "true")).lower() != "false"
    keep = [name for name in str(request.options.get("keep_fp32", "")).split(",") if name]
    ops_option = str(request.options.get("fp32_ops", ",".join(FP32_OPS)))
    fp32_ops = [] if ops_option.lower() == "none" else [op for op in ops_option.split(",") if op]
    model = load_onnx_model(request.source.path)
    present = sorted({node.op_type for node in model.graph.node} & set(fp32_ops))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=keep_io, node_block_list=keep or None,
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *fp32_ops],
    )
    retargeted = retarget_float32_casts(converted)
    onnx.save(converted, str(request.output))
    assert_loads(request.output, "fp16")
    details = {"keep_io_types": keep_io, "fp32_ops": present, "casts_retargeted": retargeted}
    return ConvertNotes(
        tool="onnxconverter-common",
        tool_versions={"onnxconverter-common": package_version("onnxconverter-common"), "onnx": onnx.__version__},
        output_format="onnx",
        precision="fp16",
        details=details | ({"kept_fp32": keep} if keep else {}),
    )


def retarget_float32_casts(model) -> int:
    """Casts to float32 whose output the converted graph declares float16 now cast to float16."""
    from onnx import TensorProto, helper

    declared = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    count = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.CopyFrom(helper.make_attribute("to", TensorProto.FLOAT16))
                count += 1
    return count
