"""ONNX models: ONNX Runtime runner, fp16 (onnxconverter-common) and int8 (ORT quantization)."""

from convrepair.plugins import Plugin

PLUGIN = Plugin(
    name="onnx",
    description="ONNX models run with ONNX Runtime; fp16 and int8 conversions",
    requires=("onnx", "onnxruntime"),
)

from convrepair_plugins.onnx import fp16, int8, runner  # noqa: E402,F401  (registration)
