"""onnx2tf 1.28.8: an ONNX Erf (torch's exact GELU) becomes the TF op FlexErf in the .tflite, which a
stock TFLite interpreter cannot run. With replace_to_pseudo_operators=["erf"] it runs (and note that
"Erf", capitalised like the ONNX op, is silently ignored: the option matches lower-case names).

Expected: the float32 .tflite runs. Observed: RuntimeError "Select TensorFlow op(s) ... (FlexErf)
failed to prepare" at allocate_tensors.
"""

import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

folder = tempfile.mkdtemp()
graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "erf",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
path = os.path.join(folder, "erf.onnx")
onnx.save(model, path)

import onnx2tf  # noqa: E402
import tensorflow as tf  # noqa: E402

pseudo = sys.argv[1:] or None  # e.g. `python onnx2tf_flex_erf.py erf` runs
onnx2tf.convert(input_onnx_file_path=path, output_folder_path=os.path.join(folder, "out"), non_verbose=True,
                replace_to_pseudo_operators=pseudo)
interpreter = tf.lite.Interpreter(os.path.join(folder, "out", "erf_float32.tflite"))
interpreter.allocate_tensors()  # without pseudo "erf": RuntimeError ... FlexErf failed to prepare
detail = interpreter.get_input_details()[0]
interpreter.set_tensor(detail["index"], np.linspace(-2, 2, 8, dtype=np.float32)[None])
interpreter.invoke()
print("ran:", interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
