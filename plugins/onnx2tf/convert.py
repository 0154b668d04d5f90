"""ONNX → `.tflite` with onnx2tf, the converter with the most layout-transposition reports.

onnx2tf rewrites the graph for TensorFlow's NHWC: a 4-D NCHW input becomes NHWC, which the
sidecar records (the data are transposed for it, never guessed). Its `Erf` (the exact GELU of a
torch export) becomes the TF op `FlexErf` by default, which stock TFLite runtimes (the TF Python
interpreter, LiteRT) refuse to run; the default here is onnx2tf's own `replace_to_pseudo_operators
=["erf"]` (an Erf built from TFLite builtins), recorded in the sidecar; `-O pseudo_ops=none` keeps
onnx2tf's default.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from convrepair.errors import BadInput, exception_text
from convrepair.plugins import ConvertNotes, ConvertRequest, package_version
from convrepair_plugins.onnx2tf import PLUGIN

DEFAULT_PSEUDO_OPS = "erf"


@PLUGIN.converter(
    "onnx2tf-tflite",
    sources=["onnx"],
    target="onnx2tf-tflite",
    output_format="tflite",
    description="onnx2tf (ONNX → SavedModel → TFLite float32, NCHW inputs → NHWC)",
    options={"pseudo_ops": f"onnx2tf replace_to_pseudo_operators, comma-separated (default {DEFAULT_PSEUDO_OPS}; 'none')"},
)
def onnx_to_tflite(request: ConvertRequest) -> ConvertNotes:
    from convrepair_plugins.onnx.runner import load_onnx_model
    from convrepair_plugins.tensorflow.quiet import import_tensorflow, quiet

    model = load_onnx_model(request.source.path)
    option = str(request.options.get("pseudo_ops", DEFAULT_PSEUDO_OPS))
    pseudo = [] if option.lower() == "none" else [op.strip().lower() for op in option.split(",") if op.strip()]
    folder = request.output.parent / "onnx2tf"
    declared = list(request.sidecar.input_layout) if request.sidecar else []
    initializers = {i.name for i in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    # onnx2tf takes every 4-D input for NCHW and transposes it; an input already NHWC (a Keras
    # export) would come out (N, H, C, W): keep those as they are
    keep = [name for i, name in enumerate(names) if i < len(declared) and declared[i] != "NCHW"]
    with quiet():
        import onnx2tf

        try:
            onnx2tf.convert(input_onnx_file_path=str(request.source.path), output_folder_path=str(folder),
                            non_verbose=True, copy_onnx_input_output_names_to_tflite=True,
                            replace_to_pseudo_operators=pseudo or None, keep_shape_absolutely_input_names=keep or None)
        except SystemExit as exc:  # onnx2tf ends with sys.exit(1) on a graph it cannot convert
            raise BadInput(f"onnx2tf cannot convert this model (it exited {exc.code}; run onnx2tf -i on it for its log)",
                           request.source.path) from None
        except Exception as exc:  # noqa: BLE001 - onnx2tf or TF's converter refusing this graph
            raise BadInput(f"onnx2tf cannot convert this model: {type(exc).__name__}: {exception_text(exc, 300)}",
                           request.source.path) from exc
    written = sorted(folder.glob("*_float32.tflite"))
    if not written:
        raise BadInput(f"onnx2tf wrote no float32 .tflite (found {sorted(p.name for p in folder.iterdir())})", request.source.path)
    shutil.copyfile(written[0], request.output)
    layouts = _layouts(model, request.output, declared, request.source.path)
    flex = _flex_ops(request.output)
    shutil.rmtree(folder, ignore_errors=True)
    if flex:
        raise BadInput(f"onnx2tf left TensorFlow ops ({', '.join(flex)}) in the .tflite, which a stock TFLite runtime "
                       f"cannot run; add them to -O pseudo_ops=… (onnx2tf's replace_to_pseudo_operators)", request.source.path)
    return ConvertNotes(
        tool="onnx2tf",
        tool_versions={"onnx2tf": package_version("onnx2tf"), "tensorflow": import_tensorflow().__version__,
                       "tf_keras": package_version("tf_keras")},
        output_format="tflite",
        input_layout=layouts,
        details={"replace_to_pseudo_operators": pseudo, "input_layouts_before": list(request.sidecar.input_layout)
                 if request.sidecar else []},
    )


def _layouts(model, tflite: Path, declared: list[str], source: Path) -> list[str]:
    """Each input's layout in the .tflite: NHWC where onnx2tf transposed an NCHW input, else as before."""
    from convrepair_plugins.tensorflow.quiet import import_tensorflow

    tf = import_tensorflow()
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    initializers = {i.name for i in model.graph.initializer}
    onnx_shapes = [[d.dim_value or None for d in v.type.tensor_type.shape.dim] for v in model.graph.input if v.name not in initializers]
    out = []
    for index, (detail, shape) in enumerate(zip(interpreter.get_input_details(), onnx_shapes)):
        have = [None if d < 0 else int(d) for d in detail.get("shape_signature", detail["shape"])]
        before = declared[index] if index < len(declared) else "any"
        if have == shape:
            out.append(before)
        elif before == "NCHW" and len(shape) == 4 and have[1:] == [shape[2], shape[3], shape[1]]:
            out.append("NHWC")
        else:  # a layout no sample has: refuse rather than feed it wrong
            raise BadInput(f"onnx2tf changed input {index} from {shape} ({before}) to {have}, a layout convrepair "
                           "cannot feed", source)
    return out


def _flex_ops(tflite: Path) -> list[str]:
    """TF ("Flex") ops left in the flatbuffer: a stock TFLite runtime cannot run them."""
    data = tflite.read_bytes()
    import re

    return sorted({m.decode() for m in re.findall(rb"Flex[A-Z][A-Za-z0-9]+", data)})
