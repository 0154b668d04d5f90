"""ONNX fp32 -> fp16 with onnxconverter-common; inputs and outputs stay fp32 (keep_io_types)."""

from __future__ import annotations

from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.onnx import PLUGIN
from convrepair_plugins.onnx.runner import load_onnx_model


@PLUGIN.converter(
    "onnx-fp16",
    sources=["onnx"],
    target="onnx-fp16",
    output_format="onnx",
    description="float16 weights and compute (onnxconverter-common)",
    options={"keep_io_types": "keep fp32 inputs/outputs (default true)",
             "keep_fp32": "comma-separated node names left in fp32 (precision fallback)"},
    lossy=True,
)
def to_fp16(request: ConvertRequest) -> ConvertNotes:
    import onnx
    from onnxconverter_common import float16

    keep_io = str(request.options.get("keep_io_types", "true")).lower() != "false"
    keep = [name for name in str(request.options.get("keep_fp32", "")).split(",") if name]
    model = load_onnx_model(request.source.path)
    converted = float16.convert_float_to_float16(model, keep_io_types=keep_io, node_block_list=keep or None)
    onnx.save(converted, str(request.output))
    return ConvertNotes(
        tool="onnxconverter-common",
        tool_versions={"onnxconverter-common": package_version("onnxconverter-common"), "onnx": onnx.__version__},
        output_format="onnx",
        precision="fp16",
        details={"keep_io_types": keep_io, **({"kept_fp32": keep} if keep else {})},
    )
