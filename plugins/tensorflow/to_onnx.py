"""Keras / SavedModel -> ONNX with tf2onnx.

`tf2onnx.convert.from_keras` breaks on Keras 3 (KeyError 'keras_tensor_N'), so both paths go
through `from_function` over a `tf.function`: the model called in inference mode, or the
SavedModel's serving signature. The input layout is kept (NHWC stays NHWC).
"""

from __future__ import annotations

from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.tensorflow import PLUGIN
from convrepair_plugins.tensorflow.quiet import import_tensorflow, quiet

DEFAULT_OPSET = 17


@PLUGIN.converter(
    "keras-to-onnx",
    sources=["keras", "savedmodel"],
    target="onnx",
    description="tf2onnx from_function over the model (Keras 3 safe)",
    options={"opset": "ONNX opset (default 17)"},
)
def keras_to_onnx(request: ConvertRequest) -> ConvertNotes:
    tf = import_tensorflow()
    import tf2onnx

    from convrepair_plugins.tensorflow.runners import load_keras_model, load_serving_signature

    opset = int(request.options.get("opset", DEFAULT_OPSET))
    if request.source.format == "keras":
        model = load_keras_model(request.source.path)
        specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
        single = len(specs) == 1
        function = tf.function(
            lambda *args: model(args[0] if single else list(args), training=False), autograph=False
        )
        origin = "keras model"
    else:
        _loaded, signature = load_serving_signature(request.source.path)
        inputs = signature.structured_input_signature[1]
        names = list(inputs)
        specs = [tf.TensorSpec(inputs[n].shape, inputs[n].dtype, name=n) for n in names]
        function = tf.function(lambda *args: signature(**dict(zip(names, args))), autograph=False)
        origin = "serving_default signature"
    with quiet():
        tf2onnx.convert.from_function(function, input_signature=specs, opset=opset, output_path=str(request.output))
    return ConvertNotes(
        tool="tf2onnx",
        tool_versions={"tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__, "keras": package_version("keras")},
        output_format="onnx",
        details={"opset": opset, "api": "from_function", "traced": origin},
    )


@PLUGIN.converter(
    "tflite-to-onnx",
    sources=["tflite"],
    target="onnx",
    description="tf2onnx from_tflite (quantized weights become DequantizeLinear; int8 I/O becomes float)",
    options={"opset": "ONNX opset (default 17)",
             "io": "float | keep: quantized inputs/outputs as real numbers, as the TFLite runner gives them (default float)"},
)
def tflite_to_onnx(request: ConvertRequest) -> ConvertNotes:
    import tf2onnx

    from convrepair_plugins.tensorflow.quant_io import float_io

    tf = import_tensorflow()
    opset = int(request.options.get("opset", DEFAULT_OPSET))
    with quiet():
        tf2onnx.convert.from_tflite(str(request.source.path), opset=opset, output_path=str(request.output))
    details: dict = {"opset": opset, "api": "from_tflite"}
    if str(request.options.get("io", "float")) != "keep":
        details["float_io"] = float_io(request.output, request.source.path) or None
    return ConvertNotes(
        tool="tf2onnx",
        tool_versions={"tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__},
        output_format="onnx",
        details=details,
    )
