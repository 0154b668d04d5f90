"""Keras -> TFLite with tf.lite.TFLiteConverter: float, or weights quantized to int8 (Optimize.DEFAULT)."""

from __future__ import annotations

from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.tensorflow import PLUGIN
from convrepair_plugins.tensorflow.quiet import import_tensorflow, quiet


def _convert(request: ConvertRequest, optimize: bool) -> ConvertNotes:
    tf = import_tensorflow()

    from convrepair_plugins.tensorflow.runners import load_keras_model

    model = load_keras_model(request.source.path)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    details: dict = {"optimizations": []}
    if optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        details["optimizations"] = ["DEFAULT"]
        if request.calibration:
            import numpy as np

            sample = np.asarray(next(iter(request.calibration.values())), dtype=np.float32)

            def representative():
                for row in sample[:200]:
                    yield [row[None]]

            converter.representative_dataset = representative
            details["representative_samples"] = int(min(len(sample), 200))
    with quiet():
        request.output.write_bytes(converter.convert())
    return ConvertNotes(
        tool="tf.lite.TFLiteConverter",
        tool_versions={"tensorflow": tf.__version__, "keras": package_version("keras")},
        output_format="tflite",
        precision="int8" if optimize else None,
        details=details,
    )


@PLUGIN.converter("keras-to-tflite", sources=["keras"], target="tflite", description="TFLiteConverter, float32")
def keras_to_tflite(request: ConvertRequest) -> ConvertNotes:
    return _convert(request, optimize=False)


@PLUGIN.converter(
    "keras-to-tflite-int8",
    sources=["keras"],
    target="tflite-int8",
    output_format="tflite",
    description="TFLiteConverter with Optimize.DEFAULT (int8 weights; full int8 with --calibration)",
    lossy=True,
)
def keras_to_tflite_int8(request: ConvertRequest) -> ConvertNotes:
    return _convert(request, optimize=True)
