"""onnx2tf: ONNX → TensorFlow SavedModel → `.tflite` (NCHW inputs become NHWC), run by the
TFLite runner of the tensorflow plugin (the output is an ordinary `.tflite`)."""

import os

from convrepair.plugins import Plugin

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PLUGIN = Plugin(
    name="onnx2tf",
    description="onnx2tf: ONNX → TFLite (fp32) through a TF SavedModel, NCHW → NHWC",
    requires=("onnx2tf", "tf_keras", "onnx_graphsurgeon", "sng4onnx", "ai_edge_litert"),
)

from convrepair_plugins.onnx2tf import convert  # noqa: E402,F401  (registration)
