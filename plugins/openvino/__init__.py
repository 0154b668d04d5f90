"""OpenVINO: ONNX → OpenVINO IR (fp32, fp16 weights, int8 by NNCF post-training quantization),
run by the OpenVINO runtime on CPU. An IR is a folder holding `model.xml` and `model.bin`, so
that both files are hashed, contained and moved together."""

from convrepair.plugins import Plugin

PLUGIN = Plugin(
    name="openvino",
    description="OpenVINO IR (.xml + .bin in a folder) run on CPU; ONNX → IR fp32/fp16, NNCF int8",
    requires=("openvino",),
)

from convrepair_plugins.openvino import convert, runner  # noqa: E402,F401  (registration)
