"""Keras (.keras), TensorFlow SavedModel and TFLite models; tf2onnx and TFLite converters."""

import os

from convrepair.plugins import Plugin
from convrepair_plugins.tensorflow.quiet import import_tensorflow

# TensorFlow prints start-up chatter on import; keep the user's terminal for our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PLUGIN = Plugin(
    name="tensorflow",
    description="Keras 3 models, SavedModels and TFLite flatbuffers; tf2onnx and TFLiteConverter",
    requires=("tensorflow", "keras", "tf2onnx"),
    probe=lambda: import_tensorflow(),
)

from convrepair_plugins.tensorflow import gradients, runners, to_onnx, to_tflite  # noqa: E402,F401  (registration)
