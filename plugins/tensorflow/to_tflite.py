"""Keras -> TFLite with tf.lite.TFLiteConverter: float, or quantized to int8 as people make it.

`tflite-int8` without calibration data quantizes the weights only (Optimize.DEFAULT, dynamic
range). With `--calibration` activations are calibrated on the data (TensorFlow's post-training integer
quantization): inputs and outputs stay float (`-O io=float`, the default: the model quantizes and
dequantizes at its edges, an op without an int8 kernel stays float) or the model is integer only
(`-O io=int8|uint8`: TFLITE_BUILTINS_INT8, integer inputs and outputs, for integer accelerators).
The TFLite runner applies each I/O tensor's scale and zero point, so both variants are
compared as real numbers.
"""

from __future__ import annotations

from convrepair.errors import BadInput
from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.tensorflow import PLUGIN
from convrepair_plugins.tensorflow.quiet import import_tensorflow, quiet, stderr_fd_silenced

CALIBRATION_SAMPLES = 200  # TensorFlow's guide: a few hundred representative samples
IO_TYPES = ("float", "int8", "uint8")


def _convert(request: ConvertRequest, optimize: bool) -> ConvertNotes:
    tf = import_tensorflow()

    from convrepair_plugins.tensorflow.runners import load_keras_model

    io = str(request.options.get("io", "float"))
    if io not in IO_TYPES:
        raise BadInput(f"option io={io!r}: expected one of {', '.join(IO_TYPES)}")
    if io != "float" and not (optimize and request.calibration):
        raise BadInput(f"option io={io} makes a full-integer model, which needs --calibration data", request.source.path)
    model = load_keras_model(request.source.path)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    details: dict = {"optimizations": []}
    if optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        details["optimizations"] = ["DEFAULT"]
        details["quantization"] = "dynamic range (int8 weights)"
        if request.calibration:
            converter.representative_dataset = _representative(request, model)
            if io != "float":  # integer-only: every op int8, no float fallback
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
            count = min(len(next(iter(request.calibration.values()))), CALIBRATION_SAMPLES)
            kind = "full integer" if io != "float" else "integer with float fallback"
            details |= {"quantization": kind, "io": io, "calibration_samples": int(count),
                        "representative_samples": int(count)}
    with quiet(), stderr_fd_silenced():  # the MLIR quantizer logs its settings on fd 2
        request.output.write_bytes(converter.convert())
    return ConvertNotes(
        tool="tf.lite.TFLiteConverter",
        tool_versions={"tensorflow": tf.__version__, "keras": package_version("keras")},
        output_format="tflite",
        precision="int8" if optimize else None,
        details=details,
    )


def _representative(request: ConvertRequest, model):
    """One sample at a time, every model input, by name when the calibration file names them."""
    import numpy as np

    names = [t.name for t in model.inputs]
    arrays = request.calibration or {}
    if all(name in arrays for name in names):
        columns = [np.asarray(arrays[name], dtype=np.float32) for name in names]
    elif len(names) == 1 and len(arrays) == 1:
        columns = [np.asarray(next(iter(arrays.values())), dtype=np.float32)]
    else:
        raise BadInput(f"calibration data has {sorted(arrays)}; the model's inputs are {names}")
    count = min(len(columns[0]), CALIBRATION_SAMPLES)

    def representative():
        for i in range(count):
            yield [column[i:i + 1] for column in columns]

    return representative


@PLUGIN.converter("keras-to-tflite", sources=["keras"], target="tflite", description="TFLiteConverter, float32")
def keras_to_tflite(request: ConvertRequest) -> ConvertNotes:
    return _convert(request, optimize=False)


@PLUGIN.converter(
    "keras-to-tflite-int8",
    sources=["keras"],
    target="tflite-int8",
    output_format="tflite",
    description="TFLiteConverter int8: weights only, or full integer with --calibration",
    options={"io": "float | int8 | uint8: the full-integer model's input/output type (default float; needs --calibration)"},
    lossy=True,
)
def keras_to_tflite_int8(request: ConvertRequest) -> ConvertNotes:
    return _convert(request, optimize=True)
