"""onnx2tf 1.28.8 cannot convert an attention head split when batch and sequence length are both dynamic.

Smallest model: y = x.reshape(b, s, 2, 4).transpose(1, 2) for x of shape (b, s, 8), exported by
torch.onnx (dynamo) with b and s dynamic (ONNX: Shape, Shape, Concat, Reshape, Transpose) — the head
split of every BERT/MiniLM attention block. ONNX Runtime runs it at any b, s ((3, 7, 8) → (3, 2, 7, 4)).
Expected: onnx2tf writes a float32 .tflite. Got: ValueError in onnx2tf's Transpose: "Dimension must
be 5 but is 4 … with input shapes: [?,?,?,?,?], [4]" — the Reshape's output was given rank 5
instead of 4. The same model without the Transpose converts. (all-MiniLM-L6-v2 itself fails later,
in TensorFlow's TFLite converter: "'tf.Reshape' op requires 'shape' to have at most one dynamic
dimension, but got multiple dynamic dimensions at indices 0 and 3".)
Run: python docs/repro/onnx2tf_two_dynamic_reshape.py
Versions measured: onnx2tf 1.28.8, tensorflow-cpu 2.21.0, tf_keras 2.21.0, torch 2.13.0, onnx 1.23.
"""

import os
import tempfile

import torch


class HeadSplit(torch.nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)


folder = tempfile.mkdtemp()
path = os.path.join(folder, "heads.onnx")
batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=128)
torch.onnx.export(HeadSplit(), (torch.zeros(2, 5, 8),), path, dynamo=True,
                  dynamic_shapes=({0: batch, 1: seq},), input_names=["x"], output_names=["y"])

import onnx2tf  # noqa: E402

try:
    onnx2tf.convert(input_onnx_file_path=path, output_folder_path=os.path.join(folder, "out"), non_verbose=True)
    print("converted:", sorted(os.listdir(os.path.join(folder, "out"))))
except Exception as exc:  # noqa: BLE001 - the point is the converter's own error
    text = str(exc)
    at = text.find("'tf.Reshape'")
    print(f"FAILED {type(exc).__name__}: {text[at:at + 200] if at >= 0 else text[:300]}")
